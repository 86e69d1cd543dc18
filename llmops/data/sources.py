"""Merge the datasets a run trains on (params.yaml `data.sources`) and split them, deterministically, with no leakage.

A source is a JSONL file or a folder whose every `*.jsonl` is one dataset (the datasets `llmops data add` put in
`data/user/`, the feedback exports `llmops log export --dvc` puts in `data/feedback/`). The merge:

1. reads every dataset in declared order (files of a folder sorted by name);
2. gives each normalised prompt (`text.group_key`) to ONE dataset, the last that has it: a feedback correction
   or a user's own answer replaces the sample's records for that prompt instead of training on both;
3. drops exact duplicates (same instruction, input, output);
4. splits by `split.assign_split` (a seeded hash of the prompt), so a prompt never straddles two splits and
   adding a dataset never moves another record between splits.

With only the sample source this gives byte-for-byte the splits `split.py` gives. Besides the splits it writes
`sources.json`: every dataset read (path, md5, rows, rows kept) and every split written (rows, md5). Lineage
(`llmops.lineage.source_lineage`) reads it to name a model's sources and their DVC versions.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmops.data.records import read_jsonl, write_jsonl
from llmops.data.split import SPLITS, split_frame
from llmops.data.splits_manifest import MANIFEST
from llmops.data.text import group_key
from llmops.errors import DataError
from llmops.params import Params, SourceParams

SPLIT_STAGE = "split"  # the dvc.yaml stage that runs this module


@dataclass(frozen=True)
class SourceFile:
    """One dataset read: `entry` names it in lineage (`sample`, `user/mine`, `feedback/2026-11-23`)."""

    entry: str
    source: str
    path: str
    md5: str
    rows: int
    owned: int = 0  # records whose prompt no later dataset has
    kept: int = 0  # of those, the ones left after exact duplicates are dropped: what the splits hold


def _resolve(project_dir: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else project_dir / p


def _rel(project_dir: Path, path: Path) -> str:
    try:
        return path.resolve().relative_to(project_dir.resolve()).as_posix()
    except ValueError:
        return str(path)


def source_files(project_dir: Path, sources: list[SourceParams]) -> list[tuple[str, SourceParams, Path]]:
    """(entry, source, file) for every dataset the sources name, in merge order. A missing file is an error;
    a folder may be empty (no datasets added yet, no feedback exported yet)."""
    names = [s.name for s in sources]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise DataError(f"data.sources names {', '.join(dupes)} more than once", "give every source its own name")
    found: list[tuple[str, SourceParams, Path]] = []
    for src in sources:
        root = _resolve(project_dir, src.path)
        if root.is_dir():
            found += [(f"{src.name}/{f.stem}", src, f) for f in sorted(root.glob("*.jsonl"))]
        elif root.is_file():
            found.append((src.name, src, root))
        else:
            raise DataError(f"data source {src.name!r}: {root} does not exist",
                            "fix data.sources in params.yaml, or create it (`llmops data build` builds the sample; "
                            "a folder source may be empty but must exist)")
    if not found:
        raise DataError("data.sources name no dataset at all (every folder is empty)",
                        "add one with `llmops data add FILE` or list the sample in data.sources")
    return found


def merge(project_dir: Path, sources: list[SourceParams]) -> tuple[Any, list[SourceFile]]:
    """The merged records (one DataFrame, declared order kept, exact duplicates dropped) and what was read from
    each dataset (`kept`: its records in the merge)."""
    import pandas as pd

    from llmops.modeling.hashing import file_md5

    files = source_files(project_dir, sources)
    frames = [read_jsonl(path) for _, _, path in files]
    # the last dataset that has a prompt owns it: earlier datasets' records for that prompt are dropped
    owner: dict[str, int] = {}
    keys = []
    for i, df in enumerate(frames):
        k = [group_key(a, b) for a, b in zip(df["instruction"], df["input"], strict=True)]
        keys.append(k)
        owner.update(dict.fromkeys(k, i))
    owned = [df[[owner[k] == i for k in keys[i]]].assign(_file=i) for i, df in enumerate(frames)]
    merged = pd.concat(owned, ignore_index=True).drop_duplicates(subset=["instruction", "input", "output"])
    kept = merged["_file"].value_counts()
    read = [SourceFile(entry=entry, source=src.name, path=_rel(project_dir, path), md5=file_md5(path),
                       rows=len(df), owned=len(owned[i]), kept=int(kept.get(i, 0)))
            for i, ((entry, src, path), df) in enumerate(zip(files, frames, strict=True))]
    return merged.drop(columns="_file").reset_index(drop=True), read


def merge_and_split(project_dir: Path, params: Params, out_dir: Path,
                    sources: list[SourceParams] | None = None) -> dict[str, Any]:
    """Merge `sources` (default: params `data.sources`), split, write `<out_dir>/{train,validation,test}.jsonl`
    and `<out_dir>/sources.json`; returns the manifest. Files are replaced only after all were written."""
    from llmops.modeling.hashing import file_md5

    merged, read = merge(project_dir, list(sources if sources is not None else params.data.sources))
    from llmops.data.erasures import check_sources_not_erased
    from llmops.settings import get_settings

    # an export `llmops log erase` marked never reaches the splits (llmops/data/erasures.py)
    check_sources_not_erased(get_settings().state_dir, project_dir, [asdict(f) for f in read])
    parts = split_frame(merged, params.data.split, params.data.dedup)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".merge-") as tmp:
        written = {}
        for name in SPLITS:
            staged = Path(tmp) / f"{name}.jsonl"
            written[name] = {"rows": write_jsonl(parts[name], staged), "md5": file_md5(staged)}
        manifest = {
            "sources": [asdict(f) for f in read],
            "merged_rows": len(merged),
            "replaced_by_a_later_source": sum(f.rows - f.owned for f in read),
            "exact_duplicates_dropped": sum(f.owned - f.kept for f in read),
            "split": params.data.split.model_dump(),
            "splits": written,
        }
        for name in SPLITS:
            (Path(tmp) / f"{name}.jsonl").replace(out_dir / f"{name}.jsonl")
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def check_stage_deps(project_dir: Path, sources: list[SourceParams]) -> None:
    """Every source must lie under a dependency of dvc.yaml's split stage, or `dvc repro` would not rerun the
    split when that source changes (a silently stale training set)."""
    import yaml

    dvc_yaml = project_dir / "dvc.yaml"
    if not dvc_yaml.is_file():
        return
    stage = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}).get(SPLIT_STAGE) or {}
    deps = [_resolve(project_dir, d).resolve() for d in stage.get("deps", []) if isinstance(d, str)]
    for src in sources:
        path = _resolve(project_dir, src.path).resolve()
        if not any(path == d or d in path.parents for d in deps):
            raise DataError(f"data source {src.name!r} ({src.path}) is not a dependency of the `{SPLIT_STAGE}` "
                            "stage in dvc.yaml: `dvc repro` would not rebuild the splits when it changes",
                            f"add {src.path} to stages.{SPLIT_STAGE}.deps in dvc.yaml (datasets added with "
                            "`llmops data add` go to data/user/, which already is one)")


def user_dataset_splits(settings: Any, params: Params, names: list[str]) -> Path:
    """Split datasets added with `llmops data add` (data/user/NAME.jsonl) on their own, for `llmops run finetune
    --dataset NAME`: the same merge and split as the DVC stage, written under the state dir in a folder named by
    the datasets' md5s and the split params (so a rerun on the same data reuses it and lineage still names each
    dataset and its DVC version through sources.json)."""
    import hashlib

    user_dir = settings.project_dir / "data" / "user"
    sources = []
    for name in dict.fromkeys(names):
        path = user_dir / f"{name}.jsonl"
        if not path.is_file():
            added = sorted(p.stem for p in user_dir.glob("*.jsonl")) if user_dir.is_dir() else []
            raise DataError(f"no dataset named {name!r} ({_rel(settings.project_dir, path)} does not exist)",
                            "add it with `llmops data add FILE --name NAME`"
                            + (f"; added so far: {', '.join(added)}" if added else ""))
        sources.append(SourceParams(name=f"user/{name}", path=str(path)))
    from llmops.modeling.hashing import file_md5

    key = hashlib.sha256(json.dumps([[s.name, file_md5(Path(s.path))] for s in sources]
                                    + [params.data.split.model_dump()], sort_keys=True).encode()).hexdigest()[:12]
    out = settings.state_dir / "datasets" / f"{'+'.join(dict.fromkeys(names))}-{key}"
    if not (out / MANIFEST).is_file():
        merge_and_split(settings.project_dir, params, out, sources)
    return out
