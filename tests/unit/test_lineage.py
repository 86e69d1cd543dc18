"""Lineage helpers on a throwaway git repo with a real `dvc repro`, so the hashes are DVC's own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmops.errors import DataError
from llmops.lineage import collect_lineage, dvc_hashes, file_md5, git_commit
from llmops.settings import Settings

GEN = """\
import sys
if sys.argv[1] == "build":
    open("data/a.jsonl", "w").write('{"x": 1}\\n')
else:
    open("data/b.jsonl", "w").write(open("data/a.jsonl").read() * 2)
"""


def _dvc_yaml(python: str) -> str:
    return (f"stages:\n  build:\n    cmd: {python} gen.py build\n    deps: [gen.py]\n    outs: [data/a.jsonl]\n"
            f"  split:\n    cmd: {python} gen.py split\n    deps: [gen.py, data/a.jsonl]\n"
            "    outs: [data/b.jsonl]\n")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    (repo / "README.md").write_text("hello\n")
    _git(repo, "add", "README.md")
    _git(repo, "commit", "-qm", "init")
    return repo


def test_git_commit_clean_dirty_untracked_and_outside(repo: Path, tmp_path: Path) -> None:
    sha = _git(repo, "rev-parse", "HEAD").strip()
    assert git_commit(repo) == sha
    (repo / "README.md").write_text("changed\n")
    assert git_commit(repo) == f"{sha}-dirty"
    _git(repo, "checkout", "-q", "README.md")
    assert git_commit(repo) == sha
    (repo / "new.py").write_text("x = 1\n")
    assert git_commit(repo) == f"{sha}-dirty"
    (repo / ".gitignore").write_text("new.py\n.gitignore\n")
    assert git_commit(repo) == sha  # ignored files are not changes
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    assert git_commit(outside) == "unknown"


def test_dvc_hashes_match_a_real_dvc_repro(repo: Path, tmp_path: Path) -> None:
    assert dvc_hashes(repo) == {}
    (repo / "data").mkdir()
    (repo / "gen.py").write_text(GEN)
    (repo / "dvc.yaml").write_text(_dvc_yaml(sys.executable))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site")}
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "-q"], cwd=repo, env=env, check=True, capture_output=True)
    done = subprocess.run([*dvc, "repro", "-q"], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]

    hashes = dvc_hashes(repo)
    assert set(hashes) == {"data/a.jsonl", "data/b.jsonl"}
    for path, md5 in hashes.items():
        assert md5 == file_md5(repo / path)
    assert hashes["data/a.jsonl"] != hashes["data/b.jsonl"]

    (repo / "dvc.lock").write_text("stages: [unclosed\n")
    with pytest.raises(DataError, match="not valid YAML"):
        dvc_hashes(repo)


def test_file_md5_known_value(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_bytes(b"abc")
    assert file_md5(f) == "900150983cd24fb0d6963f7d28e17f72"
    f.write_bytes(b"x" * (3 << 20))
    assert file_md5(f, chunk=1 << 16) == file_md5(f)


def test_collect_lineage(settings: Settings, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (repo / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  split:\n    cmd: x\n    outs:\n    - path: data/splits/train.jsonl\n"
        "      hash: md5\n      md5: 0123456789abcdef0123456789abcdef\n      size: 3\n")
    _git(repo, "add", "dvc.lock")
    _git(repo, "commit", "-qm", "lock")
    params = settings.params()
    local = settings.model_copy(update={"project_dir": repo})
    tags = collect_lineage(local, params, kfp_run_id="kfp-7", mlflow_run_id="abc123",
                           base_model_id="smollm2-135m-instruct", base_model_sha256="f" * 64)
    assert tags == {
        "git.commit": _git(repo, "rev-parse", "HEAD").strip(),
        "dvc.data/splits/train.jsonl": "0123456789abcdef0123456789abcdef",
        "params.hash": params.digest(),
        "pipeline.kfp_run_id": "kfp-7",
        "pipeline.mlflow_run_id": "abc123",
        "base_model.id": "smollm2-135m-instruct",
        "base_model.sha256": "f" * 64,
    }
    assert all(isinstance(v, str) for v in tags.values())
    no_runs = collect_lineage(local, params, kfp_run_id=None, mlflow_run_id=None, base_model_id="b",
                              base_model_sha256="s")
    assert "pipeline.kfp_run_id" not in no_runs and "pipeline.mlflow_run_id" not in no_runs
