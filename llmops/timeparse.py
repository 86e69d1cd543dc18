"""One reading of a point in time for every `--since`/`--until`: a duration back from now (`90m`, `24h`, `1w`),
ISO 8601 (naive = UTC) or a unix time, so `log export --since 1w` and `monitor run --since 1w` agree."""

from __future__ import annotations

import datetime as dt
import re

from llmops.errors import LlmopsError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: float | None = None) -> float:
    """Unix time of `text`; a clear error naming the accepted forms otherwise."""
    now = dt.datetime.now(dt.UTC).timestamp() if now is None else now
    value = text.strip()
    if m := _DURATION.fullmatch(value):
        return now - float(m[1]) * _UNIT_S[m[2]]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise LlmopsError(f"cannot read the time {text!r}",
                          "give a duration back from now (30m, 24h, 7d, 1w), ISO 8601 (2026-11-23 or "
                          "2026-11-23T10:00:00Z) or a unix time") from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """`parse_time`, with no value meaning no bound."""
    return parse_time(text, now) if text else None
