"""`llmops schedule`: the local APScheduler job store (create / list / pause / resume / delete, persistence across
processes, a daemon that really fires the retrain command) and KFP recurring runs over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from cli.main import app
from monitoring import schedules
from tests.unit.test_cluster_pipeline import _FakeKfpApi

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> dict | list:
    result = CliRunner().invoke(app, ["schedule", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _cli_process(settings, *args: str) -> subprocess.CompletedProcess:
    """The CLI in a new process (nothing shared with this one but the state dir on disk)."""
    env = {**os.environ, "LLMOPS_STATE_DIR": str(settings.state_dir), "LLMOPS_PROJECT_DIR": str(REPO)}
    return subprocess.run([sys.executable, "-m", "cli.main", "schedule", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)


def test_local_schedule_lifecycle_persists_across_processes(settings):
    made = _cli("retrain", "--cron", "0 3 * * 1", "--name", "weekly", "--set", "train.max_steps=5")
    assert made["id"].startswith("retrain-") and made["cron"] == "0 3 * * 1" and not made["paused"]
    next_run = time.strptime(made["next_run"][:19], "%Y-%m-%dT%H:%M:%S")
    assert (next_run.tm_wday, next_run.tm_hour, next_run.tm_min) == (0, 3, 0)  # Monday 03:00
    assert made["command"][1:] == ["-m", "cli.main", "run", "retrain", "--reason", "schedule weekly",
                                   "--set", "train.max_steps=5"]

    listed = _cli_process(settings, "list", "--json")  # a new process reads the same store
    assert listed.returncode == 0, listed.stderr
    assert [(s["id"], s["name"], s["next_run"]) for s in json.loads(listed.stdout)] == [
        (made["id"], "weekly", made["next_run"])]

    paused = _cli("pause", made["id"])
    assert paused["paused"] and paused["next_run"] is None
    assert _cli_process(settings, "list", "--json").stdout.count('"paused": true') == 1
    resumed = _cli("resume", made["id"])
    assert not resumed["paused"] and resumed["next_run"] == made["next_run"]
    assert _cli("delete", made["id"])["deleted"] is True
    assert _cli("list") == []


def test_bad_input_is_one_clear_line(settings):
    for args, expected in ((["retrain", "--cron", "0 3 * *"], "has 4 fields"),
                           (["retrain", "--cron", "0 25 * * *"], "bad cron expression"),
                           (["pause", "retrain-nope"], "no schedule 'retrain-nope'")):
        result = CliRunner().invoke(app, ["schedule", *args])
        assert result.exit_code == 2 and expected in result.output, result.output
        assert "Traceback" not in result.output


def test_cron_fields():
    assert schedules.parse_cron("*/15 * * * *") == {"minute": "*/15", "hour": "*", "day": "*", "month": "*",
                                                     "day_of_week": "*"}
    assert schedules.parse_cron("*/2 * * * * *")["second"] == "*/2"
    # weekdays as crontab numbers them (Sunday 0 or 7), not APScheduler's Monday = 0
    dow = {e: schedules.parse_cron(f"0 3 * * {e}")["day_of_week"] for e in ("1", "0", "7", "1-5", "*/2", "mon-fri")}
    assert dow == {"1": "mon", "0": "sun", "7": "sun", "1-5": "mon,tue,wed,thu,fri", "*/2": "sun,tue,thu,sat",
                   "mon-fri": "mon-fri"}
    assert schedules.kfp_cron("0 3 * * 1") == "0 0 3 * * 1"  # KFP: seconds first
    assert schedules.kfp_cron("30 0 3 * * 1") == "30 0 3 * * 1"


@pytest.mark.slow
def test_daemon_runs_the_retrain_command_on_schedule(settings):
    """A daemon started BEFORE the schedule exists picks it up from the store and fires the real
    `llmops run retrain` every 2 s; with no champion in this state dir the retrain command's preflight exits 2
    with its cause, which the run record and log show. Paused, it stops firing."""
    env = {**os.environ, "LLMOPS_STATE_DIR": str(settings.state_dir), "LLMOPS_PROJECT_DIR": str(REPO)}
    daemon = subprocess.Popen([sys.executable, "-m", "cli.main", "schedule", "daemon", "--wake-s", "1"],
                              env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        time.sleep(3)
        assert daemon.poll() is None, daemon.stdout.read().decode()
        made = _cli("retrain", "--cron", "*/2 * * * * *", "--name", "fast")
        deadline = time.time() + 240
        finished = []
        while time.time() < deadline and not finished:
            finished = [r for r in schedules.runs_of(settings.state_dir, made["id"]) if r["exit_code"] is not None]
            time.sleep(1)
        assert finished, "the daemon did not run the schedule"
        run = finished[0]
        assert run["exit_code"] == 2
        log = Path(run["log_path"]).read_text()
        assert "error:" in log and "champion" in log and "Traceback" not in log  # retrain's own preflight
        # max_instances=1: runs never overlap, so every started run but the newest has finished
        assert all(r["finished"] for r in schedules.runs_of(settings.state_dir, made["id"])[1:])
        listed = _cli("list")
        assert listed[0]["last_run"]["schedule_id"] == made["id"]
        _cli("pause", made["id"])
        time.sleep(2)  # a run that was already started may finish; none starts after that
        before = len(schedules.runs_of(settings.state_dir, made["id"], limit=1000))
        time.sleep(5)
        assert len(schedules.runs_of(settings.state_dir, made["id"], limit=1000)) == before
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0


class _RecurringKfpApi(_FakeKfpApi):
    """The recording KFP API of the cluster-pipeline tests, plus the v2beta1 recurring-run endpoints."""

    requests: ClassVar[list[tuple[str, str, dict | None]]] = []

    def do_POST(self) -> None:
        if self.path.startswith("/apis/v2beta1/recurringruns"):
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            self.requests.append(("POST", self.path, body))
            if ":" in self.path:  # :enable / :disable
                self._reply({})
            else:
                self._reply({"recurring_run_id": "rr-1", "display_name": body.get("display_name"),
                             "status": "ENABLED", "trigger": body.get("trigger")})
            return
        super().do_POST()

    def do_GET(self) -> None:
        if self.path.startswith("/apis/v2beta1/recurringruns"):
            self.requests.append(("GET", self.path, None))
            # the list's key is camelCase in KFP's API (kfp_server_api's attribute_map), its items snake_case
            self._reply({"recurringRuns": [{"recurring_run_id": "rr-1", "display_name": "nightly",
                                             "status": "DISABLED",
                                             "trigger": {"cron_schedule": {"cron": "0 0 3 * * *"}}}],
                         "total_size": 1})
            return
        super().do_GET()

    def do_DELETE(self) -> None:
        self.requests.append(("DELETE", self.path, None))
        self._reply({})


@pytest.fixture
def kfp_api():
    _RecurringKfpApi.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecurringKfpApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _RecurringKfpApi.requests
    finally:
        server.shutdown()
        server.server_close()


def test_cluster_schedule_creates_a_kfp_recurring_run_over_http(settings, kfp_api):
    host, requests = kfp_api
    out = _cli("retrain", "--cron", "0 3 * * *", "--name", "nightly", "--profile", "cluster", "--host", host,
               "--set", "cluster.steps.train.gpus=2")
    assert out == {"id": "rr-1", "name": "nightly", "cron": "0 0 3 * * *", "where": "cluster", "host": host,
                   "url": f"{host}/#/recurringrun/details/rr-1"}
    posts = {path.split("?")[0]: body for method, path, body in requests if method == "POST"}
    rr = posts["/apis/v2beta1/recurringruns"]
    assert rr["display_name"] == "nightly" and rr["experiment_id"] == "exp-1"
    assert rr["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert int(rr["max_concurrency"]) == 1 and rr["no_catchup"] is True and rr["mode"] == "ENABLE"
    assert rr["runtime_config"]["parameters"] == {"overrides": ["cluster.steps.train.gpus=2"],
                                                  "reason": "schedule nightly"}
    spec = rr["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "llmops-retrain"
    train = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert train["accelerator"]["resourceCount"] == "2"  # compiled with the cluster settings + --set

    listed = _cli("list", "--profile", "cluster", "--host", host)
    assert listed == [{"id": "rr-1", "name": "nightly", "cron": "0 0 3 * * *", "paused": True, "where": "cluster"}]
    for action in ("pause", "resume", "delete"):
        assert _cli(action, "rr-1", "--profile", "cluster", "--host", host)["action"] == action
    calls = [(m, p.split("?")[0]) for m, p, _ in requests if m != "GET"][-3:]
    assert calls == [("POST", "/apis/v2beta1/recurringruns/rr-1:disable"),
                     ("POST", "/apis/v2beta1/recurringruns/rr-1:enable"),
                     ("DELETE", "/apis/v2beta1/recurringruns/rr-1")]


def test_cluster_schedule_without_a_reachable_server_is_one_clear_line(settings):
    result = CliRunner().invoke(app, ["schedule", "retrain", "--cron", "0 3 * * *", "--profile", "cluster",
                                      "--host", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "could not create a recurring run at the KFP API" in result.output
    assert "Traceback" not in result.output


def test_schedule_monitor_runs_the_monitor(settings):
    made = _cli("monitor", "--cron", "*/15 * * * *")
    assert made["kind"] == "monitor" and made["command"][1:] == ["-m", "cli.main", "monitor", "run"]
    assert [s["id"] for s in _cli("list")] == [made["id"]]
