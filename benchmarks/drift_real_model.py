"""Drift severity end to end on the real model (issue 21's "done when"): `llmops serve` + `llmops router` in front,
windows of paraphrased in-domain traffic and of each shift (SQL, Spanish, cooking) sent through the router, then
`llmops monitor run` (the CLI, as a user runs it) on each window; prints one row per window and the false-alarm
count on paraphrase windows with its Wilson interval and the detection rate per shift.

    .venv/bin/python -m benchmarks.drift_real_model [--windows 3] [--size 60] [--max-tokens 24] [--concurrency 16]
        [--model <dir or NAME@ALIAS>] [--state-dir /tmp/drift-real] [--phase all|traffic|score]

Everything runs in a scratch state dir (its own inference log, MLflow, drift reference and monitor reports;
models are read from the project's), so the project's .llmops is not touched. `--phase traffic` only sends the
windows (recorded in <state-dir>/windows.json with each one's [since, until)), `--phase score` only re-scores
recorded windows (e.g. after a change of the detectors) with `llmops monitor run --since --until --no-trigger`,
into <state-dir>/scored.json.
The reference is the monitor's own, built as `llmops demo drift` builds it: the train prompts plus the served
model's answers to `--ref-size` validation prompts sent through the router first (`--phase score` builds it
from those logged rows). Windows of the four kinds are interleaved so that the load of the shared machine hits
each kind alike. Requests are greedy chat completions of `--max-tokens` tokens, distinct prompts drawn (seeded)
from each kind's slice. The host fingerprint goes to stderr and into the JSON (seconds per window are timings).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.procs import wait_http

REPO = Path(__file__).resolve().parents[1]
KINDS = ("paraphrase", "sql", "spanish", "cooking")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LLMOPS_API_KEY", "LLMOPS_API_KEY_FILE")}
    return {**env, "LLMOPS_STATE_DIR": str(state_dir), "LLMOPS_ROUTER_ADMIN_TOKEN": "drift-bench",
            "LLMOPS_MODELS_DIR": env.get("LLMOPS_MODELS_DIR", str(REPO / ".llmops" / "models")),
            "LLMOPS_CACHE_DIR": env.get("LLMOPS_CACHE_DIR", str(REPO / ".llmops" / "cache"))}


def start_stack(model: str, state_dir: Path, threads: int) -> tuple[list[subprocess.Popen], str]:
    """`llmops serve MODEL --engine eager` and `llmops router --stable <it>`, both logging to the scratch log
    (so each row keeps the server's mean_logprob). `threads`: serve.threads (1 on a loaded shared host: with
    all cores the server's torch threads fight the neighbours and a 24-token batch took 84 s). Timeouts are
    raised to 15 minutes: at load average 20 a 60-request window of SQL prompts had 10 requests past 120 s."""
    env, serve_port, router_port = _env(state_dir), _free_port(), _free_port()
    log_dir = state_dir
    procs = [subprocess.Popen([sys.executable, "-m", "cli.main", "serve", model, "--engine", "eager", "--port",
                               str(serve_port), "--log-level", "warning", "--set", f"serve.threads={threads}",
                               "--set", "serve.request_timeout_s=900"],
                              cwd=REPO, env=env,
                              stdout=open(log_dir / "serve.log", "w"), stderr=subprocess.STDOUT)]  # noqa: SIM115
    wait_http(f"http://127.0.0.1:{serve_port}/ready", procs[0], 600, poll_s=0.5)
    procs.append(subprocess.Popen([sys.executable, "-m", "cli.main", "router", "--stable",
                                   f"http://127.0.0.1:{serve_port}", "--port", str(router_port), "--set",
                                   "router.read_timeout_s=960"], cwd=REPO, env=env,
                                  stdout=open(log_dir / "router.log", "w"), stderr=subprocess.STDOUT))  # noqa: SIM115
    router = f"http://127.0.0.1:{router_port}"
    wait_http(f"{router}/ready", procs[1], 120, poll_s=0.5)
    return procs, router


async def send_window(router: str, prompts: list[str], max_tokens: int, concurrency: int) -> dict[str, Any]:
    """POST each prompt as a greedy chat completion through the router, `concurrency` at a time."""
    import httpx

    statuses: list[int] = []
    ids: list[str] = []
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=router, timeout=600) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]

        async def one(prompt: str) -> None:
            async with sem:
                r = await client.post("/v1/chat/completions", json={
                    "model": model, "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": max_tokens, "temperature": 0})
                statuses.append(r.status_code)
                ids.append(r.headers.get("x-request-id", ""))

        await asyncio.gather(*(one(p) for p in prompts))
    return {"ok": sum(200 <= s < 300 for s in statuses), "statuses": sorted(set(statuses)), "request_ids": ids}


def build_model_reference(state_dir: Path, since: float, until: float, model: str) -> dict[str, Any]:
    """The reference `llmops monitor run` reads, as `llmops demo drift` builds it: the train prompts, and the
    served model's own answers (and log-probabilities) to the validation prompts sent through the router in
    [since, until), read back from the inference log (main() pointed LLMOPS_STATE_DIR at the scratch dir)."""
    from llmops.data.records import read_jsonl
    from llmops.modeling.prompts import user_message
    from llmops.settings import get_settings
    from monitoring.drift import build_reference, window_from_logged
    from monitoring.drift.reference import default_reference_dir
    from monitoring.monitor import latest_window

    settings = get_settings()
    params = settings.params()
    rows = [r for r in window_from_logged(latest_window(settings, params, 100_000, since, until)) if r.ok]
    logprobs = [r.mean_logprob for r in rows]
    train = [user_message(r) for r in read_jsonl(REPO / "data/splits/train.jsonl").to_dict(orient="records")]
    reference = build_reference(train, settings, params, responses=[r.response for r in rows],
                                response_logprobs=logprobs if rows and None not in logprobs else None,
                                prompt_source="data/splits/train.jsonl",
                                response_source=f"{model} greedy answers to {len(rows)} validation prompts")
    reference.save(default_reference_dir(settings))
    return {"answers": len(rows), "refusal_rate": reference.refusal_rate,
            "with_logprobs": reference.response_logprobs is not None}


def send_reference_prompts(router: str, args: argparse.Namespace) -> dict[str, Any]:
    """`--ref-size` seeded validation prompts through the router: the model's answers the reference keeps."""
    from llmops.data.records import read_jsonl
    from llmops.modeling.prompts import user_message

    val = [user_message(r) for r in read_jsonl(REPO / "data/splits/validation.jsonl").to_dict(orient="records")]
    prompts = [val[int(i)] for i in np.random.default_rng(args.seed).choice(len(val), args.ref_size, replace=False)]
    since = time.time()
    got = asyncio.run(send_window(router, prompts, args.max_tokens, args.concurrency))
    time.sleep(1.5)
    return {"since": since, "until": time.time(), "ok": got["ok"], "size": args.ref_size}


def plan_windows(windows: int, size: int, seed: int) -> list[dict[str, Any]]:
    """Interleaved windows (paraphrase, sql, spanish, cooking, paraphrase, ...), each `size` distinct prompts."""
    from monitoring.drift.calibration import load_pool

    pools = {k: list(dict.fromkeys(r.prompt for r in load_pool(REPO, k))) for k in KINDS}
    rng = np.random.default_rng(seed)
    out = []
    for i in range(windows):
        for kind in KINDS:
            pick = rng.choice(len(pools[kind]), size=size, replace=False)
            out.append({"kind": kind, "index": i, "prompts": [pools[kind][int(j)] for j in pick]})
    return out


def traffic(args: argparse.Namespace, host_fp: dict[str, Any]) -> None:
    args.state_dir.mkdir(parents=True, exist_ok=True)
    path = args.state_dir / "windows.json"
    done = json.loads(path.read_text()) if path.is_file() else {"windows": []}
    procs, router = start_stack(args.model, args.state_dir, args.threads)
    try:
        if "reference_window" not in done:
            done["reference_window"] = send_reference_prompts(router, args)
            path.write_text(json.dumps(done, indent=1))
        for w in plan_windows(args.windows, args.size, args.seed)[len(done["windows"]):]:
            since = time.time()
            t = time.perf_counter()
            got = asyncio.run(send_window(router, w.pop("prompts"), args.max_tokens, args.concurrency))
            got.pop("request_ids")
            w.update(since=since, until=time.time() + 0.001, seconds=time.perf_counter() - t, size=args.size,
                     max_tokens=args.max_tokens, concurrency=args.concurrency, load1=os.getloadavg()[0], **got)
            done["windows"].append(w)
            done["host"] = host_fp
            path.write_text(json.dumps(done, indent=1))
            print(f"sent {w['kind']:>10} #{w['index']}: {w['ok']}/{args.size} ok in {w['seconds']:.0f} s "
                  f"(load {w['load1']:.1f})", flush=True)
            time.sleep(1.5)  # the log's group commit: every row of this window is written before the next starts
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=30)


