"""The loop every Ray Train worker runs: LoRA training on its shard of packed blocks, with checkpoints.

Math that does not depend on the number of workers: each optimizer step takes the same `global_batch`
blocks from the seeded block stream whatever the world size; rank r takes its contiguous slice. Each rank
divides its summed token loss by the step's GLOBAL target count (known on every rank, since every rank
holds the block list) times world size, and FSDP/DDP average the gradients over ranks — so the gradient is
exactly that of the token-mean loss over the global batch, the same on 1 worker as on N.

Fault injection (chaos drills and the resume test): with config `fault_kill_at_step = N` (from env
LLMOPS_FAULT_KILL_AT_STEP on the driver), the last rank calls `os._exit(1)` just before optimizer step N,
on the first attempt only — a marker file in the run's storage directory records that it fired. Ray Train
then restarts the worker group (FailureConfig.max_failures) and every rank resumes from the last
checkpoint with `ray.train.get_checkpoint()`.
"""

from __future__ import annotations

import math
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

FAULT_MARKER = "fault-injected"


def choose_precision(config: dict[str, Any], device, rank: int, world: int) -> dict[str, Any]:
    """This run's precision on this device (llmops.precision), rank 0's choice broadcast to every rank so all
    of them run the same one (a cold probe cache could otherwise decide differently per rank)."""
    import torch.distributed as dist

    from llmops.precision import resolve

    choice = None
    if rank == 0:
        cache = Path(config["host_cache_dir"]) if config.get("host_cache_dir") else None
        choice = resolve(config["train"]["precision"], device.type, cache, tuple(config["probe_shape"])).to_dict()
    if world > 1:
        box = [choice]
        dist.broadcast_object_list(box, src=0)
        choice = box[0]
    return choice


def _peak_memory(device) -> list[float]:
    """[peak resident set size of this process, peak GPU memory allocated] in MiB (GPU 0 on CPU)."""
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return [rss, gpu]


def _maybe_inject_fault(config: dict[str, Any], step_number: int, rank: int, world: int) -> None:
    kill_at = config.get("fault_kill_at_step")
    if not kill_at or step_number != kill_at or rank != world - 1:
        return
    marker = Path(config["run_dir"]) / FAULT_MARKER
    if marker.exists():
        return
    import ray.train

    # Die only once every checkpoint reported so far is committed by the controller (it collects reports
    # every couple of seconds), so the drill always has a checkpoint to resume from; a real crash in that
    # window falls back one checkpoint further.
    ray.train.get_all_reported_checkpoints(timeout_s=60)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"rank {rank} killed before step {step_number}\n")
    print(f"[llmops.train] fault injection: rank {rank} exits before step {step_number}", flush=True)
    os._exit(1)


def evaluate(objective, model, blocks, batch_size: int, pad_id: int, device, precision: str, rank: int,
             world: int) -> dict[str, float]:
    """The objective's validation metrics over `blocks` (`val_loss`, ...), split across ranks; every rank runs the
    same number of forwards."""
    import torch
    import torch.distributed as dist

    from llmops.precision import autocast

    per_rank = math.ceil(len(blocks) / world)
    mine = blocks[rank * per_rank : (rank + 1) * per_rank]
    n_batches = math.ceil(per_rank / batch_size)
    total = None
    model.eval()
    with torch.no_grad():
        for b in range(n_batches):
            chunk = mine[b * batch_size : (b + 1) * batch_size]
            # this rank ran out: a dummy forward (weight 0) keeps FSDP's collectives in step
            weight = 1.0 if chunk else 0.0
            with autocast(device.type, precision):
                sums = objective.eval_sums(model, chunk or blocks[:1], pad_id, device) * weight
            total = sums if total is None else total + sums
    model.train()
    if world > 1:
        dist.all_reduce(total)
    return objective.eval_metrics(total)


def _val_line(step: int, max_steps: int, metrics: dict[str, float]) -> str:
    return f"[llmops.train] step {step}/{max_steps} " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items())


