"""Which dataset versions hold records a person had erased, and the check a training run makes before any work.

`llmops log erase` (monitoring/inference_log/privacy.py) deletes a person's requests from the inference log and
appends to `<state_dir>/erasures.jsonl` every exported dataset version (path, md5) still holding records made from
them, with those records' ids; it also marks the export's manifest beside the dataset. Neither the merge that
builds the splits nor a training run may use such a version. How data is tied to a marked version, surest first:

1. the dataset versions the splits were merged from (`sources.json` beside the splits, believed only when its
   split md5s are those of the files read; or the source md5s the pipeline's validate step attached);
2. the file itself (a DPO run may read a preference export directly): its md5;
3. its records: a preference pair names its request ids (exact). An instruction record's content id is matched
   against the erased records' ids only when 1 cannot say (a copied split): a later export may hold the same
   text from someone else, so with known sources a match there is not a refusal.

Reading is cheap (one stat when nothing was ever erased; md5s and ids of the files otherwise), so it runs first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmops.errors import DataError

ERASURES_LOG = "erasures.jsonl"  # in the state dir: one line per `llmops log erase`
MANIFEST_SUFFIX = ".manifest.json"  # beside every export: `<dataset>.jsonl.manifest.json`


@dataclass(frozen=True)
class Marked:
    """One dataset version that held records of an erasure."""

    time: str
    dataset: str
    kind: str  # sft | preference
    path: str
    md5: str | None
    request_ids: tuple[str, ...]
    record_ids: tuple[str, ...] = ()


@dataclass
class Erasures:
    marked: list[Marked]
    request_ids: set[str]  # every request any erasure named or deleted
    log: Path


def read_erasures(state_dir: Path) -> Erasures | None:
    """What `log erase` recorded in `state_dir`, or None when nothing was ever erased there."""
    path = Path(state_dir) / ERASURES_LOG
    if not path.is_file():
        return None
    marked: list[Marked] = []
    ids: set[str] = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:  # refuse rather than train on what a lost line may have marked
            raise DataError(f"{path}: line {n} is not JSON, so the erasures it records cannot be checked",
                            "repair that line (each is one `llmops log erase`; see the export manifests' erasures)"
                            ) from None
        ids.update(entry.get("request_ids") or [], entry.get("deleted") or [])
        for ds in entry.get("datasets") or []:
            ids.update(ds.get("request_ids") or [])
            marked.append(Marked(entry.get("time", "?"), ds.get("dataset", "?"), ds.get("kind", "sft"),
                                 ds.get("path", "?"), ds.get("md5"), tuple(ds.get("request_ids") or []),
                                 tuple(ds.get("record_ids") or [])))
    return Erasures(marked, ids, path)


def _manifest_marks(project_dir: Path, sources: Iterable[Mapping[str, Any]]) -> list[Marked]:
    """Marks in the manifests beside the source files (a state dir other than the one that erased)."""
    out = []
    for src in sources:
        path = Path(src.get("path") or "")
        path = path if path.is_absolute() else project_dir / path
        manifest = path.with_name(path.name + MANIFEST_SUFFIX)
        if not src.get("path") or not manifest.is_file():
            continue
        doc = json.loads(manifest.read_text(encoding="utf-8"))
        for e in doc.get("erasures") or []:
            out.append(Marked(e.get("time", "?"), doc.get("dataset", "?"), doc.get("kind", "sft"), str(path),
                              doc.get("md5"), tuple(e.get("request_ids") or []), tuple(e.get("record_ids") or [])))
    return out


def source_md5s_from_tags(tags: Mapping[str, Any]) -> dict[str, str] | None:
    """{entry: md5} from the `data.source.<entry>.md5` tags validate_data attaches to the train split (None: none)."""
    found = {k[len("data.source."):-len(".md5")]: str(v) for k, v in tags.items()
             if k.startswith("data.source.") and k.endswith(".md5")}
    return found or None


def _fix(m: Marked, log: Path | None) -> str:
    again = "llmops log export --kind preference --dvc" if m.kind == "preference" else "llmops log export --dvc"
    return (f"delete that version ({m.path} and its .dvc file), export again (`{again}`: the erased requests are "
            "gone from the log), rebuild the splits (`dvc repro split`, i.e. `llmops data build`) and train again"
            + (f"; the erasures are recorded in {log}" if log else ""))


def _refuse(lead: str, m: Marked, log: Path | None) -> DataError:
    shown = ", ".join(m.request_ids[:3]) + (", ..." if len(m.request_ids) > 3 else "")
    return DataError(f"{lead} dataset {m.dataset!r} ({m.path}, md5 {(m.md5 or '?')[:12]}), marked by "
                     f"`llmops log erase` at {m.time} as holding records of {len(m.request_ids)} erased request(s) "
                     f"({shown})", _fix(m, log))


def check_sources_not_erased(state_dir: Path, project_dir: Path, sources: Iterable[Mapping[str, Any]],
                             what: str = "the merge") -> None:
    """Refuse when a source (`{entry, path, md5}` as in sources.json) is a dataset version an erasure marked."""
    sources = list(sources)
    found = read_erasures(state_dir)
    marks = (found.marked if found else []) + _manifest_marks(Path(project_dir), sources)
    by_md5 = {m.md5: m for m in marks if m.md5}
    for src in sources:
        if (m := by_md5.get(src.get("md5"))) is not None:
            name = src.get("entry") or src.get("path")
            raise _refuse(f"{what} reads {name}, which is", m, found.log if found else None)


def _listed_sources(files: Mapping[str, Path], md5s: Mapping[str, str],
                    sources: Mapping[str, str] | None) -> list[dict[str, Any]] | None:
    """The dataset versions the files were merged from: given, or sources.json beside them when it describes
    exactly these files; None when unknown."""
    if sources is not None:
        return [{"entry": entry, "md5": md5} for entry, md5 in sources.items()]
    from llmops.data.splits_manifest import read_manifest

    manifest = read_manifest(next(iter(files.values())).parent)
    if manifest is None:
        return None
    splits = manifest.get("splits") or {}
    if any((splits.get(split) or {}).get("md5") != md5 for split, md5 in md5s.items()):
        return None
    return list(manifest.get("sources") or [])


def _check_records(split: str, path: Path, found: Erasures, by_record: Mapping[str, Marked]) -> None:
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line) if line.strip() else None
        except ValueError:
            continue  # not JSON: the reader that follows names the line
        held = set(rec.get("request_ids") or []) & found.request_ids if isinstance(rec, dict) else set()
        mark = by_record.get(rec.get("id")) if isinstance(rec, dict) else None
        if held:
            mark = next((m for m in found.marked if held & set(m.request_ids)), None) or Marked(
                "?", "?", "preference", str(path), None, tuple(sorted(held)))
        if mark is not None:
            raise _refuse(f"the {split} data ({path}) holds records from", mark, found.log)


def check_training_data(state_dir: Path, project_dir: Path, files: Mapping[str, Path],
                        sources: Mapping[str, str] | None = None) -> None:
    """Refuse (DataError naming the version, the erasure and the fix) to train on `files` ({split: path}) when
    they hold records a person had erased; `sources`: {entry: md5} of the datasets they were merged from."""
    from llmops.modeling.hashing import file_md5

    files = {split: Path(p) for split, p in files.items() if Path(p).is_file()}  # a missing one: the reader says
    if not files:
        return
    found = read_erasures(state_dir)
    md5s = {split: file_md5(p) for split, p in files.items()}
    listed = _listed_sources(files, md5s, sources)
    if listed is not None:
        check_sources_not_erased(state_dir, project_dir, listed, what="this training run")
    if found is None:
        return
    by_md5 = {m.md5: m for m in found.marked if m.md5}
    for split, path in files.items():
        if (m := by_md5.get(md5s[split])) is not None:
            raise _refuse(f"the {split} data ({path}) is", m, found.log)
    by_record = {} if listed is not None else {rid: m for m in found.marked for rid in m.record_ids}
    for split, path in files.items():
        _check_records(split, path, found, by_record)
