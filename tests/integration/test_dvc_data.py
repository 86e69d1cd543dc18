"""Real DVC in a throwaway git repo: repro build -> validate -> split, push, pull, `llmops data add/status`.

The repo gets copies of exactly what the stages depend on (dvc.yaml, params.yaml, the data modules, the
expectation suites); the stage commands run the installed llmops. Its state dir and DVC remote are
temporary; only the base tokenizer is read from the project's models dir.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from llmops.data import dvc
from llmops.errors import DataError
from llmops.settings import Settings, get_settings

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DATA_OUTS = ["data/sample/base.jsonl", "data/sample/shifted.jsonl", "data/splits/test.jsonl",
             "data/splits/train.jsonl", "data/splits/validation.jsonl"]


def _sh(args: list[str], cwd: Path) -> None:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True, text=True)


def llmops(*args: str, repo: Path) -> subprocess.CompletedProcess[str]:
    """The CLI on the temporary repo (LLMOPS_PROJECT_DIR). It runs from outside it: `python -m` puts the
    working directory first on sys.path, and the repo's partial copy of llmops/ would shadow the package."""
    env = dict(os.environ, COLUMNS="250", LLMOPS_PROJECT_DIR=str(repo))
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True,
                          env=env, cwd=repo.parent, check=False, timeout=300)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Settings]]:
    root = tmp_path_factory.mktemp("dvcrepo")
    repo = root / "repo"
    for rel in ["dvc.yaml", "params.yaml", "llmops/modeling/prompts.py", "data/expectations", "data/user/README.md",
                "data/feedback/README.md"]:
        src, dst = REPO / rel, repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    shutil.copytree(REPO / "llmops" / "data", repo / "llmops" / "data",
                    ignore=shutil.ignore_patterns("__pycache__"))
    _sh(["git", "init", "-q"], repo)
    _sh([sys.executable, "-m", "dvc", "init", "-q"], repo)
    _sh([sys.executable, "-m", "dvc", "remote", "add", "-d", "tmp", str(root / "remote")], repo)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMOPS_PROJECT_DIR", str(repo))
        mp.setenv("LLMOPS_STATE_DIR", str(root / "state"))
        mp.setenv("LLMOPS_MODELS_DIR", str(REPO / ".llmops" / "models"))  # read-only: the base tokenizer
        get_settings.cache_clear()
        yield repo, get_settings()
    get_settings.cache_clear()


def _remote_files(repo: Path) -> int:
    return sum(1 for p in (repo.parent / "remote").rglob("*") if p.is_file())


def test_build_repro_push_pull_round_trip(repo: tuple[Path, Settings]) -> None:
    path, settings = repo
    proc = llmops("data", "build", "--push", "--json", repo=path)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    hashes = payload["hashes"]
    # a build in another repo and another process reproduces the md5s the project's dvc.lock records
    assert {k: hashes[k] for k in DATA_OUTS} == {k: dvc.data_hashes(REPO)[k] for k in DATA_OUTS}
    metrics = json.loads((path / "data/metrics/validation.json").read_text())
    assert metrics["success"] is True and metrics["failed"] == []
    assert metrics == json.loads((REPO / "data/metrics/validation.json").read_text())
    assert _remote_files(path) >= len(DATA_OUTS)
    assert (settings.state_dir / "dvc-site-cache").is_dir()  # not /var/tmp

    again = dvc.repro(settings=settings, repo_dir=path)
    assert "Running stage" not in again  # nothing changed: nothing reruns
    assert dvc.status(settings=settings, repo_dir=path) == {}

    for rel in DATA_OUTS:
        (path / rel).unlink()
    shutil.rmtree(path / ".dvc" / "cache")
    assert dvc.status(settings=settings, repo_dir=path) != {}
    dvc.pull(settings=settings, repo_dir=path)
    assert {k: dvc.data_hashes(path)[k] for k in DATA_OUTS} == {k: hashes[k] for k in DATA_OUTS}
    assert all((path / rel).is_file() for rel in DATA_OUTS)
    assert dvc.status(settings=settings, repo_dir=path) == {}


