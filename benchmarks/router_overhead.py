"""Router overhead: p50/p99 latency through `llmops router` minus direct to the backend, open-loop on loopback.

The backend is a stub (aiohttp, its own process) that answers a fixed small OpenAI chat completion, or a
short stream of 5 chunks, at once, so what is measured is the router's hop and nothing else. The load is
open-loop: request i is sent at start + i/rate whatever happened before (no coordinated omission) and its
latency counts from that scheduled time. Direct and routed phases alternate (2 rounds each) so background
load on shared cores hits both alike. The router runs as `llmops router --no-log` does (its own uvicorn
process; the inference log's cost is measured by its own benchmark).

It also times the two async HTTP clients the router could use (aiohttp, httpx2) against the same stub at the
same rate: the router uses the faster (aiohttp).

    python -m benchmarks.router_overhead [--seconds 10] [--rate 200] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.procs import wait_http

REPO = Path(__file__).resolve().parents[1]
CHAT = {"id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "The answer is 42."},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}}
REQUEST = {"model": "stub", "messages": [{"role": "user", "content": "What is the answer?"}], "max_tokens": 8}


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0, "model": "stub",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


STREAM = [_chunk({"role": "assistant", "content": ""}),
          *[_chunk({"content": w}) for w in ("The ", "answer ", "is 42.")], _chunk({}, "stop"),
          b"data: " + json.dumps({"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0,
                                  "model": "stub", "choices": [], "usage": CHAT["usage"]}).encode() + b"\n\n",
          b"data: [DONE]\n\n"]


def _uvicorn_flavour() -> str:
    """What uvicorn's `auto` picks in this environment (the router's process uses the same venv)."""
    import importlib.util

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"{http}+{loop}"


def run_stub(port: int) -> None:
    """The stub backend: OpenAI-shaped answers, no work behind them."""
    from aiohttp import web

    body = json.dumps(CHAT).encode()

    async def chat(request: web.Request) -> web.StreamResponse:
        req = await request.json()
        rid = {"x-request-id": request.headers.get("x-request-id", "stub")}
        if not req.get("stream"):
            return web.Response(body=body, content_type="application/json", headers=rid)
        resp = web.StreamResponse(headers={**rid, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for part in STREAM:
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "stub", "object": "model", "version": "1"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/ready", ready)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): the router's cost per request, whatever the contention."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _aiohttp_load(url: str, rate: float, seconds: float, stream: bool,
                        cpu: Callable[[], float] | None = None) -> dict[str, list[float]]:
    import aiohttp

    body = {**REQUEST, "stream": stream}
    out: dict[str, list[float]] = {"latency": [], "ttft": [], "errors": []}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000)) as session:
        async def one(at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            try:
                async with session.post(url, json=body) as resp:
                    first = None
                    async for _ in resp.content.iter_any():
                        first = first or time.perf_counter()
                    if resp.status != 200:
                        raise RuntimeError(resp.status)
                end = time.perf_counter()
                out["latency"].append(end - at)
                out["ttft"].append((first or end) - at)
            except Exception as exc:  # counted, never hidden
                out["errors"].append(repr(exc))

        await _warm(lambda: one(time.perf_counter()))
        out["latency"].clear(), out["ttft"].clear()
        cpu0 = cpu() if cpu else 0.0
        t0 = time.perf_counter() + 0.05
        n = int(rate * seconds)
        await asyncio.gather(*(one(t0 + i / rate) for i in range(n)))
        out["cpu"] = [cpu() - cpu0] if cpu else []  # the router's CPU over the measured requests only
    return out


async def _httpx_load(url: str, rate: float, seconds: float) -> dict[str, list[float]]:
    import httpx2 as httpx

    out: dict[str, list[float]] = {"latency": [], "ttft": [], "errors": []}
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async def one(at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            try:
                r = await client.post(url, json=REQUEST)
                if r.status_code != 200:
                    raise RuntimeError(r.status_code)
                out["latency"].append(time.perf_counter() - at)
            except Exception as exc:
                out["errors"].append(repr(exc))

        await _warm(lambda: one(time.perf_counter()))
        out["latency"].clear()
        t0 = time.perf_counter() + 0.05
        await asyncio.gather(*(one(t0 + i / rate) for i in range(int(rate * seconds))))
    return out


async def _warm(make) -> None:
    for _ in range(3):
        await asyncio.gather(*(make() for _ in range(20)))


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    pos = (len(values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _summary(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": _pct(samples, 0.5) * 1000, "p99_ms": _pct(samples, 0.99) * 1000, "n": len(samples)}


def _measure(args: argparse.Namespace, stub: str, router: str, router_pid: int
             ) -> tuple[dict[str, dict[str, list[float]]], float]:
    """Two rounds of every phase (direct, through the router, JSON and stream) and of both client libraries;
    the router's CPU seconds while it was loaded."""
    results: dict[str, dict[str, list[float]]] = {}
    phases = [("direct", stub, False), ("router", router, False), ("direct_stream", stub, True),
              ("router_stream", router, True)]
    router_cpu = 0.0
    for _round in range(2):
        for name, base, stream in phases:
            probe = (lambda: _cpu_seconds(router_pid)) if base == router else None
            got = asyncio.run(_aiohttp_load(f"{base}/v1/chat/completions", args.rate, args.seconds, stream, probe))
            router_cpu += sum(got.pop("cpu"))
            acc = results.setdefault(name, {"latency": [], "ttft": [], "errors": []})
            for k in acc:
                acc[k] += got[k]
        clients = {"client_aiohttp": lambda: _aiohttp_load(f"{stub}/v1/chat/completions", args.rate,
                                                          args.seconds, False),
                   "client_httpx2": lambda: _httpx_load(f"{stub}/v1/chat/completions", args.rate, args.seconds)}
        for name, run in clients.items():
            got = asyncio.run(run())
            acc = results.setdefault(name, {"latency": [], "ttft": [], "errors": []})
            for k in acc:
                acc[k] += got[k]
    return results, router_cpu


