"""Switching a SQLite database to WAL safely when several processes open it at once.

`PRAGMA journal_mode=WAL` needs an exclusive lock, and SQLite answers SQLITE_BUSY ("database is locked") to it at
once, without calling the busy handler, while another connection holds the file. Racing processes that open a new
database (monitors deciding a trigger, servers opening the inference log) then fail instead of waiting. Seen in a
CI run: one of 4 racing monitors died that way."""

from __future__ import annotations

import sqlite3
import time
from typing import Any


def enable_wal(conn: Any, timeout_s: float = 30.0) -> None:
    """Run `PRAGMA journal_mode=WAL` on `conn` (a sqlite3 connection or cursor), retrying while it is locked."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
