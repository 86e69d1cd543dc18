"""What training needs to know about a model family, read from the loaded model rather than a table.

Llama, Qwen2/3, Mistral, Gemma 2/3 and Phi-3 differ where LoRA and FSDP touch them: Phi-3 fuses q/k/v into
one `qkv_proj`, Qwen3 and Gemma 3 put norms beside the projections, a multimodal Gemma 3 nests its decoder
under `language_model` beside a vision tower. So the LoRA targets are the linear layers inside the
attention block of the language model's decoder layers (`lora.target_modules: auto`), and the FSDP units
are the classes the model itself names as never to be split (`_no_split_modules`, which transformers also
uses for device maps). A new family with the same shape works without a code change; a name the model
does not have is an error naming the ones it has.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from llmops.errors import ModelError

AUTO = "auto"


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks (FSDP sharding units): modules of the classes in `_no_split_modules`,
    outermost only; a model that names none falls back to its longest ModuleList."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():  # a PEFT wrapper keeps the transformers model one level down
        names |= set(getattr(module, "_no_split_modules", None) or ())
    found: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside or type(module).__name__ not in names:
            continue
        found.append(module)
        inside.update(id(m) for m in module.modules())
    if found:
        return found
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ModelError(f"cannot find the decoder layers of {type(model).__name__}",
                         "use a transformers causal LM (its class names its decoder layers in _no_split_modules)")
    return list(max(lists, key=len))


def _is_linear(module: nn.Module) -> bool:
    """nn.Linear, or a PEFT LoRA layer already wrapping one (the model may already carry an adapter)."""
    return isinstance(module, nn.Linear) or isinstance(getattr(module, "base_layer", None), nn.Linear)


def text_decoder(model: nn.Module) -> nn.Module:
    """The language model inside `model` (`get_decoder()`): a multimodal Gemma 3 also holds a vision tower
    whose attention LoRA must not target by default."""
    getter = getattr(model, "get_decoder", None)
    try:
        decoder = getter() if callable(getter) else None
    except (AttributeError, NotImplementedError, ValueError):
        decoder = None
    return decoder if isinstance(decoder, nn.Module) else model


def _attention_block(layer: nn.Module) -> nn.Module | None:
    for name, child in layer.named_children():
        if "attn" in name.lower() or "attention" in type(child).__name__.lower():
            return child
    return None


def attention_projections(model: nn.Module) -> list[str]:
    """Names of the linear layers in the attention block of the decoder layers, in model order
    (q/k/v/o_proj on Llama, Qwen, Mistral, Gemma; qkv_proj/o_proj on Phi-3)."""
    names: list[str] = []
    for layer in decoder_layers(text_decoder(model)):
        block = _attention_block(layer)
        if block is None:
            continue
        for name, child in block.named_children():
            if _is_linear(child) and name not in names:
                names.append(name)
    if not names:
        raise ModelError(f"found no attention projections in {type(model).__name__}'s decoder layers",
                         "set lora.target_modules to a list of the model's linear layer names")
    return names


def linear_names(model: nn.Module) -> list[str]:
    """Every distinct leaf name of a linear layer in the decoder layers (what LoRA may target)."""
    names: list[str] = []
    for layer in decoder_layers(text_decoder(model)):
        for path, module in layer.named_modules():
            leaf = path.rsplit(".", 1)[-1]
            if path and _is_linear(module) and leaf not in names and "lora_" not in path:
                names.append(leaf)
    return names


def _inside_decoder_only(model: nn.Module, names: list[str]) -> list[str] | str:
    """`names` as PEFT matches them (any module with that last name), or, where other modules of the model
    (a vision tower) share those names, a regex that keeps LoRA inside the language model."""
    decoder = text_decoder(model)
    prefix = next((path for path, module in model.named_modules() if module is decoder), "")
    outside = [path for path, module in model.named_modules() if _is_linear(module)
               and path.rsplit(".", 1)[-1] in names and not path.startswith(f"{prefix}.")]
    if not prefix or not outside:
        return names
    return rf"{re.escape(prefix)}\..*\.({'|'.join(map(re.escape, names))})"


def resolve_target_modules(model: nn.Module, spec: str | Sequence[str]) -> list[str] | str:
    """LoRA target modules for this model: `auto` -> its language model's attention projections; an
    explicit list is checked against the linear layers the model has (ModelError naming them otherwise).
    Names, or a regex over module paths where a vision tower has layers of the same names."""
    if isinstance(spec, str):
        if spec != AUTO:
            raise ModelError(f"lora.target_modules is {spec!r}", f"use '{AUTO}' or a list of module names")
        return _inside_decoder_only(model, attention_projections(model))
    wanted = [str(s) for s in spec]
    if not wanted:
        raise ModelError("lora.target_modules is empty", f"use '{AUTO}' or name at least one linear layer")
    have = linear_names(model)
    if unknown := [w for w in wanted if w not in have]:
        raise ModelError(f"lora.target_modules names {unknown}, which {type(model).__name__} does not have "
                         f"(its linear layers: {', '.join(have)})",
                         f"use lora.target_modules={AUTO} (the attention projections: "
                         f"{', '.join(attention_projections(model))}) or names from that list")
    return _inside_decoder_only(model, wanted)


def resolve_for_checkpoint(model_dir, spec: str | Sequence[str]) -> list[str] | str:
    """`resolve_target_modules` on a weightless (meta-device) copy of the checkpoint: a bad name fails in
    the driver within a second, before any training worker starts."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return resolve_target_modules(model, spec)
