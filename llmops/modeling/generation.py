"""Load a base checkpoint (optionally with a LoRA adapter merged in) and generate greedily, timed.

Evaluation compares models on what they generate and how fast, so every model goes through the same
path: the adapter is merged into the base weights (`merge_and_unload`, same greedy tokens, no adapter
overhead per step), prompts are batched with left padding (a decoder-only model continues from the
right edge), decoding is greedy so a rerun gives the same texts, and each batch is timed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llmops.errors import ModelError


@dataclass
class GenerationResult:
    """Texts in prompt order with their timing.

    `latencies_ms[i]` is the wall time of the batch that produced text i: with batching, a request waits
    for its whole batch, so that is the latency its caller sees. `tokens_per_s` counts generated tokens
    (up to and including the end-of-turn token, never padding) over the total generation wall time.
    """

    texts: list[str]
    latencies_ms: list[float]
    new_tokens: list[int]
    seconds: float
    batch_size: int
    tokens_per_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens_per_s = sum(self.new_tokens) / self.seconds if self.seconds > 0 else 0.0


# A leading reasoning block (Qwen3 writes `<think>...</think>` before every answer, empty in non-thinking
# mode; its template trains it that way): not part of the answer that is scored.
_REASONING = re.compile(r"^\s*<think>.*?</think>", re.S)


def answer_text(decoded: str) -> str:
    """The answer in a decoded generation: stripped, without a leading reasoning block."""
    return _REASONING.sub("", decoded, count=1).strip()


def load_model(base_dir: Path, adapter_dir: Path | None = None, dtype: str = "float32", device: str | None = None):
    """(model, tokenizer) in eval mode: the base checkpoint, with the PEFT adapter merged in when given.

    `device` None picks CUDA when there is one (cluster GPU nodes), else the CPU; merging happens first,
    on the CPU. Raises ModelError (cause + fix) when a directory is missing or the adapter does not fit.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = Path(base_dir)
    if not (base_dir / "config.json").is_file():
        raise ModelError(f"no model checkpoint at {base_dir}", "run `llmops model pull` or pass a model directory")
    torch_dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch_dtype)
    if adapter_dir is not None:
        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise ModelError(f"no LoRA adapter at {adapter_dir} (adapter_config.json missing)",
                             "pass the directory the train step wrote (adapter_model.safetensors + config)")
        from peft import PeftModel

        try:
            peft_model = PeftModel.from_pretrained(model, adapter_dir)
            model = peft_model.merge_and_unload(safe_merge=True)
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"adapter {adapter_dir} does not fit base {base_dir}: {first[:200]}",
                             "evaluate an adapter trained on this base model") from None
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 8,
    warmup: bool = True,
) -> GenerationResult:
    """Greedy continuations of `prompts` (already chat-formatted text), batched with left padding.

    Prompts are grouped by length so a batch pads little; results come back in the original order.
    Generation stops at the family's end-of-turn token (`stop_token_ids`: eos, the generation config's eos
    ids, the template's end-of-turn marker) or after `max_new_tokens`. A one-token
    warm-up run first keeps one-time costs out of the timings, so models measured in turn compare fairly.
    """
    import torch

    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    n = len(prompts)
    texts: list[str] = [""] * n
    latencies: list[float] = [0.0] * n
    counts: list[int] = [0] * n
    if n == 0:
        return GenerationResult(texts, latencies, counts, 0.0, batch_size)
    from llmops.modeling.prompts import stop_token_ids

    stops = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops or [0])[0]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(n), key=lambda i: len(encoded[i]))
    device = next(model.parameters()).device

    def run(rows: list[list[int]], new_tokens: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, row in enumerate(rows):
            ids[j, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[j, width - len(row):] = 1
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=new_tokens,
            do_sample=False, pad_token_id=pad_id, eos_token_id=stops or None,
        )
        return out[:, width:].cpu()

    total = 0.0
    with torch.inference_mode():
        if warmup:
            run([encoded[order[0]]], 1)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            t0 = time.perf_counter()
            new = run([encoded[i] for i in idx], max_new_tokens)
            elapsed = time.perf_counter() - t0
            total += elapsed
            for j, i in enumerate(idx):
                row = new[j].tolist()
                stop = next((k + 1 for k, t in enumerate(row) if t in stops), len(row))
                counts[i] = stop
                texts[i] = answer_text(tokenizer.decode(row[:stop], skip_special_tokens=True))
                latencies[i] = elapsed * 1000.0
    return GenerationResult(texts, latencies, counts, total, batch_size)
