"""Run a pipeline on the active profile: `kfp.local` subprocesses on a laptop, a KFP API server on a cluster.

Locally every component runs as a subprocess of this interpreter (the project is installed in it), so the
same component code that runs in the project image on Kubernetes runs here with no Docker.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from llmops.errors import LlmopsError
from llmops.params import ClusterParams
from llmops.settings import Settings

COMPILED_DIR = Path(__file__).resolve().parent / "compiled"


@dataclass
class RunOutcome:
    succeeded: bool
    seconds: float
    error: str | None = None
    submitted: dict[str, str] = field(default_factory=dict)


PIPELINES: tuple[str, ...] = ("finetune", "retrain")


def _pipeline(name: str):
    """(KFP pipeline name, the @dsl.pipeline) of `name`."""
    import importlib

    if name not in PIPELINES:
        raise LlmopsError(f"unknown pipeline {name!r}", f"use one of {', '.join(PIPELINES)}")
    module = importlib.import_module(f"pipelines.{name}")
    return module.PIPELINE_NAME, getattr(module, name)


def compiled_path(profile: str = "local", pipeline: str = "finetune") -> Path:
    """The checked-in compiled YAML of a pipeline and profile: NAME.yaml (local) or NAME.cluster.yaml."""
    return COMPILED_DIR / (f"{pipeline}.yaml" if profile == "local" else f"{pipeline}.{profile}.yaml")


def compile_pipeline(pipeline: str, out: Path | None = None, cluster: ClusterParams | None = None) -> Path:
    """Write a DAG (finetune or retrain) as KFP IR YAML; returns the path. With `cluster` (params.yaml's
    `cluster:` section) every task carries its pod resources, GPUs, scheduling, secrets, retries and caching."""
    from kfp import compiler

    from pipelines._resources import for_cluster

    name, func = _pipeline(pipeline)
    out = out or compiled_path("cluster" if cluster else "local", pipeline)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiled = for_cluster(func, cluster) if cluster else func
    compiler.Compiler().compile(compiled, package_path=str(out), pipeline_name=name)
    return out


def compile_finetune(out: Path | None = None, cluster: ClusterParams | None = None) -> Path:
    """The finetune DAG as KFP IR YAML (see `compile_pipeline`)."""
    return compile_pipeline("finetune", out, cluster)


def _pin_env(settings: Settings) -> None:
    """Make the component subprocesses resolve exactly these settings (same project, state dir, profile)."""
    os.environ["LLMOPS_PROJECT_DIR"] = str(settings.project_dir)
    os.environ["LLMOPS_STATE_DIR"] = str(settings.state_dir)
    os.environ["LLMOPS_PROFILE"] = settings.profile
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Weight-loading progress bars from every step flood a piped log; each step prints its own progress.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _run_local(settings: Settings, pipeline: str, arguments: dict) -> RunOutcome:
    """Run a whole DAG through kfp.local; a failed step stops the DAG and is reported, never hidden."""
    from kfp import local

    _pin_env(settings)
    settings.ensure_state_dir()
    # Locally the components run in this interpreter on purpose (the project image is what a cluster uses).
    warnings.filterwarnings("ignore", message=r".*custom or non-Python base image", category=RuntimeWarning)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(settings.state_dir / "kfp"),
               raise_on_error=True)
    _, func = _pipeline(pipeline)
    t0 = time.time()
    try:
        func(**arguments)
    except RuntimeError as exc:  # kfp.local raises RuntimeError naming the failed task
        return RunOutcome(False, time.time() - t0, error=_strip_ansi(str(exc)))
    return RunOutcome(True, time.time() - t0)


def run_finetune_local(settings: Settings, overrides: list[str], data_dir: str = "data/splits") -> RunOutcome:
    """The finetune DAG through kfp.local."""
    return _run_local(settings, "finetune", {"overrides": list(overrides), "data_dir": data_dir})


def run_retrain_local(settings: Settings, overrides: list[str], *, reason: str = "", drift_report: str = "",
                      drift_report_path: str = "") -> RunOutcome:
    """The retrain DAG through kfp.local (`drift_report`: the report's JSON text, attached to the run)."""
    return _run_local(settings, "retrain", {"overrides": list(overrides), "reason": reason,
                                            "drift_report": drift_report, "drift_report_path": drift_report_path})


def _submit(settings: Settings, pipeline: str, overrides: list[str], arguments: dict) -> RunOutcome:
    """Compile a DAG with the cluster settings (params.yaml + `overrides`, so `--set cluster...` applies too)
    and submit it to the KFP API server in `settings.kfp_host`; returns at once with the run's URL."""
    if not settings.kfp_host:
        raise LlmopsError("the cluster profile needs a KFP host",
                          "pass --host https://<kfp-api> or set LLMOPS_KFP_HOST")
    import tempfile

    import kfp

    t0 = time.time()
    name, _ = _pipeline(pipeline)
    params = settings.params(overrides)
    host = settings.kfp_host.rstrip("/")
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(pipeline, Path(tmp) / f"{pipeline}.cluster.yaml", cluster=params.cluster)
        # kfp.Client prints "Experiment/Run details" links on stdout: keep stdout for --json.
        try:
            with contextlib.redirect_stdout(sys.stderr):
                client = kfp.Client(host=host)
                # enable_caching=None: each task keeps the caching choice compiled into it (cluster.steps).
                run = client.create_run_from_pipeline_package(
                    str(package), arguments=arguments, experiment_name=name, enable_caching=None,
                )
        except Exception as exc:  # kfp_server_api.ApiException, urllib3/requests connection errors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LlmopsError(f"could not submit to the KFP API at {host}: {first[:300]}",
                              "check --host / LLMOPS_KFP_HOST and that the KFP API server is reachable") from exc
    return RunOutcome(True, time.time() - t0, submitted={
        "run_id": run.run_id, "host": host, "url": f"{host}/#/runs/details/{run.run_id}"})


def submit_finetune_cluster(settings: Settings, overrides: list[str], data_dir: str = "data/splits") -> RunOutcome:
    """The finetune DAG on the KFP API server (see `_submit`)."""
    return _submit(settings, "finetune", overrides, {"overrides": list(overrides), "data_dir": data_dir})


def submit_retrain_cluster(settings: Settings, overrides: list[str], *, reason: str = "", drift_report: str = "",
                           drift_report_path: str = "") -> RunOutcome:
    """The retrain DAG on the KFP API server (see `_submit`)."""
    return _submit(settings, "retrain", overrides, {"overrides": list(overrides), "reason": reason,
                                                    "drift_report": drift_report,
                                                    "drift_report_path": drift_report_path})


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)
