"""`llmops monitor run` end to end on real parts: requests in the real inference log (C6), a drift reference
and reports from the real drift library and MiniLM embedder (C5), MLflow in the test's state dir, and the
trigger's de-duplication and cooldown persisted in SQLite across separate runs.

The retraining command is configured (monitoring.trigger.command) as a small script that records the
arguments and environment it was started with: what is under test is what the trigger starts and when; the
retraining DAG itself is tested by the pipeline tests."""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from llmops.data.records import read_jsonl
from llmops.modeling.embedder import ensure_embedder
from llmops.modeling.prompts import user_message
from monitoring import triggers
from monitoring.drift import build_reference, default_reference_dir
from serving.records import RequestRecord

REPO = Path(__file__).resolve().parents[2]
RECORDER = """import json, os, sys
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"argv": sys.argv[2:], "run_id": os.environ.get("LLMOPS_TRIGGER_RUN_ID"),
                        "trigger_id": os.environ.get("LLMOPS_TRIGGER_ID")}) + "\\n")
"""


def _sample(path: Path, n: int) -> list[dict]:
    """A seeded random sample: the split files are ordered by source, so their first rows are not representative."""
    records = read_jsonl(path).to_dict(orient="records")
    return [records[int(i)] for i in np.random.default_rng(0).choice(len(records), size=n, replace=False)]


@pytest.fixture
def monitored(settings, tmp_path):
    """A state dir with a saved drift reference (300 training prompts) and a recording retrain command."""
    params = settings.params()
    ensure_embedder(settings, params)
    train = _sample(REPO / "data" / "splits" / "train.jsonl", 300)
    build_reference([user_message(r) for r in train], settings, params, responses=[r["output"] for r in train],
                    prompt_source="train (300, seeded)").save(default_reference_dir(settings))
    script, out = tmp_path / "record.py", tmp_path / "started.jsonl"
    script.write_text(RECORDER)
    command = json.dumps([sys.executable, str(script), str(out)])
    # one drifted window counts at once here (persistence has its own test); no champion: every dataset is new
    return settings, [f"monitoring.trigger.command={command}", "drift.permutations=200",
                      "monitoring.trigger.persist_windows=1"], out


def _log(settings, records: list[dict], start: float) -> None:
    from monitoring.inference_log import open_log

    log = open_log(settings)
    try:
        for i, r in enumerate(records):  # the C1 hook, called from a plain thread, returns once committed
            log.hook(RequestRecord(
                request_id=f"req-{start:.0f}-{i}", route="/v1/chat/completions", model="tiny", model_version="1",
                prompt=[{"role": "user", "content": user_message(r)}], response=r["output"], prompt_tokens=20,
                completion_tokens=12, latency_s=0.2, ttft_s=0.05, status=200, finish_reason="stop",
                time=start + i * 0.01))
    finally:
        log.close()


def _monitor(sets: list[str], *extra: str) -> dict:
    args = ["monitor", "run", "--json", "--window", "80", *extra]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _started(out: Path, n: int) -> list[dict]:
    deadline = time.time() + 30  # the command runs detached: wait for its record
    while time.time() < deadline:
        lines = out.read_text().splitlines() if out.is_file() else []
        if len(lines) >= n:
            return [json.loads(line) for line in lines]
        time.sleep(0.2)
    raise AssertionError(f"the retrain command did not start {n} time(s)")


