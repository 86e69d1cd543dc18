"""What one logged request contributes to a drift window, independent of how the inference log stores it.

The log (contract C6) hands back its own row type; `window_from_logged` reads the fields by name so this
package depends on no storage layer, and tests build `WindowRecord`s directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from llmops.modeling.prompts import prompt_text, user_message

# Openings of a refusal or a non-answer. Matched at the start of the stripped response, case-insensitively:
# a later "I cannot" inside an explanation is not a refusal.
_REFUSAL = re.compile(
    r"^(i'?m sorry|i am sorry|sorry,|i apologi[sz]e|i can(?:'|no)t|i cannot|i am unable|i'?m unable|"
    r"i am not able|i'?m not able|as an ai|i do not know|i don'?t know)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class WindowRecord:
    """One request of a window. `status` is the HTTP status; `feedback` a rating (negative = below zero)."""

    prompt: str
    response: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: int = 200
    mean_logprob: float | None = None
    feedback: float | None = None
    via_router: bool = False  # logged by (or through) `llmops router`: the row names a side or a backend

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 400


def is_refusal(response: str) -> bool:
    """An empty answer or one that opens with a refusal."""
    text = response.strip()
    return not text or bool(_REFUSAL.match(text))


def logprob_missing_reason(ok: list[WindowRecord], needed: int) -> str:
    """Why too few answers carry a mean log-probability, and what the serving side must send (issue 21: through
    the router the detector reported null on 200 answered requests without saying why)."""
    missing = [r for r in ok if r.mean_logprob is None]
    have = len(ok) - len(missing)
    head = f"{have} of {len(ok)} answered requests carry a mean log-probability (the test needs {needed})"
    if not missing:
        return head
    routed = sum(r.via_router for r in missing)
    parts = []
    if routed:
        parts.append(f"{routed} were logged by the router with no model-server record merged in: the router cannot "
                     "see token log-probabilities, only the model server can; run the server with the same "
                     "inference log as the router (LLMOPS_INFERENCE_LOG_URI; the log merges the two records by "
                     "request id and keeps the server's mean_logprob), or have the server return its mean "
                     "log-probability with the answer for the router to log (extra.mean_logprob)")
    if len(missing) - routed:
        parts.append(f"{len(missing) - routed} came straight from a server whose engine reported no token "
                     "log-probabilities (the server records extra.mean_logprob only when the engine returns them)")
    return head + ": " + "; ".join(parts)


def is_negative(rating: float | None) -> bool:
    return rating is not None and rating < 0


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def window_from_logged(rows: Iterable[Any]) -> list[WindowRecord]:
    """WindowRecords from inference-log rows (objects or dicts with the C6 `LoggedRequest` field names).

    `mean_logprob` may sit at top level or in `extra`; the feedback rating may be `rating` or `feedback`.
    """
    out = []
    for row in rows:
        extra = _field(row, "extra") or {}
        logprob = _field(row, "mean_logprob")
        if logprob is None and isinstance(extra, Mapping):
            logprob = extra.get("mean_logprob")
        rating = _field(row, "rating")
        if rating is None:  # C6 rows: `rating` is the latest; `feedback` may be that history (a list) instead
            rating = _field(row, "feedback")
            if isinstance(rating, Mapping):
                rating = rating.get("rating")
            elif isinstance(rating, list):
                rating = _field(rating[-1], "rating") if rating else None
        side = _field(row, "side")
        via_router = bool(side) or (isinstance(extra, Mapping) and "backend" in extra)
        out.append(WindowRecord(
            prompt=prompt_text(_field(row, "prompt", "")),
            response=str(_field(row, "response", "") or ""),
            prompt_tokens=int(_field(row, "prompt_tokens", 0) or 0),
            completion_tokens=int(_field(row, "completion_tokens", 0) or 0),
            status=int(_field(row, "status", 200) or 0),
            mean_logprob=None if logprob is None else float(logprob),
            feedback=None if rating is None else float(rating),
            via_router=via_router,
        ))
    return out


def window_from_dataset(records: Iterable[Mapping[str, Any]]) -> list[WindowRecord]:
    """WindowRecords from instruction records (prompt = the user message, response = the reference answer):
    how calibration and the shifted slice become "traffic" without a model in the loop."""
    return [WindowRecord(prompt=user_message(r), response=str(r["output"])) for r in records]
