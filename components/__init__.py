"""One Kubeflow Pipelines component per step.

Each step is a package: `logic.py` holds the step as plain typed functions that never import KFP (so it is
called and tested directly), and `component.py` is the thin `@dsl.component` wrapper that maps KFP artifacts
to those functions. The wrappers run in the project image on a cluster and in-process-tree locally.
"""
