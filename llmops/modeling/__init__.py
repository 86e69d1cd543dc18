"""Models: provisioning the base model offline, the tiny test model, loading and scoring helpers."""
