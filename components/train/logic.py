"""The train step: LoRA fine-tuning of the base model on Ray Train (FSDP2 or DDP), as a plain function.

`train.objective` picks what the step minimises: `sft` (instruction records) or `dpo` (preference pairs,
llmops/training/preference.py; components/train/_objective.py). `train_adapter` tokenises and packs the data
on the driver, runs a `TorchTrainer` whose workers train LoRA adapters on their shard of each global batch
(see `_objective.py` for the math that keeps 1 and N workers identical), checkpoints every
`train.checkpoint_every` steps so a dead worker costs at most that many steps, copies the final PEFT adapter
into `out_dir`, and logs params, per-step curves, the loss plot and the final metrics to an MLflow child run.
Ray is the product path: a laptop runs the same code on 1-2 CPU workers that a cluster runs on GPU workers.

Fault drill: `LLMOPS_FAULT_KILL_AT_STEP=N` makes the last worker exit just before step N on the first
attempt (once per run); the run must still finish all steps, resumed from its checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmops.errors import LlmopsError, ModelError
from llmops.params import Params
from llmops.settings import Settings
from llmops.training.data import prepare_data
from llmops.training.preference import prepare_preference_data

FAULT_ENV = "LLMOPS_FAULT_KILL_AT_STEP"
# history key -> MLflow metric key (per step)
CURVES = {"train_loss": "train_loss", "lr": "lr", "grad_norm": "grad_norm", "tokens_per_s": "step_tokens_per_s",
          "reward_accuracy": "reward_accuracy", "reward_margin": "reward_margin"}  # the last two: dpo only
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "README.md")


@dataclass
class TrainResult:
    """Where the adapter is and what the run measured (`metrics` values are all numbers or strings)."""

    adapter_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    run_id: str | None = None  # the MLflow child run
    checkpoint_dir: str | None = None  # Ray Train's final checkpoint (adapter + optimizer state)
    lineage: dict[str, str] = field(default_factory=dict)  # data.* and base_model.* of what was really read


def _check_params(params: Params) -> None:
    tp = params.train
    for name in ("num_workers", "batch_size", "max_steps", "checkpoint_every", "seq_len"):
        if getattr(tp, name) < 1:
            raise LlmopsError(f"train.{name} must be >= 1 (got {getattr(tp, name)})",
                              f"set train.{name} in params.yaml or with --set")
    if tp.warmup_steps < 0 or tp.max_failures < 0:
        raise LlmopsError("train.warmup_steps and train.max_failures must be >= 0", "fix them in params.yaml")


def _fault_step() -> int | None:
    raw = os.environ.get(FAULT_ENV, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise LlmopsError(f"{FAULT_ENV}={raw!r} is not a step number", "unset it or set a positive integer") from None
    return value if value > 0 else None


def _cpus_per_worker(params: Params, use_gpu: bool) -> int:
    import ray

    tp = params.train
    total_cpus = int(ray.cluster_resources().get("CPU", 1))
    cpus = tp.cpus_per_worker or max(1, total_cpus // tp.num_workers)
    if cpus * tp.num_workers > total_cpus:
        raise LlmopsError(
            f"{tp.num_workers} workers x {cpus} CPUs need more than the {total_cpus} CPUs Ray has",
            "lower train.num_workers or train.cpus_per_worker",
        )
    if use_gpu and tp.num_workers > int(ray.cluster_resources().get("GPU", 0)):
        raise LlmopsError(f"{tp.num_workers} GPU workers but Ray sees fewer GPUs", "lower train.num_workers")
    return cpus


def _run_trainer(params: Params, config: dict[str, Any], run_name: str, storage: str):
    """Fit the TorchTrainer; returns Ray's Result. Worker failures beyond max_failures become ModelError."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from components.train._worker import train_loop

    tp = params.train
    use_gpu = config["use_gpu"]
    resources: dict[str, float] = {"CPU": config["cpus_per_worker"]}
    if use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=tp.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=tp.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        return trainer.fit()
    except Exception as exc:  # Ray wraps worker errors in TrainingFailedError/WorkerGroupError
        from llmops.steplog import one_line

        cause = one_line(exc)  # the worker's own error (the last "...Error: msg" line of Ray's snippet)
        raise ModelError(
            f"training failed after {tp.max_failures} allowed restart(s): {cause[:300]}",
            f"see the worker log above; checkpoints and logs are under {storage.rstrip('/')}/{run_name}",
        ) from exc


