"""A real Prometheus (Debian's package) on 127.0.0.1, configured from monitoring/prometheus/prometheus.yml and the
rules rendered from params.yaml, scrapes a real model server (tiny model, every request failing through the
test-only fault setting, C3), the router in front of it and `llmops monitor serve-metrics`; the error-rate
alerts of both and the drift alert must fire, read back from Prometheus's /api/v1/alerts.

Only the timings differ from production: 1 s scrape/evaluation and a 1 s `for:` (monitoring.alerts.hold_for),
so the test takes seconds instead of minutes; the rule expressions are the checked-in ones."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx
import pytest
import yaml

from llmops.settings import get_settings
from monitoring import exposition
from monitoring.drift import DetectorResult, DriftReport, Severity
from monitoring.prometheus.rules import render_rules
from serving.local_stack import LocalStack
from tests.monitoring.exported import DASHBOARDS, dashboard_exprs, fill_grafana_vars
from tests.serve_process import REPO, free_port

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("prometheus") is None,
                                 reason="prometheus missing: `make sysdeps` installs Debian's prometheus package")]


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def _process(cmd: list[str], log: Path, env: dict | None = None):
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    try:
        yield proc
    finally:  # stopped by its own PID
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _firing(prom: str) -> list[dict]:
    alerts = httpx.get(f"{prom}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return [a for a in alerts if a["state"] == "firing"]


def test_prometheus_fires_error_rate_and_drift_alerts(settings, tiny_model_dir, tmp_path):
    import os

    state = settings.state_dir
    # the monitor's gauges as `llmops monitor run` writes them, from a drift report of the drift library's type
    report = DriftReport(Severity.DRIFT, [DetectorResult("prompt_embedding_mmd", 0.2, 0.002, 0.01, True, effect=0.2,
                                                         effect_threshold=0.06, severity=Severity.DRIFT)],
                         alpha=0.05, window={"requests": 200}, reference={}, created=time.time())
    exposition.write_textfile(exposition.textfile_path(state), exposition.render(
        report.prometheus_lines(), {"requests": 200, "rated": 0, "negative": 0}, {"started": 1}, time.time()))

    env = {"LLMOPS_STATE_DIR": str(state), "OMP_NUM_THREADS": "1", "LLMOPS_API_KEY": None,
           "LLMOPS_API_KEY_FILE": None}
    with LocalStack(tmp_path / "logs", env=env) as stack:
        server = stack.server("server", str(tiny_model_dir), engine="eager", log_requests=False,
                              env={"LLMOPS_SERVE_FAULTS": "error_rate=1.0"})
        stack.wait_ready(server)
        router = stack.router(server.url)
        stack.wait_ready(router)
        monitor_port = free_port()
        monitor_env = {**os.environ, "LLMOPS_STATE_DIR": str(state), "LLMOPS_PROJECT_DIR": str(REPO)}
        with _process([sys.executable, "-m", "cli.main", "monitor", "serve-metrics", "--port",
                       str(monitor_port)], tmp_path / "monitor.log", monitor_env) as monitor:
            _wait(f"http://127.0.0.1:{monitor_port}/metrics", monitor, tmp_path / "monitor.log")

            # the shipped scrape config, pointed at these ports, with test timings
            config = yaml.safe_load((REPO / "monitoring/prometheus/prometheus.yml").read_text())
            config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
            targets = {"llmops-server": server.url, "llmops-router": router.url,
                       "llmops-monitor": f"http://127.0.0.1:{monitor_port}"}
            for job in config["scrape_configs"]:
                job.pop("scrape_interval", None)
                job["static_configs"] = [{"targets": [targets.pop(job["job_name"]).removeprefix("http://")]}]
            assert not targets, f"scrape config lacks jobs {targets}"
            params = get_settings().params(["monitoring.alerts.hold_for=1s"]).monitoring
            (tmp_path / "rules").mkdir()
            (tmp_path / "rules" / "llmops.rules.yml").write_text(render_rules(params))
            (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
            port = free_port()
            prom = f"http://127.0.0.1:{port}"
            cmd = ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                   f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"]
            with _process(cmd, tmp_path / "prometheus.log") as prometheus:
                _wait(f"{prom}/-/ready", prometheus, tmp_path / "prometheus.log")
                stop = threading.Event()

                def traffic() -> None:  # failing requests, through the router and straight to the server
                    body = {"model": tiny_model_dir.name, "max_tokens": 2,
                            "messages": [{"role": "user", "content": "hi"}]}
                    with httpx.Client(timeout=30) as client:
                        while not stop.is_set():
                            for base in (router.url, server.url):
                                r = client.post(f"{base}/v1/chat/completions", json=body)
                                assert r.status_code >= 500, r.text
                            stop.wait(0.2)

                driver = threading.Thread(target=traffic, daemon=True)
                driver.start()
                wanted = {("LlmopsHighErrorRate", "llmops-server"), ("LlmopsRouterHighErrorRate", "llmops-router"),
                          ("LlmopsDriftDetected", "llmops-monitor")}
                deadline = time.monotonic() + 120
                got: set = set()
                while time.monotonic() < deadline and not wanted <= got:
                    got = {(a["labels"]["alertname"], a["labels"].get("job")) for a in _firing(prom)}
                    time.sleep(1)
                stop.set()
                driver.join(30)
                assert wanted <= got, f"firing: {sorted(got)}\n{(tmp_path / 'prometheus.log').read_text()[-2000:]}"
                firing = _firing(prom)
                router_alert = next(a for a in firing if a["labels"]["alertname"] == "LlmopsRouterHighErrorRate")
                assert router_alert["labels"]["side"] == "stable"
                assert not [a for a in firing if a["labels"]["alertname"] == "LlmopsServerDown"]
                # every dashboard query runs on this Prometheus; the serving and canary panels have data
                empty = []
                for expr in (e for d in DASHBOARDS for e in dashboard_exprs(d)):
                    r = httpx.get(f"{prom}/api/v1/query", params={"query": fill_grafana_vars(expr)}, timeout=10).json()
                    assert r["status"] == "success", (expr, r)
                    empty += [expr] if not r["data"]["result"] else []
                assert not [e for e in empty if "llmops_router_requests" in e or "llmops_requests_total" in e
                            or "llmops_drift_score" in e], empty
                targets_up = httpx.get(f"{prom}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
                assert {t["labels"]["job"]: t["health"] for t in targets_up} == {
                    "llmops-server": "up", "llmops-router": "up", "llmops-monitor": "up"}