@pytest.mark.slow  # five monitor runs (embedder, MLflow): about 1-3 min on 2 busy cores
def test_one_shift_starts_one_retrain_run_then_cooldown(monitored):
    settings, sets, out = monitored
    shifted = read_jsonl(REPO / "data" / "drift" / "shifted.jsonl").to_dict(orient="records")
    holdout = _sample(REPO / "data" / "splits" / "validation.jsonl", 80)

    _log(settings, holdout[:80], time.time() - 600)  # reference-like traffic: no verdict of drift, no trigger
    quiet = _monitor(sets)
    assert not quiet["drifted"], json.loads(Path(quiet["report_json"]).read_text())["detectors"]
    assert quiet["trigger"] is None and quiet["window"]["requests"] == 80 and quiet["severity"] != "drift"

    _log(settings, shifted[:80], time.time() - 300)
    first = _monitor(sets)
    assert first["drifted"] and first["fired"]
    assert first["trigger"]["outcome"] == "started", first["trigger"]
    started = _started(out, 1)[0]
    report = Path(started["argv"][started["argv"].index("--drift-report") + 1])
    assert report == Path(first["report_json"]) and json.loads(report.read_text())["drifted"] is True
    assert started["argv"][started["argv"].index("--reason") + 1].startswith("drift detected: ")
    assert started["run_id"] == first["mlflow_run_id"] and started["trigger_id"] == str(first["trigger"]["id"])
    assert Path(first["report_html"]).read_text().lstrip().lower().startswith("<!doctype html")

    # the report is attached to the monitor's MLflow run, which the retrain run is pointed at
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(first["mlflow_run_id"])
    assert run.data.tags["llmops.drift.detected"] == "true" and run.data.metrics["drift_detected"] == 1.0
    assert {a.path for a in client.list_artifacts(run.info.run_id, "drift")} == {
        "drift/drift-report.json", "drift/drift-report.html"}

    # gauges for Prometheus
    prom = Path(first["metrics_file"]).read_text()
    assert "llmops_drift_detected 1" in prom and 'llmops_monitor_retrain_triggers{outcome="started"} 1.0' in prom

    again = _monitor(sets)  # the same window scored again: a duplicate
    assert again["window_id"] == first["window_id"]
    assert again["trigger"]["outcome"] == "suppressed" and again["trigger"]["reason"].startswith("duplicate")

    _log(settings, shifted[80:100], time.time() - 100)  # the shift goes on: a new window, inside the cooldown
    later = _monitor(sets)
    assert later["drifted"] and later["window_id"] != first["window_id"]
    assert later["trigger"]["outcome"] == "suppressed" and later["trigger"]["reason"].startswith("cooldown")

    _log(settings, shifted[100:110], time.time() - 50)  # after the cooldown (0 s here) the shift triggers again
    after = _monitor([*sets, "monitoring.trigger.cooldown_s=0"])
    assert after["trigger"]["outcome"] == "started"
    assert len(_started(out, 2)) == 2

    history = triggers.history(settings.state_dir)
    assert [h["outcome"] for h in history] == ["started", "suppressed", "suppressed", "started"]
    assert triggers.counts(settings.state_dir) == {"started": 2, "suppressed": 2, "failed": 0, "pending": 0,
                                                   "held": 0}
    listed = CliRunner().invoke(app, ["monitor", "triggers", "--json"])
    assert [r["id"] for r in json.loads(listed.stdout)] == [h["id"] for h in history]


def _race(state_dir: str, barrier, results) -> None:
    barrier.wait()
    d = triggers.decide_and_start(Path(state_dir), reference_id="ref", window_id="win", cooldown_s=3600,
                                  command=[sys.executable, "-c", "pass"])
    results.put(d.outcome)


def test_racing_monitors_start_one_run(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes == ["started", "suppressed", "suppressed", "suppressed"]


def test_a_command_that_cannot_start_is_recorded_and_retried(tmp_path):
    failed = triggers.decide_and_start(tmp_path, reference_id="r", window_id="w", cooldown_s=3600,
                                       command=[str(tmp_path / "no-such-program")])
    assert failed.outcome == "failed" and "could not start" in failed.reason
    retried = triggers.decide_and_start(tmp_path, reference_id="r", window_id="w", cooldown_s=3600,
                                        command=[sys.executable, "-c", "pass"])
    assert retried.outcome == "started"  # a failed start holds no cooldown


def test_since_parsing_and_bad_input():
    from llmops.errors import LlmopsError
    from llmops.timeparse import parse_since

    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("1700000000") == 1_700_000_000.0
    assert parse_since(None) is None
    assert parse_since("1w", now=1e6) == 1e6 - 604800  # the same reading as `log export --since 1w`
    assert parse_since("2026-11-23", now=0.0) == 1795392000.0
    with pytest.raises(LlmopsError, match="cannot read the time 'yesterday'"):
        parse_since("yesterday")


def _register_champion(settings, sources: str) -> None:
    """A champion version whose lineage names the datasets it was trained on (`data.sources`, as register does)."""
    from mlflow.tracking import MlflowClient

    from llmops import tracking

    tracking.configure(settings)
    client = MlflowClient(settings.tracking_uri)
    run_id = tracking.start_pipeline_run(settings, "champion")
    name = settings.registered_model
    client.create_registered_model(name)
    mv = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id, tags={"data.sources": sources})
    client.set_registered_model_alias(name, "champion", mv.version)