def _copy_adapter(result, out_dir: Path) -> None:
    from llmops.training.checkpoint import ADAPTER_DIR

    if result.checkpoint is None:
        raise ModelError("training finished without a checkpoint", "check the worker log")
    out_dir.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as ckpt:
        src = Path(ckpt) / ADAPTER_DIR
        for name in ADAPTER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, out_dir / name)
    if not (out_dir / "adapter_model.safetensors").is_file():
        raise ModelError(f"final checkpoint {result.checkpoint.path} holds no adapter", "check the worker log")


def _precheck_host(settings: Settings, params: Params, use_gpu: bool, shape: tuple[int, int, int]) -> None:
    """Local CPU workers share this machine: choose the precision (probe) and measure the host here once, into
    the state dir's per-host cache, so the workers read it instead of probing side by side."""
    if use_gpu or settings.ray_address:
        return  # the workers' own devices (or other hosts) decide; rank 0 reports what they chose
    from llmops import host
    from llmops.precision import resolve

    resolve(params.train.precision, "cpu", settings.state_dir, shape)
    host.describe(settings.state_dir)


def _host_lineage(out: dict[str, Any]) -> dict[str, str]:
    """Tags naming the precision the workers ran and the host rank 0 trained on (two runs on different hosts
    are told apart: `train.precision`, `host.cpu`, `host.isa`, ...)."""
    from llmops import host

    choice = out["precision"]
    return {"train.precision": choice["precision"], "train.precision.requested": choice["requested"],
            "train.precision.reason": choice["reason"][:500], **host.lineage_tags(out["host"])}


