"""enable_wal waits out another connection's lock instead of failing with 'database is locked' at once."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from llmops.sqlite_wal import enable_wal


def test_wal_switch_waits_for_a_lock_held_elsewhere(tmp_path):
    path = tmp_path / "db.sqlite"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    other = sqlite3.connect(path, timeout=0.05, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):  # what a plain PRAGMA does meanwhile
        other.execute("PRAGMA journal_mode=WAL")
    threading.Timer(0.3, lambda: holder.execute("COMMIT")).start()
    start = time.monotonic()
    enable_wal(other, timeout_s=10)
    assert time.monotonic() - start >= 0.2
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_lock_that_outlasts_the_timeout_still_fails(tmp_path):
    path = tmp_path / "db.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    other = sqlite3.connect(path, timeout=0.05, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        enable_wal(other, timeout_s=0.3)
    holder.execute("COMMIT")
