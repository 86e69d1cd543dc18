"""Alembic revisions of every store opened through llmops/db.py: one directory (and one version table) per
store, one shared env.py. See llmops/db.py for why, and for how a store declares its tables."""
