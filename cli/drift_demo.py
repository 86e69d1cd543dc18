"""`llmops demo drift` (`make demo`): the monitoring loop closed end to end, every piece a real process.

1. serve the champion behind the router (`serving/local_stack.py`; the server writes the inference log);
2. reference: the training prompts, and the champion's own answers to held-out validation prompts (sent
   through the router) as the response side, saved where `llmops monitor run` looks for it;
3. paraphrased in-domain traffic (data/drift/paraphrased.jsonl: the training facts in people's words) ->
   `monitor run`: below `drift` expected (often `watch`: it is phrased differently, but nothing new is asked);
4. shifted traffic (data/drift/shifted.jsonl) over `monitoring.trigger.persist_windows` windows with no new
   data: the first windows are `pending` (persistence), then the drift is `held` (nothing new to learn since
   the champion's training data) and its prompts are queued for labelling;
5. corrected answers for some shifted requests through POST /v1/feedback (the simulated users' corrections are
   the shifted set's reference answers: held-out data, never the evaluation split); a reviewer accepts them
   with `llmops review accept --all` (only accepted feedback can be exported); exported as a DVC dataset in
   the feedback source (`llmops log export --dvc`) and as preference pairs (`log export --kind preference
   --dvc`: chosen = the correction, rejected = the served answer) -> one more shifted window -> `monitor run`:
   drift, new data that covers it, and the trigger starts `llmops run retrain --drift-report ...` detached;
6. the servers stop (the retrain's canary starts its own), and the demo waits for the retrain to finish and
   reads back what it did: refreshed data (with the feedback), SFT then DPO on the pairs from the SFT model
   (held-out preference accuracy and reward margin of SFT-only vs SFT->DPO), gate, registered version, canary.

Traffic is greedy (temperature 0) on a fixed seeded sample, so a run's verdicts repeat; the severity's false
`drift` rate on paraphrased windows is measured by `llmops monitor calibrate` (benchmarks/README.md).
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmops.errors import LlmopsError
from llmops.params import Params
from llmops.settings import Settings


@dataclass
class DemoConfig:
    requests: int = 200  # per phase: the monitor's window (>= drift.min_window)
    max_tokens: int = 32
    concurrency: int = 8
    seed: int = 0
    feedback: int = 150  # shifted requests answered with a correction (the slice's reference answer); the
    # prompts that hash to the held-out splits (~20%) are the pairs DPO vs SFT-only is measured on
    retrain_timeout_s: float = 3 * 3600
    overrides: list[str] = field(default_factory=list)  # --set for the servers and the monitor


def _sample(path: Path, n: int, seed: int) -> list[dict[str, str]]:
    from llmops.data.records import read_jsonl

    records = read_jsonl(path).to_dict(orient="records")
    if len(records) < n:
        raise LlmopsError(f"{path} has {len(records)} records, the demo needs {n}", "lower --requests")
    return random.Random(seed).sample(records, n)


def _served_model(url: str) -> str:
    with urllib.request.urlopen(f"{url}/v1/models", timeout=60) as resp:
        return json.loads(resp.read())["data"][0]["id"]


def _chat(url: str, model: str, prompt: str, request_id: str, max_tokens: int) -> dict[str, Any]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}],
                       "max_tokens": max_tokens, "temperature": 0}).encode()
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=body, method="POST",
                                 headers={"content-type": "application/json", "x-request-id": request_id})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def replay(url: str, records: list[dict[str, str]], prefix: str, cfg: DemoConfig) -> list[str]:
    """Send each record's user message; returns the request ids (every one must succeed)."""
    from llmops.modeling.prompts import user_message

    ids = [f"{prefix}-{i:05d}" for i in range(len(records))]
    model = _served_model(url)

    def send(pair: tuple[dict[str, str], str]) -> None:
        try:
            _chat(url, model, user_message(pair[0]), pair[1], cfg.max_tokens)
        except urllib.error.HTTPError as exc:
            raise LlmopsError(f"request {pair[1]} failed: HTTP {exc.code} {exc.read()[:300]!r}",
                              "see the server's log in the demo's log dir") from None

    with concurrent.futures.ThreadPoolExecutor(cfg.concurrency) as pool:
        list(pool.map(send, zip(records, ids, strict=True)))
    return ids


def _post_feedback(url: str, request_id: str, correction: str) -> None:
    body = json.dumps({"request_id": request_id, "correction": correction}).encode()
    req = urllib.request.Request(f"{url}/v1/feedback", data=body, method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60):
        pass


