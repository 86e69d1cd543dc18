"""Revisions of the rollout store (llmops/db.py)."""
