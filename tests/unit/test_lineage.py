"""Lineage helpers on a throwaway git repo with a real `dvc repro`, so the hashes are DVC's own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmops.data.dvc import data_hashes
from llmops.errors import DataError, ModelError
from llmops.lineage import collect_lineage, data_lineage, git_commit
from llmops.modeling.base import PROVENANCE, BaseModelInfo, base_model_sha256, verify_base_model
from llmops.modeling.hashing import file_hashes, file_md5, weights_digest
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


def _dvc(repo: Path, tmp_path: Path, *args: str) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site")}
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_data_hashes_match_a_real_dvc_repro(repo: Path, tmp_path: Path) -> None:
    assert data_hashes(repo) == {}
    (repo / "data").mkdir()
    (repo / "gen.py").write_text(GEN)
    (repo / "dvc.yaml").write_text(_dvc_yaml(sys.executable))
    _dvc(repo, tmp_path, "init", "-q")
    _dvc(repo, tmp_path, "repro", "-q")

    hashes = data_hashes(repo)
    assert set(hashes) == {"data/a.jsonl", "data/b.jsonl"}
    for path, md5 in hashes.items():
        assert md5 == file_md5(repo / path)
    assert hashes["data/a.jsonl"] != hashes["data/b.jsonl"]

    (repo / "dvc.lock").write_text("stages: [unclosed\n")
    with pytest.raises(DataError, match="not valid YAML"):
        data_hashes(repo)


def test_file_md5_known_value(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_bytes(b"abc")
    assert file_md5(f) == "900150983cd24fb0d6963f7d28e17f72"
    f.write_bytes(b"x" * (3 << 20))
    assert file_md5(f, chunk=1 << 16) == file_md5(f)


def test_data_lineage_names_what_was_read(repo: Path, tmp_path: Path) -> None:
    """A step reads a copy of the split (the KFP artifact path): tagged with the DVC version it matches, by
    content; an edited split or a file DVC never tracked is `untracked`, never the md5 dvc.lock expects."""
    (repo / "data").mkdir()
    (repo / "gen.py").write_text(GEN)
    (repo / "dvc.yaml").write_text(_dvc_yaml(sys.executable))
    _dvc(repo, tmp_path, "init", "-q")
    _dvc(repo, tmp_path, "repro", "-q")
    (repo / "extra.jsonl").write_text('{"y": 2}\n')
    _dvc(repo, tmp_path, "add", "-q", "extra.jsonl")  # tracked by a .dvc file, not dvc.lock

    artifacts = tmp_path / "kfp-artifacts"
    artifacts.mkdir()
    read = {"train": shutil.copy(repo / "data/a.jsonl", artifacts / "train"),
            "test": shutil.copy(repo / "extra.jsonl", artifacts / "test"),
            "validation": artifacts / "validation"}
    read["validation"].write_text('{"x": 1}\n{"edited": true}\n')
    tags = data_lineage(repo, read)
    a, extra, edited = file_md5(repo / "data/a.jsonl"), file_md5(repo / "extra.jsonl"), file_md5(read["validation"])
    assert tags == {
        "data.train.md5": a, "data.train.dvc": f"data/a.jsonl@{a}",
        "data.test.md5": extra, "data.test.dvc": f"extra.jsonl@{extra}",
        "data.validation.md5": edited, "data.validation.dvc": "untracked",
    }
    (repo / "data/a.jsonl").write_text('{"x": 3}\n')  # edited locally after dvc repro: dvc.lock still says `a`
    assert data_lineage(repo, {"train": repo / "data/a.jsonl"})["data.train.dvc"] == "untracked"


def _checkpoint(root: Path, shards: int = 2) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text("{}")
    for i in range(shards):
        (root / f"model-0000{i + 1}-of-0000{shards}.safetensors").write_bytes(bytes([i]) * 1000)
    return root


def test_base_model_hash_covers_every_shard_and_is_verified(tmp_path: Path) -> None:
    model = _checkpoint(tmp_path / "base")
    digest = base_model_sha256(model)
    assert digest == weights_digest(model) and len(file_hashes(model)) == 2
    (model / "model-00002-of-00002.safetensors").write_bytes(b"\1" * 999)  # not the first shard
    assert base_model_sha256(model) != digest

    model = _checkpoint(tmp_path / "pulled")
    info = BaseModelInfo(model_id="m", path=str(model), sha256=weights_digest(model), source="test",
                         perplexity_general=1.0, seconds=0.0, files=file_hashes(model))
    (model / PROVENANCE).write_text(json.dumps(info.__dict__))
    tags = verify_base_model(model)
    assert tags["base_model.sha256"] == info.sha256 and json.loads(tags["base_model.files"]) == info.files
    assert "base_model.revision" not in tags  # a local directory has no hub revision: none is invented
    (model / "model-00002-of-00002.safetensors").write_bytes(b"\7" * 1000)
    with pytest.raises(ModelError, match=r"model-00002-of-00002\.safetensors differ") as err:
        verify_base_model(model)
    assert "llmops model pull --force" in str(err.value.fix)
    with pytest.raises(ModelError, match="no weight files"):
        verify_base_model(_checkpoint(tmp_path / "empty", shards=0))


def test_hub_snapshot_records_the_resolved_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id resolves through huggingface_hub's real cache layout (offline here: no hub): the snapshot's
    commit becomes `base_model.revision`, its files are hashed."""
    from llmops.modeling.base import hub_snapshot

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_cache = tmp_path / "hub" / "models--org--tiny"
    _checkpoint(repo_cache / "snapshots" / commit)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    path = hub_snapshot("org/tiny")
    assert path.name == commit
    tags = verify_base_model(path)
    assert tags["base_model.revision"] == commit and tags["base_model.sha256"] == weights_digest(path)
    with pytest.raises(ModelError, match="cannot fetch base model 'org/missing'"):
        hub_snapshot("org/missing")


def test_collect_lineage(settings: Settings, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (repo / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  split:\n    cmd: x\n    outs:\n    - path: data/splits/train.jsonl\n"
        "      hash: md5\n      md5: 0123456789abcdef0123456789abcdef\n      size: 3\n")
    _git(repo, "add", "dvc.lock")
    _git(repo, "commit", "-qm", "lock")
    params = settings.params()
    local = settings.model_copy(update={"project_dir": repo})
    read = {"data.train.md5": "a" * 32, "data.train.dvc": "untracked", "base_model.sha256": "f" * 64,
            "train.precision": "bf16", "host.cpu": "AMD EPYC", "host.isa": "avx2+avx512f+avx512_bf16",
            "format": "peft-lora-safetensors", "test.perplexity": 3.5}  # artifact metadata: only lineage kept
    tags = collect_lineage(local, params, kfp_run_id="kfp-7", mlflow_run_id="abc123",
                           base_model_id="smollm2-135m-instruct", base_model_sha256="f" * 64, step_lineage=read)
    assert tags == {
        "git.commit": _git(repo, "rev-parse", "HEAD").strip(),  # dvc.lock's md5s are not lineage: what was read is
        "data.train.md5": "a" * 32,
        "data.train.dvc": "untracked",
        "train.precision": "bf16",  # how and where train ran: two runs on different hosts are told apart
        "host.cpu": "AMD EPYC",
        "host.isa": "avx2+avx512f+avx512_bf16",
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
    with pytest.raises(ModelError, match="changed between training"):
        collect_lineage(local, params, kfp_run_id=None, mlflow_run_id=None, base_model_id="b",
                        base_model_sha256="e" * 64, step_lineage=read)
