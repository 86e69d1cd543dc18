"""Pipelines (DAGs of components) and how to run them: locally through kfp.local or on a KFP cluster."""