def score_window(state_dir: Path, w: dict[str, Any]) -> dict[str, Any]:
    """`llmops monitor run --since --until --window --no-trigger --json` on one recorded window."""
    cmd = [sys.executable, "-m", "cli.main", "monitor", "run", "--since", repr(w["since"]), "--until",
           repr(w["until"]), "--window", str(w["size"] * 2), "--no-trigger", "--json"]
    out = subprocess.run(cmd, cwd=REPO, env=_env(state_dir), capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"monitor run failed: {out.stderr[-2000:]}")
    summary = json.loads(out.stdout)
    report = json.loads(Path(summary["report_json"]).read_text())
    dets = {d["name"]: d for d in report["detectors"]}
    return {"severity": summary["severity"], "requests": summary["window"]["requests"], "note": summary["note"],
            "levels": {n: d["severity"] for n, d in dets.items() if not d["skipped"]},
            "effects": {n: d["effect"] for n, d in dets.items() if d["effect"] is not None},
            "lower": {n: d["effect_lower"] for n, d in dets.items() if d.get("effect_lower") is not None},
            "rates": {n: d["statistic"] for n, d in dets.items() if n.endswith("_rate") and not d["skipped"]},
            "report": summary["report_json"]}


def summarise(windows: list[dict[str, Any]]) -> dict[str, Any]:
    from monitoring.drift.stats import wilson_interval

    out: dict[str, Any] = {}
    for kind in KINDS:
        got = [w for w in windows if w["kind"] == kind and "severity" in w]
        hits = sum(w["severity"] == "drift" for w in got)
        low, high = wilson_interval(hits, len(got))
        refusal = [w["rates"].get("empty_or_refusal_rate") for w in got]
        bound = [w["lower"].get("empty_or_refusal_rate") for w in got]
        out[kind] = {"windows": len(got), "drift": hits, "watch": sum(w["severity"] == "watch" for w in got),
                     "drift_rate": hits / len(got) if got else None, "wilson95": [low, high],
                     "refusal_rate_max": max((r for r in refusal if r is not None), default=None),
                     "refusal_lower_bound_max": max((b for b in bound if b is not None), default=None)}
    return out


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:+.3f}"


