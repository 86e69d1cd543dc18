"""Training checkpoints as plain files (safetensors + JSON, nothing pickled), written by rank 0.

A checkpoint directory holds:

    adapter/adapter_model.safetensors + adapter_config.json   the PEFT adapter (loadable on its own)
    trainer/model.safetensors      trainable parameters under their training-time names (exact restore)
    trainer/optimizer.safetensors  optimizer tensors (AdamW moments, step counts) as state/<param>/<key>
    trainer/state.json             step, scheduler, optimizer param groups, loss history, counters

The data position needs no state of its own: the block order is a pure function of (seed, step), and so
is the dropout RNG (seeded per rank and step), so a run resumed from step k replays exactly what an
uninterrupted run would have done from step k.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ADAPTER_DIR = "adapter"
TRAINER_DIR = "trainer"
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


def _flatten_optimizer(optim_state: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Nested `{state: {param: {key: tensor}}, param_groups: [...]}` -> tensors by `state/<param>/<key>`
    plus the JSON-able param groups (non-tensor per-param state, if any, would not fit and is refused)."""
    import torch

    tensors: dict[str, Any] = {}
    for param, entries in optim_state["state"].items():
        for key, value in entries.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"state/{param}/{key}"] = value.detach().cpu().contiguous()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in optim_state["param_groups"]]
    return tensors, groups


def _unflatten_optimizer(tensors: dict[str, Any], groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, rest = name.split("/", 1)
        param, key = rest.rsplit("/", 1)
        state.setdefault(param, {})[key] = value
    # JSON turned tuples (AdamW betas) into lists; the optimizer expects the tuple back.
    fixed = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": fixed}


def save_trainer_state(
    ckpt_dir: Path,
    model_state: dict[str, Any],
    optim_state: dict[str, Any],
    state: dict[str, Any],
) -> None:
    """Write the trainable weights, the flattened optimizer state and `state` (JSON-able) under trainer/."""
    from safetensors.torch import save_file

    out = Path(ckpt_dir) / TRAINER_DIR
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, str(out / MODEL_FILE))
    tensors, groups = _flatten_optimizer(optim_state)
    save_file(tensors, str(out / OPTIM_FILE))
    (out / STATE_FILE).write_text(json.dumps({**state, "optimizer_param_groups": groups}, indent=1))


def load_trainer_state(ckpt_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(model_state, optimizer state dict keyed by parameter name, state) as written by `save_trainer_state`."""
    from safetensors.torch import load_file

    src = Path(ckpt_dir) / TRAINER_DIR
    state = json.loads((src / STATE_FILE).read_text())
    optim = _unflatten_optimizer(dict(load_file(str(src / OPTIM_FILE))), state.pop("optimizer_param_groups"))
    return dict(load_file(str(src / MODEL_FILE))), optim, state
