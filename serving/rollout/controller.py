"""The rollout controller: the step loop that decides; an actuator executes (as vLLM's scheduler and engine).

For each step: set the canary weight, then every `interval_s` judge canary against stable on the window since
the step began (serving.rollout.analysis). A breach aborts at once (weight 0, `champion` untouched, the version
tagged rejected with step, metric, value and threshold). A step passes after `min_duration_s` with at least
`min_requests` on each side and every metric passing; one still short of requests after
`max_step_duration_s` ends the rollout as inconclusive. When every step passed, `champion` moves to the
candidate through the audited registry promotion (the same as `llmops models promote`), then the actuator
makes the canary the stable side.

Everything is recorded in the rollout state (serving.rollout.state) as it happens, under a per-model lock
with a heartbeat, so a controller that dies leaves a rollout that `status` shows, `resume` continues from its
last recorded step, and `abort` cleans up. Status changes are compare-and-set: when a person aborts or
promotes by hand while the controller runs, the controller sees it at its next interval and stops.

Entry points (what `llmops canary` and the canary_deploy step call): `start_rollout`, `resume_rollout`,
`abort_rollout`, `promote_rollout`, `rollout_status`, `rollout_history`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmops.params import Params
from llmops.registry import Registry, default_actor
from llmops.settings import Settings
from serving.rollout.actuators.base import Actuator, SideStats, WindowStats
from serving.rollout.analysis import Analysis, QualityScores, StepVerdict, analyse
from serving.rollout.config import RolloutConfig, calibrate, resolve
from serving.rollout.errors import RolloutError
from serving.rollout.loadgen import LoadGenerator
from serving.rollout.state import ACTIVE, Rollout, RolloutStatus, RolloutStore

Progress = Callable[[dict[str, Any]], None]
TAG = "canary"  # model version tags: canary.verdict, canary.rejected.step, canary.rejected.metric...


@dataclass
class RolloutOutcome:
    rollout_id: int
    model: str
    version: str
    stable_version: str | None
    status: RolloutStatus  # promoted | rolled_back | inconclusive | aborted (running: another process took over)
    reason: str
    breach: dict[str, Any] | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    load: dict[str, int] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.status == RolloutStatus.PROMOTED

    def to_json(self) -> dict[str, Any]:
        return {"rollout_id": self.rollout_id, "model": self.model, "version": self.version,
                "stable_version": self.stable_version, "status": self.status, "reason": self.reason,
                "breach": self.breach, "load": self.load, "decisions": self.decisions}


def open_store(settings: Settings) -> RolloutStore:
    return RolloutStore(settings.audit_db_uri)


def _tag(registry: Registry, name: str, version: str, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        registry.client.set_model_version_tag(name, version, f"{TAG}.{key}", str(value))


class _Heartbeat:
    """Stamps the controller's liveness every `every_s`; `lost` is set when the rollout is no longer ours."""

    def __init__(self, store: RolloutStore, rollout_id: int, token: str, every_s: float) -> None:
        self.store, self.rollout_id, self.token, self.every_s = store, rollout_id, token, every_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollout-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                if not self.store.heartbeat(self.rollout_id, self.token):
                    self.lost.set()
                    return
            except Exception:  # a database hiccup: try again next beat; staleness is the safety net
                continue

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)


class _QualityProbe:
    """Runs the golden-set probe once, in the background, while the first step gathers traffic."""

    def __init__(self, actuator: Actuator, golden: list[dict[str, str]], cfg: RolloutConfig,
                 settings: Settings) -> None:
        self.result: QualityScores | None = None
        self.detail: dict[str, Any] = {}
        self.error: str | None = None
        self.done = threading.Event()
        self._stop = threading.Event()

        def run() -> None:
            from serving.rollout.quality import ProbeCancelled, probe

            try:
                self.result, self.detail = probe(actuator.endpoints(), golden, cfg.params.quality, settings,
                                                 stop=self._stop)
            except ProbeCancelled:
                pass
            except Exception as exc:  # reported as a probe failure, never a silent pass
                self.error = f"{type(exc).__name__}: {exc}"
            finally:
                self.done.set()

        self._thread = threading.Thread(target=run, name="quality-probe", daemon=True)
        self._thread.start()

    def cancel(self, timeout_s: float = 60) -> None:
        """The rollout is decided: send no more probe requests, wait for those in flight (bounded)."""
        self._stop.set()
        self._thread.join(timeout_s)