class _Run:
    """One worker's run: the model, optimizer and schedule every step shares, and the state a checkpoint keeps."""

    def __init__(self, config: dict[str, Any]) -> None:
        import ray.train
        import torch

        from components.train._objective import Objective
        from llmops.precision import grad_scaler
        from llmops.training import attention
        from llmops.training import model as lora
        from llmops.training.data import BlockStream
        from llmops.training.optim import lr_factor
        from llmops.training.storage import worker_model_dir

        ctx = ray.train.get_context()
        self.config, self.tp = config, config["train"]
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
        self.device = torch.device(f"cuda:{ctx.get_local_rank()}") if config["use_gpu"] else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.blocks, self.val_blocks, self.pad_id = config["blocks"], config["val_blocks"], config["pad_id"]
        self.per_rank = self.tp["batch_size"]
        self.global_batch = self.per_rank * self.world
        if self.global_batch != config["global_batch"]:
            raise RuntimeError(f"world size {self.world} does not give the planned global batch "
                               f"{config['global_batch']}")
        self.max_steps = self.tp["max_steps"]
        self.choice = choose_precision(config, self.device, self.rank, self.world)
        self.precision = self.choice["precision"]
        self.say(f"precision {self.precision} on {self.device.type}: {self.choice['reason']}")
        self.model = lora.wrap(
            # packed blocks: attention computed inside each example only (the same result as the block-diagonal mask)
            lora.build_lora_model(worker_model_dir(config), config["lora"], self.tp["seed"], self.device,
                                  attn_implementation=attention.NAME),
            self.tp["strategy"], self.device, self.world,
        )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.tp["lr"], weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.tp["warmup_steps"], self.max_steps))
        self.stream = BlockStream(len(self.blocks), self.tp["seed"])
        self.objective = Objective.from_train(self.tp)
        self.scaler = grad_scaler(self.device.type, self.precision, distributed=self.world > 1)
        self.state: dict[str, Any] = {"step": 0, "history": [], "tokens": 0, "train_seconds": 0.0, "resumed": 0,
                                      "resumed_from": [], "val_before": None}

    def say(self, line: str) -> None:
        if self.rank == 0:
            print(f"[llmops.train] {line}", flush=True)

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.objective, self.model, self.val_blocks, self.per_rank, self.pad_id, self.device,
                        self.precision, self.rank, self.world)

    def restore(self) -> None:
        """Resume from Ray Train's latest checkpoint, if this attempt has one."""
        import ray.train

        from llmops.training import checkpoint as ck
        from llmops.training import model as lora

        checkpoint = ray.train.get_checkpoint()
        if not checkpoint:
            return
        with checkpoint.as_directory() as ckpt_dir:
            model_state, optim_state, saved = ck.load_trainer_state(Path(ckpt_dir))
        lora.load_trainable_state(self.model, model_state)
        lora.load_optimizer_state(self.model, self.optimizer, optim_state)
        self.scheduler.load_state_dict(saved.pop("scheduler"))
        if saved.get("grad_scaler"):
            self.scaler.load_state_dict(saved["grad_scaler"])
        self.state.update(saved)
        self.state["resumed"] += 1
        self.state["resumed_from"].append(self.state["step"])
        self.say(f"resumed from checkpoint at step {self.state['step']}")

    def save_checkpoint(self, metrics: dict[str, Any], final: bool) -> None:
        import ray.train
        from ray.train import Checkpoint

        from llmops.training import checkpoint as ck
        from llmops.training import model as lora

        model_state = lora.trainable_state(self.model)  # collectives: every rank
        optim_state = lora.optimizer_state(self.model, self.optimizer)
        sched = {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"}
        self.state["grad_scaler"] = self.scaler.state_dict()  # {} when disabled; the fp16 scale survives a restart
        with tempfile.TemporaryDirectory(prefix="llmops-ckpt-") as tmp:
            ckpt = None
            if self.rank == 0:
                ck.save_trainer_state(Path(tmp), model_state, optim_state,
                                      {**self.state, "scheduler": {**sched, "lr_lambdas": [None]}})
                lora.save_peft_adapter(self.model, model_state, Path(tmp) / ck.ADAPTER_DIR)
                ckpt = Checkpoint.from_directory(tmp)
            name = f"checkpoint-{self.state['step']:06d}" + ("-final" if final else "")
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name)

    def step(self) -> dict[str, Any]:
        """One optimizer step on this rank's slice of the step's global batch; the step's history row."""
        import torch
        import torch.distributed as dist

        from llmops.precision import autocast
        from llmops.training.optim import optimizer_step, step_seed

        step, blocks = self.state["step"], self.blocks
        _maybe_inject_fault(self.config, step + 1, self.rank, self.world)
        torch.manual_seed(step_seed(self.tp["seed"], self.rank, step))
        start = time.perf_counter()
        step_ids = self.stream.step_indices(step, self.global_batch)
        global_tokens = sum(len(blocks[i]) for i in step_ids)
        mine = [blocks[i] for i in step_ids[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]]
        with autocast(self.device.type, self.precision):
            loss, stats = self.objective.step(self.model, [blocks[i] for i in step_ids], mine, self.pad_id,
                                              self.device, self.world)
        lr = self.optimizer.param_groups[0]["lr"]
        grad_norm = optimizer_step(loss, self.params, self.optimizer, self.scaler, self.tp["max_grad_norm"])
        self.scheduler.step()
        if self.world > 1:
            dist.all_reduce(stats)
        step_stats = dict(zip(self.objective.step_keys, stats.tolist(), strict=True))
        seconds = time.perf_counter() - start
        self.state["step"] = step + 1
        self.state["tokens"] += global_tokens
        self.state["train_seconds"] += seconds
        row = {"step": step + 1, **step_stats, "lr": lr, "grad_norm": grad_norm.item(),
               "tokens_per_s": global_tokens / seconds, "seconds": seconds, "tokens": global_tokens,
               "epoch": self.stream.epoch_of(step + 1, self.global_batch)}
        self.state["history"].append(row)
        self.say(f"step {step + 1}/{self.max_steps} loss {row['train_loss']:.4f} lr {lr:.2e} "
                 f"tok/s {row['tokens_per_s']:.0f} epoch {row['epoch']:.2f}")
        return row

    def checkpoint_if_due(self, row: dict[str, Any]) -> None:
        """Every `checkpoint_every` steps, and after the last one with the validation metrics."""
        final = self.state["step"] == self.max_steps
        if not final and self.state["step"] % self.tp["checkpoint_every"]:
            return
        metrics = {"step": self.state["step"], "train_loss": row["train_loss"]}
        if final:
            self.state["val"] = self.evaluate()
            metrics.update(self.state["val"])
            if self.rank == 0:
                print(_val_line(self.max_steps, self.max_steps, self.state["val"]), flush=True)
        self.save_checkpoint(metrics, final)

    def result(self) -> dict[str, Any] | None:
        """Rank 0: the history, the validation metrics before and after, and what the run cost."""
        import torch
        import torch.distributed as dist

        from llmops import host

        peak = torch.tensor(_peak_memory(self.device), dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        if self.rank != 0:
            return None
        state, cache = self.state, self.config.get("host_cache_dir")
        return {
            "history": state["history"],
            "val_before": state["val_before"],  # {val_loss, ...} of the objective before the first step
            "val": state.get("val") or {},  # ... and after the last
            "steps": state["step"],
            "tokens": state["tokens"],
            "train_seconds": state["train_seconds"],
            "resumed": state["resumed"],
            "resumed_from": state["resumed_from"],
            "peak_rss_mb": peak[0].item(),
            "peak_gpu_mb": peak[1].item() if self.device.type == "cuda" else None,
            "world_size": self.world,
            "precision": self.choice,
            "host": host.describe(Path(cache) if cache else None),
        }


def train_loop(config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train entry point (one call per worker). Rank 0 returns the history and final metrics."""
    run = _Run(config)
    run.restore()
    if run.state["val_before"] is None:
        run.state["val_before"] = run.evaluate()
        if run.rank == 0:
            print(_val_line(0, run.max_steps, run.state["val_before"]), flush=True)
    run.model.train()
    while run.state["step"] < run.max_steps:
        run.checkpoint_if_due(run.step())
    return run.result()
