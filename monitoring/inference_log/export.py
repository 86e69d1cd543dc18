"""`llmops log export`: feedback on logged answers -> a validated training dataset (optionally a DVC version).

Only feedback a reviewer ACCEPTED (`llmops review`, monitoring/review) is read: `reviewed` is the gate every
export goes through, and an edit's correction/rating stand in for the user's. `--kind preference` writes DPO pairs
instead (preferences.py, its own GX suite, inference_log.preference_dir). Every record then passes
`before_writing` (the one place for PII scrubbing) before validation and writing.

Which logged requests become records (the rule, in order):
1. only answered requests (status 200) with accepted feedback; the LATEST accepted feedback on a request decides;
2. a correction (non-null) is the target: `output` = the correction, whatever the rating;
3. without a correction, a request rated good (1) keeps its logged answer; -1 / 0 / comment-only are left out;
4. the prompt must be what training formats: ONE user turn (chat / Responses messages with a single `user`
   message and nothing else) or a completion prompt string; system prompts, multi-turn chats, token-id
   prompts and forced tool calls are left out (counted in `skipped`);
5. the same prompt answered twice: the later request wins (the source merge keys prompts the same way).

Records are in the project's format (llmops/data/records.py: `instruction` = the user text, `input` = "",
`source` = "feedback", `id` = the content hash), validated with the records GX suite (min_rows =
params `inference_log.export_min_rows`) BEFORE anything is written; an invalid export (an empty correction,
an over-long answer...) is refused and writes nothing. With `dvc=True` it lands in the folder of the
`feedback` entry of params.yaml `data.sources` as `<name>.jsonl`, tracked by `dvc add` (and pushed).
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmops.errors import DataError, LlmopsError
from llmops.params import Params
from llmops.settings import Settings
from monitoring.inference_log.datasets import SOURCE, feedback_dir, preference_dir, user_text
from monitoring.inference_log.log import InferenceLog
from monitoring.inference_log.store import LoggedRequest

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ExportRefused(DataError):
    """The exported records break the records suite: nothing was written."""

    def __init__(self, cause: str, fix: str, validation: dict[str, Any]) -> None:
        super().__init__(cause, fix)
        self.validation = validation


@dataclass
class ExportResult:
    rows: int
    skipped: dict[str, int]
    since: float
    until: float
    path: str | None = None
    dvc_file: str | None = None
    md5: str | None = None
    pushed: bool = False
    validation: dict[str, Any] = field(default_factory=dict)
    privacy: dict[str, Any] = field(default_factory=dict)  # scrub counts per kind, repeats dropped (privacy.py)
    manifest: str | None = None  # <dataset>.manifest.json: the request ids the records came from


def feedback_records(requests: list[LoggedRequest]) -> tuple[list[dict[str, str]], dict[str, int]]:
    """The records the rule above keeps (oldest first, one per prompt) and why the others were skipped."""
    from llmops.data.text import group_key, record_id

    skipped: Counter[str] = Counter()
    by_prompt: dict[str, dict[str, str]] = {}
    for req in sorted(requests, key=lambda r: (r.time, r.request_id)):
        if not req.feedback:
            continue
        if req.status != 200:
            skipped["not answered (status != 200)"] += 1
            continue
        if req.correction is not None:
            output = req.correction
        elif req.rating == 1:
            output = req.response
        else:
            skipped["no correction and not rated good"] += 1
            continue
        instruction, why = user_text(req)
        if instruction is None:
            skipped[why or "unusable prompt"] += 1
            continue
        rec = {"id": "", "instruction": instruction, "input": "", "output": output, "source": SOURCE}
        rec["id"] = record_id(rec)
        key = group_key(instruction, "")
        if key in by_prompt:
            skipped["same prompt answered again later"] += 1
            del by_prompt[key]  # re-insert: dict order stays the order of the request that won
        by_prompt[key] = rec
    return list(by_prompt.values()), dict(skipped)



KINDS = ("sft", "preference")
_EMPTY = {"sft": "no accepted feedback-corrected or positively rated answers in that window",
          "preference": "no accepted correction or opposite good/bad ratings on one prompt in that window"}


def reviewed(log: InferenceLog, since: float, until: float) -> tuple[list[LoggedRequest], int]:
    """THE REVIEW GATE: the window's requests with only the feedback a reviewer ACCEPTED (`llmops review`; an
    edit's values in place of the user's), and how many had feedback but none accepted. Every export reads the
    log through here, so an unreviewed or rejected correction never reaches a dataset."""
    from monitoring.review.queue import accepted_only

    return accepted_only(log.store, log.query(since, until))


def before_writing(records: list[dict[str, Any]], kind: str, requests: list[LoggedRequest], settings: Settings,
                   params: Params) -> tuple[list[dict[str, Any]], Any]:
    """The one place every exported record passes after the review gate and before it is validated and written
    (both kinds): PII scrubbed, repeats of training data dropped (privacy.py `prepare`)."""
    from monitoring.inference_log.privacy import prepare

    return prepare(records, kind, requests, settings, params)


def export_feedback(log: InferenceLog, settings: Settings, params: Params, *, since: float,
                    until: float | None = None, dvc: bool = False, out: Path | None = None, name: str | None = None,
                    push: bool = True, report_dir: Path | None = None, data_docs: bool = True,
                    kind: str = "sft") -> ExportResult:
    """Gate, collect, validate, then write (to `out`, or as a DVC-tracked dataset): `kind` "sft" = records for
    the `feedback` source by the rule above, "preference" = pairs (preferences.py) in inference_log.preference_dir."""
    if kind not in KINDS:
        raise LlmopsError(f"unknown export kind {kind!r}", "use --kind sft or --kind preference")
    if dvc == (out is not None):
        raise LlmopsError("say where the export goes", "pass --dvc (a new dataset version) or --out FILE, not both")
    until = dt.datetime.now(dt.UTC).timestamp() if until is None else until
    prefix = "feedback" if kind == "sft" else "preferences"
    name = name or f"{prefix}-" + dt.datetime.fromtimestamp(until, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    if not _NAME.match(name):
        raise LlmopsError(f"invalid dataset name {name!r}", "use letters, digits, '.', '_' or '-' (at most 64)")
    dest = None
    if dvc:
        folder = feedback_dir(settings, params) if kind == "sft" else preference_dir(settings, params)
        dest = folder / f"{name}.jsonl"
        if dest.exists() or dest.with_name(dest.name + ".dvc").exists():
            raise LlmopsError(f"an export named {name!r} already exists ({dest})", "pass another --name")
    requests, held_back = reviewed(log, since, until)
    records, skipped = _collect(kind, requests)
    if held_back:
        skipped["feedback not accepted in review (pending or rejected)"] = held_back
    records, prepared = before_writing(records, kind, requests, settings, params)
    if prepared.repeats_dropped:
        from monitoring.inference_log.privacy import REPEATS

        skipped[REPEATS] = prepared.repeats_dropped
    result = ExportResult(rows=len(records), skipped=skipped, since=since, until=until, privacy=prepared.summary())
    if not records:
        fix = "review the feedback (`llmops review`), collect more with POST /v1/feedback, or widen --since/--until"
        raise DataError(_EMPTY[kind] + (f" (skipped: {skipped})" if skipped else ""), fix)
    checked = _check(kind, records, name, settings, params, report_dir, data_docs)
    result.validation = checked.to_dict()
    if not checked.success:
        suite = "records" if kind == "sft" else "preferences"
        raise ExportRefused(f"the export breaks {len(checked.failures)} expectation(s) of the {suite} suite: "
                            "nothing was written",
                            "edit or reject the bad feedback in `llmops review` (e.g. an empty correction) and "
                            "export again", checked.to_dict())
    write = _writer(kind)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".part")
        write(records, tmp)
        tmp.replace(out)
        result.path = str(out)
        result.manifest = str(_manifest(out, settings, name, kind, result, prepared))
        return result
    assert dest is not None
    _track(dest, records, settings, push, result, write)
    result.manifest = str(_manifest(dest, settings, name, kind, result, prepared))
    return result


def _manifest(dataset: Path, settings: Settings, name: str, kind: str, result: ExportResult, prepared: Any) -> Path:
    from monitoring.inference_log.privacy import write_manifest

    return write_manifest(dataset, settings, name=name, kind=kind, result=result, prepared=prepared)


def _collect(kind: str, requests: list[LoggedRequest]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    if kind == "sft":
        return feedback_records(requests)
    from monitoring.inference_log.preferences import preference_records

    return preference_records(requests)


def _check(kind: str, records: list[dict[str, Any]], name: str, settings: Settings, params: Params,
           report_dir: Path | None, data_docs: bool) -> Any:
    """The kind's GX suite (records.json / preferences.json), min_rows = inference_log.export_min_rows."""
    import pandas as pd

    from llmops.data.records import COLUMNS
    from llmops.data.validate import tokenizer_file, validate_frames, validate_with_suite

    checked_params = _with_min_rows(params, params.inference_log.export_min_rows)
    if kind == "sft":
        frame = pd.DataFrame(records, columns=list(COLUMNS))
        return validate_frames({name: frame}, settings, checked_params, report_dir=report_dir, data_docs=data_docs)
    from monitoring.inference_log.preferences import SUITE, preference_frame

    frame = preference_frame(records, tokenizer_file(settings, params))
    return validate_with_suite({name: frame}, SUITE, settings, checked_params, report_dir=report_dir,
                               data_docs=data_docs)