class _Run:
    """One controller's drive of one rollout (fresh or resumed)."""

    def __init__(self, settings: Settings, store: RolloutStore, rollout: Rollout, token: str, actuator: Actuator,
                 progress: Progress | None) -> None:
        self.settings, self.store, self.rollout, self.token, self.actuator = settings, store, rollout, token, actuator
        self.cfg = RolloutConfig.from_json(rollout.config)
        self.progress = progress or (lambda _e: None)
        self.registry = Registry(settings)
        self.failures = rollout.failures

    def _emit(self, **event: Any) -> None:
        self.progress({"rollout_id": self.rollout.id, "model": self.rollout.model,
                       "version": self.rollout.version, **event})

    def _current(self) -> Rollout:
        return self.store.get(self.rollout.id)

    def _still_ours(self, beat: _Heartbeat) -> bool:
        return not beat.lost.is_set() and self._current().status == RolloutStatus.RUNNING

    def drive(self) -> RolloutOutcome:
        r, cfg = self.rollout, self.cfg
        load = quality = None
        with _Heartbeat(self.store, r.id, self.token, cfg.params.heartbeat_s) as beat:
            try:
                if r.traffic_url and cfg.params.loadgen.rate > 0:
                    load = LoadGenerator(r.traffic_url, r.model, list(r.probe.get("prompts") or []),
                                         cfg.params.loadgen).start()
                quality = _QualityProbe(self.actuator, r.golden, cfg, self.settings)
                prev_stable: SideStats | None = None
                for index in range(max(0, r.step_index), len(cfg.steps)):
                    verdict, prev_stable, analysis = self._step(index, quality, prev_stable, beat)
                    if verdict == StepVerdict.STOPPED:
                        return self._outcome(load)
                    if verdict != StepVerdict.PASS:
                        return self._finish_bad(index, verdict, analysis, quality, load)
                if not self._still_ours(beat):
                    return self._outcome(load)
                return self._promote(load, by_hand=False, reason=f"all {len(cfg.steps)} steps passed")
            finally:
                if quality is not None:
                    quality.cancel()
                if load is not None:
                    load.stop()

    def _step(self, index: int, quality: _QualityProbe, prev_stable: SideStats | None, beat: _Heartbeat
              ) -> tuple[StepVerdict, SideStats | None, Analysis | None]:
        step, p = self.cfg.steps[index], self.cfg.params
        if not self._still_ours(beat):
            return StepVerdict.STOPPED, prev_stable, None
        self.actuator.set_canary_weight(step.weight)
        self.store.set_step(self.rollout.id, index, step.weight)
        self.store.record(self.rollout.id, index, step.weight, "weight", message=f"canary weight {step.weight}%")
        if self._current().status in (RolloutStatus.ABORTED, RolloutStatus.ROLLED_BACK,
                                       RolloutStatus.INCONCLUSIVE):  # aborted while we set it
            self.actuator.abort()
            return StepVerdict.STOPPED, prev_stable, None
        t0 = since = time.time()
        quality_recorded = False
        while True:
            deadline = time.time() + p.interval_s
            while time.time() < deadline:
                if beat.lost.is_set():
                    return StepVerdict.STOPPED, prev_stable, None
                time.sleep(min(0.25, max(0.0, deadline - time.time())))
            if not self._still_ours(beat):
                return StepVerdict.STOPPED, prev_stable, None
            now = time.time()
            window = self.actuator.window(since, now)
            notes: tuple[str, ...] = ()
            if step.weight == 100:
                if prev_stable is None:  # resumed at the 100% step: the stable side has no window of its own
                    prev_stable = self.actuator.window(t0 - p.max_step_duration_s, t0).stable
                window = WindowStats(stable=prev_stable, canary=window.canary)
                notes = ("stable side: the previous step's window (no request reaches stable at 100%)",)
            if quality.done.is_set() and not quality_recorded:
                quality_recorded = True
                self.store.record(self.rollout.id, index, step.weight, "quality",
                                  verdict="error" if quality.error else None,
                                  metrics={"scores": quality.result.__dict__ if quality.result else None,
                                           **quality.detail}, message=quality.error or "golden-set probe scored")
            if quality.error:
                return StepVerdict.PROBE_ERROR, prev_stable, None
            analysis = analyse(window, p.analysis, step.min_requests, quality=quality.result,
                               quality_pending=quality.result is None, notes=notes)
            elapsed = now - t0
            self._emit(kind="analysis", step=index + 1, steps=len(self.cfg.steps), weight=step.weight,
                       elapsed_s=elapsed, min_duration_s=step.min_duration_s, analysis=analysis.to_json())
            if analysis.verdict == StepVerdict.FAIL:
                self.failures += 1
                self.store.set_step(self.rollout.id, index, step.weight, failures=self.failures)
                self.store.record(self.rollout.id, index, step.weight, "analysis", verdict=StepVerdict.FAIL,
                                  metrics=analysis.to_json(), message=_breach_text(analysis),
                                  at=now)
                if self.failures > p.failure_limit:
                    return StepVerdict.FAIL, prev_stable, analysis
                since = now  # tolerated (failure_limit): judge fresh evidence next
                continue
            if analysis.verdict == StepVerdict.PASS and elapsed >= step.min_duration_s:
                self.store.record(self.rollout.id, index, step.weight, "analysis", verdict=StepVerdict.PASS,
                                  metrics=analysis.to_json(), message=f"step {index + 1} passed", at=now)
                return StepVerdict.PASS, window.stable if step.weight < 100 else prev_stable, analysis
            if elapsed >= p.max_step_duration_s:
                self.store.record(self.rollout.id, index, step.weight, "analysis", verdict=StepVerdict.INCONCLUSIVE,
                                  metrics=analysis.to_json(), at=now,
                                  message=f"after {elapsed:.0f}s: {analysis.stable.requests} stable / "
                                          f"{analysis.canary.requests} canary requests (need {step.min_requests} "
                                          "each)" if not analysis.enough_requests else "quality not scored")
                return StepVerdict.INCONCLUSIVE, prev_stable, analysis

    def _finish_bad(self, index: int, verdict: StepVerdict, analysis: Analysis | None, quality: _QualityProbe,
                    load: LoadGenerator | None) -> RolloutOutcome:
        """Weight to 0 first (at once), then the record, the status and the version's tags."""
        self.actuator.abort()
        step = self.cfg.steps[index]
        breach = None
        if verdict == StepVerdict.FAIL and analysis is not None:
            m = analysis.breaches[0]
            breach = {"step": index + 1, "weight": step.weight, "metric": m.name, "value": m.value,
                      "threshold": m.threshold, "detail": m.detail,
                      "all": [b.name for b in analysis.breaches]}
            reason = f"step {index + 1} ({step.weight}%): {_breach_text(analysis)}"
            status = RolloutStatus.ROLLED_BACK
        elif verdict == StepVerdict.PROBE_ERROR:
            reason, status = f"quality probe failed: {quality.error}", RolloutStatus.ROLLED_BACK
            breach = {"step": index + 1, "weight": step.weight, "metric": "quality_probe", "value": None,
                      "threshold": None, "detail": quality.error}
        else:
            reason, status = f"step {index + 1} ({step.weight}%) inconclusive after " \
                             f"{self.cfg.params.max_step_duration_s:g}s: too few requests or no quality score", \
                RolloutStatus.INCONCLUSIVE
        if not self.store.transition(self.rollout.id, (RolloutStatus.RUNNING,), status, reason):
            return self._outcome(load)  # finished by someone else meanwhile (a manual abort or promote)
        self.store.record(self.rollout.id, index, 0, "abort", verdict=status, metrics={"breach": breach},
                          message=reason)
        tags: dict[str, Any] = {"verdict": "rejected" if status == RolloutStatus.ROLLED_BACK else status,
                                "rollout_id": self.rollout.id, "reason": reason}
        if breach:
            tags.update({f"rejected.{k}": ("" if v is None else v) for k, v in breach.items()
                         if k not in ("detail", "all")})
        _tag(self.registry, self.rollout.model, self.rollout.version, tags)
        self._emit(kind="done", status=status, reason=reason, breach=breach)
        return self._outcome(load, breach)

    def _promote(self, load: LoadGenerator | None, *, by_hand: bool, reason: str) -> RolloutOutcome:
        return _complete_promotion(self.settings, self.store, self.registry, self.actuator, self.rollout.id,
                                   reason=reason, by_hand=by_hand, progress=self.progress, load=load)

    def _outcome(self, load: LoadGenerator | None, breach: dict[str, Any] | None = None) -> RolloutOutcome:
        return _outcome(self.store, self.store.get(self.rollout.id), load, breach)