def _report(args: argparse.Namespace, results: dict[str, dict[str, list[float]]], router_cpu: float,
            loads: tuple, host_fp: dict[str, Any]) -> dict[str, Any]:
    load0, load1 = loads
    report: dict[str, Any] = {"rate_per_s": args.rate, "seconds_per_phase": args.seconds * 2,
                              "loadavg_1m": [round(load0[0], 2), round(load1[0], 2)], "cores": os.cpu_count(),
                              "uvicorn_http_loop": _uvicorn_flavour(), "host": host_fp}
    for name, got in results.items():
        report[name] = {**_summary(got["latency"]), "errors": len(got["errors"])}
        if "stream" in name:
            report[name]["ttft_p50_ms"] = _pct(got["ttft"], 0.5) * 1000
    for kind in ("", "_stream"):
        d, r = report[f"direct{kind}"], report[f"router{kind}"]
        report[f"overhead{kind}"] = {"p50_ms": r["p50_ms"] - d["p50_ms"], "p99_ms": r["p99_ms"] - d["p99_ms"],
                                     "p50_ratio": r["p50_ms"] / d["p50_ms"], "p99_ratio": r["p99_ms"] / d["p99_ms"]}
    routed = report["router"]["n"] + report["router_stream"]["n"]
    report["router_cpu_ms_per_request"] = router_cpu / max(routed, 1) * 1000
    report["client_httpx2_vs_aiohttp_p50_ratio"] = report["client_httpx2"]["p50_ms"] / report["client_aiohttp"][
        "p50_ms"]
    return report


def _print(args: argparse.Namespace, report: dict[str, Any]) -> None:
    print(f"open loop {args.rate:g} req/s, {args.seconds * 2:g} s per phase, loadavg(1m) {report['loadavg_1m']} "
          f"on {report['cores']} cores; router on uvicorn {report['uvicorn_http_loop']}")
    for name in ("direct", "router", "direct_stream", "router_stream", "client_aiohttp", "client_httpx2"):
        x = report[name]
        extra = f"  ttft p50 {x['ttft_p50_ms']:.2f} ms" if "ttft_p50_ms" in x else ""
        print(f"  {name:15s} p50 {x['p50_ms']:6.2f} ms  p99 {x['p99_ms']:7.2f} ms  n={x['n']} "
              f"errors={x['errors']}{extra}")
    for kind in ("", "_stream"):
        o = report[f"overhead{kind}"]
        print(f"router overhead{kind or ' (json)'}: p50 +{o['p50_ms']:.2f} ms ({o['p50_ratio']:.2f}x direct), "
              f"p99 +{o['p99_ms']:.2f} ms ({o['p99_ratio']:.2f}x); target p50 <= 1 ms")
    print(f"router CPU time per request (user+sys, /proc): {report['router_cpu_ms_per_request']:.2f} ms")
    print(f"client: httpx2 p50 / aiohttp p50 = {report['client_httpx2_vs_aiohttp_p50_ratio']:.2f}x")



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="per phase (each phase runs twice)")
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second, open loop")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--stub", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    from llmops import host

    host_fp = host.for_benchmark()  # the machine these timings come from (printed on stderr, recorded below)
    if args.stub:
        run_stub(args.stub)
        return

    stub_port, router_port = _free_port(), _free_port()
    scratch = tempfile.mkdtemp(prefix="router-bench-")  # the router's state (admin token) stays out of .llmops
    env = {**os.environ, "LLMOPS_ROUTER_ADMIN_TOKEN": "bench", "OMP_NUM_THREADS": "1", "LLMOPS_STATE_DIR": scratch}
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.router_overhead", "--stub", str(stub_port)],
                              cwd=REPO, env=env)]
    try:
        stub = f"http://127.0.0.1:{stub_port}"
        wait_http(f"{stub}/ready", procs[0])
        procs.append(subprocess.Popen([sys.executable, "-m", "cli.main", "router", "--stable", stub,
                                       "--port", str(router_port), "--log-level", "warning", "--no-log"],
                                      cwd=REPO, env=env,
                                      stdout=subprocess.DEVNULL))
        router = f"http://127.0.0.1:{router_port}"
        wait_http(f"{router}/ready", procs[1])
        load0 = os.getloadavg()
        results, router_cpu = _measure(args, stub, router, procs[1].pid)
        load1 = os.getloadavg()
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=10)

    report = _report(args, results, router_cpu, (load0, load1), host_fp)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(args, report)


if __name__ == "__main__":
    main()
