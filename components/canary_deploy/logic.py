"""canary_deploy step: put a newly registered version in front of live traffic, or not, on measured evidence.

- The first version of a name has no stable side: register already made it `champion`
  (registry.first_champion), so the decision is `first_version`.
- A later version goes through the metric-gated rollout (serving.rollout.controller) with the current
  champion as the stable side. Locally the step starts the stable and canary model servers and the router
  as processes (serving.local_stack), drives the router through its admin API (the local actuator), and
  stops every process it started, failure or not. In the cluster profile the same controller drives the
  KServe actuator (canaryTrafficPercent on the InferenceService, PromQL from Prometheus).
- Every rollout's steps and numbers go to an MLflow child run `canary_deploy`: one metric series per
  analysed metric and the weight (MLflow step = analysis interval), the decisions as JSON, and a chart.

Decision strings (the step's output, the pipeline summary's `canary` line): `promoted`,
`rolled_back:<why>`, `first_version`, `skipped:<why>`. This module never imports KFP.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from llmops.params import Params
from llmops.settings import Settings

STEP = "canary_deploy"


def decision_of(status: str, reason: str) -> str:
    """The step's decision string for a controller outcome status."""
    if status == "promoted":
        return "promoted"
    if status in ("rolled_back", "inconclusive"):
        return f"rolled_back:{reason}"
    if status == "aborted":
        return f"rolled_back:aborted: {reason}"
    return f"skipped:rollout {status}: {reason}"  # running: another controller took it over


class _Recorder:
    """The controller's progress events, stamped with seconds since the rollout started; printed as lines."""

    def __init__(self) -> None:
        self.t0 = time.time()
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        event = {**event, "t": round(time.time() - self.t0, 2)}
        self.events.append(event)
        if event.get("kind") == "analysis":
            a = event["analysis"]
            figures = "  ".join(f"{m['name']}={_fmt(m.get('value'))}/{_fmt(m.get('threshold'))}:{m['verdict']}"
                                for m in a.get("metrics") or [])
            print(f"[canary] step {event['step']}/{event['steps']} weight {event['weight']}% "
                  f"t={event['elapsed_s']:.0f}s requests stable {a['stable']['requests']} canary "
                  f"{a['canary']['requests']} -> {a['verdict']}  {figures}", flush=True)
        elif event.get("kind") == "done":
            print(f"[canary] {event.get('status')}: {event.get('reason')}", flush=True)
        elif event.get("kind") == "calibration":  # `auto` load rate / golden-set size, measured on stable
            print(f"[canary] {event.get('summary')}", flush=True)


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def join_probe_threads(timeout_s: float = 300) -> None:
    """Wait for the controller's golden-set probe if it is still scoring (a rollout decided on traffic first):
    its daemon thread runs torch, and a process that exits under it aborts ("terminate called without an
    active exception", exit 134), which a pipeline runner reads as a failed step."""
    import threading

    deadline = time.monotonic() + timeout_s
    for t in threading.enumerate():
        if t.name == "quality-probe" and t.is_alive():
            t.join(max(0.0, deadline - time.monotonic()))


def _clear_dead_local_rollout(settings: Settings, name: str) -> str | None:
    """A previous local rollout of `name` whose controller died (a killed pipeline run) holds the lock, and
    its servers died with it: abort it so this run can roll out. Returns what was done, or None."""
    from serving.rollout.config import RolloutConfig
    from serving.rollout.controller import abort_rollout, open_store
    from serving.rollout.errors import RolloutError
    from serving.rollout.state import ACTIVE, RolloutStatus

    store = open_store(settings)
    r = store.active(name)
    if r is None or r.actuator.get("kind") != "local":
        return None
    if r.controller_alive(RolloutConfig.from_json(r.config).params.stale_after_s):
        return None
    why = f"its controller (pid {r.owner_pid}) died; a new {STEP} run took over"
    try:
        abort_rollout(settings, name, reason=why)
    except RolloutError:  # its router died with it: nothing serves the canary any more
        if store.transition(r.id, ACTIVE, RolloutStatus.ABORTED, why + " (router gone)"):
            store.record(r.id, r.step_index, 0, "abort", verdict=RolloutStatus.ABORTED, message=why + " (router gone)")
    return f"aborted stale rollout {r.id} of {name}/{r.version}: {why}"


