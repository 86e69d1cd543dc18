"""See logic.py (plain functions) and component.py (KFP wrapper)."""
