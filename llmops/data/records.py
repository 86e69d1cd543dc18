"""The instruction-record schema and its JSONL reader/writer.

Every dataset in the project (the built sample, user uploads, splits) is JSON Lines with exactly the
columns in `COLUMNS`, all strings. Reading is strict and every way a file can be wrong becomes a
`DataError` with a one-line cause (which line, which column), because a traceback from deep inside
pandas tells a user nothing. Writing is byte-deterministic (fixed key order, UTF-8 without escapes,
`\\n` endings) so the same records always hash to the same DVC md5 on every machine.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from llmops.errors import DataError

COLUMNS: tuple[str, ...] = ("id", "instruction", "input", "output", "source")
"""Record columns in their canonical (written) order. `input` may be empty; the others may not."""


def _shorten(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_no = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}: invalid UTF-8 at line {line_no} (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})",
            "re-save the file as UTF-8",
        ) from None


def _parse_line(line: str, line_no: int, path: Path) -> dict[str, str]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: line {line_no} is not valid JSON ({exc.msg} at column {exc.colno})",
            "each line must be one JSON object, e.g. "
            '{"id": "...", "instruction": "...", "input": "", "output": "...", "source": "..."}',
        ) from None
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: line {line_no} is a JSON {type(obj).__name__}, not an object",
            "each line must be one JSON object with the columns " + ", ".join(COLUMNS),
        )
    missing = [c for c in COLUMNS if c not in obj]
    extra = sorted(k for k in obj if k not in COLUMNS)
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing column(s) " + ", ".join(missing))
        if extra:
            parts.append("unexpected column(s) " + ", ".join(extra))
        raise DataError(
            f"{path}: line {line_no} has " + " and ".join(parts),
            "every record needs exactly the columns " + ", ".join(COLUMNS),
        )
    for column in COLUMNS:
        value = obj[column]
        if not isinstance(value, str):
            raise DataError(
                f"{path}: line {line_no} column {column!r} is {type(value).__name__} "
                f"{_shorten(value)}, not a string",
                "every column holds a string (use \"\" for an empty input)",
            )
        _check_encodable(value, f"{path}: line {line_no} column {column!r}")
    return obj


def _check_encodable(value: str, where: str) -> None:
    """A JSON escape like \\ud800 decodes to a lone surrogate: not Unicode text, cannot be written as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start]
        raise DataError(f"{where} has an unpaired surrogate \\u{ord(bad):04x}, which is not valid UTF-8 text",
                        "remove the stray \\ud800-\\udfff escape (emoji need both halves of the pair)") from None


def check_encodable(df: Any, name: str) -> None:
    """Raise DataError if any string cell of a DataFrame cannot be encoded as UTF-8 (lone surrogates)."""
    for column in df.columns:
        for pos, value in enumerate(df[column].tolist()):
            if isinstance(value, str):
                _check_encodable(value, f"{name}: record {pos + 1} column {column!r}")


def read_jsonl(path: Path | str) -> Any:
    """Read a JSONL file of records into a pandas DataFrame with exactly `COLUMNS`, in file order.

    Blank lines are skipped. Raises `DataError` for a missing file, an empty file, invalid UTF-8 (raw
    bytes, or a JSON escape of a lone surrogate), a line that is not JSON or not an object, missing or
    unexpected columns and non-string values.
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file", "check the path (datasets are JSON Lines files)")
    if not path.is_file():
        raise DataError(f"{path}: not a file", "pass a .jsonl file, not a directory")
    text = _decode(path.read_bytes(), path)
    rows: list[dict[str, str]] = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            rows.append(_parse_line(line, line_no, path))
    if not rows:
        raise DataError(f"{path}: file is empty (no records)", "add at least one JSON object per line")
    return pd.DataFrame.from_records(rows, columns=list(COLUMNS)).astype(object)


def dumps_record(record: Mapping[str, Any]) -> str:
    """One record as its canonical JSON line (no newline): schema key order, UTF-8 kept as is."""
    return json.dumps({c: record[c] for c in COLUMNS}, ensure_ascii=False, separators=(", ", ": "))


def write_jsonl(records: Iterable[Mapping[str, Any]], path: Path | str) -> int:
    """Write records (dicts or DataFrame rows as dicts) byte-deterministically; returns the row count.

    Written to a temporary sibling and renamed, so a crash never leaves a half-written dataset
    that DVC would then hash.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(records, "to_dict"):
        records = records.to_dict(orient="records")  # type: ignore[union-attr]
    lines = [dumps_record(r) for r in records]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for line in lines:
            fh.write(line + "\n")
    tmp.replace(path)
    return len(lines)
