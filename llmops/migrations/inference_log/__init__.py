"""Revisions of the inference log store (monitoring/inference_log/store.py, llmops/db.py)."""
