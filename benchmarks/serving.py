"""Serving throughput and latency: our server against the peer a user already has, in one run.

The peer is `transformers serve --continuous-batching` (transformers 5 ships it: paged attention and
continuous batching, OpenAI routes). Every side serves the same checkpoint on 127.0.0.1 and gets the same
streaming chat requests (fixed prompts from the held-out split, greedy, the same `max_tokens`) at each
concurrency level; a side's figures are measured from the client: output tokens/s over the level's wall
time (tokens from each response's `usage`, else its content chunks), time to first token (first content
delta) and end-to-end latency percentiles. The load generator is plain aiohttp, the same for every side,
so no client library's overhead favours one server.

    python -m benchmarks.serving [--sides peer,ours,ours-serial] [--concurrency 1,16] [--max-tokens 64] [--json]

`ours-serial` is our server with one sequence at a time: the ratio ours / ours-serial at concurrency 16 is
what continuous batching buys. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class Side:
    name: str
    describe: str
    argv: list[str]
    model_name: str  # the `model` field requests carry
    ready_path: str = "/ready"  # ours: model loaded and warmed; the peer only has /health
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class LevelResult:
    side: str
    concurrency: int
    requests: int
    ok: int
    completion_tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_p50_s: float
    ttft_p95_s: float
    e2e_p50_s: float
    e2e_p95_s: float
    loadavg: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sides(model_dir: Path, names: list[str]) -> list[Side]:
    """Each side on its own free port (sides run one after another)."""
    model = str(model_dir)
    port = _free_port()
    known = {
        "peer": Side("peer", "transformers serve --continuous-batching (paged attention)",
                     [str(BIN / "transformers"), "serve", model, "--continuous-batching", "--host", "127.0.0.1",
                      "--port", str(port), "--dtype", "float32"], model, "/health"),
        "peer-serial": Side("peer-serial", "transformers serve (no continuous batching)",
                            [str(BIN / "transformers"), "serve", model, "--host", "127.0.0.1", "--port", str(port),
                             "--dtype", "float32"], model, "/health"),
        "ours": Side("ours", "llmops serve (continuous batching, best engine)",
                     [str(BIN / "llmops"), "serve", model, "--host", "127.0.0.1", "--port", str(port)], model),
        "ours-fp32": Side("ours-fp32", "llmops serve --engine onnxruntime (full precision, continuous batching)",
                          [str(BIN / "llmops"), "serve", model, "--engine", "onnxruntime", "--host", "127.0.0.1",
                           "--port", str(port)], model),
        "ours-eager": Side("ours-eager", "llmops serve --engine eager (continuous batching)",
                           [str(BIN / "llmops"), "serve", model, "--engine", "eager", "--host", "127.0.0.1",
                            "--port", str(port)], model),
        "ours-serial": Side("ours-serial", "llmops serve, one sequence at a time",
                            [str(BIN / "llmops"), "serve", model, "--max-slots", "1", "--host", "127.0.0.1",
                             "--port", str(port)], model),
    }
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown side(s) {unknown}; choose from {sorted(known)}")
    out = []
    for n in names:
        side = known[n]
        side.argv[side.argv.index(str(port))] = str(_free_port())
        out.append(side)
    return out


def _prompts(n: int) -> list[str]:
    """The first `n` instructions of the held-out split (fixed, so every side answers the same)."""
    rows = [json.loads(line) for line in (ROOT / "data/splits/test.jsonl").read_text().splitlines() if line.strip()]
    out = []
    for row in rows[:n]:
        text = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        out.append(text)
    return out


async def _wait_ready(base: str, path: str, proc: subprocess.Popen, timeout_s: float) -> float:
    import aiohttp

    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        while time.perf_counter() - t0 < timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
            try:
                async with session.get(base + path, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError(f"server not ready after {timeout_s:.0f} s")


async def _one(session, url: str, model: str, prompt: str, max_tokens: int) -> tuple[bool, int, float, float]:
    """One streaming chat request: (ok, completion tokens, ttft, e2e)."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft = None
    chunks = 0
    usage_tokens = None
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            await resp.read()
            return False, 0, float("nan"), time.perf_counter() - t0
        buffer = b""
        async for raw in resp.content.iter_any():
            buffer += raw
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                for line in event.splitlines():
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        continue
                    doc = json.loads(data)
                    if doc.get("usage"):
                        usage_tokens = doc["usage"].get("completion_tokens")
                    for choice in doc.get("choices") or []:
                        if (choice.get("delta") or {}).get("content"):
                            chunks += 1
                            if ttft is None:
                                ttft = time.perf_counter() - t0
    e2e = time.perf_counter() - t0
    return True, int(usage_tokens if usage_tokens is not None else chunks), ttft or e2e, e2e