def _logged(settings: Settings, params: Params, ids: list[str]) -> list[Any]:
    """The inference log's rows for `ids` (the server commits before it answers: C1/C6)."""
    from monitoring.inference_log import open_log

    with open_log(settings, params, start_writer=False) as log:
        rows = [log.get(rid) for rid in ids]
    return rows


def _wait(pid: int, timeout_s: float, say: Callable[[str], None], log_path: str | None) -> None:
    import os

    deadline, last = time.monotonic() + timeout_s, 0.0
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # ours when the trigger ran in this process
        except ChildProcessError:
            done = 0 if Path(f"/proc/{pid}").exists() else pid
        if done:
            return
        if time.monotonic() > deadline:
            raise LlmopsError(f"the retraining run (pid {pid}) did not finish in {timeout_s:.0f} s",
                              f"follow it in {log_path}")
        if time.monotonic() - last > 60:
            say(f"retraining (pid {pid}) still running; log: {log_path}")
            last = time.monotonic()
        time.sleep(2)


def _said(say: Callable[[str], None], res: dict[str, Any]) -> None:
    trigger = res.get("trigger") or {}
    held = " -- nothing new to learn: no retraining" if trigger.get("outcome") == "held" else ""
    say(f"  severity={res['severity']} fired={res['fired']}"
        + (f" trigger={trigger['outcome']}{held} ({trigger['reason']})" if trigger else ""))