def _breach_text(analysis: Analysis) -> str:
    return "; ".join(f"{m.name} {_num(m.value)} vs threshold {_num(m.threshold)} ({m.detail})"
                     for m in analysis.breaches)


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _outcome(store: RolloutStore, r: Rollout, load: LoadGenerator | None, breach: dict[str, Any] | None = None
             ) -> RolloutOutcome:
    return RolloutOutcome(rollout_id=r.id, model=r.model, version=r.version, stable_version=r.stable_version,
                          status=r.status, reason=r.reason, breach=breach, decisions=store.decisions_of(r.id),
                          load=load.stop() if load is not None else {})


def _complete_promotion(settings: Settings, store: RolloutStore, registry: Registry, actuator: Actuator,
                        rollout_id: int, *, reason: str, by_hand: bool, progress: Progress,
                        load: LoadGenerator | None = None) -> RolloutOutcome:
    """running -> promoting -> (audited champion move, actuator.promote) -> promoted; resumable from promoting."""
    r = store.get(rollout_id)
    if r.status == RolloutStatus.RUNNING and not store.transition(rollout_id, (RolloutStatus.RUNNING,),
                                                                     RolloutStatus.PROMOTING, reason):
        return _outcome(store, store.get(rollout_id), load)
    r = store.get(rollout_id)
    if r.status != RolloutStatus.PROMOTING:
        return _outcome(store, r, load)
    champion = registry.alias_version(r.model, "champion")
    if champion not in (r.stable_version, r.version):
        actuator.abort()
        why = f"champion moved to {champion} during the rollout (it started from {r.stable_version}): not promoting"
        store.transition(rollout_id, (RolloutStatus.PROMOTING,), RolloutStatus.ABORTED, why)
        store.record(rollout_id, r.step_index, 0, "abort", verdict="aborted", message=why)
        return _outcome(store, store.get(rollout_id), load)
    event = registry.promote(r.model, r.version, "champion", actor=r.actor,
                             reason=f"canary rollout {rollout_id}: {reason}")
    actuator.promote()
    store.transition(rollout_id, (RolloutStatus.PROMOTING,), RolloutStatus.PROMOTED, reason)
    store.record(rollout_id, r.step_index, 100, "promote", verdict="promoted",
                 metrics={"audit_event": event, "by_hand": by_hand}, message=reason)
    _tag(registry, r.model, r.version, {"verdict": "promoted", "rollout_id": rollout_id, "reason": reason})
    progress({"kind": "done", "status": "promoted", "reason": reason, "rollout_id": rollout_id})
    return _outcome(store, store.get(rollout_id), load)


