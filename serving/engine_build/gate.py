"""Quality gate of a quantised engine: agreement, held-out answer perplexity and ROUGE-L, each against eager.

A quantised engine cannot give eager's exact tokens, so it is judged on what users see and what training
optimised: on held-out records (never trained on) it must keep the answer perplexity within
`max_perplexity_increase` (relative) and the ROUGE-L F1 of its greedy answers within `max_rouge_l_drop`
(absolute) of eager transformers fp32 on the same records. Agreement (share of answers token-identical to
eager's, and the mean identical leading share) is reported, not gated: one early different token changes
every later one without making the answer worse. The engine's perplexity is teacher-forced through the
same prefill/decode interface the scheduler drives, so it measures the engine as served.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from llmops.errors import DataError
from llmops.params import QuantizedParams


def heldout_records(project_dir: Path, cfg: QuantizedParams) -> list[dict[str, str]]:
    """The first `cfg.records` records of the held-out JSONL (instruction, input, output)."""
    import json

    path = Path(cfg.heldout) if Path(cfg.heldout).is_absolute() else Path(project_dir) / cfg.heldout
    if not path.is_file():
        raise DataError(f"held-out records {path} not found (params.yaml engine.quantized.heldout)",
                        "build the splits (`make data`) or point engine.quantized.heldout at a JSONL file")
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            records.append({k: str(row.get(k) or "") for k in ("instruction", "input", "output")})
        if len(records) >= cfg.records:
            break
    if not records:
        raise DataError(f"{path} has no records", "point engine.quantized.heldout at the test split")
    return records


def _eager_answer_nll(model, examples: list[tuple[list[int], int]]) -> tuple[float, int]:
    import torch

    nll, count = 0.0, 0
    with torch.no_grad():
        for ids, n_prompt in examples:
            logits = model(torch.tensor([ids])).logits[0, n_prompt - 1:-1].float()
            target = torch.tensor(ids[n_prompt:])
            nll += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            count += len(target)
    return nll, count


def engine_answer_nll(engine, examples: list[tuple[list[int], int]]) -> tuple[float, int]:
    """Teacher-forced: prefill the prompt, then decode the true answer tokens, batched over free slots."""
    import torch

    nll, count = 0.0, 0
    for start in range(0, len(examples), engine.max_slots):
        chunk = examples[start:start + engine.max_slots]
        pos = {}  # slot -> index of the token the last logits predict
        logits = {}
        for slot, (ids, n_prompt) in enumerate(chunk):
            logits[slot] = engine.prefill(slot, ids[:n_prompt])
            pos[slot] = n_prompt
        while pos:
            for slot, i in pos.items():
                ids = chunk[slot][0]
                nll -= float(torch.log_softmax(logits[slot].float(), -1)[ids[i]])
                count += 1
            pos = {s: i + 1 for s, i in pos.items() if i + 1 < len(chunk[s][0])}
            for s in [s for s in logits if s not in pos]:
                engine.release(s)
                del logits[s]
            if pos:
                slots = list(pos)
                out = engine.decode(slots, [chunk[s][0][pos[s] - 1] for s in slots])
                logits = {s: out[row] for row, s in enumerate(slots)}
    return nll, count


def quality_gate(engine, model, tokenizer, records: list[dict[str, str]], cfg: QuantizedParams,
                 eos: set[int]) -> dict[str, Any]:
    """The engine's deltas vs eager on `records` and whether they are within `cfg`'s tolerances."""
    from llmops.modeling.prompts import encode_example, format_prompt
    from llmops.modeling.text_metrics import rouge_l_f1
    from serving.engine_build import checks

    t0 = time.perf_counter()
    examples = []
    for r in records:
        ids, labels = encode_example(tokenizer, r)
        examples.append((ids, sum(1 for x in labels if x == -100)))
    e_nll, n = _eager_answer_nll(model, examples)
    q_nll, n_q = engine_answer_nll(engine, examples)
    ppl_eager, ppl_engine = math.exp(e_nll / n), math.exp(q_nll / n_q)

    prompts = [tokenizer(format_prompt(tokenizer, r), add_special_tokens=False)["input_ids"] for r in records]
    ref_tokens, _ = checks.eager_greedy(model, prompts, cfg.new_tokens)
    got_tokens: list[list[int]] = []
    for start in range(0, len(prompts), engine.max_slots):
        got_tokens += checks.engine_greedy(engine, prompts[start:start + engine.max_slots],
                                                 cfg.new_tokens)["tokens"]
    ref_tokens = [checks.until_eos(t, eos) for t in ref_tokens]
    got_tokens = [checks.until_eos(t, eos) for t in got_tokens]

    def rouge(tokens: list[list[int]]) -> float:
        texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
        return sum(rouge_l_f1(t, r["output"]) for t, r in zip(texts, records, strict=True)) / len(records)

    rouge_eager, rouge_engine = rouge(ref_tokens), rouge(got_tokens)
    ppl_increase = ppl_engine / ppl_eager - 1.0
    rouge_drop = rouge_eager - rouge_engine
    breaches = []
    if ppl_increase > cfg.max_perplexity_increase:
        breaches.append(f"answer perplexity +{ppl_increase:.1%} > +{cfg.max_perplexity_increase:.1%}")
    if rouge_drop > cfg.max_rouge_l_drop:
        breaches.append(f"ROUGE-L -{rouge_drop:.3f} > -{cfg.max_rouge_l_drop:.3f}")
    return {"records": len(records), "answer_tokens": n, "new_tokens": cfg.new_tokens,
            "perplexity_eager": ppl_eager, "perplexity_engine": ppl_engine, "perplexity_increase": ppl_increase,
            "rouge_l_eager": rouge_eager, "rouge_l_engine": rouge_engine, "rouge_l_drop": rouge_drop,
            "agreement": checks.agreement(ref_tokens, got_tokens),
            "tolerances": cfg.model_dump(include={"max_perplexity_increase", "max_rouge_l_drop"}),
            "passed": not breaches, "breaches": breaches, "seconds": round(time.perf_counter() - t0, 1)}
