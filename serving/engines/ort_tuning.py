"""ONNX Runtime session threads for the engine, and whether its pool spins, chosen where it serves.

Why the spinning is timed again at warm-up when the build already timed it (serving/engine_build/threads.py):
the build host's load says little about the serving host's, and the choice swings both ways. On host E1,
quiet, a spinning pool decoded batch 1 at 5.2 ms/token against 8.7 without; under load 10-12 the build chose
no spinning, 2-4x faster there (benchmarks/README.md). So the loaded engine times both settings interleaved
(a second session of the same graph) and keeps the faster one.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

PROMPT = list(range(100, 132))  # 32 tokens: a short chat prompt's length
STEPS = 8                       # decode steps per timing
ROUNDS = 3                      # settings interleaved, median per setting


def session_options(threads: int | None, spinning: bool = False):
    """Spinning off unless chosen: idle pool threads that spin take the cores from the server's own threads and
    from everything else on a shared host."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if spinning:  # spin between a step's kernels, not after it: the server's own threads need the cores then
        so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


def ms_per_token(engine: Any, batch: int, steps: int = STEPS) -> float:
    """Milliseconds per generated token over `steps` decode steps of `batch` short sequences."""
    slots = list(range(batch))
    for slot in slots:
        engine.prefill(slot, PROMPT)
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.decode(slots, [PROMPT[-1]] * batch)
    for slot in slots:
        engine.release(slot)
    return (time.perf_counter() - t0) / steps / batch * 1000


def choose_spinning(engine: Any) -> dict[str, Any]:
    """Time the engine's session against one with the other spinning setting; the engine keeps the faster."""
    import onnxruntime as ort

    other = ort.InferenceSession(str(engine.graph), session_options(engine.threads, not engine.spinning),
                                 providers=["CPUExecutionProvider"])
    sessions = {engine.spinning: engine.session, not engine.spinning: other}
    times: dict[bool, list[float]] = {spin: [] for spin in sessions}
    for spin, session in sessions.items():  # first runs allocate
        engine.use_session(session, spin)
        ms_per_token(engine, 1, steps=2)
    for _ in range(ROUNDS):
        for spin, session in sessions.items():
            engine.use_session(session, spin)
            times[spin].append(ms_per_token(engine, 1))
    best = min(times, key=lambda spin: statistics.median(times[spin]))
    engine.use_session(sessions[best], best)
    return {"spinning": best, "when": "serve start", "load_average": round(os.getloadavg()[0], 2),
            "ms_per_token_batch1": {("spinning" if s else "not spinning"): round(statistics.median(t), 2)
                                    for s, t in times.items()}}
