"""The optimizer side of a training step: learning-rate schedule, dropout seeds, one clipped step.

Kept apart from the Ray worker so a benchmark or another trainer (the Hugging Face baselines) runs the
same schedule and the same step as the product.
"""

from __future__ import annotations

import math


def lr_factor(step: int, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup over `warmup_steps` (step 0 already trains), then cosine decay to 0 at `max_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def step_seed(seed: int, rank: int, step: int) -> int:
    """Dropout RNG seed for one rank at one step: a resumed run draws the same masks as an uninterrupted one."""
    return (seed * 1_000_003 + rank * 7_919 + step) % (2**63 - 1)


def optimizer_step(loss, params, optimizer, scaler, max_grad_norm: float):
    """Backward of `loss` (already scaled to the global token mean), clip, step, zero the grads; returns the
    gradient norm before clipping. With an enabled scaler (fp16) the loss is multiplied up before backward and
    the gradients divided back before clipping; a step whose gradients overflowed is skipped (the optimizer
    does not move) and the scale halves. A disabled scaler passes every call straight through."""
    import torch

    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    # Global norm over all shards (DTensor-aware under FSDP2); inf = measure without clipping.
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm or float("inf"))
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
