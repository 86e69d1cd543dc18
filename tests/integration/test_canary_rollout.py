"""Canary rollouts end to end on tiny models, every piece a real process: model servers (`llmops serve
NAME/VERSION`), the router (`llmops router`), and for the crash test the controller itself (`llmops canary
start`, SIGKILLed mid-rollout). Candidates: a corrupted adapter (quality), injected 500s and injected latency
(the server's test-only LLMOPS_SERVE_FAULTS) are each rolled back within the first step with zero failed
stable requests; a killed controller is seen dead by `status`, blocks a second rollout of the model, and is
cleaned up by `abort` or finished by `resume`, whose promotion shows in the alias audit trail.

Golden set: prompts of the test split with the stable tiny model's own greedy answers as references (a random
tiny model cannot match real references, so those would make every candidate tie at ~0)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from llmops.registry import Registry
from llmops.settings import Settings
from serving.rollout.actuators.local import LocalRouterActuator
from serving.rollout.controller import (
    abort_rollout,
    open_store,
    resume_rollout,
    rollout_status,
    start_rollout,
)
from serving.rollout.errors import RolloutLocked
from tests.serve_process import REPO, free_port, running_server

pytestmark = pytest.mark.slow

NAME = "canary-tiny"
TOKEN = "test-admin-token"
GOLDEN = 6
FAST = [  # two short steps; the first decides every bad candidate
    "canary.steps=[{weight: 50}, {weight: 100}]",
    "canary.step_defaults={min_duration_s: 2, min_requests: 6}",
    "canary.max_step_duration_s=40", "canary.interval_s=1", "canary.heartbeat_s=0.5", "canary.stale_after_s=5",
    "canary.loadgen.rate=12", "canary.loadgen.max_tokens=6",
    f"canary.quality.golden_size={GOLDEN}", "canary.quality.max_tokens=12",
    # a shared 2-core machine makes a tiny model's TTFT swing by tenths of a second: judge whole seconds here
    "canary.analysis.latency_p95.min_delta_s=1.0", "canary.analysis.ttft_p95.min_delta_s=1.0",
]


def _register(settings: Settings, model_dir: Path) -> str:
    import mlflow

    from llmops.tracking import configure, ensure_experiment

    configure(settings)
    with mlflow.start_run(experiment_id=ensure_experiment(settings)) as run:
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
    client = mlflow.tracking.MlflowClient(settings.tracking_uri)
    with contextlib.suppress(Exception):
        client.create_registered_model(NAME)
    return str(client.create_model_version(NAME, source=f"{run.info.artifact_uri}/model",
                                           run_id=run.info.run_id).version)


def _copy_tokenizer(model_dir: Path, out: Path) -> None:
    import shutil

    for f in model_dir.iterdir():
        if f.suffix != ".safetensors" and f.name != "config.json" and f.is_file():
            shutil.copy2(f, out / f.name)


def _answering(model_dir: Path, out: Path) -> Path:
    """The tiny model with its matrices redrawn at a larger scale: its greedy answers then differ per prompt
    (the default initialisation answers every prompt with the same newlines, which would make quality moot)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    model.save_pretrained(out, safe_serialization=True)
    _copy_tokenizer(model_dir, out)
    return out


def _corrupt(model_dir: Path, out: Path) -> Path:
    """The model with a LoRA adapter of random (untrained, large) weights merged in: a corrupted adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.5)
    model.merge_and_unload().save_pretrained(out, safe_serialization=True)
    _copy_tokenizer(model_dir, out)
    return out


@contextlib.contextmanager
def _router(stable: str, log: Path) -> Iterator[str]:
    port = free_port()
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "router", "--stable", stable, "--port",
                                 str(port)], stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """Registry with v1 (champion), v2 (the same weights: a good candidate), v3 (corrupted adapter); the stable
    server (v1) and the router in front of it; a golden set of the stable model's own answers."""
    from llmops.settings import get_settings

    tmp = tmp_path_factory.mktemp("canary")
    saved = dict(os.environ)
    os.environ.update({"LLMOPS_STATE_DIR": str(tmp / "state"), "LLMOPS_PROJECT_DIR": str(REPO),
                       "LLMOPS_ROUTER_ADMIN_TOKEN": TOKEN,
                       "LLMOPS_INFERENCE_LOG_ENABLED": "false"})  # the inference log has its own tests
    get_settings.cache_clear()
    settings = get_settings()
    settings.ensure_state_dir()
    try:
        good = _answering(tiny_model_dir, tmp / "good")
        v1, v2 = _register(settings, good), _register(settings, good)
        v3 = _register(settings, _corrupt(good, tmp / "corrupt"))
        Registry(settings).promote(NAME, v1, reason="test champion")
        with running_server(f"{NAME}/{v1}", tmp / "stable.log") as stable, _router(stable, tmp / "router.log") as r:
            golden = tmp / "golden.jsonl"
            prompts = [json.loads(line) for line in (REPO / "data/splits/test.jsonl").read_text().splitlines()[:40]]
            with open(golden, "w") as fh:
                for i, rec in enumerate(prompts[:GOLDEN]):
                    answer = httpx.post(f"{stable}/v1/chat/completions", timeout=60, json={
                        "model": NAME, "max_tokens": 12, "temperature": 0,
                        "messages": [{"role": "user", "content": rec["instruction"]}]}).json()
                    fh.write(json.dumps({"id": f"g{i}", "instruction": rec["instruction"], "input": "",
                                         "output": answer["choices"][0]["message"]["content"] or ".",
                                         "source": "stable-answers"}) + "\n")
            yield {"settings": settings, "tmp": tmp, "stable": stable, "router": r, "v": (v1, v2, v3),
                   "sets": [*FAST, f"canary.quality.golden_source={golden}"],
                   "params": settings.params([*FAST, f"canary.quality.golden_source={golden}"])}
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()


