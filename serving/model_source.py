"""What `llmops serve MODEL` serves: a registry reference (`NAME@ALIAS`, `NAME/VERSION`, `NAME`) or a local
checkpoint directory, resolved to a local merged safetensors checkpoint plus the version it came from.

A reference is pinned to a version number once, at start, so a later alias move never changes what a running
server answers with. The register step logs the merged model with `mlflow.transformers.log_model(...,
save_pretrained=True)` as artifact `model`: weights under `model/`, the tokenizer under
`components/tokenizer/`. Downloads are cached under the state dir, keyed by the version's identity (tracking
URI, source, run, creation time), not by `name/version` alone: two registries (a test's, a reset one) both have
an `llmops-smollm2/1`, and serving or compiling the other one's weights must be impossible. Pickled weight
files are never used (the engines load safetensors only).

A local directory may also be such an MLflow model as downloaded (`MLmodel`, `model/`, `components/`): what
KServe's storage initializer puts in /mnt/models from the version's download URI. It is laid out as a checkpoint
of symlinks under the state dir (the mount may be read-only), and `model_version` (`NAME/VERSION`, set by the
KServe actuator as LLMOPS_MODEL_VERSION) names what it is.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmops.errors import LlmopsError
from llmops.modeling.hashing import PICKLE_SUFFIXES
from llmops.settings import Settings

_COMPLETE = ".llmops-complete"
TOKENIZER_PREFIXES = ("tokenizer", "special_tokens", "chat_template", "vocab", "merges")


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # the model id clients send (registered name, or the local dir's name)
    version: str | None  # registry version, None for a local dir
    model_dir: Path  # config.json + *.safetensors + tokenizer files
    ref: str  # what the user asked for
    source: str  # models:/NAME/VERSION or the local path
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """`name/version` (or the name): the model-version label on every metric and log record."""
        return f"{self.name}/{self.version}" if self.version else self.name


def check_checkpoint(path: Path) -> Path:
    """A servable checkpoint: config.json, safetensors weights, a tokenizer; pickles are refused."""
    if not (path / "config.json").is_file():
        raise LlmopsError(f"{path} has no config.json", "pass a transformers checkpoint directory")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = f" (found pickled {pickles}; they are never loaded)" if pickles else ""
        raise LlmopsError(f"{path} has no safetensors weights{hint}",
                          "re-save it with save_pretrained(..., safe_serialization=True)")
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise LlmopsError(f"{path} has no tokenizer files", "save the tokenizer beside the weights")
    return path


def _assemble(download: Path, out: Path, *, link: bool = False) -> Path:
    """Lay the MLflow transformers artifact out as one checkpoint dir (weights + tokenizer); `link`: symlinks to
    the files where they are instead of copies."""
    place = (lambda src, dst: os.symlink(src.resolve(), dst)) if link else shutil.copy2
    weights = next((p.parent for p in sorted(download.rglob("config.json")) if any(p.parent.glob("*.safetensors"))),
                   None)
    if weights is None:
        raise LlmopsError(f"the logged model in {download} has no safetensors checkpoint",
                          "re-register the version; pickled models are never served")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in weights.iterdir():
        if f.is_file() and f.suffix not in PICKLE_SUFFIXES:
            place(f, tmp / f.name)
    for tok_dir in [weights, *sorted(p.parent for p in download.rglob("tokenizer_config.json"))]:
        for f in tok_dir.iterdir():
            if f.is_file() and f.name.startswith(TOKENIZER_PREFIXES) and not (tmp / f.name).exists():
                place(f, tmp / f.name)
    check_checkpoint(tmp)
    (tmp / _COMPLETE).write_text("ok\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def version_cache_dir(settings: Settings, info: dict[str, Any]) -> Path:
    """Where a registered version's checkpoint is assembled: `<state>/versions/NAME/VERSION/<identity hash>`."""
    identity = f"{settings.tracking_uri}|{info.get('source')}|{info.get('run_id')}|{info.get('created')}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    return Path(settings.state_dir) / "versions" / info["name"] / str(info["version"]) / digest


def _split_version(model_version: str) -> tuple[str, str]:
    name, _, version = model_version.rpartition("/")
    if not name or not version:
        raise LlmopsError(f"model version {model_version!r} is not NAME/VERSION",
                          "pass it as e.g. llmops-smollm2/3 (--model-version or LLMOPS_MODEL_VERSION)")
    return name, version


def _local(settings: Settings, local: Path, ref: str, model_version: str | None) -> ResolvedModel:
    """A local checkpoint dir as is, or a downloaded MLflow model dir laid out as one (symlinks)."""
    src = local.resolve()
    if not (src / "config.json").is_file() and (src / "MLmodel").is_file():
        digest = hashlib.sha256(str(src).encode()).hexdigest()[:12]
        path = _assemble(src, Path(settings.state_dir) / "versions" / "_local" / digest, link=True)
    else:
        path = check_checkpoint(src)
    name, version = _split_version(model_version) if model_version else (src.name, None)
    return ResolvedModel(name=name, version=version, model_dir=path, ref=ref, source=str(src))


def resolve_model(settings: Settings, ref: str, *, model_version: str | None = None) -> ResolvedModel:
    """`ref` -> a local checkpoint dir and the (name, version) it is; registry errors name the fix.

    `model_version` (`NAME/VERSION`) names a local directory's registered version; for a registry reference it
    must agree with what the reference resolves to."""
    local = Path(ref).expanduser()
    if local.is_dir():
        return _local(settings, local, ref, model_version)
    if ref.startswith(("/", "./", "../", "~")) or local.exists():
        raise LlmopsError(f"no model directory at {ref}",
                          "pass an existing checkpoint dir, or NAME@ALIAS / NAME/VERSION")

    import tempfile

    import mlflow

    from llmops.registry import Registry

    registry = Registry(settings)
    name, version = registry.resolve(ref)
    info = registry.show(f"{name}/{version}")
    out = version_cache_dir(settings, info)
    if not (out / _COMPLETE).is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="llmops-serve-", dir=out.parent) as tmp:
            try:
                mlflow.set_tracking_uri(settings.tracking_uri)
                local_dl = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp))
            except Exception as exc:  # MlflowException / OSError depending on the store
                raise LlmopsError(f"cannot download {name}/{version}: {str(exc).splitlines()[0] if str(exc) else exc}",
                                  "check the tracking server / artifact store is reachable") from None
            _assemble(local_dl, out)
    if model_version and _split_version(model_version) != (name, str(version)):
        raise LlmopsError(f"{ref} is {name}/{version}, not {model_version}",
                          "drop --model-version (or LLMOPS_MODEL_VERSION) for a registry reference")
    return ResolvedModel(name=name, version=version, model_dir=out, ref=ref, source=f"models:/{name}/{version}",
                         tags=dict(info.get("tags") or {}))