def _row(w: dict[str, Any]) -> str:
    e, lv = w["effects"], w["levels"]
    refusal = e.get("empty_or_refusal_rate")
    return (f"{w['kind']:>10} #{w['index']:<2} {w['requests']:>4} {w['severity']:>6}   "
            f"mmd2 {e.get('prompt_embedding_mmd', float('nan')):.3f} ({lv.get('prompt_embedding_mmd', '-'):>5})  "
            f"novel {e.get('prompt_novel_share', float('nan')):+.2f} ({lv.get('prompt_novel_share', '-'):>5})  "
            f"refusal {w['rates'].get('empty_or_refusal_rate', float('nan')):.3f} "
            f"(diff {refusal if refusal is not None else float('nan'):+.3f}, bound "
            f"{w['lower'].get('empty_or_refusal_rate', float('nan')):+.3f}: {lv.get('empty_or_refusal_rate', '-'):>5})"
            f"  {w['seconds']:.0f} s")


def reference(args: argparse.Namespace, done: dict[str, Any]) -> dict[str, Any]:
    """The saved reference (built once: embedding the 3,099 train prompts takes minutes on a loaded host) from
    the rows logged before the first window (the validation prompts the traffic phase sent first)."""
    saved = args.state_dir / "drift" / "reference" / "reference.json"
    if saved.is_file() and not args.rebuild_reference:
        meta = json.loads(saved.read_text())
        return {"answers": meta["responses"], "refusal_rate": meta["refusal_rate"], "saved": str(saved)}
    ref = done.get("reference_window") or {"since": 0.0, "until": done["windows"][0]["since"]}
    return build_model_reference(args.state_dir, ref["since"], ref["until"], args.model)


