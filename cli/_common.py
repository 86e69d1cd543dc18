"""What every command shares: JSON or human output, and turning known failures into one-line causes."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from llmops.errors import LlmopsError

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")


def emit(payload: Any, as_json: bool, human: Callable[[Any], None] | None = None) -> None:
    """Print `payload` as JSON (stdout, for scripts) or through `human` (rich, for people)."""
    if as_json or human is None:
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    else:
        human(payload)


def fail(cause: str, fix: str | None = None, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {cause}" + (f"\n[dim]fix: {fix}[/]" if fix else ""))
    raise typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Known failures exit 2 with their cause and fix; a traceback means a bug in llmops."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LlmopsError as exc:
            fail(exc.cause, exc.fix)
        except KeyboardInterrupt:
            fail("interrupted", code=130)

    return wrapper  # type: ignore[return-value]


def profile_settings(profile: str | None, host: str | None) -> Any:
    """Settings with `--profile` / `--host` applied through the environment, so the steps and subprocesses a
    command starts resolve the same profile and KFP host."""
    import os

    from llmops.settings import get_settings

    if profile:
        os.environ["LLMOPS_PROFILE"] = profile
        get_settings.cache_clear()
    if host:
        os.environ["LLMOPS_KFP_HOST"] = host
        get_settings.cache_clear()
    return get_settings()
