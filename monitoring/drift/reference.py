"""The training reference a window is compared with: prompt embeddings and length statistics, saved to disk.

Built from the training prompts (the user message of each `data/splits/train.jsonl` record, the text a
served request carries). The response side needs answers from the reference distribution: by default the
training records' own reference answers stand in for the model's answers (a fine-tuned model answers in
that style); pass `responses` (e.g. the champion's answers to the validation prompts) when you have them.
Saved as `reference.json` (metadata) plus `arrays.npz` (read back with `allow_pickle=False`: nothing from
disk is ever unpickled).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmops.data.records import read_jsonl
from llmops.errors import LlmopsError
from llmops.modeling.prompts import user_message
from llmops.params import Params
from llmops.settings import Settings
from monitoring.drift.features import embed, embedder_for, principal_axes, token_lengths
from monitoring.drift.records import is_refusal

FORMAT_VERSION = 1
META = "reference.json"
ARRAYS = "arrays.npz"


def default_reference_dir(settings: Settings) -> Path:
    return settings.state_dir / "drift" / "reference"


def embedder_identity(embedder: Any) -> str:
    """The embedder's weights sha256 from its provenance file (or its directory name when it has none)."""
    model_dir = Path(getattr(embedder, "model_dir", ""))
    try:
        return json.loads((model_dir / "provenance.json").read_text())["weights_sha256"]
    except (OSError, KeyError, ValueError):
        return f"dir:{model_dir.name}"


@dataclass
class Reference:
    prompt_embeddings: np.ndarray
    prompt_lengths: np.ndarray
    response_lengths: np.ndarray | None = None
    response_logprobs: np.ndarray | None = None
    refusal_rate: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    pca_mean: np.ndarray | None = None  # the report's 2-D projection axes, computed once per reference
    pca_axes: np.ndarray | None = None

    def projection(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, axes) of the prompt embeddings' first two principal components."""
        if self.pca_mean is None or self.pca_axes is None:
            self.pca_mean, self.pca_axes = principal_axes(self.prompt_embeddings)
        return self.pca_mean, self.pca_axes

    def save(self, directory: Path | str) -> Path:
        """Write the reference atomically (temporary sibling, then rename) and return its directory."""
        directory = Path(directory)
        tmp = directory.with_name(directory.name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        arrays = {"prompt_embeddings": self.prompt_embeddings, "prompt_lengths": self.prompt_lengths}
        if self.response_lengths is not None:
            arrays["response_lengths"] = self.response_lengths
        if self.response_logprobs is not None:
            arrays["response_logprobs"] = self.response_logprobs
        arrays["pca_mean"], arrays["pca_axes"] = self.projection()
        np.savez(tmp / ARRAYS, **arrays)
        meta = {**self.meta, "format_version": FORMAT_VERSION, "refusal_rate": self.refusal_rate}
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if directory.exists():
            for child in directory.iterdir():
                child.unlink()
            directory.rmdir()
        tmp.rename(directory)
        return directory

    @classmethod
    def load(cls, directory: Path | str) -> Reference:
        directory = Path(directory)
        if not (directory / META).is_file() or not (directory / ARRAYS).is_file():
            raise LlmopsError(f"no drift reference in {directory}",
                              "build it with monitoring.drift.ensure_reference (or `llmops monitor run`, "
                              "which builds it from data/splits/train.jsonl on first use)")
        meta = json.loads((directory / META).read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise LlmopsError(f"{directory} holds drift reference format {meta.get('format_version')}, "
                              f"this code reads {FORMAT_VERSION}", "delete the directory and rebuild the reference")
        with np.load(directory / ARRAYS, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        return cls(
            prompt_embeddings=arrays["prompt_embeddings"],
            prompt_lengths=arrays["prompt_lengths"],
            response_lengths=arrays.get("response_lengths"),
            response_logprobs=arrays.get("response_logprobs"),
            refusal_rate=meta.pop("refusal_rate", None),
            meta=meta,
            pca_mean=arrays.get("pca_mean"),
            pca_axes=arrays.get("pca_axes"),
        )


def build_reference(
    texts: Sequence[str],
    settings: Settings,
    params: Params,
    *,
    responses: Sequence[str] | None = None,
    response_logprobs: Sequence[float] | None = None,
    prompt_source: str = "",
    response_source: str = "",
    embedder: Any = None,
) -> Reference:
    """Embed the reference prompts and record length statistics (and the response side when given)."""
    texts = [str(t) for t in texts]
    if len(texts) < 20:
        raise LlmopsError(f"a drift reference needs at least 20 prompts (got {len(texts)})",
                          "build it from the training split (data/splits/train.jsonl)")
    embedder = embedder or embedder_for(settings)
    resp_lengths = refusal = None
    if responses is not None:
        responses = [str(r) for r in responses]
        resp_lengths = token_lengths(embedder, responses)
        refusal = float(np.mean([is_refusal(r) for r in responses])) if responses else None
    return Reference(
        prompt_embeddings=embed(embedder, texts, params.drift.embed_batch_size),
        prompt_lengths=token_lengths(embedder, texts),
        response_lengths=resp_lengths,
        response_logprobs=None if response_logprobs is None else np.asarray(response_logprobs, dtype=np.float64),
        refusal_rate=refusal,
        meta={
            "created": time.time(),
            "prompts": len(texts),
            "responses": 0 if responses is None else len(responses),
            "prompt_source": prompt_source,
            "response_source": response_source,
            "embedder": embedder_identity(embedder),
        },
    )


def reference_from_splits(settings: Settings, params: Params, train_path: Path | None = None,
                          embedder: Any = None) -> Reference:
    """The default reference: training prompts, and the training records' answers as the response proxy."""
    path = train_path or settings.project_dir / "data" / "splits" / "train.jsonl"
    records = read_jsonl(path).to_dict(orient="records")
    return build_reference(
        [user_message(r) for r in records], settings, params,
        responses=[r["output"] for r in records],
        prompt_source=str(path), response_source=f"{path} (reference answers as a proxy for the model's)",
        embedder=embedder,
    )


def ensure_reference(settings: Settings, params: Params, directory: Path | None = None,
                     rebuild: bool = False) -> Reference:
    """Load the saved reference, building and saving it from the training split on first use."""
    directory = directory or default_reference_dir(settings)
    if not rebuild and (directory / META).is_file():
        return Reference.load(directory)
    reference = reference_from_splits(settings, params)
    reference.save(directory)
    return reference
