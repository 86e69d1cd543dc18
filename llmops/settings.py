"""Where things live and which backends a run uses: one settings object for both profiles.

`local` (default) keeps every piece of state under `<project>/.llmops/`: the MLflow sqlite db and
artifacts, the DVC remote, models, Ray scratch, logs. `cluster` points the same code at servers
(MLflow tracking server, KFP API, Ray cluster, object storage). Every field can be set with an
`LLMOPS_<FIELD>` environment variable or a profile file (`infra/profiles/<profile>.env`).
Run defaults (data, lora, train, eval gate...) are not settings: they live in params.yaml.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmops.params import Params, load_params


def _default_project_dir() -> Path:
    """The repo root: where params.yaml sits beside the installed package, else the working directory."""
    pkg_root = Path(__file__).resolve().parents[1]
    if (pkg_root / "params.yaml").is_file():
        return pkg_root
    return Path.cwd()


def _profile_env_file() -> str | None:
    profile = os.environ.get("LLMOPS_PROFILE", "local")
    path = Path(os.environ.get("LLMOPS_PROJECT_DIR", _default_project_dir())) / "infra/profiles" / f"{profile}.env"
    return str(path) if path.is_file() else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMOPS_", extra="ignore")

    profile: Literal["local", "cluster"] = "local"
    project_dir: Path = Field(default_factory=_default_project_dir)
    state_dir: Path | None = None  # default: <project_dir>/.llmops
    # Provisioned models and downloaded wheels are caches, not run state: they stay put when a test or a
    # second environment points state_dir elsewhere. Default: <project_dir>/.llmops/{models,cache}.
    models_dir: Path | None = None
    cache_dir: Path | None = None

    # Tracking and registry (MLflow). Local: sqlite in the state dir.
    tracking_uri: str | None = None
    artifact_root: str | None = None
    registered_model: str = "llmops-smollm2"
    # Audit trail of alias changes (MLflow keeps none). Any SQLAlchemy URL; local: sqlite in the state dir.
    audit_db_uri: str | None = None
    # Retrain trigger decisions and schedule runs (llmops/db.py: sqlite or postgresql URLs). Unset: sqlite files
    # in the state dir (monitoring/triggers.py `db_url`, monitoring/schedules.py `db_url`); a cluster sets both.
    triggers_db_uri: str | None = None
    schedules_db_uri: str | None = None

    # Inference log (monitoring/inference_log): every answered request and its feedback. Any SQLAlchemy URL;
    # local: sqlite (WAL) in the state dir; cluster: postgresql+psycopg2://... `enabled=false` = serve without it.
    inference_log_uri: str | None = None
    inference_log_enabled: bool = True

    # Data versioning: DVC remote (local directory by default, s3://... on a cluster).
    dvc_remote_url: str | None = None

    # Orchestration and compute.
    kfp_host: str | None = None
    ray_address: str | None = None  # None: start Ray locally
    # Where Ray Train writes checkpoints and results. Every worker must reach it, so a multi-node cluster
    # needs shared storage: a URI pyarrow understands (s3://bucket/prefix, gs://...) or a shared mount.
    # Local default: <state_dir>/ray-results.
    ray_storage: str | None = None
    # Component images (infra/docker/, built by `make images`): <registry>/<name>:<tag> unless set in full.
    image_registry: str = "ghcr.io/llmops"
    image_tag: str = "0.1.0"
    image: str | None = None  # CPU steps, serving, monitoring: <registry>/llmops:<tag>
    train_image: str | None = None  # CUDA training: <registry>/llmops-cuda:<tag>
    trtllm_image: str | None = None  # TensorRT-LLM engine builds: <registry>/llmops-trtllm:<tag>

    # Canary on a cluster (serving/rollout/actuators/kserve.py): the InferenceService the rollout patches and
    # the Prometheus its analysis queries (PromQL over /api/v1/query).
    kserve_namespace: str = "llmops"
    kserve_isvc: str = "llmops-server"
    prometheus_url: str = "http://prometheus-operated.monitoring.svc.cluster.local:9090"

    # Serving: the API key is read by `llmops serve` from LLMOPS_API_KEY (or --api-key-env / a key file),
    # never stored in settings, so it cannot end up in a logged settings dump.

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.project_dir = self.project_dir.resolve()
        if self.state_dir is None:
            self.state_dir = self.project_dir / ".llmops"
        self.state_dir = self.state_dir.resolve()
        self.models_dir = (self.models_dir or self.project_dir / ".llmops" / "models").resolve()
        self.cache_dir = (self.cache_dir or self.project_dir / ".llmops" / "cache").resolve()
        if self.tracking_uri is None:
            self.tracking_uri = f"sqlite:///{self.state_dir / 'mlflow.db'}"
        if self.artifact_root is None:
            self.artifact_root = str(self.state_dir / "mlartifacts")
        if self.audit_db_uri is None:
            self.audit_db_uri = f"sqlite:///{self.state_dir / 'audit.db'}"
        if self.inference_log_uri is None:
            self.inference_log_uri = f"sqlite:///{self.state_dir / 'inference-log.db'}"
        if self.dvc_remote_url is None:
            self.dvc_remote_url = str(self.state_dir / "dvc-remote")
        if self.ray_storage is None:
            self.ray_storage = str(self.state_dir / "ray-results")
        registry = self.image_registry.rstrip("/")
        self.image = self.image or f"{registry}/llmops:{self.image_tag}"
        self.train_image = self.train_image or f"{registry}/llmops-cuda:{self.image_tag}"
        self.trtllm_image = self.trtllm_image or f"{registry}/llmops-trtllm:{self.image_tag}"
        return self

    @property
    def ray_storage_is_remote(self) -> bool:
        """True for a URI (s3://, gs://...): nothing to create locally, and no local marker files beside it."""
        return "://" in (self.ray_storage or "")

    # Paths derived from the state dir: one place each.
    @property
    def base_model_dir(self) -> Path:
        """Safetensors checkpoint of the built-in base model, written by `llmops model pull`."""
        return self.models_dir / "smollm2-135m-instruct"

    @property
    def embedder_dir(self) -> Path:
        return self.models_dir / "all-minilm-l6-v2"

    @property
    def ray_dir(self) -> Path:
        return self.state_dir / "ray"

    @property
    def engines_dir(self) -> Path:
        """Built inference engines, one directory per cache key (serving/engine_build/store.py)."""
        return self.state_dir / "engines"

    @property
    def reports_dir(self) -> Path:
        return self.state_dir / "reports"

    @property
    def params_path(self) -> Path:
        return self.project_dir / "params.yaml"

    def params(self, overrides: tuple[str, ...] | list[str] = ()) -> Params:
        return load_params(self.params_path, overrides)

    def ensure_state_dir(self) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return self.state_dir


@functools.cache
def get_settings() -> Settings:
    """Settings from the environment (and the profile file, if any), cached for the process."""
    return Settings(_env_file=_profile_env_file())
