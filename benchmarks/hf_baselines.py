"""The baselines a user would pick, each as it is normally written, on our examples, LoRA, optimizer and schedule.

- `pad`: `transformers.Trainer`, `DataCollatorForSeq2Seq` padding each micro-batch to its longest example,
  `train_sampling_strategy="group_by_length"` (transformers 5's name for `group_by_length=True`).
- `flatten`: `Trainer` with `DataCollatorWithFlattening` (padding-free: a micro-batch becomes one row with
  position ids restarting per example, no attention mask).
- `trl`: TRL `SFTTrainer(packing=True)` (best-fit-decreasing packing, padding-free collator), with
  `gradient_checkpointing=False` (TRL's default is True, which only costs time at this size).

Every side gets the same tokenised examples (`encode_example`: chat template, prompt labels -100), the same
PEFT LoRA init (`build_lora_model`, same seed), AdamW (weight decay 0), our LR schedule (`lr_factor`),
gradient clipping and the run's resolved precision (`bf16=True, use_cpu=True` for bf16). Step time is the
interval between consecutive `on_step_end` callbacks (it includes collation and the loss logging, as ours does).
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any

from llmops.training.flops import MicroBatch, micro_batch, segment_lengths


class RecordingCollator:
    """Wraps a side's collator and records each micro-batch's layout (rows of sequence lengths, width)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.batches: list[MicroBatch] = []

    def __call__(self, features, *args, **kwargs):
        batch = self.inner(features, *args, **kwargs)
        self.batches.append(layout_of(batch))
        return batch


def layout_of(batch) -> MicroBatch:
    """Rows of sequence lengths from position-id restarts (packed/flattened) or the attention mask (padded)."""
    input_ids = batch["input_ids"]
    width = int(input_ids.shape[1])
    rows: list[list[int]] = []
    if "attention_mask" in batch:
        rows = [[int(n)] for n in batch["attention_mask"].sum(dim=1).tolist()]
    else:
        rows = [list(segment_lengths(pos)) for pos in batch["position_ids"].tolist()]
    return micro_batch(rows, width)


class StepTimer:
    """`on_step_end` timestamps; made a TrainerCallback lazily so importing this module stays cheap."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def __init__(self) -> None:
                self.ends: list[float] = []
                self.begin = 0.0

            def on_train_begin(self, args, state, control, **kwargs):
                self.begin = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                self.ends.append(time.perf_counter())

            def step_seconds(self) -> list[float]:
                marks = [self.begin, *self.ends]
                return [b - a for a, b in itertools.pairwise(marks)]

        return _Timer()


def _model_and_optim(base_dir: Path, lora: dict, tp, steps: int):
    import torch

    from llmops.training.model import build_lora_model
    from llmops.training.optim import lr_factor

    model = build_lora_model(base_dir, lora, tp.seed, torch.device("cpu"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tp.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tp.warmup_steps, steps))
    return model, optimizer, scheduler


def _common_args(tp, out_dir: Path, micro: int, accum: int, steps: int) -> dict[str, Any]:
    return dict(output_dir=str(out_dir), per_device_train_batch_size=micro, gradient_accumulation_steps=accum,
                max_steps=steps, bf16=tp.precision == "bf16", use_cpu=True, max_grad_norm=tp.max_grad_norm or 1e9,
                seed=tp.seed, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                dataloader_num_workers=0)


def run_side(side: str, *, base_dir: Path, tokenizer, lora: dict, tp, examples: list, micro: int, accum: int,
             steps: int, out_dir: Path) -> dict[str, Any]:
    """Train one baseline side for `steps` optimizer steps; returns timings, layouts and the trained model."""
    import torch
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(tp.seed)
    model, optimizer, scheduler = _model_and_optim(base_dir, lora, tp, steps)
    rows = [{"input_ids": list(ex.input_ids), "labels": list(ex.labels),
             "attention_mask": [1] * len(ex.input_ids)} for ex in examples]
    timer = StepTimer()
    common = _common_args(tp, out_dir / side, micro, accum, steps)
    if side == "pad":
        from transformers import DataCollatorForSeq2Seq

        collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
        args = TrainingArguments(**common, train_sampling_strategy="group_by_length")
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator,
                          optimizers=(optimizer, scheduler), callbacks=[timer])
    elif side == "flatten":
        from transformers import DataCollatorWithFlattening

        rows = [{k: r[k] for k in ("input_ids", "labels")} for r in rows]
        args = TrainingArguments(**common)
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=DataCollatorWithFlattening(),
                          optimizers=(optimizer, scheduler), callbacks=[timer])
    elif side == "trl":
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        os.environ.setdefault("HF_DATASETS_CACHE", str(out_dir / "hf-datasets"))
        dataset = Dataset.from_list([{k: r[k] for k in ("input_ids", "labels")} for r in rows])
        args = SFTConfig(**common, packing=True, packing_strategy="bfd", max_length=tp.seq_len,
                         gradient_checkpointing=False)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             optimizers=(optimizer, scheduler), callbacks=[timer])
    else:
        raise ValueError(f"unknown baseline side {side!r} (pad | flatten | trl)")
    recorder = RecordingCollator(trainer.data_collator)
    trainer.data_collator = recorder
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    per_step = [recorder.batches[i * accum : (i + 1) * accum] for i in range(steps)]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # Evaluate from the saved adapter on a fresh fp32 base, as ours: after `train()` accelerate leaves the
    # model's forward wrapped in bf16 autocast, which reads about 0.08 higher than fp32 on this data.
    adapter_dir = out_dir / side / "adapter"
    model.save_pretrained(str(adapter_dir))
    return {"step_seconds": timer.step_seconds(), "batches": per_step, "train_loss": losses[-1] if losses else None,
            "adapter_dir": adapter_dir, "micro_batch": micro, "grad_accum": accum, "wall_seconds": wall}


def cross_attention_probe(side: str, base_dir: Path, tokenizer, examples: list) -> float:
    """Max |logit difference| between a side's padding-free micro-batch of 3 examples and each example alone.

    Near 0 (fp32): the collator's layout keeps examples apart with SDPA on CPU (transformers turns position-id
    restarts into a block-diagonal mask). Large: examples attend to each other, the layout is wrong here.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if side == "flatten":
        from transformers import DataCollatorWithFlattening

        collate = DataCollatorWithFlattening()
    elif side == "trl":
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        collate = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
    else:
        raise ValueError(side)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    feats = [{"input_ids": list(ex.input_ids), "labels": list(ex.labels)} for ex in examples[:3]]
    batch = collate(feats)
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "seq_idx")}
    worst = 0.0
    with torch.no_grad():
        flat = model(**inputs, use_cache=False).logits[0]
        start = 0
        for f in feats:
            n = len(f["input_ids"])
            alone = model(input_ids=torch.tensor([f["input_ids"]]), use_cache=False).logits[0]
            worst = max(worst, (flat[start : start + n] - alone).abs().max().item())
            start += n
    return worst