def _actuator(stack) -> LocalRouterActuator:
    return LocalRouterActuator(stack["router"], TOKEN)


def _roll(stack, version: str, canary_url: str, params=None):
    settings = stack["settings"]
    act = _actuator(stack)
    act.canary_url = canary_url
    t0 = time.time()
    outcome = start_rollout(settings, NAME, version, act, traffic_url=stack["router"], actuator_spec=act.spec(),
                            params=params or stack["params"], prepare=lambda: act.attach_canary(canary_url))
    return outcome, time.time() - t0, act.state()


@pytest.mark.parametrize("case", ["corrupted_adapter", "error_rate", "latency"])
def test_bad_candidate_is_rolled_back_in_the_first_step(stack, case: str) -> None:
    v1, v2, v3 = stack["v"]
    version, env, metrics = {
        "corrupted_adapter": (v3, {}, {"rouge_l_drop", "embed_similarity_drop"}),
        # the golden-set probe meets the same 500s (a failed answer scores empty) and may decide first
        "error_rate": (v2, {"LLMOPS_SERVE_FAULTS": "error_rate=0.5"}, {"error_rate", "error_rate_delta",
                                                                        "rouge_l_drop", "embed_similarity_drop"}),
        "latency": (v2, {"LLMOPS_SERVE_FAULTS": "latency_s=3.0"}, {"latency_p95_ratio", "ttft_p95_ratio"}),
    }[case]
    with running_server(f"{NAME}/{version}", stack["tmp"] / f"{case}.log", env=env) as canary:
        outcome, seconds, router_state = _roll(stack, version, canary)
    assert outcome.status == "rolled_back", outcome.to_json()
    analyses = [d for d in outcome.decisions if d["kind"] == "analysis"]
    detail = json.dumps(analyses, indent=1)
    assert outcome.breach["step"] == 1 and metrics & set(outcome.breach["all"]), detail
    if case == "error_rate" and not {"error_rate", "error_rate_delta"} & set(outcome.breach["all"]):
        probe = next(d for d in outcome.decisions if d["kind"] == "quality")
        assert probe["metrics"]["canary_failed"] > 0 and probe["metrics"]["stable_failed"] == 0, probe
    assert router_state["canary_percent"] == 0 and router_state["stable"]["url"] == stack["stable"]
    assert outcome.load.get("stable.failed", 0) == 0 and outcome.load.get("stable.ok", 0) > 0, outcome.load
    assert [d["verdict"] for d in analyses] == ["fail"] and analyses[0]["step_index"] == 0
    reg = Registry(stack["settings"])
    assert reg.alias_version(NAME, "champion") == v1
    tags = reg.show(f"{NAME}/{version}")["tags"]
    assert tags["canary.verdict"] == "rejected" and tags["canary.rejected.step"] == "1"
    assert tags["canary.rejected.metric"] == outcome.breach["metric"] and tags["canary.rejected.threshold"]
    print(f"{case}: rolled back in {seconds:.1f}s on {outcome.breach}\n{detail}")