def plot_loss_curve(history: list[dict[str, float]], metrics: dict[str, Any], path: Path) -> Path:
    """Training loss and learning rate per step, with the validation loss before and after, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, [row["train_loss"] for row in history], label="train loss (token mean)", color="tab:blue")
    ax.scatter([0, metrics["steps"]], [metrics["val_loss_before"], metrics["val_loss"]],
               color="tab:red", zorder=3, label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [row["lr"] for row in history], color="tab:gray", linestyle=":", label="learning rate")
    lr_ax.set_ylabel("learning rate")
    handles = ax.get_legend_handles_labels()
    lr_handles = lr_ax.get_legend_handles_labels()
    ax.legend(handles[0] + lr_handles[0], handles[1] + lr_handles[1], loc="upper right", fontsize=8)
    ax.set_title(f"LoRA training: {metrics['num_workers']} worker(s), {metrics['strategy']}, "
                 f"{metrics['tokens_per_s']:.0f} tok/s")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _log_to_mlflow(params: Params, metrics: dict[str, Any], history: list[dict[str, float]]) -> None:
    """Params, per-step curves (one batch call), final metrics and the loss plot into the active run."""
    import mlflow
    from mlflow.entities import Metric

    flat = {f"lora.{k}": (",".join(v) if isinstance(v, list) else v) for k, v in params.lora.model_dump().items()}
    for key, value in params.train.model_dump().items():  # sections (train.dpo) as their own dotted keys
        flat.update({f"train.{key}.{k}": v for k, v in value.items()} if isinstance(value, dict)
                    else {f"train.{key}": value})
    mlflow.log_params(flat)
    run_id = mlflow.active_run().info.run_id
    now = int(time.time() * 1000)
    # Curves per step: train_loss, lr, grad_norm (before clipping) and step_tokens_per_s (that step's
    # throughput; the summary `tokens_per_s` is the whole run's). The summary skips train_loss: the
    # curve's last point is it.
    curve = [Metric(CURVES[key], float(row[key]), now, int(row["step"]))
             for row in history for key in CURVES if key in row]
    client = mlflow.MlflowClient()
    for start in range(0, len(curve), 900):  # MLflow caps a batch at 1000 metrics
        client.log_batch(run_id, metrics=curve[start : start + 900])
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()
                        if isinstance(v, int | float) and not isinstance(v, bool) and k != "train_loss"},
                       step=int(metrics["steps"]))
    mlflow.set_tags({"llmops.train.strategy": metrics["strategy"], "llmops.train.resumed": str(metrics["resumed"])})
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(str(plot_loss_curve(history, metrics, Path(tmp) / "loss_curve.png")), "train")
        (Path(tmp) / "train_history.json").write_text(json.dumps(history))
        mlflow.log_artifact(str(Path(tmp) / "train_history.json"), "train")


def train_adapter(
    settings: Settings,
    params: Params,
    *,
    train_path: Path,
    validation_path: Path,
    base_model_dir: Path,
    out_dir: Path,
    parent_run_id: str | None = None,
    step: str = "train",
    data_sources: dict[str, str] | None = None,
) -> TrainResult:
    """Fine-tune LoRA adapters on Ray Train and write the PEFT adapter to `out_dir` (see module doc); `step` names
    the MLflow child run (the retrain's DPO stage trains as its own step); `data_sources` ({entry: md5}) names the
    datasets the splits were merged from when no sources.json lies beside them (the pipeline's artifacts)."""
    started = time.perf_counter()
    splits = {"train": Path(train_path), "validation": Path(validation_path)}
    base_model_dir, out_dir = Path(base_model_dir), Path(out_dir)
    lineage = _check_inputs(settings, params, splits, base_model_dir, data_sources)
    fault_step = _fault_step()

    import torch
    from transformers import AutoTokenizer

    from components.train._ray import quiet_ray_env, ray_session
    from llmops.lineage import data_lineage
    from llmops.tracking import step_run

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    prepare = prepare_preference_data if params.train.objective == "dpo" else prepare_data
    data = prepare(params, tokenizer, splits["train"], splits["validation"])
    lineage |= data_lineage(settings.project_dir, splits)
    quiet_ray_env()
    storage = settings.ray_storage
    run_name = f"train-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"

    with step_run(settings, parent_run_id, step) as run_id, ray_session(settings):
        import mlflow
        import ray

        from llmops.precision import probe_shape

        # GPU workers when this machine or the joined Ray cluster has GPUs (a KubeRay driver may have none).
        use_gpu = torch.cuda.is_available() or ray.cluster_resources().get("GPU", 0) >= 1
        shape = probe_shape(params.train.batch_size, params.train.seq_len, base_model_dir)
        _precheck_host(settings, params, use_gpu, shape)
        config = _worker_config(settings, params, base_model_dir, lineage, data, use_gpu=use_gpu, shape=shape,
                                run_dir=_run_dir(settings, run_name), fault_step=fault_step)
        _say_plan(params, data, config, run_name)
        result = _run_trainer(params, config, run_name, storage)
        out = result.return_value
        if not out:
            raise ModelError("training returned no result from rank 0", f"see {storage.rstrip('/')}/{run_name}")
        _copy_adapter(result, out_dir)
        lineage |= _host_lineage(out)
        seconds = time.perf_counter() - started
        metrics = _run_metrics(params, out, data.stats, seconds)
        _log_to_mlflow(params, metrics, out["history"])
        mlflow.set_tags(lineage)
    print(f"[llmops.train] done: val_loss {metrics['val_loss_before']:.4f} -> {metrics['val_loss']:.4f}, "
          f"{metrics['tokens_per_s']:.0f} tok/s, {seconds:.0f} s, adapter in {out_dir}", flush=True)
    return TrainResult(
        adapter_dir=out_dir,
        metrics=metrics,
        history=out["history"],
        run_id=run_id,
        checkpoint_dir=result.checkpoint.path if result.checkpoint else None,
        lineage=lineage,
    )


def _check_inputs(settings: Settings, params: Params, splits: dict[str, Path], base_model_dir: Path,
                  data_sources: dict[str, str] | None) -> dict[str, str]:
    """Everything that can fail before any model work, in the order a user fixes it; the base model's lineage."""
    from llmops.data.erasures import check_training_data
    from llmops.modeling.base import verify_base_model
    from llmops.modeling.families import resolve_for_checkpoint

    _check_params(params)
    # first, before any model work: never train on a dataset version `llmops log erase` marked
    check_training_data(settings.state_dir, settings.project_dir, splits, data_sources)
    if not (base_model_dir / "config.json").is_file():
        raise ModelError(f"no model checkpoint at {base_model_dir}", "run `llmops model pull` or pass the model dir")
    # What this run really trains on: the base weights hashed now (and checked against the pull).
    lineage = verify_base_model(base_model_dir)
    resolve_for_checkpoint(base_model_dir, params.lora.target_modules)  # a bad LoRA target fails here, not in Ray
    return lineage


def _run_dir(settings: Settings, run_name: str) -> Path:
    """Where the fault drill's once-only marker lives: a filesystem the workers share."""
    if settings.ray_storage_is_remote:
        # on remote storage it lives in the local state dir, shared only when the workers run on this machine
        return settings.state_dir / "ray-faults" / run_name
    Path(settings.ray_storage).mkdir(parents=True, exist_ok=True)
    return Path(settings.ray_storage) / run_name


def _worker_config(settings: Settings, params: Params, base_model_dir: Path, lineage: dict[str, str], data: Any, *,
                   use_gpu: bool, shape: tuple[int, ...], run_dir: Path, fault_step: int | None) -> dict[str, Any]:
    """What every Ray Train worker gets (components/train/_worker.py)."""
    from llmops.training.storage import share_base_model

    return {
        "base_model_dir": str(base_model_dir),
        # workers in other pods pull it from the shared Ray storage (llmops/training/storage.py)
        "base_model_uri": share_base_model(settings.ray_storage, base_model_dir, lineage["base_model.sha256"]),
        "base_model_digest": lineage["base_model.sha256"],
        "lora": params.lora.model_dump(),
        "train": params.train.model_dump(),
        "blocks": data.blocks,
        "val_blocks": data.val_blocks,
        "pad_id": data.pad_id,
        "global_batch": params.train.batch_size * params.train.num_workers,
        "use_gpu": use_gpu,
        "cpus_per_worker": _cpus_per_worker(params, use_gpu),
        "run_dir": str(run_dir),
        "fault_kill_at_step": fault_step,
        "host_cache_dir": str(settings.state_dir),  # per-host probe/bandwidth cache (llmops.host)
        "probe_shape": list(shape),
    }


def _say_plan(params: Params, data: Any, config: dict[str, Any], run_name: str) -> None:
    unit = "preference pairs" if params.train.objective == "dpo" else "examples"
    print(f"[llmops.train] {params.train.objective}: {data.stats['examples']} {unit} -> {data.stats['blocks']} "
          f"blocks of <= {params.train.seq_len} tokens ({data.stats['pack_fill']:.0%} full); "
          f"{params.train.num_workers} {params.train.strategy} worker(s) x {config['cpus_per_worker']} CPU(s), "
          f"{params.train.max_steps} steps, run {run_name}", flush=True)


def _run_metrics(params: Params, out: dict[str, Any], data_stats: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The run's metrics from rank 0's result (logged to MLflow, returned to the pipeline)."""
    metrics: dict[str, Any] = {
        "objective": params.train.objective,
        "train_loss": out["history"][-1]["train_loss"],
        **out["val"],  # val_loss (+ for dpo: val_reward_accuracy, val_reward_margin, val_preference_accuracy)
        **{f"{k}_before": v for k, v in out["val_before"].items()},
        "steps": out["steps"],
        "tokens": out["tokens"],
        "tokens_per_s": out["tokens"] / out["train_seconds"],
        "train_seconds": out["train_seconds"],
        "seconds": seconds,
        "overhead_seconds": seconds - out["train_seconds"],
        "peak_rss_mb": out["peak_rss_mb"],
        "resumed": out["resumed"],
        "num_workers": out["world_size"],
        "strategy": params.train.strategy,
        "precision": out["precision"]["precision"],
        "epochs": out["history"][-1]["epoch"],
        **data_stats,
    }
    if out.get("peak_gpu_mb") is not None:
        metrics["peak_gpu_mb"] = out["peak_gpu_mb"]
    return metrics
