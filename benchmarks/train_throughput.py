"""Training throughput: our `train_adapter` (Ray Train, packing, bf16) vs a plain Hugging Face Trainer.

Baseline, as people commonly write it: `Trainer` + PEFT LoRA, every example padded to max_length=256,
the same model, LoRA config, optimizer (AdamW, weight decay 0), learning-rate schedule, gradient
clipping, precision and chat formatting/prompt masking (`encode_example`). Both sides run the same
number of optimizer steps over the same training examples (one epoch of ours: the first E examples,
E chosen so our packed blocks fill `--steps` global batches; the baseline's batch is ceil(E/steps)
examples, as gradient accumulation over micro-batches of at most 8, rounded to whole micro-batches), in
the same process, one after the other, on the same machine.

Reported:
- useful tokens/s of each (non-padding tokens processed per second of optimizer-step time) and their
  ratio, ours / baseline; also our end-to-end tokens/s including Ray start-up and checkpoints;
- the final eval loss of both adapters, measured here the same way (fp32, token-mean loss on the answer
  tokens of the first `train.max_val_examples` validation records);
- achieved FLOP/s with the standard estimate FLOPs = 6 * N * tokens (N = ALL model parameters, since
  forward and backward run through the frozen base; for LoRA the true cost is nearer 4 * N * tokens
  because frozen weights need no weight gradients, so this over-counts by about 1.5x), as a fraction of
  this machine's dense matmul FLOP/s measured here with torch.matmul in the training precision.

Not part of the test suite. Example:
    .venv/bin/python benchmarks/train_throughput.py --model base --steps 10 --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BASELINE_MAX_LENGTH = 256
BASELINE_MICRO_BATCH = 8


class CpuPressure:
    """Share of wall time some task on this machine waited for a CPU (Linux PSI), over a phase.

    The machine is shared: a competing job slows whichever side runs under it, so each phase's figure is
    reported beside its throughput to tell a real ratio from a noisy one (0 = no one waited).
    """

    def __init__(self) -> None:
        self._start = (self._stall_us(), time.perf_counter())

    @staticmethod
    def _stall_us() -> float | None:
        try:
            line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        except (OSError, IndexError):
            return None
        return float(line.rsplit("total=", 1)[1])

    def share(self) -> float | None:
        stall0, t0 = self._start
        stall1 = self._stall_us()
        if stall0 is None or stall1 is None:
            return None
        return (stall1 - stall0) / 1e6 / (time.perf_counter() - t0)


def matmul_flops(dtype_name: str, size: int = 2048, seconds: float = 3.0) -> float:
    """Dense matmul FLOP/s of this machine with all torch threads, in the given precision."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        torch.matmul(a, b)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        reps += 1
    return 2 * size**3 * reps / (time.perf_counter() - start)


def choose_examples(tokenizer, records: list[dict], seq_len: int, global_batch: int, steps: int, seed: int) -> int:
    """Largest E such that our packing of the first E records gives at most steps * global_batch blocks."""
    from components.train.data import encode_records, pack_examples

    target = steps * global_batch
    examples, _ = encode_records(tokenizer, records, seq_len)
    lo, hi = 1, len(examples)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(pack_examples(examples[:mid], seq_len, seed)) <= target:
            lo = mid
        else:
            hi = mid - 1
    return lo


