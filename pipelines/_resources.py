"""Per-step pod settings for the cluster profile's compiled pipeline, all from params.yaml's `cluster:`.

CPU/memory requests and limits, GPU type and count, node selectors and tolerations, settings from a
ConfigMap and credentials from Secrets (kfp-kubernetes), retries and caching. `kfp.local` ignores all of
these, so they are applied only to the cluster build of a pipeline (`for_cluster`): the local compiled
YAML and local runs stay as they are. A pipeline calls `apply_cluster_settings()` once, at the end of its
body; it reaches every task by its component's name, so a step added later gets its settings too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from llmops.errors import LlmopsError
from llmops.params import ClusterParams, StepResources

_ACTIVE: ContextVar[ClusterParams | None] = ContextVar("llmops_cluster_params", default=None)
DEFAULT_STEP = "default"
OPTIONAL_STEPS = {"stage_checkpoint", "compile_trtllm", "attach_trtllm"}  # only with cluster.trtllm_engine
SAME_AS = {"train_dpo": "train"}  # the retrain's DPO stage trains like train: its pod settings are train's


@contextlib.contextmanager
def _active(cluster: ClusterParams) -> Iterator[None]:
    token = _ACTIVE.set(cluster)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def for_cluster(pipeline, cluster: ClusterParams):
    """`pipeline` (a `@dsl.pipeline` GraphComponent) built again with `cluster`'s task settings.

    `@dsl.pipeline` runs the pipeline body once, at import, with no cluster settings (what kfp.local and
    the local YAML use); building it again from its function inside `_active` gives the cluster variant.
    """
    from kfp import dsl

    with _active(cluster):
        return dsl.pipeline(name=pipeline.name, description=pipeline.description,
                            pipeline_config=pipeline.pipeline_config)(pipeline.pipeline_func)


def building_for_cluster() -> ClusterParams | None:
    """The cluster settings while a pipeline is being built for the cluster (`for_cluster`), else None: steps
    that only a cluster can run (container components on a GPU node) are added to the DAG only then."""
    return _ACTIVE.get()


def step_settings(cluster: ClusterParams, step: str) -> StepResources:
    """`steps.default` overlaid with the keys the step sets itself."""
    base = cluster.steps.get(DEFAULT_STEP, StepResources())
    own = cluster.steps.get(step, StepResources())
    return base.model_copy(update={key: getattr(own, key) for key in own.model_fields_set})


def apply_task_settings(task, step: str, cluster: ClusterParams) -> None:
    """Put `step`'s resources, scheduling, env sources, retries and caching on one pipeline task."""
    from kfp import kubernetes

    s = step_settings(cluster, step)
    if s.cpu:
        task.set_cpu_request(s.cpu)
    if s.cpu_limit:
        task.set_cpu_limit(s.cpu_limit)
    if s.memory:
        task.set_memory_request(s.memory)
    if s.memory_limit:
        task.set_memory_limit(s.memory_limit)
    if s.gpus:
        if not s.accelerator:
            raise LlmopsError(f"cluster.steps.{step} asks for {s.gpus} GPU(s) but names no accelerator",
                              f"set cluster.steps.{step}.accelerator (e.g. nvidia.com/gpu) in params.yaml")
        task.set_accelerator_type(s.accelerator).set_accelerator_limit(s.gpus)
    for label, value in (s.node_selector or {}).items():
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    for tol in s.tolerations or []:
        kubernetes.add_toleration(task, **tol.model_dump(exclude_none=True))
    cm = cluster.config_map
    kubernetes.use_config_map_as_env(task, cm.name, config_map_key_to_env={key: key for key in cm.keys})
    for secret in cluster.secrets:
        kubernetes.use_secret_as_env(task, secret.name, secret_key_to_env={k: env for env, k in secret.env.items()},
                                     optional=secret.optional)
    if s.retries:
        task.set_retry(num_retries=s.retries, backoff_duration=cluster.retry_backoff)
    if s.caching is not None:
        task.set_caching_options(enable_caching=s.caching)


def apply_cluster_settings() -> None:
    """At the end of a pipeline body: give every task its step's settings when compiling for the cluster.

    A no-op outside `for_cluster` and under kfp.local (which runs tasks eagerly, with no pipeline
    being built). A `cluster.steps` entry that names no step of the pipeline is an error (a typo would
    otherwise silently leave a step on the defaults).
    """
    from kfp.dsl.pipeline_context import Pipeline

    cluster = _ACTIVE.get()
    pipeline = Pipeline.get_default_pipeline()
    if cluster is None or pipeline is None:
        return
    seen = set()
    for task in pipeline.tasks.values():
        step = task.component_spec.name.replace("-", "_")
        step = SAME_AS.get(step, step)
        apply_task_settings(task, step, cluster)
        seen.add(step)
    unknown = sorted(set(cluster.steps) - seen - {DEFAULT_STEP} - OPTIONAL_STEPS)
    if unknown:
        raise LlmopsError(f"cluster.steps names no step of pipeline {pipeline.name!r}: {', '.join(unknown)}",
                          f"use one of {', '.join(sorted(seen))} (or `default`) in params.yaml")
