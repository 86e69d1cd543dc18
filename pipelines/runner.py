"""Run a pipeline on the active profile: `kfp.local` subprocesses on a laptop, a KFP API server on a cluster.

Locally every component runs as a subprocess of this interpreter (the project is installed in it), so the
same component code that runs in the project image on Kubernetes runs here with no Docker.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from llmops.errors import LlmopsError
from llmops.settings import Settings

COMPILED_DIR = Path(__file__).resolve().parent / "compiled"


@dataclass
class RunOutcome:
    succeeded: bool
    seconds: float
    error: str | None = None
    submitted: dict[str, str] = field(default_factory=dict)


def compile_finetune(out: Path | None = None) -> Path:
    """Write the finetune DAG as KFP IR YAML (what a cluster runs); returns the path."""
    from kfp import compiler

    from pipelines.finetune import PIPELINE_NAME, finetune

    out = out or COMPILED_DIR / "finetune.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(finetune, package_path=str(out), pipeline_name=PIPELINE_NAME)
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
    """Submit the DAG to the KFP API server in `settings.kfp_host`; returns at once with the run id."""
    if not settings.kfp_host:
        raise LlmopsError("the cluster profile needs a KFP host", "set LLMOPS_KFP_HOST=https://<kfp-api>")
    import kfp

    from pipelines.finetune import PIPELINE_NAME, finetune

    t0 = time.time()
    client = kfp.Client(host=settings.kfp_host)
    run = client.create_run_from_pipeline_func(
        finetune, arguments={"overrides": list(overrides), "data_dir": data_dir},
        experiment_name=PIPELINE_NAME, enable_caching=False,
    )
    return RunOutcome(True, time.time() - t0, submitted={"run_id": run.run_id, "host": settings.kfp_host})


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)
