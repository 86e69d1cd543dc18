"""Building-block check: transformers 5's continuous batching (`generate_batch`, paged attention) against our
eager engine's prefill + batched decode on the same model object: 8 chat prompts, greedy, N new tokens each,
batch of 8, one run. Prints JSON with tokens/s of both and the load average (the machine may be shared).
Not part of the tests: `python -m benchmarks.serving_blocks [N]`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Explain what a Python list comprehension is.", "Write a haiku about the sea.",
           "What is the capital of France and why is it famous?", "Give three tips for writing clean code.",
           "Describe how a hash map works.", "What does HTTP stand for?", "Summarise the plot of Hamlet.",
           "How do I reverse a string in Python?"]


def main(n: int = 64, model_dir: Path = ROOT / ".llmops/models/smollm2-135m-instruct") -> dict:
    from transformers import GenerationConfig

    from llmops import host
    from serving.engines.eager import EagerEngine

    host_fp = host.for_benchmark()  # the machine these timings come from (printed on stderr, recorded below)

    eng = EagerEngine(model_dir, max_slots=len(PROMPTS))
    tok, model = eng.tokenizer, eng.model
    ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                              tokenize=False), add_special_tokens=False) for p in PROMPTS]
    res: dict = {"new_tokens": n, "batch": len(ids), "threads": torch.get_num_threads()}

    def cfg(k: int) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=k, do_sample=False, eos_token_id=-1, pad_token_id=tok.pad_token_id)

    try:
        model.generate_batch(ids[:2], generation_config=cfg(4))  # warm up
        t0 = time.perf_counter()
        out = model.generate_batch(ids, generation_config=cfg(n))
        dt = time.perf_counter() - t0
        toks = sum(len(o.generated_tokens) for o in out.values())
        res["hf_generate_batch"] = {"tokens": toks, "s": round(dt, 2), "tok_per_s": round(toks / dt, 1)}
    except Exception as exc:  # record what happened rather than hide the baseline
        res["hf_generate_batch"] = f"failed: {type(exc).__name__}: {exc}"

    def ours() -> None:
        last = {s: int(eng.prefill(s, p).argmax()) for s, p in enumerate(ids)}
        slots = list(last)
        for _ in range(n - 1):
            logits = eng.decode(slots, [last[s] for s in slots])
            last = {s: int(logits[i].argmax()) for i, s in enumerate(slots)}
        for s in slots:
            eng.release(s)

    eng.warmup()
    t0 = time.perf_counter()
    ours()
    dt = time.perf_counter() - t0
    res["ours_eager_batched"] = {"tokens": n * len(ids), "s": round(dt, 2), "tok_per_s": round(n * len(ids) / dt, 1)}
    res["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    res["host"] = host_fp
    return res


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 64)))
