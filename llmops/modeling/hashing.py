"""Content hashes of model checkpoints: one digest over every weight file, so lineage, engine cache keys and
train-time verification all name a checkpoint by what is really in it (not by the first shard, not by a
value written down at pull time)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from llmops.modeling.wheels import sha256_file

# Files that hold weights in a checkpoint directory. Pickled formats are listed so a checkpoint that
# carries them gets a digest that covers them too (they are never loaded: safetensors only).
# Pickled checkpoint formats: never loaded anywhere (register refuses to log them, the server refuses to serve them).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.onnx", "*.onnx.data")


def weight_files(model_dir: Path) -> list[Path]:
    """Every weight file under `model_dir` (recursively), sorted by relative path."""
    root = Path(model_dir)
    found = {p for pattern in WEIGHT_PATTERNS for p in root.rglob(pattern) if p.is_file()}
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def file_hashes(model_dir: Path) -> dict[str, str]:
    """Relative path -> sha256 of every weight file under `model_dir`."""
    root = Path(model_dir)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in weight_files(root)}


def digest_of(hashes: dict[str, str]) -> str:
    """sha256 over the sorted `path sha256` lines: stable across machines, changes when any file does."""
    lines = "".join(f"{path} {sha}\n" for path, sha in sorted(hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def weights_digest(model_dir: Path) -> str:
    """One digest for a checkpoint directory's weights; raises FileNotFoundError when it holds none."""
    hashes = file_hashes(model_dir)
    if not hashes:
        raise FileNotFoundError(f"no weight files under {model_dir}")
    return digest_of(hashes)


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    """Hex md5 of a file's bytes: what DVC 3 records for a file output (`hash: md5`)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
