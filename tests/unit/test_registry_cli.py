"""`llmops models ...` as a user runs it: a subprocess, JSON on stdout, exit 2 with one line on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from llmops.settings import Settings
from tests.registry_setup import backend_settings, registry_with_versions  # noqa: F401 - backend_settings: fixture

REPO = Path(__file__).resolve().parents[2]
NAME = "cli-test"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", "models", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def _json(*args: str):
    done = _cli(*args, "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_models_cli_json_and_errors(settings: Settings) -> None:
    reg = registry_with_versions(settings, 2, NAME)

    reg.promote(NAME, 1, reason="first")
    event = _json("promote", NAME, "2", "--alias", "champion", "--reason", "better")
    assert (event["from_version"], event["to_version"], event["reason"]) == ("1", "2", "better")

    back = _json("rollback", NAME, "--reason", "p95 latency")
    assert (back["action"], back["from_version"], back["to_version"]) == ("rollback", "2", "1")
    history = _json("history", NAME, "--alias", "champion")
    assert [(h["from_version"], h["to_version"], h["reason"]) for h in history] == [
        (None, "1", "first"), ("1", "2", "better"), ("2", "1", "p95 latency")]
    assert reg.alias_version(NAME, "champion") == "1"  # the CLI changed the real registry

    for bad, cause in ((("show", f"{NAME}@canary"), f"model '{NAME}' has no alias 'canary'"),
                       (("promote", NAME, "7", "--reason", "x"), f"model '{NAME}' has no version 7")):
        done = _cli(*bad, "--json")
        assert done.returncode == 2, (bad, done.stdout, done.stderr)
        assert done.stdout == "" and "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert lines[0] == f"error: {cause}" and lines[1].startswith("fix: ")

    human = _cli("list")
    assert human.returncode == 0 and NAME in human.stdout and "champion=1" in human.stdout
