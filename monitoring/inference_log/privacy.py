"""What `llmops log export` does to records before they are written, and how a person's data is erased.

Before writing (export.py `before_writing`, every kind, always):
1. PII is scrubbed from every text field (llmops.privacy.scrub_record: `<EMAIL>`, `<SECRET>`...), counted per kind;
   an SFT record's content-hash `id` is recomputed from the scrubbed text;
2. an SFT record that near-duplicates data a run already trains on (params data.sources, MinHash at
   data.dedup.threshold) is dropped and counted: it would only repeat the training data.

Every export writes a manifest beside the dataset (`<name>.jsonl.manifest.json`): its md5, the request ids its
records came from (per SFT record id too), the scrub counts and the drops. `llmops log erase` deletes a person's
requests from the log (and every row naming them) and appends an `erasures` entry to each manifest that held them,
so every dataset version still carrying their data is marked; the erasure itself, with each marked version's md5
and record ids, is recorded in `<state_dir>/erasures.jsonl`, which the merge and every training run check
(llmops/data/erasures.py) before they read a marked version.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmops.data.erasures import ERASURES_LOG, MANIFEST_SUFFIX
from llmops.errors import LlmopsError
from llmops.params import Params
from llmops.settings import Settings
from monitoring.inference_log.store import LoggedRequest

REPEATS = "repeats training data (near-duplicate)"


@dataclass
class Prepared:
    """What before_writing did: per-kind scrub counts, records dropped as repeats, their request ids."""

    scrubbed: dict[str, int] = field(default_factory=dict)
    repeats_dropped: int = 0
    repeat_examples: list[dict[str, Any]] = field(default_factory=list)
    request_ids: list[list[str]] = field(default_factory=list)  # per kept record
    record_ids: list[str | None] = field(default_factory=list)  # per kept record: its content id (SFT)

    def summary(self) -> dict[str, Any]:
        return {"scrubbed": dict(sorted(self.scrubbed.items())), "scrubbed_total": sum(self.scrubbed.values()),
                "repeats_dropped": self.repeats_dropped, "repeat_examples": self.repeat_examples}


def _request_ids(kind: str, records: list[dict[str, Any]], requests: Sequence[LoggedRequest]) -> list[list[str]]:
    """Per record, the logged requests it came from (an SFT record: every request with feedback on its prompt)."""
    if kind != "sft":
        return [list(r.get("request_ids") or []) for r in records]
    from llmops.data.text import group_key
    from monitoring.inference_log.datasets import user_text

    by_key: dict[str, list[str]] = {}
    for req in requests:
        text, _ = user_text(req) if req.feedback else (None, None)
        if text is not None:
            by_key.setdefault(group_key(text, ""), []).append(req.request_id)
    return [sorted(by_key.get(group_key(r["instruction"], r.get("input", "")), [])) for r in records]


def _training_records(settings: Settings, params: Params) -> list[dict[str, Any]]:
    from llmops.data.records import read_jsonl
    from llmops.data.sources import source_files
    from llmops.errors import DataError

    try:
        files = source_files(settings.project_dir, params.data.sources)
    except DataError:
        return []  # nothing to compare with (no sample built yet): nothing is a repeat
    out: list[dict[str, Any]] = []
    for _, _, path in files:
        out += read_jsonl(path).to_dict("records")
    return out


def prepare(records: list[dict[str, Any]], kind: str, requests: Sequence[LoggedRequest], settings: Settings,
            params: Params) -> tuple[list[dict[str, Any]], Prepared]:
    """Scrub, then (SFT) drop repeats of training data; the records kept and what was done."""
    from llmops.privacy import scrub_record

    done = Prepared()
    ids = _request_ids(kind, records, requests)
    counts: Counter[str] = Counter()
    scrubbed = []
    for rec in records:
        clean, found = scrub_record(rec, params)
        counts.update(found)
        scrubbed.append(clean)
    done.scrubbed = dict(counts)
    if kind == "sft":
        from llmops.data.dedup import repeats
        from llmops.data.text import record_id

        for rec in scrubbed:
            rec["id"] = record_id(rec)
        dropped = repeats(scrubbed, _training_records(settings, params), params.data.dedup)
        done.repeats_dropped = len(dropped)
        done.repeat_examples = [{"id": scrubbed[i]["id"], "repeats": ref, "similarity": sim}
                                for i, ref, sim in dropped[:5]]
        gone = {i for i, _, _ in dropped}
        scrubbed = [r for i, r in enumerate(scrubbed) if i not in gone]
        ids = [x for i, x in enumerate(ids) if i not in gone]
    done.request_ids = ids
    done.record_ids = [r.get("id") for r in scrubbed]
    return scrubbed, done


def write_manifest(dataset: Path, settings: Settings, *, name: str, kind: str, result: Any,
                   prepared: Prepared) -> Path:
    """`<dataset>.manifest.json` (and, for a file outside the project's sources, a line in the state dir's
    export index so `log erase` finds it)."""
    from llmops.modeling.hashing import file_md5

    path = dataset.with_name(dataset.name + MANIFEST_SUFFIX)
    records = {rid: sorted(ids) for rid, ids in zip(prepared.record_ids, prepared.request_ids, strict=False) if rid}
    doc = {"dataset": name, "kind": kind, "path": str(result.path), "md5": result.md5 or file_md5(dataset),
           "rows": result.rows, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "request_ids": sorted({i for ids in prepared.request_ids for i in ids}), "records": records,
           **prepared.summary(), "erasures": []}
    _write_json(path, doc)
    index = settings.ensure_state_dir() / "exports.jsonl"
    with index.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"manifest": str(path.resolve())}) + "\n")
    return path


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def manifests(settings: Settings, params: Params) -> list[Path]:
    """Every export manifest: in the feedback and preference folders, and those the export index lists."""
    from monitoring.inference_log.datasets import feedback_dir, preference_dir

    found: set[Path] = set()
    for where in (feedback_dir, preference_dir):
        try:
            folder = where(settings, params)
        except LlmopsError:  # no `feedback` source declared: its exports, if any, are in the index below
            continue
        if folder.is_dir():
            found.update(p.resolve() for p in folder.glob("*" + MANIFEST_SUFFIX))
    index = settings.ensure_state_dir() / "exports.jsonl"
    if index.is_file():
        for line in index.read_text(encoding="utf-8").splitlines():
            p = Path(json.loads(line)["manifest"])
            if p.is_file():
                found.add(p)
    return sorted(found)


def erase(store: Any, settings: Settings, params: Params, request_ids: Iterable[str] = (),
          session: str | None = None) -> dict[str, Any]:
    """Delete the requests from the log, mark every exported dataset that holds them, record the erasure."""
    wanted = [r for r in request_ids if r]
    if not wanted and not session:
        raise LlmopsError("say whose data to erase", "pass --request-id ID (repeatable) or --session S")
    deleted = store.erase(wanted, session)
    gone = set(deleted) | set(wanted)  # an id pruned from the log may still sit in an export
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    marked = [m for path in manifests(settings, params) if (m := _mark(path, gone, now)) is not None]
    if not deleted and not marked:
        who = ", ".join(wanted) if wanted else f"session {session}"
        raise LlmopsError(f"nothing to erase: no logged request or export holds {who}",
                          "check the id (`llmops log show ID`) or the session name")
    entry = {"time": now, "request_ids": wanted, "session": session, "deleted": deleted, "datasets": marked}
    log_path = settings.ensure_state_dir() / ERASURES_LOG
    with log_path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
    return {**entry, "erasures_log": str(log_path)}


def _mark(manifest: Path, gone: set[str], now: str) -> dict[str, Any] | None:
    """Append an erasure to the manifest when its dataset holds records of `gone`; what was marked (its md5 and the
    ids of the records made from those requests, which training checks against), or None."""
    doc = json.loads(manifest.read_text(encoding="utf-8"))
    held = sorted(gone & set(doc.get("request_ids", [])))
    if not held:
        return None
    record_ids = sorted(rid for rid, ids in (doc.get("records") or {}).items() if gone & set(ids))
    doc.setdefault("erasures", []).append({"time": now, "request_ids": held, "record_ids": record_ids})
    _write_json(manifest, doc)
    md5 = doc.get("md5")
    dataset = manifest.with_name(manifest.name[: -len(MANIFEST_SUFFIX)])
    if md5 is None and dataset.is_file():  # a manifest from before md5s were always recorded
        from llmops.modeling.hashing import file_md5

        md5 = file_md5(dataset)
    return {"dataset": doc["dataset"], "kind": doc["kind"], "path": doc["path"], "md5": md5,
            "manifest": str(manifest), "request_ids": held, "record_ids": record_ids}


class RedactingStore:
    """A LogStore that scrubs PII from prompts and answers before they are written (`monitoring.log.redact`).

    Requests are scrubbed in the writer's thread (write_batch), never on the request path; feedback corrections
    and comments when they are added. The detector is built when the
    store is opened, so the first batch does not wait seconds for it. What was redacted is counted per kind in
    the row's `extra.redacted`. Everything else is the wrapped store's."""

    def __init__(self, store: Any, privacy: Any) -> None:
        from llmops.privacy import find_pii

        self._store, self._privacy = store, privacy
        find_pii("warm-up", privacy)

    def write_batch(self, rows: Sequence[dict[str, Any]]) -> None:
        self._store.write_batch([self._scrubbed(row) for row in rows])

    def add_feedback(self, entry: Any, key_id: str | None = None) -> bool:
        """Corrections and comments are people's words too."""
        from dataclasses import replace

        from llmops.privacy import scrub_text

        texts = {k: scrub_text(v, self._privacy)[0] for k in ("correction", "comment") if (v := getattr(entry, k))}
        return self._store.add_feedback(replace(entry, **texts), key_id)

    def _scrubbed(self, row: dict[str, Any]) -> dict[str, Any]:
        from llmops.privacy import scrub_record

        fields = {"prompt": json.loads(row["prompt"]), "response": row["response"], "error": row.get("error")}
        clean, counts = scrub_record(fields, self._privacy, fields=("prompt", "response", "error"))
        if not counts:
            return row
        extra = {**json.loads(row["extra"] or "{}"), "redacted": counts}
        return {**row, "prompt": json.dumps(clean["prompt"], ensure_ascii=False), "response": clean["response"],
                "error": clean["error"], "extra": json.dumps(extra, ensure_ascii=False)}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
