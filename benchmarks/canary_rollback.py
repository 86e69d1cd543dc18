"""Time from a bad canary's first request to its rollback, with the rollout as `make run` configures it.

    .venv/bin/python -m benchmarks.canary_rollback [--model tiny|base] [--faults errors,latency] [--repeat N]
        [--set canary.KEY=VALUE ...] [--json]

Real processes, as the canary_deploy step runs them (serving.local_stack): a stable and a canary
`llmops serve` of the same checkpoint registered twice, `llmops router` in front, H2's controller driving the
router through its admin API with params.yaml `canary:` (steps, interval, min_requests, load generator)
unchanged except the golden set's source (the benchmark's versions carry no lineage, so the test split is used).
The canary server alone gets a fault (`LLMOPS_SERVE_FAULTS`, the server's test-only setting):

- errors:  `error_rate=0.5` -- half of its generations answer 500
- latency: `latency_s=2.0`  -- every generation waits 2 s before its first token

Measured per run (wall clock, this process):
- first request -> rollback: from the first canary response the router recorded (polled from its admin
  window every 50 ms) to the controller's abort decision (recorded right after it set the weight to 0);
- weight > 0 -> rollback: from the decision that first gave the canary traffic to the abort.

Baseline: Flagger, *computed, not measured* (no cluster here): a failing canary is rolled back after
`threshold` failed checks, one check per analysis `interval`. Flagger's code defaults an unset interval to
60 s and an unset threshold to 1 (pkg/apis/flagger/v1beta1/canary.go: `AnalysisInterval = 60 * time.Second`,
`GetAnalysisThreshold ... return 1`); its docs document `interval` as "schedule interval (default 60s)" and
`threshold` as "max number of failed metric checks before rollback", with `interval: 1m` and `threshold: 5` in
its tutorials (https://docs.flagger.app/usage/how-it-works, https://docs.flagger.app/tutorials/istio-progressive-delivery).
So: at least 60 s x 5 = 300 s with the documented configuration, 60 s with both fields unset.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

FAULTS = {"errors": "error_rate=0.5", "latency": "latency_s=2.0"}
FLAGGER_INTERVAL_S = 60  # Flagger's AnalysisInterval default (its docs: "schedule interval (default 60s)")
FLAGGER_THRESHOLD_DOCUMENTED = 5  # `threshold: 5` in Flagger's documented tutorials
FLAGGER_THRESHOLD_UNSET = 1  # GetAnalysisThreshold when the field is unset
NAME = "bench-canary"


class FirstCanaryResponse:
    """Polls the router's admin window until it shows a canary response; `at` is when it was first seen."""

    def __init__(self, router_url: str, token: str, since: float) -> None:
        from serving.rollout.actuators.local import LocalRouterActuator

        self.actuator = LocalRouterActuator(router_url, token, timeout_s=2)
        self.since, self.at = since, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and self.at is None:
            try:
                if self.actuator.window(self.since, time.time() + 1).canary.requests > 0:
                    self.at = time.time()
            except Exception:  # the router not up yet / already stopped
                pass
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.actuator.close()


