"""Registry test setup shared by the registry unit, CLI and race tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmops.registry import Registry
from llmops.settings import Settings, get_settings
from tests.postgres_stack import TrackingStack


def registry_with_versions(settings: Settings, n: int, name: str) -> Registry:
    """A registered model with `n` real versions, all pointing at one run's logged `model/` artifact.

    A tracking server accepts only sources inside a run's artifacts, so the source is a real artifact
    (on the cluster backend it goes through the server's artifact proxy into S3).
    """
    reg = Registry(settings)
    src = settings.state_dir / "src"
    src.mkdir(exist_ok=True)
    (src / "MLmodel").write_text("artifact_path: model\n")
    run = reg.client.create_run(reg.client.get_experiment_by_name("Default").experiment_id)
    reg.client.log_artifacts(run.info.run_id, str(src), "model")
    reg.client.set_terminated(run.info.run_id)
    reg.client.create_registered_model(name)
    for _ in range(n):
        reg.client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return reg


def register_checkpoint(settings: Settings, model_dir: Path, name: str) -> str:
    """Register a local checkpoint dir (e.g. the tiny model) as a new version of `name`; `llmops serve
    NAME/VERSION` serves it (the `model/` artifact holds config, safetensors and tokenizer). Returns the version."""
    import contextlib

    import mlflow

    from llmops.tracking import configure, ensure_experiment

    configure(settings)
    with mlflow.start_run(experiment_id=ensure_experiment(settings)) as run:
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
    client = mlflow.tracking.MlflowClient(settings.tracking_uri)
    with contextlib.suppress(Exception):  # exists already
        client.create_registered_model(name)
    return str(client.create_model_version(name, source=f"{run.info.artifact_uri}/model",
                                           run_id=run.info.run_id).version)


# The registry tests run on both backends: the local one (MLflow on sqlite, sqlite audit trail) and the
# cluster one (mlflow server on PostgreSQL with S3 artifacts, audit trail on PostgreSQL with its advisory
# lock). A module opts in with `from tests.registry_setup import backend_settings`; the stack itself is
# the session fixture `tracking_stack_pg` in conftest (one per session, about 15 s to start).
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]


@pytest.fixture(name="settings", params=BACKENDS)
def backend_settings(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                     ) -> Iterator[Settings]:
    """`settings` (as in conftest) on the parametrized backend; the shared server is emptied after each test."""
    monkeypatch.setenv("LLMOPS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LLMOPS_PROJECT_DIR", str(Path(__file__).resolve().parents[1]))
    stack = None
    if request.param == "postgresql":
        stack = request.getfixturevalue("tracking_stack_pg")
        monkeypatch.setenv("LLMOPS_TRACKING_URI", stack.tracking_uri)
        monkeypatch.setenv("LLMOPS_AUDIT_DB_URI", stack.audit_db_uri)
    get_settings.cache_clear()
    s = get_settings()
    s.ensure_state_dir()
    try:
        yield s
    finally:
        get_settings.cache_clear()
        if stack is not None:
            empty_registry(stack)


def empty_registry(stack: TrackingStack) -> None:
    """Delete every registered model and audit event, so the next test starts from an empty registry."""
    import sqlalchemy as sa
    from mlflow import MlflowClient

    client = MlflowClient(stack.tracking_uri)
    for model in client.search_registered_models():
        client.delete_registered_model(model.name)
    engine = sa.create_engine(stack.audit_db_uri)
    try:
        with engine.begin() as conn:
            if sa.inspect(conn).has_table("alias_events"):
                conn.execute(sa.text("DELETE FROM alias_events"))
    finally:
        engine.dispose()
