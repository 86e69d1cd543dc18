"""Does a built engine do what eager transformers does, and how fast: equivalence and the short benchmark.

Equivalence is checked against eager transformers (fp32, KV cache, greedy) on the fixed prompts from
params.yaml; the short benchmark times the engine at the configured batch sizes through the same
prefill/decode interface the scheduler uses. Both drive any `serving.engines.base.Engine`.
"""

from __future__ import annotations

import time
from typing import Any

from llmops.params import EngineParams


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Chat-formatted prompt token ids (what the server sends to an engine)."""
    out = []
    for p in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]
        out.append(list(ids))
    return out


def eager_greedy(model, prompt_ids: list[list[int]], new_tokens: int) -> tuple[list[list[int]], float]:
    """The reference: transformers fp32 with KV cache, greedy, one prompt at a time (no padding), up to
    `new_tokens` tokens or the model's end-of-sequence token (never suppressed: `min_new_tokens` would mask
    EOS in eager only and make an engine that rightly ends look wrong); returns (tokens per prompt, seconds)."""
    import torch

    out, t0 = [], time.perf_counter()
    with torch.no_grad():
        for ids in prompt_ids:
            g = model.generate(torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                               max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                               pad_token_id=model.config.eos_token_id)
            out.append(g[0, len(ids):].tolist())
    return out, time.perf_counter() - t0


def until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """`tokens` up to and including the first end-of-sequence token (what a server would send)."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def engine_greedy(engine, prompt_ids: list[list[int]], new_tokens: int) -> dict[str, Any]:
    """Greedy decode of all prompts as one batch through prefill/decode (slot i = prompt i), as the
    scheduler would run them; returns tokens, seconds, TTFT (all prompts prefilled) and tokens/s."""
    from serving.sampling import as_array  # numpy argmax: torch's would wake its thread pool, which then spins
    # on the cores the engine needs (as in the scheduler) and skews the timings `--engine auto` ranks by

    slots = list(range(len(prompt_ids)))
    t0 = time.perf_counter()
    last = [int(as_array(engine.prefill(s, ids)).argmax()) for s, ids in zip(slots, prompt_ids, strict=True)]
    ttft = time.perf_counter() - t0
    tokens = [[t] for t in last]
    for _ in range(new_tokens - 1):
        last = as_array(engine.decode(slots, last)).argmax(-1).tolist()
        for row, t in zip(tokens, last, strict=True):
            row.append(int(t))
    seconds = time.perf_counter() - t0
    for s in slots:
        engine.release(s)
    return {"tokens": tokens, "seconds": seconds, "ttft_s": ttft,
            "tokens_per_s": len(slots) * new_tokens / seconds}


def agreement(reference: list[list[int]], got: list[list[int]]) -> dict[str, Any]:
    """Share of prompts whose tokens are identical, and the mean share of identical leading tokens."""
    same = [a == b for a, b in zip(reference, got, strict=True)]

    def prefix(a: list[int], b: list[int]) -> int:
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    lead = [prefix(a, b) / max(len(a), 1) for a, b in zip(reference, got, strict=True)]
    return {"prompts": len(same), "identical": sum(same), "identical_rate": sum(same) / max(len(same), 1),
            "mean_leading_agreement": sum(lead) / max(len(lead), 1)}


def eager_reference(model, tokenizer, cfg: EngineParams) -> tuple[list[list[int]], float]:
    """Eager's greedy tokens on the equivalence prompts and its batch-1 tokens/s (computed once, reusable)."""
    eq = cfg.equivalence
    prompts = encode_prompts(tokenizer, cfg.prompts[: eq.prompts] if eq.prompts else cfg.prompts)
    reference, seconds = eager_greedy(model, prompts, eq.new_tokens)
    return reference, sum(len(r) for r in reference) / seconds


def model_eos_ids(model) -> set[int]:
    """The model config's end-of-sequence id(s)."""
    eos = model.config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])


def check_equivalence(engine, model, tokenizer, cfg: EngineParams,
                      reference: tuple[list[list[int]], float] | None = None) -> dict[str, Any]:
    """Greedy tokens of the engine (batched) vs eager (one at a time) on the fixed prompts; `passed` when the
    identical rate reaches `cfg.equivalence.min_identical_rate`. Also returns eager's batch-1 tokens/s."""
    eq = cfg.equivalence
    prompts = encode_prompts(tokenizer, cfg.prompts[: eq.prompts] if eq.prompts else cfg.prompts)
    tokens, eager_tps = reference or eager_reference(model, tokenizer, cfg)
    got = engine_greedy(engine, prompts, eq.new_tokens)
    eos = set(engine.eos_token_ids) | model_eos_ids(model)
    result = agreement([until_eos(t, eos) for t in tokens], [until_eos(t, eos) for t in got["tokens"]])
    return result | {"new_tokens": eq.new_tokens, "min_identical_rate": eq.min_identical_rate,
                     "passed": result["identical_rate"] >= eq.min_identical_rate,
                     "eager_batch1_tokens_per_s": eager_tps}


def short_benchmark(engine, tokenizer, cfg: EngineParams) -> dict[str, float]:
    """Engine tokens/s and TTFT at each configured batch size (prompts cycled to fill the batch)."""
    bench = cfg.benchmark
    base = encode_prompts(tokenizer, cfg.prompts)
    out: dict[str, float] = {}
    engine_greedy(engine, base[:1], 2)  # warm-up: first-run allocations are not the engine's speed
    for bs in bench.batch_sizes:
        prompts = [base[i % len(base)] for i in range(bs)]
        r = engine_greedy(engine, prompts, bench.new_tokens)
        out[f"batch{bs}_tokens_per_s"] = round(r["tokens_per_s"], 2)
        out[f"batch{bs}_ttft_s"] = round(r["ttft_s"], 4)
    return out