def test_failure_limit_tolerates_one_failed_analysis_then_rolls_back(stack) -> None:
    """`canary.failure_limit: 1` (Argo's failureLimit): the first failed analysis is recorded and tolerated, the
    step is judged again on fresh requests only, and the second failure rolls the canary back."""
    _, v2, _ = stack["v"]
    params = stack["settings"].params([*stack["sets"], "canary.failure_limit=1"])
    assert params.canary.failure_limit == 1
    with running_server(f"{NAME}/{v2}", stack["tmp"] / "tolerated.log",
                        env={"LLMOPS_SERVE_FAULTS": "error_rate=0.5"}) as canary:
        outcome, _, router_state = _roll(stack, v2, canary, params=params)
    analyses = [d for d in outcome.decisions if d["kind"] == "analysis"]
    assert outcome.status == "rolled_back", outcome.to_json()
    assert [d["verdict"] for d in analyses] == ["fail", "fail"], json.dumps(analyses, indent=1)
    assert analyses[0]["time"] < analyses[1]["time"] and outcome.breach["step"] == 1
    assert rollout_status(stack["settings"], NAME, outcome.rollout_id)["failures"] == 2
    assert router_state["canary_percent"] == 0
    assert outcome.load.get("stable.failed", 0) == 0, outcome.load
    assert Registry(stack["settings"]).alias_version(NAME, "champion") == stack["v"][0]


def test_judge_through_our_own_server_returns_a_parseable_score(stack) -> None:
    """Any OpenAI-compatible URL works as the judge; the JSON-schema constraint makes even the random tiny model
    answer with a parseable 1..10 score (which is noise: only a capable judge model's score means anything)."""
    from serving.rollout.quality import Judge

    judge = Judge(stack["stable"], None, None)
    scores = [judge.score("What does len() return?", "The number of items.", answer)
              for answer in ("The number of items.", "A banana.")]
    assert all(s is not None and 1 <= s <= 10 for s in scores), scores


def _start_cli(stack, version: str, canary: str) -> subprocess.Popen:
    sets = [a for s in stack["sets"] for a in ("--set", s)]
    return subprocess.Popen([sys.executable, "-m", "cli.main", "canary", "start", NAME, version, "--router",
                             stack["router"], "--canary-url", canary, *sets], cwd=REPO, env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=open(stack["tmp"] / "controller.log", "ab"))


def _kill_mid_rollout(stack, proc: subprocess.Popen) -> None:
    store = open_store(stack["settings"])
    deadline = time.time() + 120
    while time.time() < deadline:
        r = store.active(NAME)
        if r is not None and r.step_index >= 0 and r.status == "running":
            break
        assert proc.poll() is None, (stack["tmp"] / "controller.log").read_text()[-3000:]
        time.sleep(0.2)
    else:
        pytest.fail("the controller never reached its first step")
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_killed_controller_is_seen_dead_blocks_a_second_rollout_and_is_aborted_or_resumed(stack) -> None:
    settings = stack["settings"]
    v1, v2, _ = stack["v"]
    with running_server(f"{NAME}/{v2}", stack["tmp"] / "good.log") as canary:
        # 1. killed, then aborted by hand: weight back to 0, champion untouched
        _kill_mid_rollout(stack, _start_cli(stack, v2, canary))
        st = rollout_status(settings, NAME)
        assert st["status"] == "running" and st["controller_alive"] is False and st["step_index"] >= 0
        with pytest.raises(RolloutLocked) as exc:
            _roll(stack, v2, canary)
        assert "gone" in exc.value.cause and "resume" in exc.value.fix
        out = abort_rollout(settings, NAME, reason="test: controller died")
        assert out.status == "aborted" and _actuator(stack).state()["canary_percent"] == 0
        assert Registry(settings).alias_version(NAME, "champion") == v1

        # 2. killed again, then resumed from its recorded step: all steps pass, champion moves (audited)
        _kill_mid_rollout(stack, _start_cli(stack, v2, canary))
        assert rollout_status(settings, NAME)["controller_alive"] is False
        out = resume_rollout(settings, NAME)
        assert out.status == "promoted", out.to_json()
        kinds = [d["kind"] for d in out.decisions]
        assert "resume" in kinds and kinds[-1] == "promote"
        passed = [d["step_index"] for d in out.decisions if d["kind"] == "analysis" and d["verdict"] == "pass"]
        assert passed[-1] == 1
        reg = Registry(settings)
        assert reg.alias_version(NAME, "champion") == v2
        last = reg.history(NAME, "champion")[-1]
        assert (last["action"], last["from_version"], last["to_version"]) == ("promote", v1, v2)
        assert f"canary rollout {out.rollout_id}" in last["reason"]
        state = _actuator(stack).state()
        assert state["stable"]["url"] == canary and state["canary"] is None and state["canary_percent"] == 0
        assert out.load.get("stable.failed", 0) == 0 and out.load.get("canary.failed", 0) == 0, out.load

    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    status = runner.invoke(app, ["canary", "status", NAME, "--json"])
    assert status.exit_code == 0 and json.loads(status.stdout)["status"] == "promoted"
    hist = runner.invoke(app, ["canary", "history", NAME, "--json"])
    rows = json.loads(hist.stdout)
    assert [r["status"] for r in rows[:2]] == ["promoted", "aborted"] and all("owner_token" not in r for r in rows)
    assert runner.invoke(app, ["canary", "abort", NAME]).exit_code == 2  # nothing active: a clear error
