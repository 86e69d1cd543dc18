"""What a pipeline step tells the person running it: its key figures, and when it fails, its own one-line cause.

Orchestrators report a failed step generically ("Inner task failed: train"), so the step records its cause
itself, in two places: a marker line on stdout (the local console reads it from the step's streamed log and
prints it at once) and the tag `llmops.step_error.<step>` on the pipeline's MLflow run (the run summary reads
it on every profile). Key figures travel the same way (marker line) so the console needs no MLflow round trip.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from llmops.errors import LlmopsError

MARKER = "@@llmops "
STEP_ERROR_TAG = "llmops.step_error."
MAX_CAUSE = 400


def one_line(exc: BaseException) -> str:
    """The cause of `exc` on one line: cause + fix for a known failure, else the innermost error's type and
    the last meaningful line of its message (Ray and subprocess errors wrap the real one in a traceback)."""
    if isinstance(exc, LlmopsError):
        return _clip(str(exc))
    inner = exc
    seen = {id(exc)}
    while inner.__cause__ is not None and id(inner.__cause__) not in seen:
        inner = inner.__cause__
        seen.add(id(inner))
    if isinstance(inner, LlmopsError):
        return _clip(str(inner))
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
    # A wrapped traceback ends with "SomeError: message": that line is the cause.
    text = next((ln for ln in reversed(lines) if "Error: " in ln or "Exception: " in ln), lines[0] if lines else "")
    return _clip(text if text.split(":")[0].endswith(("Error", "Exception")) else f"{type(inner).__name__}: {text}")


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_CAUSE else text[: MAX_CAUSE - 3] + "..."


def emit(event: str, step: str, **fields: Any) -> None:
    """One marker line on stdout; the local console picks it out of the streamed log."""
    payload = json.dumps({"event": event, "step": step, **fields}, default=str)
    sys.stdout.write(f"\n{MARKER}{payload}\n")
    sys.stdout.flush()


def parse_marker(line: str) -> dict[str, Any] | None:
    at = line.find(MARKER)
    if at < 0:
        return None
    try:
        event = json.loads(line[at + len(MARKER):])
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


class StepReport:
    def __init__(self, step: str) -> None:
        self.step = step

    def figures(self, **figures: Any) -> None:
        """The step's key figures (train loss, eval perplexity, registered version...) for the console line."""
        emit("figures", self.step, figures=figures)


@contextlib.contextmanager
def step_report(step: str, parent_run_id: str | None = None) -> Iterator[StepReport]:
    """Wrap a step's body: on failure record its one-line cause (marker line + tag on the pipeline run) and
    re-raise, so the orchestrator still fails the step and the summary can say why."""
    try:
        yield StepReport(step)
    except BaseException as exc:
        cause = one_line(exc) if not isinstance(exc, KeyboardInterrupt) else "interrupted"
        emit("failed", step, cause=cause)
        if parent_run_id:
            _tag_parent(parent_run_id, step, cause)
        raise


def _tag_parent(parent_run_id: str, step: str, cause: str) -> None:
    """Best effort: the step is failing already, and the marker line carries the cause locally; a tracking
    server that is down must not replace the step's own error with its own."""
    try:
        from mlflow.tracking import MlflowClient

        from llmops.settings import get_settings

        MlflowClient(get_settings().tracking_uri).set_tag(parent_run_id, STEP_ERROR_TAG + step, cause)
    except Exception as exc:  # reported on stderr; the original error is re-raised
        print(f"[llmops] could not record the step's cause in MLflow: {one_line(exc)}", file=sys.stderr)