# ---- entry points --------------------------------------------------------------------------------------------


def prepare_probe(settings: Settings, params: Params, registry: Registry, name: str, champion: str
                  ) -> dict[str, Any]:
    """The frozen golden set (from the champion's held-out data by default) and the load generator's prompts."""
    from serving.rollout.loadgen import read_prompts
    from serving.rollout.quality import golden_source, pick_golden, read_records

    q = params.canary.quality
    tags = registry.show(f"{name}/{champion}")["tags"]
    source = golden_source(settings, q, tags, f"{name}/{champion}")
    records = read_records(source)
    golden = pick_golden(records, q)
    lg = params.canary.loadgen.source
    if lg == "heldout":
        prompts = [r["prompt"] for r in records]
    else:
        path = settings.project_dir / lg if not lg.startswith("/") else lg
        prompts = read_prompts(path)
    return {"golden": golden, "prompts": prompts, "source": str(source)}


def start_rollout(settings: Settings, name: str, version: str, actuator: Actuator, *, traffic_url: str | None,
                  actuator_spec: dict[str, Any], params: Params | None = None, weights: list[int] | None = None,
                  prepare: Callable[[], None] | None = None, progress: Progress | None = None,
                  actor: str | None = None) -> RolloutOutcome:
    """Run a whole rollout of NAME/VERSION against the current champion; blocks until it is decided.

    `actuator` acts on the platform; `actuator_spec` is what the state records to rebuild it on resume/abort
    (`serving.rollout.actuators.build`). `traffic_url` is where the load generator sends its requests (the
    router, or the InferenceService URL); None: live traffic only. `prepare` runs once the model's rollout lock
    is held (e.g. put the candidate behind the router as the canary at 0%)."""
    from llmops.registry import normalize_version

    params = params or settings.params()
    version = normalize_version(version)
    registry = Registry(settings)
    registry.show(f"{name}/{version}")  # NotFound for an unknown name/version
    champion = registry.alias_version(name, "champion")
    if champion is None:
        raise RolloutError(f"{name} has no champion: there is no stable side to compare {version} with",
                           f"the first version becomes champion without a rollout: `llmops models promote {name} "
                           f"{version} --reason ...`")
    if champion == version:
        raise RolloutError(f"{name}/{version} is already the champion", "roll out a newer version")
    # `auto` load rate / golden-set size: measured on the stable server (the traffic URL, no canary yet)
    params, calibration = calibrate(params, traffic_url, list(params.engine.prompts), weights)
    if calibration is not None and progress is not None:
        progress({"kind": "calibration", **calibration})
    cfg = resolve(params.canary, weights)
    probe = prepare_probe(settings, params, registry, name, champion)
    store = open_store(settings)
    rollout, token = store.create(model=name, version=version, stable_version=champion, config=cfg.to_json(),
                                  actuator=actuator_spec, traffic_url=traffic_url, probe=probe,
                                  actor=actor or default_actor(), stale_after_s=cfg.params.stale_after_s)
    store.record(rollout.id, -1, 0, "start", message=f"{name}/{version} vs champion {champion}; steps "
                 + ",".join(f"{s.weight}%" for s in cfg.steps) + f"; golden set {len(probe['golden'])} from "
                 f"{probe['source']}" + (f"; {calibration['summary']}" if calibration else ""))
    try:
        if prepare is not None:
            prepare()
        actuator.set_canary_weight(0)
    except Exception as exc:
        store.transition(rollout.id, (RolloutStatus.RUNNING,), RolloutStatus.ABORTED,
                         f"could not prepare the canary: {exc}")
        raise
    return _Run(settings, store, store.get(rollout.id), token, actuator, progress).drive()


