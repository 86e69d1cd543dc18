"""What training needs to know about a model family, read from the loaded model rather than a table.

Llama, Qwen2/3, Mistral, Gemma 2/3 and Phi-3 differ where LoRA and FSDP touch them: Phi-3 fuses q/k/v into
one `qkv_proj`, Qwen3 and Gemma 3 put norms beside the projections, a multimodal Gemma 3 nests its decoder
under `language_model`. So the LoRA targets are the linear layers inside each decoder layer's attention
block (`lora.target_modules: auto`), and the FSDP units are the classes the model itself names as never
to be split (`_no_split_modules`, which transformers also uses for device maps). A new family with the
same shape works without a code change; a name the model does not have is an error naming the ones it has.
"""

from __future__ import annotations

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


def _attention_block(layer: nn.Module) -> nn.Module | None:
    for name, child in layer.named_children():
        if "attn" in name.lower() or "attention" in type(child).__name__.lower():
            return child
    return None


def attention_projections(model: nn.Module) -> list[str]:
    """Names of the linear layers in the attention block of the decoder layers, in model order
    (q/k/v/o_proj on Llama, Qwen, Mistral, Gemma; qkv_proj/o_proj on Phi-3)."""
    names: list[str] = []
    for layer in decoder_layers(model):
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
    for layer in decoder_layers(model):
        for path, module in layer.named_modules():
            leaf = path.rsplit(".", 1)[-1]
            if path and _is_linear(module) and leaf not in names and "lora_" not in path:
                names.append(leaf)
    return names


def resolve_target_modules(model: nn.Module, spec: str | Sequence[str]) -> list[str]:
    """LoRA target module names for this model: `auto` -> its attention projections; an explicit list
    is checked against the linear layers the model has (ModelError naming them otherwise)."""
    if isinstance(spec, str):
        if spec != AUTO:
            raise ModelError(f"lora.target_modules is {spec!r}", f"use '{AUTO}' or a list of module names")
        return attention_projections(model)
    wanted = [str(s) for s in spec]
    if not wanted:
        raise ModelError("lora.target_modules is empty", f"use '{AUTO}' or name at least one linear layer")
    have = linear_names(model)
    if unknown := [w for w in wanted if w not in have]:
        raise ModelError(f"lora.target_modules names {unknown}, which {type(model).__name__} does not have "
                         f"(its linear layers: {', '.join(have)})",
                         f"use lora.target_modules={AUTO} (the attention projections: "
                         f"{', '.join(attention_projections(model))}) or names from that list")
    return wanted
