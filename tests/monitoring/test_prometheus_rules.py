"""Alert rules: rendered from params.yaml (one place for thresholds), valid for promtool, unit-tested alert by
alert with promtool's rule tests, and querying only series the servers, the router and the monitor export."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from llmops.settings import get_settings
from monitoring.prometheus.rules import PROMETHEUS_RULE_FILE, RULES_FILE, render_prometheus_rule, render_rules
from tests.monitoring.exported import exported_names, queried_names

REPO = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: `make sysdeps` installs Debian's "
                                    "prometheus package (infra/apt-packages.txt)")
ALERT_TESTS = REPO / "tests" / "monitoring" / "alerts.test.yml"


def _promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_checked_in_rules_are_rendered_from_params():
    m = get_settings().params().monitoring
    assert (REPO / RULES_FILE).read_text() == render_rules(m), "run `llmops monitor rules`"
    assert (REPO / PROMETHEUS_RULE_FILE).read_text() == render_prometheus_rule(m), "run `llmops monitor rules`"
    plain = yaml.safe_load((REPO / RULES_FILE).read_text())["groups"]
    operator = yaml.safe_load((REPO / PROMETHEUS_RULE_FILE).read_text())["spec"]["groups"]
    assert plain == operator
    alerts = {r["alert"] for g in plain for r in g["rules"] if "alert" in r}
    assert {"LlmopsHighErrorRate", "LlmopsRouterHighErrorRate", "LlmopsHighLatencyP99", "LlmopsSlowTimeToFirstToken",
            "LlmopsDriftDetected", "LlmopsNegativeFeedbackRate", "LlmopsCostPerRequestAboveBaseline"} <= alerts


@needs_promtool
def test_promtool_accepts_rules_operator_rules_and_scrape_config(tmp_path):
    assert _promtool("check", "rules", str(RULES_FILE)).returncode == 0
    spec = yaml.safe_load((REPO / PROMETHEUS_RULE_FILE).read_text())["spec"]
    (tmp_path / "operator.rules.yml").write_text(yaml.safe_dump(spec))
    out = _promtool("check", "rules", str(tmp_path / "operator.rules.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    out = _promtool("check", "config", "monitoring/prometheus/prometheus.yml")
    assert out.returncode == 0 and "1 rule files found" in out.stdout, out.stdout + out.stderr
    bad = tmp_path / "bad.rules.yml"
    bad.write_text("groups: [{name: g, rules: [{alert: A, expr: 'rate(x[5m] > 1'}]}]\n")
    assert _promtool("check", "rules", str(bad)).returncode != 0


@needs_promtool
def test_every_alert_fires_and_stays_silent_as_its_unit_tests_say():
    out = _promtool("test", "rules", str(ALERT_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    tested = {t["alertname"] for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    rules = yaml.safe_load((REPO / RULES_FILE).read_text())["groups"]
    assert tested == {r["alert"] for g in rules for r in g["rules"] if "alert" in r}


@needs_promtool
def test_a_threshold_changed_in_params_changes_what_fires(tmp_path):
    """One place: with error_rate 5% in params, the 2%-error case no longer fires (the unit tests fail)."""
    m = get_settings().params(["monitoring.alerts.error_rate=0.05"]).monitoring
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "llmops.rules.yml").write_text(render_rules(m))
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    tests["rule_files"] = ["rules/llmops.rules.yml"]
    tests["tests"] = [t for t in tests["tests"] if t["name"].startswith("server error rate")]
    (tmp_path / "t.yml").write_text(yaml.safe_dump(tests))
    out = _promtool("test", "rules", "t.yml", cwd=tmp_path)
    assert out.returncode != 0 and "LlmopsHighErrorRate" in out.stdout + out.stderr


def test_rules_query_only_exported_series():
    groups = yaml.safe_load((REPO / RULES_FILE).read_text())["groups"]
    queried = queried_names([r["expr"] for g in groups for r in g["rules"]])
    exported = exported_names()
    assert queried and queried <= exported, f"not exported: {sorted(queried - exported)}"
    assert {"llmops_router_upstream_errors_total", "llmops_drift_severity", "llmops_monitor_retrain_held",
            "llmops_monitor_negative_feedback_ratio"} <= queried


def test_monitor_rules_check_reports_stale_files(settings, monkeypatch, tmp_path):
    """`llmops monitor rules --check` (for CI/lint) exits 0 on the checked-in tree, 1 with a changed threshold."""
    from typer.testing import CliRunner

    from cli.main import app

    assert CliRunner().invoke(app, ["monitor", "rules", "--check"]).exit_code == 0
    changed = tmp_path / "params.yaml"
    changed.write_text((REPO / "params.yaml").read_text().replace("    error_rate: 0.01 ", "    error_rate: 0.02 "))
    monkeypatch.setattr(type(settings), "params_path", property(lambda self: changed))
    result = CliRunner().invoke(app, ["monitor", "rules", "--check", "--json"])
    assert result.exit_code == 1 and len(json.loads(result.stdout)["stale"]) == 2