async def _level(base: str, side: Side, prompts: list[str], concurrency: int, requests: int,
                 max_tokens: int) -> LevelResult:
    import aiohttp

    url = base + "/v1/chat/completions"
    queue = list(range(requests))
    results: list[tuple[bool, int, float, float]] = []
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=concurrency + 4)) as session:
        async def worker() -> None:
            while queue:
                i = queue.pop(0)
                results.append(await _one(session, url, side.model_name, prompts[i % len(prompts)], max_tokens))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ok = [r for r in results if r[0]]
    ttfts = sorted(r[2] for r in ok) or [float("nan")]
    e2es = sorted(r[3] for r in ok) or [float("nan")]
    tokens = sum(r[1] for r in ok)

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]

    return LevelResult(side.name, concurrency, requests, len(ok), tokens, round(wall, 2), round(tokens / wall, 2),
                       round(statistics.median(ttfts), 3), round(pct(ttfts, 0.95), 3),
                       round(statistics.median(e2es), 3), round(pct(e2es, 0.95), 3),
                       Path("/proc/loadavg").read_text().split(" ")[0])


def _run_side(side: Side, port: int, levels: list[int], per_level: dict[int, int], prompts: list[str],
              max_tokens: int, log_dir: Path) -> tuple[list[LevelResult], float]:
    base = f"http://127.0.0.1:{port}"
    log = (log_dir / f"{side.name}.log").open("w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **side.env}
    proc = subprocess.Popen(side.argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                            start_new_session=True)
    try:
        startup = asyncio.run(_wait_ready(base, side.ready_path, proc, 300))
        # One warm-up request (first-call allocations, lazy imports) excluded from every side's figures.
        asyncio.run(_level(base, side, prompts, 1, 1, 8))
        out = [asyncio.run(_level(base, side, prompts, c, per_level[c], max_tokens)) for c in levels]
        return out, startup
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / ".llmops/models/smollm2-135m-instruct",
                    help="checkpoint dir every side serves (default: the pulled base model)")
    ap.add_argument("--sides", default="peer,ours,ours-serial", help="comma list: peer, peer-serial, ours, "
                    "ours-fp32, ours-eager, ours-serial (ours is --engine auto: the int8 engine where it is built and "
                    "passed its gate)")
    ap.add_argument("--concurrency", default="1,16", help="comma list of concurrency levels")
    ap.add_argument("--requests", default="", help="requests per level, comma list (default: 4 at 1, 2x conc else)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = ap.parse_args(argv)
    from llmops import host

    host_fp = host.for_benchmark()  # the machine these timings come from (printed on stderr, recorded below)
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"no checkpoint at {args.model}: run `make setup` (it pulls the base model)")
    levels = [int(x) for x in args.concurrency.split(",")]
    counts = [int(x) for x in args.requests.split(",")] if args.requests else [4 if c == 1 else 2 * c for c in levels]
    per_level = dict(zip(levels, counts, strict=True))
    prompts = _prompts(max(counts))
    log_dir = ROOT / ".llmops/bench-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    results: list[LevelResult] = []
    startups: dict[str, float] = {}
    for side in _sides(args.model, args.sides.split(",")):
        if not args.json:
            print(f"== {side.name}: {side.describe}", flush=True)
        port = int(side.argv[side.argv.index("--port") + 1])
        rows, startups[side.name] = _run_side(side, port, levels, per_level, prompts, args.max_tokens, log_dir)
        results.extend(rows)
        if not args.json:
            for r in rows:
                print(f"   c={r.concurrency:<3} {r.tokens_per_s:8.1f} tok/s  ttft p50 {r.ttft_p50_s:.3f} s  "
                      f"e2e p50 {r.e2e_p50_s:.2f} s  ok {r.ok}/{r.requests}  load {r.loadavg}", flush=True)
    by = {(r.side, r.concurrency): r for r in results}
    ratios = {}
    for c in levels:
        for a, b in (("ours", "peer"), ("ours", "ours-serial"), ("ours", "peer-serial"), ("ours", "ours-eager")):
            if (a, c) in by and (b, c) in by and by[(b, c)].tokens_per_s > 0:
                ratios[f"{a}/{b} tokens/s @c={c}"] = round(by[(a, c)].tokens_per_s / by[(b, c)].tokens_per_s, 2)
            if (a, c) in by and (b, c) in by and by[(a, c)].ttft_p50_s > 0:
                ratios[f"{b}/{a} ttft p50 @c={c}"] = round(by[(b, c)].ttft_p50_s / by[(a, c)].ttft_p50_s, 2)
    report = {"model": str(args.model), "host": host_fp, "max_tokens": args.max_tokens, "startup_s": startups,
              "results": [asdict(r) for r in results], "ratios": ratios}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\nratios (measured in this run):")
        for k, v in ratios.items():
            print(f"   {k:36s} {v:.2f}x")
        print(f"server logs: {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