def _active(store: RolloutStore, name: str) -> Rollout:
    r = store.active(name)
    if r is None:
        latest = store.latest(name)
        where = f" (the latest, {latest.id}, is {latest.status})" if latest else ""
        raise RolloutError(f"{name} has no active rollout{where}", f"`llmops canary history {name}`")
    return r


def resume_rollout(settings: Settings, name: str, *, actuator: Actuator | None = None,
                   progress: Progress | None = None) -> RolloutOutcome:
    """Continue the model's active rollout whose controller died, from its last recorded step."""
    from serving.rollout.actuators import build

    store = open_store(settings)
    r = _active(store, name)
    cfg = RolloutConfig.from_json(r.config)
    if r.controller_alive(cfg.params.stale_after_s):
        raise RolloutError(f"rollout {r.id} of {name} still has a live controller (pid {r.owner_pid} on "
                           f"{r.owner_host})", f"only a dead controller's rollout resumes; `llmops canary abort {name}`"
                           " stops it")
    token = store.take_over(r.id, r.owner_token)
    actuator = actuator or build(r.actuator, settings)
    store.record(r.id, r.step_index, r.weight, "resume",
                 message=f"resumed by {default_actor()} at step {max(r.step_index, 0) + 1} (status {r.status})")
    if r.status == RolloutStatus.PROMOTING:
        return _complete_promotion(settings, store, Registry(settings), actuator, r.id, reason=r.reason or
                                   "promotion resumed", by_hand=False, progress=progress or (lambda _e: None))
    if r.status == RolloutStatus.ABORTING:
        return abort_rollout(settings, name, reason=r.reason or "abort resumed", actuator=actuator)
    return _Run(settings, store, store.get(r.id), token, actuator, progress).drive()


