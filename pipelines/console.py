"""A quiet console for a local pipeline run: one line per step, training progress on one live line, and every
byte the steps print kept in a per-run log file.

kfp.local streams each step's output through this process (`print` to `sys.stdout`, plus its own logging
to a handler on `sys.stdout`); Ray, GX and C libraries may also write to file descriptors 1 and 2 directly.
While the DAG runs, fds 1/2 point at the run log and `sys.stdout`/`sys.stderr` are a router that writes each
line to the log (and to the step's own log) and turns the lines it understands into console lines: kfp's
"Executing task" / "finished with status" lines, the steps' marker lines (`llmops.steplog`) and the
trainer's `[llmops.train] step i/n ...` lines. The console itself writes to the saved original stderr.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from llmops.steplog import parse_marker

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TASK_START = re.compile(r"Executing task '([^']+)'")
TASK_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
TRAIN_STEP = re.compile(r"\[llmops\.train\] step (\d+)/(\d+) loss (\S+)(?:.*?tok/s (\S+))?")
HIDDEN_TASKS = {"finish-run"}  # the exit handler: its outcome is the summary's first line


@dataclass
class StepLine:
    name: str
    started: float
    ended: float | None = None
    status: str = "RUNNING"
    figures: dict[str, Any] = field(default_factory=dict)
    cause: str | None = None
    log: Path | None = None
    progress: str = ""


class RunConsole:
    """Context manager around the DAG; `steps` and `failure` say afterwards what happened."""

    def __init__(self, log_dir: Path, run_label: str, *, verbose: bool = False, quiet: bool = False,
                 live: bool | None = None) -> None:
        self.log_path = log_dir / f"{run_label}.log"
        self.step_dir = log_dir / run_label
        self.verbose, self.quiet = verbose, quiet
        self._live_wanted = live
        self.steps: dict[str, StepLine] = {}
        self.current: StepLine | None = None
        self._lock = threading.RLock()
        self._buf = ""
        self._progress_printed = 0

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> RunConsole:
        self.step_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a", buffering=1, encoding="utf-8", errors="replace")
        self._step_log: TextIO | None = None
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self._saved_fds = {fd: os.dup(fd) for fd in (1, 2)}
        self._out = os.fdopen(os.dup(self._saved_fds[2]), "w", buffering=1, encoding="utf-8", errors="replace")
        self._raw_out = os.fdopen(os.dup(self._saved_fds[1]), "w", buffering=1, encoding="utf-8",
                                  errors="replace")
        live = not (self.verbose or self.quiet) and (
            self._live_wanted if self._live_wanted is not None else self._out.isatty())
        from rich.console import Console

        self.console = Console(file=self._out, force_terminal=live or self._out.isatty(), highlight=False,
                               soft_wrap=True)
        self._saved_streams = (sys.stdout, sys.stderr)
        os.dup2(self._log.fileno(), 1)
        os.dup2(self._log.fileno(), 2)
        sys.stdout = sys.stderr = _Router(self)  # type: ignore[assignment]
        self._live = None
        if live:
            from rich.live import Live

            # redirect_*: Live would otherwise put its own proxy over the router and show the steps' output.
            self._live = Live(console=self.console, refresh_per_second=4, transient=True,
                              get_renderable=self._live_text, redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        with self._lock:
            self._flush_partial()
            if self.current is not None:  # a step whose end kfp never logged did not succeed
                self._end(self.current.name, "FAILED")
        if self._live is not None:
            self._live.stop()
        sys.stdout, sys.stderr = self._saved_streams
        for fd, saved in self._saved_fds.items():
            os.dup2(saved, fd)
            os.close(saved)
        if self._step_log:
            self._step_log.close()
        self._log.close()
        self._out.flush()
        self._raw_out.flush()
        self._out.close()
        self._raw_out.close()

    @property
    def failure(self) -> StepLine | None:
        return next((s for s in self.steps.values() if s.status not in ("SUCCESS", "RUNNING")), None)

    # -- lines in --------------------------------------------------------------------------------------
    def write(self, text: str) -> None:
        with self._lock:
            self._buf += text
            *lines, self._buf = self._buf.split("\n")
            for line in lines:
                self._line(line)

    def _flush_partial(self) -> None:
        if self._buf:
            self._line(self._buf)
            self._buf = ""

    def _line(self, raw: str) -> None:
        self._log.write(raw + "\n")
        if self._step_log:
            self._step_log.write(raw + "\n")
        if self.verbose:
            self._raw_out.write(raw + "\n")
        line = ANSI.sub("", raw)
        if event := parse_marker(line):
            self._event(event)
        elif m := TASK_START.search(line):
            self._start(m.group(1))
        elif m := TASK_END.search(line):
            self._end(m.group(1), m.group(2))
        elif (m := TRAIN_STEP.search(line)) and self.current is not None:
            step, total = int(m.group(1)), int(m.group(2))
            tok_s = f"  {float(m.group(4)):,.0f} tok/s" if m.group(4) else ""
            self.current.progress = f"step {step}/{total}  loss {float(m.group(3)):.4f}{tok_s}"
            self._plain_progress(step, total)

    def _start(self, task: str) -> None:
        if self.current is not None:
            self._end(self.current.name, "FAILED")
        if self._step_log:
            self._step_log.close()
        log = self.step_dir / f"{task}.log"
        self._step_log = open(log, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 - open for the step
        self.current = self.steps[task] = StepLine(task, time.time(), log=log)
        self._progress_printed = 0

    def _end(self, task: str, status: str) -> None:
        step = self.steps.get(task) or StepLine(task, time.time())
        step.ended, step.status = time.time(), "SUCCESS" if status == "SUCCESS" else "FAILED"
        self.steps[task] = step
        self.current = None
        if not (self.verbose or self.quiet) and task not in HIDDEN_TASKS:
            self.console.print(self._done_text(step), soft_wrap=True)

    def _event(self, event: dict[str, Any]) -> None:
        step = self.current
        if step is None:
            return
        if event.get("event") == "figures":
            step.figures.update(event.get("figures") or {})
        elif event.get("event") == "failed":
            step.cause = str(event.get("cause", ""))

    def _plain_progress(self, step: int, total: int) -> None:
        """Without a live line (CI, pipes): a plain progress line at every quarter of training."""
        if self._live is not None or self.verbose or self.quiet:
            return
        quarter = (4 * step) // max(total, 1)
        if quarter > self._progress_printed:
            self._progress_printed = quarter
            assert self.current is not None
            self.console.print(f"    {self.current.name}: {self.current.progress}", soft_wrap=True)

    # -- lines out -------------------------------------------------------------------------------------
    def _done_text(self, step: StepLine) -> str:
        seconds = (step.ended or time.time()) - step.started
        clock = time.strftime("%H:%M:%S", time.localtime(step.started))
        mark = "[green]ok  [/]" if step.status == "SUCCESS" else "[red]FAIL[/]"
        figures = "  ".join(f"{k} {_fmt(v)}" for k, v in step.figures.items())
        cause = f"[red]{step.cause[:100]}{'...' if len(step.cause) > 100 else ''}[/]" if step.cause else ""
        return f"{mark} {step.name:<14} {clock}  {seconds:7.1f} s  {figures if step.status == 'SUCCESS' else cause}"

    def _live_text(self):
        from rich.text import Text

        step = self.current
        if step is None:
            return Text("")
        spent = time.time() - step.started
        return Text.from_markup(f"[cyan]....[/] {step.name:<14} {spent:7.0f} s  {step.progress}")


class _Router:
    """Stands in for sys.stdout/sys.stderr while the DAG runs."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, sink: RunConsole) -> None:
        self._sink = sink

    def write(self, text: str) -> int:
        self._sink.write(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return 1  # points at the run log while the router is installed

    def writable(self) -> bool:
        return True


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)
