"""Lineage: the exact code, data, params and base model a registered version came from.

Every registered model version carries these as tags so anyone can answer "what produced this
champion?" without asking: the git commit (`-dirty` when the working tree had changes, so an
unreproducible build is visible), the DVC md5 of every data output in dvc.lock, the params digest,
the pipeline run ids and the base model's sha256.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import yaml

from llmops.errors import DataError
from llmops.params import Params
from llmops.settings import Settings

UNKNOWN = "unknown"


def _git(project_dir: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(project_dir), *args], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_commit(project_dir: Path) -> str:
    """HEAD's sha, suffixed `-dirty` when tracked files changed or untracked (non-ignored) files exist;
    `unknown` outside a git work tree (or without git, or before the first commit)."""
    sha = _git(project_dir, "rev-parse", "--verify", "HEAD")
    if not sha:
        return UNKNOWN
    status = _git(project_dir, "status", "--porcelain")
    if status is None:
        return UNKNOWN
    return sha.strip() + ("-dirty" if status.strip() else "")


def dvc_hashes(project_dir: Path) -> dict[str, str]:
    """md5 of every stage output recorded in `dvc.lock` (path as written there -> md5); {} without one."""
    lock = Path(project_dir) / "dvc.lock"
    if not lock.is_file():
        return {}
    try:
        doc = yaml.safe_load(lock.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"{lock} is not valid YAML: {str(exc).splitlines()[0]}",
                        "regenerate it with `dvc repro`") from None
    out: dict[str, str] = {}
    stages = doc.get("stages") if isinstance(doc, dict) else None
    for stage in (stages or {}).values():
        for item in (stage or {}).get("outs") or []:
            if isinstance(item, dict) and item.get("path") and item.get("md5"):
                out[str(item["path"])] = str(item["md5"])
    return dict(sorted(out.items()))


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    """Hex md5 of a file's bytes: what DVC 3 records for a file output (`hash: md5`)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def collect_lineage(
    settings: Settings,
    params: Params,
    *,
    kfp_run_id: str | None,
    mlflow_run_id: str | None,
    base_model_id: str,
    base_model_sha256: str,
) -> dict[str, str]:
    """Tag dict for a model version: `git.commit`, `dvc.<path>` per DVC output, `params.hash`,
    `pipeline.kfp_run_id`, `pipeline.mlflow_run_id`, `base_model.id`, `base_model.sha256`.
    Run ids that are not known (a run outside KFP) are left out rather than faked."""
    tags = {"git.commit": git_commit(settings.project_dir)}
    tags.update({f"dvc.{path}": md5 for path, md5 in dvc_hashes(settings.project_dir).items()})
    tags["params.hash"] = params.digest()
    if kfp_run_id:
        tags["pipeline.kfp_run_id"] = kfp_run_id
    if mlflow_run_id:
        tags["pipeline.mlflow_run_id"] = mlflow_run_id
    tags["base_model.id"] = base_model_id
    tags["base_model.sha256"] = base_model_sha256
    return tags
