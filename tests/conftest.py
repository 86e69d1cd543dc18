"""Shared fixtures: every test gets its own state dir so no test touches the user's .llmops/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmops.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[1]
# Read-only: the real base model pulled by `make setup` (tokenizer for tiny models, main-job tests).
REAL_BASE_MODEL_DIR = REPO / ".llmops" / "models" / "smollm2-135m-instruct"


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    """Put os.environ back after every test. The CLI pins its settings in the environment for the component
    subprocesses it starts (`run finetune --profile cluster` sets LLMOPS_PROFILE, the MLflow retry bounds...);
    called in-process by a test, that would leak into every later test and the subprocesses they start."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings whose state dir is a fresh temporary directory (MLflow, audit db, DVC remote...)."""
    state = tmp_path / "state"
    monkeypatch.setenv("LLMOPS_STATE_DIR", str(state))
    monkeypatch.setenv("LLMOPS_PROJECT_DIR", str(REPO))
    get_settings.cache_clear()
    s = get_settings()
    s.ensure_state_dir()
    yield s
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def base_tokenizer_dir() -> Path:
    """The base model's directory (for its tokenizer); `make test` runs `make setup`, which pulls it."""
    if not (REAL_BASE_MODEL_DIR / "tokenizer.json").is_file():
        pytest.fail("base model not pulled: run `make setup` (or `llmops model pull`) first")
    return REAL_BASE_MODEL_DIR


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, base_tokenizer_dir: Path) -> Path:
    """A tiny random Llama (SmolLM2's architecture, base tokenizer) saved as safetensors; seconds to build."""
    from llmops.modeling.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", tokenizer_dir=base_tokenizer_dir)


@pytest.fixture(scope="session")
def tracking_stack_pg(tmp_path_factory: pytest.TempPathFactory):
    """The cluster profile's tracking stack (PostgreSQL + S3 + mlflow server), once per session; see
    tests/postgres_stack.py. Skips with the fix when PostgreSQL is not installed."""
    from tests.postgres_stack import tracking_stack

    with tracking_stack(tmp_path_factory.mktemp("pg-stack")) as stack:
        yield stack


@pytest.fixture(scope="session")
def pg_server() -> Iterator[tuple[int, str]]:
    """One PostgreSQL server (tests/postgres_stack.py) for the session: (port, superuser). Each test makes its own
    database in it (`create_database`), so tests stay apart while the seconds of `initdb` are paid once."""
    from tests.postgres_stack import postgres_server

    with postgres_server() as server:
        yield server