def test_data_add_validates_tracks_and_pushes(repo: tuple[Path, Settings], tmp_path: Path) -> None:
    path, _ = repo
    from llmops.data.records import read_jsonl, write_jsonl

    records = read_jsonl(path / "data/sample/base.jsonl").head(80).to_dict(orient="records")
    good = tmp_path / "good.jsonl"
    write_jsonl(records, good)
    before = _remote_files(path)
    proc = llmops("data", "add", str(good), "--name", "mine", "--json", repo=path)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["added"] and payload["pushed"] and payload["path"] == "data/user/mine.jsonl"
    assert (path / "data/user/mine.jsonl").read_bytes() == good.read_bytes()
    assert (path / "data/user/mine.jsonl.dvc").is_file()
    assert "/mine.jsonl" in (path / "data/user/.gitignore").read_text()
    assert dvc.data_hashes(path)["data/user/mine.jsonl"] == payload["md5"]
    assert _remote_files(path) == before + 1

    again = llmops("data", "add", str(good), "--name", "mine", repo=path)
    assert again.returncode == 2 and "already exists" in again.stderr

    bad = tmp_path / "bad.jsonl"
    write_jsonl([dict(r, output="") for r in records], bad)
    gitignore = (path / "data/user/.gitignore").read_text()
    refused = llmops("data", "add", str(bad), "--name", "bad", repo=path)
    assert refused.returncode == 1
    assert "output is not empty or blank: 80 of 80 rows break it" in refused.stderr
    assert "nothing was added" in refused.stderr
    assert not (path / "data/user/bad.jsonl").exists() and not (path / "data/user/bad.jsonl.dvc").exists()
    assert (path / "data/user/.gitignore").read_text() == gitignore

    unreadable = llmops("data", "add", str(tmp_path / "missing.jsonl"), repo=path)
    assert unreadable.returncode == 2 and "no such file" in unreadable.stderr

    status = llmops("data", "status", "--json", repo=path)
    assert status.returncode == 0, status.stderr
    state = json.loads(status.stdout)
    # data/user is a source of the split stage (params.yaml data.sources): the splits are stale until rebuilt
    assert state["up_to_date"] is False and list(state["changed"]) == ["split"]
    assert state["hashes"]["data/user/mine.jsonl"] == payload["md5"]
    built = llmops("data", "build", "--json", repo=path)
    assert built.returncode == 0, built.stderr
    manifest = json.loads((path / "data/splits/sources.json").read_text())
    mine = next(s for s in manifest["sources"] if s["entry"] == "user/mine")
    assert (mine["md5"], mine["rows"], mine["kept"]) == (payload["md5"], 80, 80)  # it owns its 80 prompts now
    assert json.loads(llmops("data", "status", "--json", repo=path).stdout)["up_to_date"] is True


def test_failed_validation_stops_the_split(repo: tuple[Path, Settings]) -> None:
    """Runs last in this module: it leaves the validate stage out of date."""
    path, settings = repo
    params_file = path / "params.yaml"
    original = params_file.read_text()
    splits_before = {p: (path / p).read_bytes() for p in DATA_OUTS if "splits" in p}
    lock_before = (path / "dvc.lock").read_text()
    raw = yaml.safe_load(original)
    raw["data"]["limits"]["max_tokens"] = 10  # most records are longer: validation must fail
    raw["data"]["split"]["seed"] = 99  # would re-split, if the split were allowed to run
    params_file.write_text(yaml.safe_dump(raw))
    try:
        with pytest.raises(DataError, match="validate"):
            dvc.repro(settings=settings, repo_dir=path)
        assert {p: (path / p).read_bytes() for p in splits_before} == splits_before
        assert (path / "dvc.lock").read_text() == lock_before
    finally:
        params_file.write_text(original)
    # params restored: the build is untouched; validate (whose metrics the failed run rewrote) and the
    # split that depends on those metrics are what a repro would run again
    assert set(dvc.status(settings=settings, repo_dir=path)) == {"validate", "split"}