def _writer(kind: str) -> Callable[[list[dict[str, Any]], Path], Any]:
    from llmops.data.records import write_jsonl

    if kind == "sft":
        return write_jsonl
    from monitoring.inference_log.preferences import write_preferences

    return write_preferences


def _with_min_rows(params: Params, min_rows: int) -> Params:
    data = params.data.model_copy(update={"limits": params.data.limits.model_copy(update={"min_rows": min_rows})})
    return params.model_copy(update={"data": data})


def _track(dest: Path, records: list[dict[str, Any]], settings: Settings, push: bool, result: ExportResult,
           write: Callable[[list[dict[str, Any]], Path], Any]) -> None:
    """Write `dest`, `dvc add` it (put back exactly what was there if that fails), push it."""
    from llmops.data import dvc as dvcops

    dvc_file, gitignore = dest.with_name(dest.name + ".dvc"), dest.parent / ".gitignore"
    existed = {p: p.read_bytes() for p in (gitignore,) if p.is_file()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    write(records, tmp)
    tmp.replace(dest)
    try:
        dvcops.add(dest, settings=settings, repo_dir=settings.project_dir)
    except LlmopsError:
        for p in (dest, dvc_file, gitignore):
            if p in existed:
                p.write_bytes(existed[p])
            else:
                p.unlink(missing_ok=True)
        raise
    if push:  # tracked already; a failed push is reported and can be retried with `dvc push`
        dvcops.push([str(dvc_file)], settings=settings, repo_dir=settings.project_dir)
    rel = dest.relative_to(settings.project_dir).as_posix() if dest.is_relative_to(settings.project_dir) else str(dest)
    result.path, result.dvc_file, result.pushed = rel, rel + ".dvc", push
    result.md5 = dvcops.data_hashes(settings.project_dir).get(rel)
