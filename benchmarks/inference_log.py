"""Inference-log write throughput under concurrent requests: our group-committing writer vs one commit per record.

Every side writes the same records into a fresh SQLite file in WAL mode with `synchronous=FULL` (the same
durability: a committed record survives a killed process or a power cut; `per-record-normal` excepted)
through the same store code (`SqliteStore.write_batch`), and all are driven the way the model server drives
its hooks: C request coroutines in one asyncio loop, each awaiting its record's durability before "completing
the response" and starting the next request (plus, for ours, T plain threads calling the hook synchronously,
drawing from the same records).

- `ours`: `InferenceLog.hook` (enqueue, await the future of its batch's commit; params.yaml `inference_log:`).
- `per-record`: what a naive logger does: each request commits its own record, off the event loop
  (`asyncio.to_thread`, so the loop is not blocked either; SQLite serialises the commits).
- `per-record-normal`: the same with `synchronous=NORMAL` (no fsync per commit; weaker: a power cut may lose
  the last commits), the fastest one-commit-per-record logger SQLite allows; the ratio is printed against the
  faster of the two baselines.

Reported per side: records/s (records / wall time), hook latency p50/p99 (what each request waits), and the
rows counted in the database afterwards (must equal the records sent: nothing lost). Target: >= 2,000/s.

    python -m benchmarks.inference_log [--records 20000] [--concurrency 256] [--threads 4] [--baseline-records 2000]
        [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from llmops.params import InferenceLogParams  # noqa: E402
from monitoring.inference_log.log import InferenceLog  # noqa: E402
from monitoring.inference_log.store import SqliteStore, rows_from  # noqa: E402
from serving.records import RequestRecord  # noqa: E402

PROMPT = "Explain what functools.lru_cache does and when its cache is cleared."
ANSWER = "It memoises a function's results keyed by its arguments; cache_clear() empties it. " * 3


def make_record(i: int) -> RequestRecord:
    return RequestRecord(request_id=f"bench-{i}", route="/v1/chat/completions", model="llmops-smollm2",
                         model_version="3", prompt=[{"role": "user", "content": f"{PROMPT} ({i})"}], response=ANSWER,
                         prompt_tokens=24, completion_tokens=60, latency_s=0.8, ttft_s=0.05, status=200,
                         finish_reason="stop", extra={"mean_logprob": -1.3}, time=time.time(), session=None)


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


class Counter:
    """The records to write, handed out to request coroutines and threads alike until none are left."""

    def __init__(self, n: int) -> None:
        self.n, self.next, self.lock = n, 0, threading.Lock()

    def take(self) -> int | None:
        with self.lock:
            if self.next >= self.n:
                return None
            self.next += 1
            return self.next - 1


async def _drive(counter: Counter, concurrency: int, write) -> list[float]:
    """`concurrency` request coroutines: each takes a record, awaits `write(record)`, then takes the next."""
    waits: list[float] = []

    async def request_loop() -> None:
        while (i := counter.take()) is not None:
            rec = make_record(i)
            t0 = time.perf_counter()
            await write(rec)
            waits.append(time.perf_counter() - t0)

    await asyncio.gather(*(request_loop() for _ in range(concurrency)))
    return waits


def run_ours(db: Path, n: int, concurrency: int, threads: int, params: InferenceLogParams) -> dict[str, Any]:
    ilog = InferenceLog(SqliteStore(f"sqlite:///{db}"), params)
    counter = Counter(n)
    thread_waits: list[float] = []

    def thread_calls() -> None:
        while (i := counter.take()) is not None:
            rec = make_record(i)
            t0 = time.perf_counter()
            ilog.hook(rec)  # no event loop: blocks until committed
            thread_waits.append(time.perf_counter() - t0)

    async def write(rec: RequestRecord) -> None:
        await ilog.hook(rec)

    workers = [threading.Thread(target=thread_calls) for _ in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    waits = asyncio.run(_drive(counter, concurrency, write))
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    batches = ilog.writer.batches
    ilog.close()
    return _result("ours", n, wall, waits + thread_waits, db, batches=batches,
                   by_threads=len(thread_waits))


class NormalSyncStore(SqliteStore):
    """The same store with `synchronous=NORMAL`: in WAL mode a commit no longer waits for fsync (a killed
    process loses nothing, a power cut may lose the last commits): the fastest per-record logger SQLite allows."""

    def __init__(self, uri: str) -> None:
        import sqlalchemy as sa

        super().__init__(uri)  # llmops/db.py's policy: synchronous=FULL on connect, then this listener

        @sa.event.listens_for(self.engine, "connect")
        def _normal(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")

        self.engine.dispose()  # the connections opened while migrating were FULL


def run_per_record(db: Path, n: int, concurrency: int, side: str = "per-record",
                   store_cls: type[SqliteStore] = SqliteStore) -> dict[str, Any]:
    store = store_cls(f"sqlite:///{db}")

    async def write(rec: RequestRecord) -> None:
        await asyncio.to_thread(store.write_batch, rows_from([rec]))

    t0 = time.perf_counter()
    waits = asyncio.run(_drive(Counter(n), concurrency, write))
    wall = time.perf_counter() - t0
    store.close()
    return _result(side, n, wall, waits, db, batches=n)


def _result(side: str, sent: int, wall: float, waits: list[float], db: Path, batches: int,
            by_threads: int = 0) -> dict[str, Any]:
    store = SqliteStore(f"sqlite:///{db}")
    rows = store.count()
    store.close()
    return {"side": side, "records": sent, "rows_after": rows, "lost": sent - rows, "wall_s": round(wall, 3),
            "records_per_s": round(sent / wall, 1), "commits": batches, "from_threads": by_threads,
            "wait_p50_ms": round(_pct(waits, 0.5) * 1000, 2), "wait_p99_ms": round(_pct(waits, 0.99) * 1000, 2),
            "wait_mean_ms": round(statistics.fmean(waits) * 1000, 2) if waits else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=20000, help="records ours writes from the asyncio requests")
    ap.add_argument("--concurrency", type=int, default=256, help="concurrent request coroutines")
    ap.add_argument("--threads", type=int, default=4, help="plain threads also calling the hook (sharing the records)")
    ap.add_argument("--baseline-records", type=int, default=2000, help="records the per-record baseline writes")
    ap.add_argument("--dir", type=Path, default=None, help="where the databases go (default: a temp dir on disk)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from llmops.settings import get_settings

    params = get_settings().params().inference_log
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.dir or ROOT / ".llmops") as tmp:
        ours = run_ours(Path(tmp) / "ours.db", args.records, args.concurrency, args.threads, params)
        base = run_per_record(Path(tmp) / "per-record.db", args.baseline_records, args.concurrency)
        normal = run_per_record(Path(tmp) / "per-record-normal.db", args.baseline_records, args.concurrency,
                                "per-record-normal", NormalSyncStore)
    strongest = max(base, normal, key=lambda s: s["records_per_s"])
    from llmops import host

    out = {"host": host.for_benchmark(), "params": params.model_dump(), "concurrency": args.concurrency,
           "threads": args.threads,
           "sides": [ours, base, normal], "strongest_baseline": strongest["side"],
           "ratio_ours_vs_strongest": round(ours["records_per_s"] / strongest["records_per_s"], 2),
           "ratio_ours_vs_per_record": round(ours["records_per_s"] / base["records_per_s"], 2),
           "target_records_per_s": 2000, "meets_target": ours["records_per_s"] >= 2000 and ours["lost"] == 0,
           "loadavg_before": [round(x, 2) for x in load_before],
           "loadavg_after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for s in out["sides"]:
            print(f"{s['side']:>17}: {s['records_per_s']:>9.1f} records/s  ({s['records']} records in {s['wall_s']} s, "
                  f"{s['commits']} commits, wait p50 {s['wait_p50_ms']} ms p99 {s['wait_p99_ms']} ms, "
                  f"rows after {s['rows_after']}, lost {s['lost']})")
        print(f"ours / per-record: {out['ratio_ours_vs_per_record']}x; ours / strongest baseline "
              f"({out['strongest_baseline']}): {out['ratio_ours_vs_strongest']}x; "
              f"target >= 2000 records/s with nothing lost: {'met' if out['meets_target'] else 'NOT met'}; "
              f"loadavg {out['loadavg_before']} -> {out['loadavg_after']} on {out['cpus']} CPUs")
    return 0 if out["meets_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