def score(args: argparse.Namespace, host_fp: dict[str, Any]) -> dict[str, Any]:
    done = json.loads((args.state_dir / "windows.json").read_text())
    done["windows"] = done["windows"][: args.score_first or None]
    done["reference"] = reference(args, done)
    print(f"reference: {done['reference']}", flush=True)
    out = args.state_dir / "scored.json"
    before = {w["since"]: w for w in json.loads(out.read_text())["windows"]} if out.is_file() else {}
    for i, w in enumerate(done["windows"]):
        if w["since"] in before and not args.rescore:  # resumable: a window already scored keeps its verdict
            done["windows"][i] = w = before[w["since"]]
        else:
            w.update(score_window(args.state_dir, w))
        print(_row(w), flush=True)
        done["summary"], done["score_host"] = summarise(done["windows"]), host_fp
        out.write_text(json.dumps(done, indent=1))
    return done


def _stop_on_term() -> None:
    """SIGTERM unwinds like Ctrl-C, so `traffic` stops the server and router it started."""
    import signal

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--windows", type=int, default=3, help="windows per kind")
    parser.add_argument("--size", type=int, default=60, help="requests per window")
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="serve.threads of the model server")
    parser.add_argument("--ref-size", type=int, default=60, help="validation prompts the reference's answers come from")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--model", default=None, help="what `llmops serve` serves (default: the base model)")
    parser.add_argument("--state-dir", type=Path, default=Path("/tmp/drift-real"))
    parser.add_argument("--phase", choices=("all", "traffic", "reference", "score"), default="all")
    parser.add_argument("--rebuild-reference", action="store_true", help="rebuild the saved reference")
    parser.add_argument("--rescore", action="store_true", help="score windows already in scored.json again")
    parser.add_argument("--score-first", type=int, default=0, help="score only the first N recorded windows")
    args = parser.parse_args(argv)
    from llmops import host
    from llmops.settings import get_settings

    _stop_on_term()
    args.state_dir = args.state_dir.resolve()
    os.environ.update(_env(args.state_dir))  # before any get_settings(): every state path is the scratch dir's
    host_fp = host.for_benchmark()
    args.model = args.model or str(get_settings().base_model_dir)
    if args.phase in ("all", "traffic"):
        traffic(args, host_fp)
    if args.phase == "reference":
        print(reference(args, json.loads((args.state_dir / "windows.json").read_text())))
    if args.phase in ("all", "score"):
        done = score(args, host_fp)
        print(host.host_line(host_fp))
        for kind, s in done["summary"].items():
            lo, hi = s["wilson95"]
            what = "false alarms" if kind == "paraphrase" else "detected"
            print(f"{kind:>10}: {what} {s['drift']}/{s['windows']} windows at drift ({lo:.1%}-{hi:.1%} Wilson 95%), "
                  f"watch {s['watch']}; refusal rate max {_num(s['refusal_rate_max'])}, the lower bound of its "
                  f"rise max {_num(s['refusal_lower_bound_max'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