def run_local(settings: Settings, params: Params, name: str, version: str, overrides: list[str],
              progress: _Recorder, log_dir: Path, canary_env: dict[str, str] | None = None) -> Any:
    """Stable + canary servers and the router as processes, the rollout against them, everything stopped.
    `canary_env`: extra environment of the candidate's server only (tests and the rollback benchmark inject
    faults with the server's test-only LLMOPS_SERVE_FAULTS)."""
    from serving.local_stack import LocalStack
    from serving.rollout.actuators.local import LocalRouterActuator, read_admin_token
    from serving.rollout.controller import start_rollout

    champion = _champion(settings, name)
    threads = max(1, (os.cpu_count() or 2) // 2)  # two servers share the machine
    # The servers are private to this step (loopback): no API key, so the load generator and probe need none.
    env = {"LLMOPS_API_KEY": None, "LLMOPS_API_KEY_FILE": None}
    with LocalStack(log_dir, overrides=tuple(overrides), env=env) as stack:
        # All traffic here is synthetic (load generator, golden-set probe): keep it out of the inference log.
        stable = stack.server("stable", f"{name}/{champion}", threads=threads, log_requests=False)
        canary = stack.server("canary", f"{name}/{version}", threads=threads, env=canary_env, log_requests=False)
        print(f"[canary] starting stable {name}/{champion} and canary {name}/{version} (logs in {log_dir})",
              flush=True)
        stack.wait_ready(stable, canary)
        router = stack.router(stable.url, log_requests=False)
        stack.wait_ready(router)
        actuator = LocalRouterActuator(router.url, read_admin_token(settings.state_dir))
        try:
            return start_rollout(settings, name, version, actuator, traffic_url=router.url,
                                 actuator_spec=actuator.spec(), params=params,
                                 prepare=lambda: actuator.attach_canary(canary.url), progress=progress,
                                 actor=f"pipeline:{STEP}")
        finally:
            actuator.close()


def run_kserve(settings: Settings, params: Params, name: str, version: str, progress: _Recorder) -> Any:
    """The same rollout on the cluster: the InferenceService in settings gets the version as its canary."""
    from llmops.registry import Registry
    from serving.rollout.actuators.kserve import from_settings
    from serving.rollout.controller import start_rollout

    actuator = from_settings(settings)
    storage_uri = Registry(settings).client.get_model_version_download_uri(name, version)
    traffic_url = ((actuator.get().get("status") or {}).get("url")) or None
    return start_rollout(settings, name, version, actuator, traffic_url=traffic_url, actuator_spec=actuator.spec(),
                         params=params, prepare=lambda: actuator.deploy_canary(storage_uri, f"{name}/{version}"),
                         progress=progress, actor=f"pipeline:{STEP}")


def _champion(settings: Settings, name: str) -> str | None:
    from llmops.registry import Registry

    return Registry(settings).alias_version(name, "champion")


def canary_deploy(settings: Settings, params: Params, *, name: str, version: str, parent_run_id: str | None,
                  overrides: list[str] | None = None, canary_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Decide the version's fate; returns {decision, reason, status, rollout_id, champion, seconds, ...}."""
    from llmops.registry import normalize_version
    from serving.rollout.errors import RolloutLocked

    t0 = time.perf_counter()
    version = normalize_version(version)
    champion = _champion(settings, name)
    progress = _Recorder()
    result: dict[str, Any] = {"model": name, "version": version, "stable_version": champion, "rollout_id": None,
                              "status": None, "outcome": None}
    if champion == version:
        result.update(decision="first_version", reason=f"{name}/{version} is the first version: champion without "
                      "a rollout (registry.first_champion)")
    elif champion is None:
        result.update(decision="skipped:no champion to compare with",
                      reason=f"{name} has no champion and registry.first_champion is off: promote one by hand "
                      f"(`llmops models promote {name} VERSION --reason ...`)")
    else:
        log_dir = settings.state_dir / "logs" / "canary" / time.strftime(f"{name}-v{version}-%Y%m%d-%H%M%S")
        try:
            if settings.profile == "cluster":
                outcome = run_kserve(settings, params, name, version, progress)
            else:
                if cleared := _clear_dead_local_rollout(settings, name):
                    print(f"[canary] {cleared}", flush=True)
                outcome = run_local(settings, params, name, version, list(overrides or []), progress, log_dir,
                                    canary_env)
        except RolloutLocked as exc:
            result.update(decision=f"skipped:{exc.cause}", reason=str(exc))
        else:
            join_probe_threads()
            result.update(decision=decision_of(outcome.status, outcome.reason), reason=outcome.reason,
                          status=outcome.status, rollout_id=outcome.rollout_id, outcome=outcome.to_json())
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["champion_after"] = _champion(settings, name)
    log_to_mlflow(settings, parent_run_id, result, progress.events)
    return result


def log_to_mlflow(settings: Settings, parent_run_id: str | None, result: dict[str, Any],
                  events: list[dict[str, Any]]) -> str:
    """The step's child run: decision tags, per-interval metric series, decisions JSON, the chart."""
    import mlflow

    from components.canary_deploy.chart import rollout_chart
    from llmops.tracking import step_run

    with step_run(settings, parent_run_id, STEP) as run_id:
        mlflow.set_tags({"canary.decision": result["decision"][:5000], "canary.reason": result["reason"][:5000],
                         "canary.version": result["version"], "canary.stable_version": str(result["stable_version"]),
                         "canary.rollout_id": str(result["rollout_id"]),
                         "canary.champion_after": str(result["champion_after"])})
        mlflow.log_metric("canary.seconds", result["seconds"])
        outcome = result.get("outcome") or {}
        for key, value in (outcome.get("load") or {}).items():
            if isinstance(value, int | float):
                mlflow.log_metric(f"canary.load.{key}", value)
        for e in events:
            if e.get("kind") == "calibration":  # what the host measured and what the rollout derived from it
                measured = e.get("measured") or {}
                values = {"requests_per_s": measured.get("requests_per_s"), "tokens_per_s": measured.get(
                    "tokens_per_s"), "rate": e.get("rate"), "golden_size": e.get("golden_size"),
                    "max_step_duration_s": e.get("max_step_duration_s")}
                mlflow.log_metrics({f"canary.calibration.{k}": float(v) for k, v in values.items() if v is not None})
        analyses = [e for e in events if e.get("kind") == "analysis"]
        for i, e in enumerate(analyses):
            ts = int((time.time() - (analyses[-1]["t"] - e["t"])) * 1000)
            values = {"canary.weight": e["weight"], "canary.step": e["step"],
                      "canary.requests.stable": e["analysis"]["stable"]["requests"],
                      "canary.requests.canary": e["analysis"]["canary"]["requests"]}
            values |= {f"canary.{m['name']}": m["value"] for m in e["analysis"]["metrics"]
                       if m.get("value") is not None}
            for key, value in values.items():
                mlflow.log_metric(key, float(value), step=i, timestamp=ts)
        with tempfile.TemporaryDirectory(prefix="llmops-canary-") as tmp:
            (Path(tmp) / "rollout.json").write_text(json.dumps({**result, "events": events}, indent=2, default=str))
            mlflow.log_artifact(str(Path(tmp) / "rollout.json"), artifact_path="canary")
            title = f"{result['model']}/{result['version']} vs {result['stable_version']}: {result['decision'][:120]}"
            if chart := rollout_chart(events, Path(tmp) / "rollout.png", title=title):
                mlflow.log_artifact(str(chart), artifact_path="canary")
    return run_id