def eval_loss(base_dir: Path, adapter_dir: Path | None, tokenizer, records: list[dict], seq_len: int) -> float:
    """Token-mean loss on the answers of `records` (base + adapter, or the base alone), fp32, one way for all."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from components.train.data import collate, encode_records, loss_sum, pack_examples

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    examples, _ = encode_records(tokenizer, records, seq_len)
    blocks = pack_examples(examples, seq_len)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(blocks), 4):
            loss, n = loss_sum(model, collate(blocks[start : start + 4], tokenizer.pad_token_id))
            total, count = total + loss.item(), count + n
    return total / count


def run_ours(params, base_dir: Path, train_path: Path, val_path: Path, out_dir: Path) -> dict[str, Any]:
    from components.train.logic import train_adapter
    from llmops.settings import get_settings

    settings = get_settings()
    result = train_adapter(settings, params, train_path=train_path, validation_path=val_path,
                           base_model_dir=base_dir, out_dir=out_dir)
    return result.metrics


def run_baseline(params, base_dir: Path, tokenizer, records: list[dict], steps: int, out_dir: Path) -> dict:
    """HF Trainer + PEFT, padding every example to 256 tokens; same optimizer, schedule and precision."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from components.train._worker import lr_factor
    from llmops.modeling.prompts import encode_example

    tp, lora = params.train, params.lora
    rows = []
    for record in records:
        ids, labels = encode_example(tokenizer, record)
        ids, labels = ids[:BASELINE_MAX_LENGTH], labels[:BASELINE_MAX_LENGTH]
        pad = BASELINE_MAX_LENGTH - len(ids)
        rows.append({
            "input_ids": torch.tensor(ids + [tokenizer.pad_token_id] * pad),
            "attention_mask": torch.tensor([1] * len(ids) + [0] * pad),
            "labels": torch.tensor(labels + [-100] * pad),
        })
    # Micro-batches of at most 8 accumulated to about E/steps examples per optimizer step, so the baseline
    # makes `steps` steps over about one pass of the same E examples (the exact tokens are counted below).
    per_step = len(rows) / steps
    micro = min(BASELINE_MICRO_BATCH, math.ceil(per_step))
    accum = max(1, round(per_step / micro))
    batch = micro * accum
    torch.manual_seed(tp.seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
        LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                   target_modules=list(lora.target_modules), task_type="CAUSAL_LM"),
    )
    model.config.use_cache = False
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tp.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tp.warmup_steps, steps))

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds, self._start = 0.0, 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds += time.perf_counter() - self._start

    timer = StepTimer()
    args = TrainingArguments(
        output_dir=str(out_dir / "hf-trainer"), per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum, max_steps=steps, bf16=tp.bf16, use_cpu=True,
        max_grad_norm=tp.max_grad_norm, seed=tp.seed, logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True, dataloader_num_workers=0, include_num_input_tokens_seen="non_padding",
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, optimizers=(optimizer, scheduler),
                      callbacks=[timer])
    out = trainer.train()
    model.save_pretrained(str(out_dir / "hf-adapter"))
    examples_seen = steps * batch
    tokens = trainer.state.num_input_tokens_seen  # non-padding tokens actually processed
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "examples_per_step": batch, "examples_seen": examples_seen, "micro_batch": micro, "grad_accum": accum,
        "steps": steps,
        "tokens": tokens, "padded_tokens": examples_seen * BASELINE_MAX_LENGTH,
        "step_seconds": timer.seconds, "train_runtime": out.metrics["train_runtime"],
        "tokens_per_s": tokens / timer.seconds, "train_loss": losses[-1] if losses else float("nan"),
        "adapter_dir": out_dir / "hf-adapter",
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "base"], default="tiny")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps for both (default 10)")
    parser.add_argument("--workers", type=int, default=None, help="Ray workers for ours (default: params.yaml)")
    parser.add_argument("--train", type=Path, default=REPO / "data/splits/train.jsonl")
    parser.add_argument("--validation", type=Path, default=REPO / "data/splits/validation.jsonl")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="llmops-bench-"))
    os.environ["LLMOPS_STATE_DIR"] = str(work / "state")  # MLflow/Ray state of the benchmark: not the user's

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.train.data import read_records
    from llmops.modeling.tiny import build_tiny_model
    from llmops.settings import get_settings

    settings = get_settings()
    settings.ensure_state_dir()
    base_dir = settings.project_dir / ".llmops/models/smollm2-135m-instruct"
    if not (base_dir / "config.json").is_file():
        raise SystemExit(f"base model not found at {base_dir}: run `llmops model pull`")
    if args.model == "tiny":
        base_dir = build_tiny_model(work / "tiny", tokenizer_dir=base_dir)
    overrides = [f"train.max_steps={args.steps}"]
    if args.workers:
        overrides.append(f"train.num_workers={args.workers}")
    params = settings.params(overrides)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    records = read_records(args.train)
    global_batch = params.train.batch_size * params.train.num_workers
    n_examples = choose_examples(tokenizer, records, params.train.seq_len, global_batch, args.steps,
                                 params.train.seed)
    params = settings.params([*overrides, f"train.max_train_examples={n_examples}"])
    val_records = read_records(args.validation)[: params.train.max_val_examples or None]
    precision = "bf16" if params.train.bf16 else "fp32"
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(base_dir).parameters())

    peak = matmul_flops(precision)
    pressure = CpuPressure()
    ours = run_ours(params, base_dir, args.train, args.validation, work / "ours")
    ours["cpu_pressure"] = pressure.share()
    pressure = CpuPressure()
    base = run_baseline(params, base_dir, tokenizer, records[:n_examples], args.steps, work)
    base["cpu_pressure"] = pressure.share()
    ours_eval = eval_loss(base_dir, work / "ours", tokenizer, val_records, params.train.seq_len)
    base_eval = eval_loss(base_dir, base["adapter_dir"], tokenizer, val_records, params.train.seq_len)
    before = eval_loss(base_dir, None, tokenizer, val_records, params.train.seq_len)

    def flops(tokens: float, seconds: float) -> float:
        return 6 * n_params * tokens / seconds

    result = {
        "model": args.model, "params_total": n_params, "precision": precision, "threads": torch.get_num_threads(),
        "steps": args.steps, "examples": n_examples, "val_examples": len(val_records),
        "matmul_flops_per_s": peak,
        "ours": {
            "num_workers": ours["num_workers"], "strategy": ours["strategy"], "seq_len": params.train.seq_len,
            "tokens": ours["tokens"], "train_seconds": ours["train_seconds"], "tokens_per_s": ours["tokens_per_s"],
            "end_to_end_seconds": ours["seconds"], "end_to_end_tokens_per_s": ours["tokens"] / ours["seconds"],
            "pack_fill": ours["pack_fill"], "train_loss": ours["train_loss"], "eval_loss": ours_eval,
            "cpu_pressure": ours["cpu_pressure"],
            "flops_per_s": flops(ours["tokens"], ours["train_seconds"]),
            "flops_fraction": flops(ours["tokens"], ours["train_seconds"]) / peak,
        },
        "baseline": {
            "name": f"HF Trainer + PEFT, padding to max_length={BASELINE_MAX_LENGTH}",
            **{k: v for k, v in base.items() if k != "adapter_dir"}, "eval_loss": base_eval,
            "flops_per_s_useful": flops(base["tokens"], base["step_seconds"]),
            "flops_per_s_hardware": flops(base["padded_tokens"], base["step_seconds"]),
            "flops_fraction_useful": flops(base["tokens"], base["step_seconds"]) / peak,
        },
        "eval_loss_before": before,
        "ratio_tokens_per_s": ours["tokens_per_s"] / base["tokens_per_s"],
        "ratio_end_to_end": (ours["tokens"] / ours["seconds"]) / base["tokens_per_s"],
        "eval_loss_delta": ours_eval - base_eval,
        "flops_formula": "6 * N_total_params * useful_tokens / optimizer-step seconds",
    }
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        o, b = result["ours"], result["baseline"]
        print(f"model {args.model} ({n_params / 1e6:.0f}M params), {precision}, {args.steps} steps, "
              f"{n_examples} examples; matmul peak {peak / 1e9:.0f} GFLOP/s")
        print(f"ours     : {o['tokens_per_s']:8.0f} tok/s ({o['num_workers']} {o['strategy']} worker(s), packed "
              f"{o['pack_fill']:.0%}), {o['flops_fraction']:.1%} of peak, eval loss {o['eval_loss']:.4f}; "
              f"end to end {o['end_to_end_tokens_per_s']:.0f} tok/s")
        print(f"baseline : {b['tokens_per_s']:8.0f} tok/s ({b['name']}), {b['flops_fraction_useful']:.1%} of "
              f"peak useful, eval loss {b['eval_loss']:.4f}")
        print(f"CPU pressure from other jobs (share of time a task waited): ours {o['cpu_pressure']}, "
              f"baseline {b['cpu_pressure']}")
        print(f"ratio ours/baseline tokens/s: {result['ratio_tokens_per_s']:.2f}x "
              f"(end to end {result['ratio_end_to_end']:.2f}x); eval loss before {before:.4f}, "
              f"ours - baseline {result['eval_loss_delta']:+.4f}")
    return result


if __name__ == "__main__":
    main()
