"""Revisions of the audit store (llmops/db.py)."""