def review_accept(settings: Settings, since: float) -> dict[str, Any]:
    """The demo's reviewer accepts the corrections it posted, through the CLI (`llmops review accept --all
    --since ...`; people do it on `llmops review`'s page): {"accepted": N, "refused": N, "pending": N}."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "cli.main", "review", "accept", "--all", "--since", f"{since:.3f}",
           "--reviewer", "drift-demo", "--json"]
    env = dict(os.environ, LLMOPS_PROJECT_DIR=str(settings.project_dir), LLMOPS_STATE_DIR=str(settings.state_dir))
    done = subprocess.run(cmd, cwd=settings.project_dir, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise LlmopsError(f"`llmops review accept` failed ({done.returncode}): {done.stderr.strip()[-500:]}",
                          "run it by hand: " + " ".join(cmd[2:]))
    out = json.loads(done.stdout)
    return {"accepted": len(out["decided"]), "refused": len(out["refused"]), "pending": out["counts"]["pending"]}


def _export_feedback(settings: Settings, params: Params, since: float, out: dict[str, Any],
                     say: Callable[[str], None]) -> None:
    """Review, then the two exports the retrain reads: SFT records (feedback source) and preference pairs."""
    from monitoring.inference_log import open_log
    from monitoring.inference_log.export import export_feedback

    review = out["review"] = review_accept(settings, since)  # only reviewed feedback can be exported
    say(f"  review (`llmops review accept --all`): accepted {review['accepted']} corrections, "
        f"refused {review['refused']}, {review['pending']} still waiting")
    with open_log(settings, params, start_writer=False) as log:
        exported = export_feedback(log, settings, params, since=since, dvc=True, push=False, data_docs=False)
        pairs = export_feedback(log, settings, params, since=since, dvc=True, push=False, data_docs=False,
                                kind="preference")
    out["feedback_export"] = {"rows": exported.rows, "path": exported.path, "md5": exported.md5}
    out["preference_export"] = {"rows": pairs.rows, "path": pairs.path, "md5": pairs.md5}
    say(f"  exported {exported.rows} corrected answers to the feedback source (DVC) and {pairs.rows} preference "
        f"pairs (`log export --kind preference`) to {pairs.path}")


def _shift_phases(settings: Settings, params: Params, cfg: DemoConfig, server_url: str, router_url: str,
                  reference: Any, stamp: str, out: dict[str, Any], say: Callable[[str], None]) -> None:
    """Shifted windows with no new data (pending, then held), the feedback export, one more shifted window."""
    from monitoring.monitor import run_monitor

    persist = params.monitoring.trigger.persist_windows
    n = cfg.requests
    shifted = _sample(settings.project_dir / "data" / "drift" / "shifted.jsonl", n * (persist + 1), cfg.seed)
    sent: list[tuple[dict[str, str], str]] = []
    out["shifted_without_new_data"] = []
    t_first = time.time()
    for k in range(persist):
        say(f"phase 2.{k + 1}: {n} shifted requests (SQL questions), no new data yet")
        t = time.time()
        batch = shifted[k * n:(k + 1) * n]
        sent += list(zip(batch, replay(router_url, batch, f"shift{k}{stamp}", cfg), strict=True))
        res = run_monitor(settings, params, since=t, window=n, reference=reference, progress=say)
        out["shifted_without_new_data"].append(res)
        _said(say, res)
    for rec, rid in sent[: cfg.feedback]:
        _post_feedback(server_url, rid, rec["output"])
    if cfg.feedback:
        _export_feedback(settings, params, t_first, out, say)
    say(f"phase 3: {n} more shifted requests, now with corrected answers for this kind of traffic")
    t = time.time()
    replay(router_url, shifted[persist * n:], f"shift{persist}{stamp}", cfg)
    out["shifted"] = run_monitor(settings, params, since=t, window=n, reference=reference, progress=say)
    _said(say, out["shifted"])


def run_drift_demo(settings: Settings, params: Params, cfg: DemoConfig,
                   say: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    from llmops.modeling.prompts import user_message
    from llmops.registry.client import NotFound, Registry
    from monitoring.drift import build_reference
    from monitoring.drift.reference import default_reference_dir
    from monitoring.monitor import run_monitor
    from pipelines.summary import latest_parent_run, summarize
    from serving.local_stack import LocalStack

    if cfg.requests < params.drift.min_window:
        raise LlmopsError(f"--requests {cfg.requests} is below drift.min_window ({params.drift.min_window})",
                          "send at least that many requests per phase")
    name = settings.registered_model
    try:
        champion = Registry(settings).alias_version(name, "champion")
    except NotFound:
        champion = None
    if champion is None:
        raise LlmopsError(f"model {name!r} has no champion to serve", "train one first: `make run`")
    splits = settings.project_dir / "data" / "splits"
    paraphrased_path = settings.project_dir / "data" / "drift" / "paraphrased.jsonl"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out: dict[str, Any] = {"champion": f"{name}/{champion}", "requests_per_phase": cfg.requests}
    with LocalStack(settings.state_dir / "demo" / stamp, overrides=tuple(cfg.overrides)) as stack:
        say(f"serving {name}/{champion} behind the router")
        server = stack.server("champion", f"{name}/{champion}")
        stack.wait_ready(server)
        router = stack.router(server.url)
        stack.wait_ready(router)

        say(f"reference: training prompts + the champion's answers to {cfg.requests} validation prompts")
        ids = replay(router.url, _sample(splits / "validation.jsonl", cfg.requests, cfg.seed), f"ref{stamp}", cfg)
        answered = [r for r in _logged(settings, params, ids) if r is not None and r.status == 200]
        from llmops.data.records import read_jsonl

        train = [user_message(r) for r in read_jsonl(splits / "train.jsonl").to_dict(orient="records")]
        logprobs = [r.mean_logprob for r in answered]
        reference = build_reference(
            train, settings, params, responses=[r.response for r in answered],
            response_logprobs=logprobs if all(lp is not None for lp in logprobs) else None,
            prompt_source=str(splits / "train.jsonl"),
            response_source=f"{name}/{champion} greedy answers to {len(answered)} validation prompts")
        reference.save(default_reference_dir(settings))

        say(f"phase 1: {cfg.requests} paraphrased in-domain requests (the training facts in people's words)")
        t1 = time.time()
        replay(router.url, _sample(paraphrased_path, cfg.requests, cfg.seed), f"para{stamp}", cfg)
        out["reference_like"] = run_monitor(settings, params, since=t1, window=cfg.requests, reference=reference,
                                            progress=say)
        _said(say, out["reference_like"])
        _shift_phases(settings, params, cfg, server.url, router.url, reference, stamp, out, say)
    trigger = (out["shifted"] or {}).get("trigger")
    if not out["shifted"]["drifted"] or not trigger or trigger["outcome"] != "started":
        out["retrain"] = None
        return out
    say(f"the trigger started the retraining run (pid {trigger['pid']}, log {trigger['log_path']}); waiting")
    since_ms = int(trigger["created"] * 1000)
    _wait(int(trigger["pid"]), cfg.retrain_timeout_s, say, trigger.get("log_path"))
    run_id = latest_parent_run(settings, since_ms)
    if run_id:
        out["retrain"] = summarize(settings, run_id)
        out["dpo"] = dpo_figures(out["retrain"])
    else:
        log = Path(trigger["log_path"] or "")
        out["retrain"] = {"state": "NOT STARTED", "error": f"the retrain opened no MLflow run; see {log}",
                          "log_tail": log.read_text(errors="replace")[-3000:] if log.is_file() else ""}
    return out


def dpo_figures(retrain: dict[str, Any]) -> dict[str, Any]:
    """The retrain's DPO stage from its run summary (components/retrain/dpo.py tags): what it did, and per model
    (SFT-only, SFT->DPO) the held-out preference accuracy and reward margin vs base."""
    tags = retrain.get("retrain") or {}
    out: dict[str, Any] = {"status": tags.get("dpo", "no DPO stage in this run")}
    for key, name in (("sft", "sft_only"), ("sft_dpo", "sft_dpo")):
        acc, margin = tags.get(f"dpo.{key}.preference_accuracy"), tags.get(f"dpo.{key}.preference_reward_margin")
        if acc is not None:
            out[name] = {"preference_accuracy": float(acc), "reward_margin": float(margin or "nan")}
    for key in ("held_out_pairs", "train_pairs", "steps"):
        if f"dpo.{key}" in tags:
            out[key] = int(float(tags[f"dpo.{key}"]))
    if "sft_only" in out and "sft_dpo" in out:
        out["dpo_beats_sft"] = out["sft_dpo"]["preference_accuracy"] > out["sft_only"]["preference_accuracy"]
    return out


def dpo_lines(d: dict[str, Any]) -> list[str]:
    lines = [f"[bold]DPO stage[/]: {d['status']}"]
    for name, label in (("sft_only", "SFT only"), ("sft_dpo", "SFT->DPO")):
        if name in d:
            lines.append(f"  {label:9s} prefers the chosen answer on {d[name]['preference_accuracy']:.1%} of "
                         f"{d.get('held_out_pairs', '?')} held-out pairs, reward margin vs base "
                         f"{d[name]['reward_margin']:+.4f}")
    if "dpo_beats_sft" in d:
        lines.append("  DPO beats SFT-only on held-out preference accuracy: "
                     + ("[green]yes[/]" if d["dpo_beats_sft"] else "[red]no[/]"))
    return lines


def _phase_line(name: str, res: dict[str, Any]) -> str:
    fired = ", ".join(res.get("fired") or []) or "-"
    note = f"; {res['note']}" if res.get("note") else ""
    return f"[bold]{name}[/]: severity {res['severity'].upper()} (drift from: {fired}){note}"


def summary_lines(r: dict[str, Any]) -> list[str]:
    """What each phase of the demo decided, in order, for a person: the paraphrased window's severity, every
    shifted window without new data (persistence, then "held: nothing new to learn" with its reason and the
    prompts queued for labelling), the feedback export, the window that started the retrain."""
    lines = [f"[bold]champion[/] {r['champion']}, {r['requests_per_phase']} requests per window"]
    if r.get("reference_like"):
        lines += [_phase_line("paraphrased in-domain", r["reference_like"]),
                  f"  report {r['reference_like']['report_html']}"]
    for k, res in enumerate(r.get("shifted_without_new_data") or [], 1):
        lines.append(_phase_line(f"shifted window {k}, no new data", res)
                     + f"; drift in {res['consecutive_drift_windows']} consecutive window(s)")
        t = res.get("trigger")
        if t is None:
            lines.append("  no trigger decision (the window is not at drift)")
            continue
        colour = {"held": "yellow", "started": "green"}.get(t["outcome"], "cyan")
        label = "NOTHING NEW TO LEARN: held, no retraining" if t["outcome"] == "held" else t["outcome"]
        lines.append(f"  trigger #{t['id']}: [{colour}]{label}[/] ({t['reason']})")
        if q := res.get("labelling"):
            lines.append(f"  {q['queued']} drifted prompts queued for labelling in {q['path']}")
        lines.append(f"  report {res['report_html']}")
    if rv := r.get("review"):
        lines.append(f"review (`llmops review accept`): {rv['accepted']} corrections accepted, {rv['refused']} "
                     f"refused, {rv['pending']} waiting")
    if r.get("feedback_export"):
        fx = r["feedback_export"]
        lines.append(f"feedback export (the new data): {fx['rows']} corrected answers -> {fx['path']}")
    if px := r.get("preference_export"):
        lines.append(f"preference export (`log export --kind preference`): {px['rows']} pairs -> {px['path']}")
    if r.get("shifted"):
        res, t = r["shifted"], r["shifted"].get("trigger")
        lines.append(_phase_line("shifted window with new data", res))
        lines.append(f"  trigger #{t['id']}: {t['outcome']} ({t['reason']})" if t else "  no trigger decision")
    return lines
