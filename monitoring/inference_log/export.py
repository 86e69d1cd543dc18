"""`llmops log export`: feedback on logged answers -> a validated training dataset (optionally a DVC version).

Which logged requests become records (the rule, in order):
1. only answered requests (status 200) with feedback; the LATEST feedback on a request decides;
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmops.errors import DataError, LlmopsError
from llmops.params import Params
from llmops.settings import Settings
from monitoring.inference_log.log import InferenceLog
from monitoring.inference_log.store import LoggedRequest

SOURCE = "feedback"  # the data.sources entry exports go to, and every exported record's `source`
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


def _user_text(req: LoggedRequest) -> tuple[str | None, str | None]:
    """(instruction, None) or (None, why it cannot be a training record)."""
    if req.extra.get("tool"):
        return None, "tool call"
    prompt = req.prompt
    if isinstance(prompt, str):
        return (prompt.strip(), None) if prompt.strip() else (None, "empty prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        if len(prompt) == 1 and prompt[0].get("role") == "user" and isinstance(prompt[0].get("content"), str):
            text = prompt[0]["content"].strip()
            return (text, None) if text else (None, "empty prompt")
        return None, "not one user turn (system prompt or multi-turn)"
    return None, "token-id prompt"


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
        instruction, why = _user_text(req)
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


def feedback_dir(settings: Settings, params: Params) -> Path:
    """The folder of the `feedback` entry of data.sources (H7's data sources declare it)."""
    for src in params.data.sources:
        if src.name == SOURCE:
            path = Path(src.path)
            path = path if path.is_absolute() else settings.project_dir / path
            if path.suffix == ".jsonl":
                raise LlmopsError(f"data.sources entry {SOURCE!r} is a file ({src.path}); exports need a folder",
                                  f"declare it as a folder: - {{name: {SOURCE}, path: data/feedback}}")
            return path
    raise LlmopsError(f"params.yaml data.sources has no {SOURCE!r} entry, so a retraining run would not read "
                      "the export", f"add `- {{name: {SOURCE}, path: data/feedback}}` to data.sources")


def export_feedback(log: InferenceLog, settings: Settings, params: Params, *, since: float,
                    until: float | None = None, dvc: bool = False, out: Path | None = None, name: str | None = None,
                    push: bool = True, report_dir: Path | None = None, data_docs: bool = True) -> ExportResult:
    """Collect, validate, then write (to `out`, or as a DVC-tracked dataset in the feedback source folder)."""
    import pandas as pd

    from llmops.data.records import COLUMNS, write_jsonl
    from llmops.data.validate import validate_frames

    if dvc == (out is not None):
        raise LlmopsError("say where the export goes", "pass --dvc (a new dataset version) or --out FILE, not both")
    until = dt.datetime.now(dt.UTC).timestamp() if until is None else until
    name = name or "feedback-" + dt.datetime.fromtimestamp(until, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    if not _NAME.match(name):
        raise LlmopsError(f"invalid dataset name {name!r}", "use letters, digits, '.', '_' or '-' (at most 64)")
    dest = None
    if dvc:
        dest = feedback_dir(settings, params) / f"{name}.jsonl"
        if dest.exists() or dest.with_name(dest.name + ".dvc").exists():
            raise LlmopsError(f"an export named {name!r} already exists ({dest})", "pass another --name")
    records, skipped = feedback_records(log.query(since, until))
    result = ExportResult(rows=len(records), skipped=skipped, since=since, until=until)
    if not records:
        raise DataError("no feedback-corrected or positively rated answers in that window"
                        + (f" (skipped: {skipped})" if skipped else ""),
                        "collect feedback with POST /v1/feedback, or widen --since/--until")
    frame = pd.DataFrame(records, columns=list(COLUMNS))
    checked = validate_frames({name: frame}, settings, _with_min_rows(params, params.inference_log.export_min_rows),
                              report_dir=report_dir, data_docs=data_docs)
    result.validation = checked.to_dict()
    if not checked.success:
        raise ExportRefused(f"the export breaks {len(checked.failures)} expectation(s) of the records suite: "
                            "nothing was written",
                            "fix or delete the bad feedback (e.g. an empty correction) and export again",
                            checked.to_dict())
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".part")
        write_jsonl(records, tmp)
        tmp.replace(out)
        result.path = str(out)
        return result
    assert dest is not None
    _track(dest, records, settings, push, result)
    return result


def _with_min_rows(params: Params, min_rows: int) -> Params:
    data = params.data.model_copy(update={"limits": params.data.limits.model_copy(update={"min_rows": min_rows})})
    return params.model_copy(update={"data": data})


def _track(dest: Path, records: list[dict[str, str]], settings: Settings, push: bool, result: ExportResult) -> None:
    """Write `dest`, `dvc add` it (put back exactly what was there if that fails), push it."""
    from llmops.data import dvc as dvcops
    from llmops.data.records import write_jsonl

    dvc_file, gitignore = dest.with_name(dest.name + ".dvc"), dest.parent / ".gitignore"
    existed = {p: p.read_bytes() for p in (gitignore,) if p.is_file()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    write_jsonl(records, tmp)
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
