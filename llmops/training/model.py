"""The model side of a training worker: base + LoRA, wrapped for data parallelism, and its adapter state.

FSDP2 (`fully_shard`) shards every decoder layer and then the root, so each rank holds 1/world of every
parameter and gathers a layer only while it computes it; DDP keeps a full replica and all-reduces the
gradients. Both average gradients over ranks, so they train the same adapter (FSDP2 on gloo gives
bit-identical adapters to DDP, measured). FSDP1 is avoided: it segfaults gathering with CPU offload and
renames modules so PEFT no longer finds its LoRA keys.

The adapter is gathered with torch's distributed state-dict API on every rank (a collective) and only
the `lora_` entries are kept; rank 0 writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

ADAPTER_NAME = "default"


def build_lora_model(base_model_dir: Path, lora: dict[str, Any], seed: int, device: torch.device,
                     attn_implementation: str = "sdpa") -> nn.Module:
    """Base model (fp32, frozen) with LoRA adapters; the seed makes the LoRA init identical on every rank.

    Packed training passes `attn_implementation=_attention.NAME` ("packed_sdpa"): the same attention,
    computed only inside each example (llmops/training/attention.py). A family whose attention that
    kernel cannot compute (Gemma 2's soft-capped logits) trains with transformers' eager attention, which
    builds the same block-diagonal mask from the restarting position ids.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from llmops.modeling.families import resolve_target_modules
    from llmops.training import attention as _attention

    if attn_implementation == _attention.NAME:
        if _attention.unsupported(AutoConfig.from_pretrained(base_model_dir)):
            attn_implementation = "eager"  # transformers' eager path soft-caps and still masks packed blocks
        else:
            _attention.register()
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32,
                                                 attn_implementation=attn_implementation)
    model.config.use_cache = False  # a KV cache would switch off packed-sequence masking in training
    torch.manual_seed(seed)
    config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        # `auto` -> the attention projections this family has (llmops.modeling.families)
        target_modules=resolve_target_modules(model, lora["target_modules"]),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config).to(device)


def decoder_layers(peft_model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a PEFT-wrapped causal LM (the FSDP2 sharding units): the classes the
    model names in `_no_split_modules`, whatever the family nests them under."""
    from llmops.modeling.families import decoder_layers as layers_of

    return layers_of(peft_model.get_base_model())


def wrap(peft_model: nn.Module, strategy: str, device: torch.device, world: int) -> nn.Module:
    """FSDP2 per decoder layer + root, or DDP; returns the module to train (the same object for FSDP2)."""
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (world,))
        for layer in decoder_layers(peft_model):
            fully_shard(layer, mesh=mesh)
        fully_shard(peft_model, mesh=mesh)
        return peft_model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(peft_model, device_ids=ids)
    raise ValueError(f"unknown strategy {strategy!r} (fsdp | ddp)")


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and not hasattr(model, "peft_config") else model


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded) trainable parameters on CPU, keyed by training-time name. Call on EVERY rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, ignore_frozen_params=True))
    # clone: on one rank the "full" tensor can be the live parameter itself, which the next step changes.
    return {k: v.detach().cpu().clone() for k, v in full.items() if "lora_" in k}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put full trainable tensors back into a (possibly sharded) model; every LoRA tensor must be there."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from llmops.errors import ModelError

    fix = "resume only from a checkpoint of the same base model and lora params, or start a fresh run"
    # torch reports no missing keys with full_state_dict + strict=False (2.13) and fills `state` in place:
    # check the LoRA names before loading anything
    expected = {n for n, p in unwrap(model).named_parameters() if p.requires_grad and "lora_" in n}
    if absent := sorted(expected - state.keys()):
        raise ModelError(f"checkpoint does not match the model: missing {absent[:3]} ({len(absent)} tensors)", fix)
    try:
        result = set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))
    except (RuntimeError, ValueError) as exc:  # torch raises either for a shape mismatch, by version
        raise ModelError(f"checkpoint does not match the model: {str(exc).strip().splitlines()[0][:300]}",
                         fix) from exc
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise ModelError(f"checkpoint does not match the model: missing {missing[:3]}, "
                         f"unexpected {list(result.unexpected_keys)[:3]}", fix)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Full optimizer state keyed by parameter name (`state`, `param_groups`). Call on EVERY rank.

    (torch 2.13's `flatten_optimizer_state_dict=True` cannot be loaded back with `full_state_dict=True`
    on FSDP2 — a KeyError in `_unflatten_state_dict` — so the nested form is used and flattened by us.)
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True)
    return get_optimizer_state_dict(model, optimizer, options=opts)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, optimizer, state, options=opts)


def save_peft_adapter(model: nn.Module, state: dict[str, torch.Tensor], out_dir: Path) -> Path:
    """Write `adapter_model.safetensors` + `adapter_config.json` (PEFT format) from gathered tensors."""
    peft_model = unwrap(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir), state_dict=state, safe_serialization=True,
                               save_embedding_layers=False)
    if not (out_dir / "adapter_model.safetensors").is_file():
        raise RuntimeError(f"PEFT wrote no adapter_model.safetensors in {out_dir}")
    return out_dir
