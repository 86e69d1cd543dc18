"""The cluster profile's tracking stack for real: MLflow server on PostgreSQL with S3 artifacts, and the
audit trail on PostgreSQL with its per-model `pg_advisory_xact_lock`.

The registry, CLI and racing-promotion tests also run on this stack (their `[postgresql]` variants, see
tests/registry_setup.py); this module checks what only this backend has: where the rows and bytes land,
and that the advisory lock really excludes a second transaction on the same model and only that one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmops.registry import SqlAuditStore
from llmops.settings import Settings, get_settings
from tests.postgres_stack import BUCKET, TrackingStack, s3_client
from tests.registry_setup import empty_registry, registry_with_versions

pytestmark = pytest.mark.slow


@pytest.fixture
def pg_settings(tracking_stack_pg: TrackingStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[Settings]:
    monkeypatch.setenv("LLMOPS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LLMOPS_TRACKING_URI", tracking_stack_pg.tracking_uri)
    monkeypatch.setenv("LLMOPS_AUDIT_DB_URI", tracking_stack_pg.audit_db_uri)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()
    empty_registry(tracking_stack_pg)


def test_versions_rows_and_artifacts_land_in_postgres_and_s3(pg_settings: Settings,
                                                             tracking_stack_pg: TrackingStack) -> None:
    import sqlalchemy as sa

    reg = registry_with_versions(pg_settings, 2, "pg-land")
    event = reg.promote("pg-land", 2, reason="lands in postgres", actor="tester")
    assert reg.alias_version("pg-land", "champion") == "2"
    # MLflow's own tables on PostgreSQL hold the versions and the alias.
    engine = sa.create_engine(tracking_stack_pg.backend_store_uri)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM model_versions WHERE name='pg-land'")).scalar() == 2
            assert conn.execute(sa.text("SELECT version FROM registered_model_aliases WHERE name='pg-land' "
                                        "AND alias='champion'")).scalar() == 2
    finally:
        engine.dispose()
    # The audit event is a row in the audit database on PostgreSQL.
    engine = sa.create_engine(tracking_stack_pg.audit_db_uri)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT id, to_version, actor FROM alias_events WHERE model='pg-land'")).one()
        assert (row.id, row.to_version, row.actor) == (event["id"], "2", "tester")
    finally:
        engine.dispose()
    # The version's artifact went through the tracking server's proxy into the S3 bucket.
    listing = s3_client(tracking_stack_pg.s3_endpoint).list_objects_v2(Bucket=BUCKET)
    keys = [o["Key"] for o in listing.get("Contents", [])]
    assert any(k.startswith("mlflow/") and k.endswith("/model/MLmodel") for k in keys), keys


def test_advisory_lock_excludes_the_same_model_and_only_it(tracking_stack_pg: TrackingStack) -> None:
    import sqlalchemy as sa

    store_a, store_b = SqlAuditStore(tracking_stack_pg.audit_db_uri), SqlAuditStore(tracking_stack_pg.audit_db_uri)
    held, release = threading.Event(), threading.Event()
    order: list[str] = []

    def holder() -> None:
        with store_a.transaction("lock-m") as tx:
            tx.record("champion", "promote", None, "1", "a", "holds the lock")
            held.set()
            release.wait(30)
            order.append("a-commits")

    def waiter() -> None:
        with store_b.transaction("lock-m") as tx:
            order.append("b-enters")
            latest = tx.latest("champion")  # under the lock it sees a's committed event
            order.append(f"b-sees-{latest.to_version if latest else None}")

    a = threading.Thread(target=holder)
    a.start()
    assert held.wait(30)
    b = threading.Thread(target=waiter)
    b.start()
    # While a holds lock-m: b is blocked, another model's transaction goes straight through, and
    # PostgreSQL shows a granted and a waiting advisory lock.
    with store_b.transaction("other-model") as tx:
        tx.record("champion", "promote", None, "9", "c", "another model is not blocked")
    engine = sa.create_engine(tracking_stack_pg.audit_db_uri)
    try:
        with engine.connect() as conn:
            for _ in range(300):
                granted = dict(conn.execute(sa.text(
                    "SELECT granted, count(*) FROM pg_locks WHERE locktype='advisory' GROUP BY granted")).all())
                if granted.get(False):
                    break
                threading.Event().wait(0.05)
        assert granted.get(True) == 1 and granted.get(False) == 1, granted
    finally:
        engine.dispose()
    assert order == []
    release.set()
    a.join(30)
    b.join(30)
    assert order == ["a-commits", "b-enters", "b-sees-1"]
    store_a.engine.dispose()
    store_b.engine.dispose()
    empty_registry(tracking_stack_pg)
