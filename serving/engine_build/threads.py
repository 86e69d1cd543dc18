"""Thread settings of an ONNX Runtime engine, chosen on the host that builds it by timing decode steps.

Why measured: at batch 1 a decode step is a chain of ~300 small kernels, and whether a second intra-op thread
and a spinning pool help depends on the cores and on what else runs there. On the 2-core shared host E1, pool
threads that spin while idle took the cores from every other process and made each step several times slower
under load (benchmarks/README.md, the decode-step ladder). So the candidates (all cores, spinning or not; one
thread) are timed interleaved on the built engine, the fastest median wins, and the choice goes into the
manifest (`threads`), which the engine starts with; `serve.threads` still overrides the thread count, and
the engine times the spinning again where it serves (serving/engines/ort_tuning.py).
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from serving.engines.ort_tuning import ROUNDS, ms_per_token  # ROUNDS: interleaved, median per candidate

BATCHES = (1, 8)                # the choice must serve one request and a full running set


def candidates(cores: int) -> list[tuple[int, bool]]:
    """(intra-op threads, spinning) to time: every core with and without spinning, and one thread."""
    if cores <= 1:
        return [(1, False)]
    return [(cores, False), (cores, True), (1, False)]


def _score(engine) -> float:
    """Milliseconds per token at batch 1 plus per token at batch 8: both count the same."""
    return sum(ms_per_token(engine, b) for b in BATCHES)


def measure(engine_dir: Path, model_dir: Path, manifest: dict[str, Any], cores: int | None = None
            ) -> dict[str, Any]:
    """Time each candidate on the engine in `engine_dir`; the manifest's `threads` entry for the fastest."""
    from serving.engines.ort import OnnxRuntimeEngine

    cores = cores or len(os.sched_getaffinity(0))
    engines = {c: OnnxRuntimeEngine(engine_dir, model_dir, manifest=manifest, max_slots=max(BATCHES),
                                    threads=c[0], spinning=c[1]) for c in candidates(cores)}
    times: dict[tuple[int, bool], list[float]] = {c: [] for c in engines}
    for engine in engines.values():  # warm-up: first runs allocate
        ms_per_token(engine, 1)
    for _ in range(ROUNDS):
        for c, engine in engines.items():
            times[c].append(_score(engine))
    medians = {c: statistics.median(t) for c, t in times.items()}
    best = min(medians, key=medians.__getitem__)
    return {"intra_op": best[0], "spinning": best[1], "load_average": round(os.getloadavg()[0], 2),
            "score": "median ms/token at batch 1 + ms/token at batch 8",
            "ms_per_token": {f"{n} thread{'s' * (n > 1)}{', spinning' * s}": round(ms, 2)
                             for (n, s), ms in medians.items()}}
