"""`llmops models ...` as a user runs it: JSON on stdout, exit 2 with one line on bad input.

The commands run in-process through Typer's CliRunner (same app, same registry, same stdout/stderr split); one
bad-input call runs as a real subprocess, so the exit code, the empty stdout and the traceback-free stderr are
also checked as a shell sees them (each subprocess start re-imports the CLI: tens of seconds on a loaded host).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from llmops.settings import Settings
from tests.registry_setup import backend_settings, registry_with_versions  # noqa: F401 - backend_settings: fixture

REPO = Path(__file__).resolve().parents[2]
NAME = "cli-test"


def _cli(*args: str) -> tuple[int, str, str]:
    """`llmops models ARGS` in this process: (exit code, stdout, stderr)."""
    from cli.main import app

    done = CliRunner().invoke(app, ["models", *args])
    return done.exit_code, done.stdout, done.stderr


def _cli_process(*args: str) -> tuple[int, str, str]:
    """`llmops models ARGS` in a new process, as a shell runs it (the settings travel in the environment)."""
    done = subprocess.run([sys.executable, "-m", "cli.main", "models", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def _json(*args: str):
    code, out, err = _cli(*args, "--json")
    assert code == 0, err[-2000:]
    return json.loads(out)


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

    no_version = f"model '{NAME}' has no version 7"
    for run, bad, cause in ((_cli, ("show", f"{NAME}@canary"), f"model '{NAME}' has no alias 'canary'"),
                            (_cli_process, ("promote", NAME, "7", "--reason", "x"), no_version)):
        code, out, err = run(*bad, "--json")
        assert code == 2, (bad, out, err)
        assert out == "" and "Traceback" not in err
        lines = err.strip().splitlines()
        assert lines[0] == f"error: {cause}" and lines[1].startswith("fix: ")

    code, out, _ = _cli("list")
    assert code == 0 and NAME in out and "champion=1" in out
