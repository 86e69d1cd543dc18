"""Revisions of the schedule_runs store (llmops/db.py)."""
