"""Revisions of the triggers store (llmops/db.py)."""
