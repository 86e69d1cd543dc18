"""Every command has --help; the checked-in compiled pipeline is current; the tree is ruff-clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from cli.main import app

REPO = Path(__file__).resolve().parents[2]


def _commands(group: click.Command, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    if hasattr(group, "list_commands"):  # typer may vendor its own click: duck-type the group
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            out += _commands(group.get_command(ctx, name), (*prefix, name))
    return out


ALL_COMMANDS = _commands(typer.main.get_command(app))


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "llmops")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_expected_commands_exist() -> None:
    names = {" ".join(p) for p in ALL_COMMANDS}
    for expected in ("data validate", "data add", "model pull", "models promote", "models rollback",
                     "models history", "models list", "models show", "run finetune", "pipeline compile"):
        assert expected in names


def test_console_script_and_bad_override_is_one_line() -> None:
    exe = Path(sys.executable).parent / "llmops"
    ok = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0
    bad = subprocess.run([exe, "run", "finetune", "--set", "train.nope=1"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2
    assert "unknown parameter 'train.nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_compiled_pipeline_is_up_to_date() -> None:
    result = CliRunner().invoke(app, ["pipeline", "compile", "--check"])
    assert result.exit_code == 0, result.output


def test_ruff_clean() -> None:
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([ruff, "check", str(REPO)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