def one_run(settings: Any, params: Any, fault: str, stable_v: str, canary_v: str, log_dir: Path) -> dict[str, Any]:
    from components.canary_deploy.logic import join_probe_threads
    from serving.local_stack import LocalStack
    from serving.rollout.actuators.local import LocalRouterActuator, read_admin_token
    from serving.rollout.controller import start_rollout

    env = {"LLMOPS_API_KEY": None, "LLMOPS_API_KEY_FILE": None}
    threads = max(1, (os.cpu_count() or 2) // 2)
    with LocalStack(log_dir, env=env) as stack:
        stable = stack.server("stable", f"{NAME}/{stable_v}", threads=threads, log_requests=False)
        canary = stack.server("canary", f"{NAME}/{canary_v}", threads=threads, log_requests=False,
                              env={"LLMOPS_SERVE_FAULTS": FAULTS[fault]})
        stack.wait_ready(stable, canary)
        router = stack.router(stable.url)
        stack.wait_ready(router)
        token = read_admin_token(settings.state_dir)
        actuator = LocalRouterActuator(router.url, token)
        watcher = FirstCanaryResponse(router.url, token, since=time.time())
        try:
            outcome = start_rollout(settings, NAME, canary_v, actuator, traffic_url=router.url,
                                    actuator_spec=actuator.spec(), params=params,
                                    prepare=lambda: actuator.attach_canary(canary.url), actor="benchmark")
        finally:
            watcher.stop()
            actuator.close()
            join_probe_threads()  # the probe may still be scoring after a traffic breach decided the rollout
    decisions = outcome.decisions
    t_weight = next((d["time"] for d in decisions if d["kind"] == "weight" and d["weight"] > 0), None)
    t_abort = next((d["time"] for d in decisions if d["kind"] == "abort"), None)
    row: dict[str, Any] = {"fault": fault, "status": outcome.status, "reason": outcome.reason,
                           "breach": (outcome.breach or {}).get("metric")}
    if t_abort is not None and watcher.at is not None:
        row["first_request_to_rollback_s"] = round(t_abort - watcher.at, 2)
    if t_abort is not None and t_weight is not None:
        row["weight_to_rollback_s"] = round(t_abort - t_weight, 2)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["tiny", "base"], default="tiny")
    ap.add_argument("--faults", default="errors,latency")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="params override (canary.*)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from llmops import host

    host_fp = host.for_benchmark()  # the machine these timings come from (printed on stderr, recorded below)
    faults = [f for f in args.faults.split(",") if f]
    if unknown := sorted(set(faults) - set(FAULTS)):
        ap.error(f"unknown faults {unknown}; choose from {sorted(FAULTS)}")

    with tempfile.TemporaryDirectory(prefix="llmops-bench-canary-") as tmp:
        os.environ.update({"LLMOPS_STATE_DIR": f"{tmp}/state", "LLMOPS_ROUTER_ADMIN_TOKEN": "bench-admin-token"})
        from llmops.settings import get_settings

        get_settings.cache_clear()
        settings = get_settings()
        settings.ensure_state_dir()
        if args.model == "tiny":
            from llmops.modeling.tiny import build_tiny_model

            model_dir = build_tiny_model(Path(tmp) / "tiny", tokenizer_dir=settings.base_model_dir)
        else:
            model_dir = settings.base_model_dir
        overrides = ["canary.quality.golden_source=data/splits/test.jsonl", *args.overrides]
        params = settings.params(overrides)
        from llmops.registry import Registry
        from tests.registry_setup import register_checkpoint  # the tests' helper: a checkpoint dir as a version

        stable_v = register_checkpoint(settings, model_dir, NAME)
        Registry(settings).promote(NAME, stable_v, reason="benchmark champion")
        rows = []
        for fault in faults:
            for i in range(args.repeat):
                canary_v = register_checkpoint(settings, model_dir, NAME)
                row = one_run(settings, params, fault, stable_v, canary_v, Path(tmp) / f"logs/{fault}-{i}")
                rows.append(row)
                if not args.json:
                    print(f"{fault:8s} run {i + 1}: {row.get('first_request_to_rollback_s')} s from the first canary "
                          f"response to rollback ({row.get('weight_to_rollback_s')} s from weight > 0); "
                          f"{row['status']} on {row['breach']}", flush=True)

    c = params.canary
    flagger_documented = FLAGGER_INTERVAL_S * FLAGGER_THRESHOLD_DOCUMENTED
    flagger_unset = FLAGGER_INTERVAL_S * FLAGGER_THRESHOLD_UNSET
    summary: dict[str, Any] = {
        "model": args.model, "host": host_fp, "cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2),
        "rollout": {"steps": [s.weight for s in c.steps], "interval_s": c.interval_s,
                    "min_requests": c.step_defaults.min_requests, "loadgen_rate": c.loadgen.rate},
        "flagger_computed_s": {"documented_interval_1m_threshold_5": flagger_documented,
                               "unset_interval_threshold": flagger_unset},
        "runs": rows, "by_fault": {},
    }
    for fault in faults:
        times = [r["first_request_to_rollback_s"] for r in rows if r["fault"] == fault
                 and r["status"] == "rolled_back" and "first_request_to_rollback_s" in r]
        if times:
            med = statistics.median(times)
            summary["by_fault"][fault] = {
                "median_first_request_to_rollback_s": med, "runs": len(times),
                "flagger_documented_over_ours": round(flagger_documented / med, 1),
                "flagger_unset_over_ours": round(flagger_unset / med, 1)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for fault, s in summary["by_fault"].items():
            print(f"{fault}: median {s['median_first_request_to_rollback_s']} s over {s['runs']} run(s); Flagger "
                  f"(computed) {flagger_documented} s with its documented interval 1m x threshold 5 = "
                  f"{s['flagger_documented_over_ours']}x ours; {flagger_unset} s with both unset = "
                  f"{s['flagger_unset_over_ours']}x ours")
    return 0 if all(r["status"] == "rolled_back" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