def abort_rollout(settings: Settings, name: str, *, reason: str, actuator: Actuator | None = None,
                  force: bool = False) -> RolloutOutcome:
    """Canary weight to 0 at once, the rollout ends as aborted (whether its controller lives or died).
    `force`: end it in the state even when the platform cannot be reached (the weight must then be reset by hand)."""
    from serving.rollout.actuators import build

    store = open_store(settings)
    r = _active(store, name)
    reason = (reason or "").strip() or "aborted by hand"
    try:
        (actuator or build(r.actuator, settings)).abort()
    except RolloutError as exc:
        if not force:
            raise RolloutError(f"cannot set the canary weight to 0: {exc.cause}",
                               f"bring the router/InferenceService back, or `llmops canary abort {name} --force` to "
                               "end the rollout in the state only (then set the weight to 0 by hand)") from None
        reason = f"{reason} (forced: the actuator was unreachable: {exc.cause})"
    if store.transition(r.id, ACTIVE, RolloutStatus.ABORTED, reason):
        store.record(r.id, r.step_index, 0, "abort", verdict="aborted", message=f"{default_actor()}: {reason}")
        _tag(Registry(settings), r.model, r.version, {"verdict": "aborted", "rollout_id": r.id, "reason": reason})
    return _outcome(store, store.get(r.id), None)


def promote_rollout(settings: Settings, name: str, *, reason: str, actuator: Actuator | None = None
                    ) -> RolloutOutcome:
    """Skip the remaining steps: champion -> the candidate (audited), the canary becomes stable."""
    from serving.rollout.actuators import build

    reason = (reason or "").strip()
    if not reason:
        raise RolloutError("a reason is required to promote by hand", "pass --reason TEXT")
    store = open_store(settings)
    r = _active(store, name)
    actuator = actuator or build(r.actuator, settings)
    steps = len(r.config["steps"])
    why = f"promoted by hand at step {max(r.step_index, 0) + 1}/{steps} (remaining steps skipped): {reason}"
    return _complete_promotion(settings, store, Registry(settings), actuator, r.id, reason=why, by_hand=True,
                               progress=lambda _e: None)


def rollout_status(settings: Settings, name: str, rollout_id: int | None = None) -> dict[str, Any]:
    """The model's active (else latest) rollout with its decisions and whether its controller is alive."""
    store = open_store(settings)
    r = store.get(rollout_id) if rollout_id is not None else (store.active(name) or store.latest(name))
    if r is None:
        raise RolloutError(f"{name} has no rollout yet", f"start one: `llmops canary start {name} VERSION`")
    stale = float(r.config["params"]["stale_after_s"])
    return {**r.to_json(stale), "steps": r.config["steps"], "decisions": store.decisions_of(r.id)}


def rollout_history(settings: Settings, name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    store = open_store(settings)
    return [r.to_json() for r in store.history(name, limit)]
