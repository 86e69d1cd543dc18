"""Lineage: the exact code, data, params and base model a registered version came from.

Every registered model version carries these as tags so anyone can answer "what produced this
champion?" without asking: the git commit (`-dirty` when the working tree had changes, so an
unreproducible build is visible), the md5 of every data file the train and evaluate steps really read
(`data.<split>.md5`) with the DVC-tracked version it matches or `untracked` (`data.<split>.dvc`), the
datasets the splits were merged from (`data.sources`, `data.source.<entry>.*`), the params digest, the pipeline
run ids and the base model's weights digest (hashed when it was trained on
and again at registration: they must agree), and how and where train ran (`train.precision`, `host.cpu`,
`host.isa`, ...: the same params give different numbers on different silicon). Nothing is looked up from what a
file *should* hold.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from llmops.errors import ModelError
from llmops.modeling.hashing import file_md5
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


def data_lineage(project_dir: Path, files: dict[str, Path]) -> dict[str, str]:
    """Tags for the files a step read ({split: path}): `data.<split>.md5` of the bytes read and
    `data.<split>.dvc`, the DVC-tracked version(s) with exactly those bytes as `PATH@MD5` (from dvc.lock and
    `.dvc` files, comma-separated when several match) or `untracked` when none does (a `--data-dir`
    elsewhere, locally edited splits)."""
    from llmops.data.dvc import data_hashes

    tracked = data_hashes(Path(project_dir))
    tags: dict[str, str] = {}
    for split, path in sorted(files.items()):
        md5 = file_md5(Path(path))
        matches = sorted(p for p, m in tracked.items() if m == md5)
        tags[f"data.{split}.md5"] = md5
        tags[f"data.{split}.dvc"] = ",".join(f"{p}@{md5}" for p in matches) or "untracked"
    return tags


def source_lineage(project_dir: Path, data_dir: Path, split_md5: dict[str, str]) -> dict[str, str]:
    """Tags naming the datasets the splits in `data_dir` were merged from (its `sources.json`, written by
    `llmops.data.sources`): `data.sources` (`ENTRY@MD5,...`) and per dataset `data.source.<entry>.md5`,
    `.rows` (kept/read) and `.dvc` (tracked version(s) with those bytes, or `untracked`). The manifest is
    believed only when the split md5s it records are those of the files read (`split_md5`); otherwise, or
    without a manifest, `data.sources` says so and no source is named."""
    from llmops.data.dvc import data_hashes
    from llmops.data.splits_manifest import read_manifest

    manifest = read_manifest(Path(data_dir))
    if manifest is None:
        return {"data.sources": f"{UNKNOWN}: no sources.json beside the splits"}
    recorded = {name: s.get("md5") for name, s in (manifest.get("splits") or {}).items()}
    if any(recorded.get(split) != md5 for split, md5 in split_md5.items()):
        return {"data.sources": f"{UNKNOWN}: the splits differ from those sources.json describes"}
    tracked = data_hashes(Path(project_dir))
    sources = manifest.get("sources") or []
    tags = {"data.sources": ",".join(f"{s['entry']}@{s['md5']}" for s in sources)}
    for s in sources:
        key = f"data.source.{s['entry']}"
        tags[f"{key}.md5"] = s["md5"]
        tags[f"{key}.rows"] = f"{s['kept']}/{s['rows']}"
        tags[f"{key}.dvc"] = ",".join(f"{p}@{m}" for p, m in sorted(tracked.items()) if m == s["md5"]) or "untracked"
    return tags


def collect_lineage(
    settings: Settings,
    params: Params,
    *,
    kfp_run_id: str | None,
    mlflow_run_id: str | None,
    base_model_id: str,
    base_model_sha256: str,
    step_lineage: dict[str, str] | None = None,
) -> dict[str, str]:
    """Tag dict for a model version: `git.commit`, `params.hash`, `pipeline.kfp_run_id`,
    `pipeline.mlflow_run_id`, `base_model.id`, `base_model.sha256`, plus what the steps recorded about the
    inputs they really read (`step_lineage`: `data.*` from train and evaluate, `base_model.*` from train) and
    where and how train ran (`train.precision*`, `host.*`: CPU model, ISA flags, cores, memory bandwidth).
    Run ids that are not known (a run outside KFP) are left out rather than faked; a base model whose
    weights changed since training is an error, not a tag."""
    step_lineage = {k: str(v) for k, v in (step_lineage or {}).items()
                    if k.startswith(("data.", "base_model.", "train.precision", "host."))}
    trained_on = step_lineage.get("base_model.sha256")
    if trained_on is not None and trained_on != base_model_sha256:
        raise ModelError(f"the base model's weights changed between training ({trained_on[:12]}) and "
                         f"registration ({base_model_sha256[:12]})",
                         "do not replace the base checkpoint while a pipeline runs; run the pipeline again")
    tags = {"git.commit": git_commit(settings.project_dir)}
    tags.update(step_lineage)
    tags["params.hash"] = params.digest()
    if kfp_run_id:
        tags["pipeline.kfp_run_id"] = kfp_run_id
    if mlflow_run_id:
        tags["pipeline.mlflow_run_id"] = mlflow_run_id
    tags["base_model.id"] = base_model_id
    tags["base_model.sha256"] = base_model_sha256
    return tags
