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


def compiled_path(profile: str = "local") -> Path:
    """The checked-in compiled YAML of a profile: finetune.yaml (local) or finetune.cluster.yaml."""
    return COMPILED_DIR / ("finetune.yaml" if profile == "local" else f"finetune.{profile}.yaml")


def compile_finetune(out: Path | None = None, cluster: ClusterParams | None = None) -> Path:
    """Write the finetune DAG as KFP IR YAML; returns the path. With `cluster` (params.yaml's `cluster:`
    section) every task carries its pod resources, GPUs, scheduling, secrets, retries and caching."""
    from kfp import compiler

    from pipelines._resources import for_cluster
    from pipelines.finetune import PIPELINE_NAME, finetune

    out = out or compiled_path("cluster" if cluster else "local")
    out.parent.mkdir(parents=True, exist_ok=True)
    pipeline = for_cluster(finetune, cluster) if cluster else finetune
    compiler.Compiler().compile(pipeline, package_path=str(out), pipeline_name=PIPELINE_NAME)
    return out


def _pin_env(settings: Settings) -> None:
    """Make the component subprocesses resolve exactly these settings (same project, state dir, profile)."""
    os.environ["LLMOPS_PROJECT_DIR"] = str(settings.project_dir)
    os.environ["LLMOPS_STATE_DIR"] = str(settings.state_dir)
    os.environ["LLMOPS_PROFILE"] = settings.profile
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Weight-loading progress bars from every step flood a piped log; each step prints its own progress.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def run_finetune_local(settings: Settings, overrides: list[str], data_dir: str = "data/splits") -> RunOutcome:
    """Run the whole DAG through kfp.local; a failed step stops the DAG and is reported, never hidden."""
    from kfp import local

    from pipelines.finetune import finetune

    _pin_env(settings)
    settings.ensure_state_dir()
    # Locally the components run in this interpreter on purpose (the project image is what a cluster uses).
    warnings.filterwarnings("ignore", message=r".*custom or non-Python base image", category=RuntimeWarning)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(settings.state_dir / "kfp"),
               raise_on_error=True)
    t0 = time.time()
    try:
        finetune(overrides=list(overrides), data_dir=data_dir)
    except RuntimeError as exc:  # kfp.local raises RuntimeError naming the failed task
        return RunOutcome(False, time.time() - t0, error=_strip_ansi(str(exc)))
    return RunOutcome(True, time.time() - t0)


def submit_finetune_cluster(settings: Settings, overrides: list[str], data_dir: str = "data/splits") -> RunOutcome:
    """Compile the DAG with the cluster settings (params.yaml + `overrides`, so `--set cluster...` applies
    too) and submit it to the KFP API server in `settings.kfp_host`; returns at once with the run's URL."""
    if not settings.kfp_host:
        raise LlmopsError("the cluster profile needs a KFP host",
                          "pass --host https://<kfp-api> or set LLMOPS_KFP_HOST")
    import tempfile

    import kfp

    from pipelines.finetune import PIPELINE_NAME

    t0 = time.time()
    params = settings.params(overrides)
    host = settings.kfp_host.rstrip("/")
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_finetune(Path(tmp) / "finetune.cluster.yaml", cluster=params.cluster)
        # kfp.Client prints "Experiment/Run details" links on stdout: keep stdout for --json.
        try:
            with contextlib.redirect_stdout(sys.stderr):
                client = kfp.Client(host=host)
                # enable_caching=None: each task keeps the caching choice compiled into it (cluster.steps).
                run = client.create_run_from_pipeline_package(
                    str(package), arguments={"overrides": list(overrides), "data_dir": data_dir},
                    experiment_name=PIPELINE_NAME, enable_caching=None,
                )
        except Exception as exc:  # kfp_server_api.ApiException, urllib3/requests connection errors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LlmopsError(f"could not submit to the KFP API at {host}: {first[:300]}",
                              "check --host / LLMOPS_KFP_HOST and that the KFP API server is reachable") from exc
    return RunOutcome(True, time.time() - t0, submitted={
        "run_id": run.run_id, "host": host, "url": f"{host}/#/runs/details/{run.run_id}"})


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)
