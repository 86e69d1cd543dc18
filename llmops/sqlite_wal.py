"""Moved: the SQLite policy (WAL switched with a retry among the rest) lives in llmops/db.py. This name stays only
for monitoring/inference_log/store.py until that store opens through llmops.db; then delete this file."""

from llmops.db import enable_wal

__all__ = ["enable_wal"]