@pytest.mark.slow  # four monitor runs with the embedder and MLflow: about 1-2 min on 2 busy cores
def test_drift_persists_then_holds_without_new_data_then_retrains_with_it(monitored, tmp_path):
    """persist_windows=2: the first drifted window is `pending`; the second finds no data new since the
    champion's training data and is `held` (an alert gauge, a labelling queue of the drifted prompts); once a
    dataset covering the drifted traffic is added, the next drifted window starts the retrain."""
    from llmops.modeling.hashing import file_md5
    from llmops.settings import get_settings
    from monitoring.retrain_gate import labelling_queue

    settings, sets, out = monitored
    user = tmp_path / "user"
    user.mkdir()
    sample = REPO / "data" / "sample" / "base.jsonl"
    sets = [s for s in sets if not s.startswith("monitoring.trigger.persist_windows")] + [
        "monitoring.trigger.persist_windows=2", "monitoring.trigger.cooldown_s=0",
        f"data.sources=[{{name: sample, path: {sample}}}, {{name: user, path: {user}}}]"]
    _register_champion(get_settings(), f"sample@{file_md5(sample)}")
    cooking = _sample(REPO / "data" / "drift" / "cooking.jsonl", 300)

    _log(settings, cooking[:80], time.time() - 900)
    first = _monitor(sets)
    assert first["severity"] == "drift" and first["consecutive_drift_windows"] == 1
    assert first["trigger"]["outcome"] == "pending" and "persist_windows=2" in first["trigger"]["reason"]

    _log(settings, cooking[80:160], time.time() - 600)
    second = _monitor(sets)
    assert second["consecutive_drift_windows"] == 2 and second["trigger"]["outcome"] == "held"
    assert "nothing new to learn" in second["trigger"]["reason"] and "no dataset" in second["trigger"]["reason"]
    queued = [json.loads(line) for line in labelling_queue(settings.state_dir).read_text().splitlines()]
    assert 0 < len(queued) <= 50 and second["labelling"]["queued"] == len(queued)
    assert {q["prompt"] for q in queued} <= {user_message(r) for r in cooking[80:160]}
    assert "llmops_monitor_retrain_held 1" in Path(second["metrics_file"]).read_text()
    assert not out.exists()  # nothing was started

    from llmops.data.records import write_jsonl

    write_jsonl(cooking[160:220], user / "kitchen.jsonl")  # reviewed answers for this kind of traffic
    _log(settings, cooking[220:300], time.time() - 300)
    third = _monitor(sets)
    assert third["trigger"]["outcome"] == "started", third["trigger"]
    assert "user/kitchen" in third["trigger"]["reason"] and "covering" in third["trigger"]["reason"]
    assert len(_started(out, 1)) == 1
    assert "llmops_monitor_retrain_held 0" in Path(third["metrics_file"]).read_text()
    assert [h["outcome"] for h in triggers.history(settings.state_dir)] == ["started", "held", "pending"]


def test_old_trigger_table_is_migrated(tmp_path):
    """A triggers.db written before `pending`/`held` existed keeps its rows and accepts the new outcomes."""
    import sqlite3

    path = triggers.db_path(tmp_path)
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.executescript("""CREATE TABLE triggers (id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL,
        reference_id TEXT NOT NULL, window_id TEXT NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('started', 'suppressed', 'failed')), reason TEXT NOT NULL,
        report_path TEXT, mlflow_run_id TEXT, command TEXT, pid INTEGER, log_path TEXT, fired TEXT);
        INSERT INTO triggers (created, reference_id, window_id, outcome, reason)
        VALUES (1, 'r', 'w', 'started', 'x');""")
    conn.close()
    held = triggers.decide_and_start(tmp_path, reference_id="r2", window_id="w2", cooldown_s=0,
                                     command=[sys.executable, "-c", "pass"], learnable=(False, "no data"))
    assert held.outcome == "held"
    assert triggers.counts(tmp_path)["started"] == 1 and triggers.counts(tmp_path)["held"] == 1
    assert triggers.record_window(tmp_path, reference_id="r", window_id="a", severity="drift") == 1
    assert triggers.record_window(tmp_path, reference_id="r", window_id="a", severity="drift") == 1  # same window
    assert triggers.record_window(tmp_path, reference_id="r", window_id="b", severity="drift") == 2
    assert triggers.record_window(tmp_path, reference_id="r", window_id="c", severity="watch") == 0
