"""The gate's preference check: how base, candidate (and champion) rank a held-out preference split.

Runs only where a split is configured (params.yaml `eval.gate.preference_split`: JSONL of {instruction, input,
chosen, rejected}, e.g. built by `python -m llmops.training.preference_split data/splits/test.jsonl --out ...`).
Per model: `preference_accuracy` (share of pairs whose chosen answer the model finds more likely; gated in
components/evaluate/gate.py), `preference_logp_margin` (mean log-prob of chosen minus rejected) and
`preference_reward_margin`, DPO's implicit reward margin against the base:
beta * ((logp_c - base_c) - (logp_r - base_r)), beta = `train.dpo.beta` (0 for the base itself).
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

from llmops.errors import DataError
from llmops.params import Params
from llmops.settings import Settings


def load_split(settings: Settings, params: Params) -> list[dict] | None:
    """The configured held-out pairs (the first `eval.max_examples`), or None when no split is configured."""
    from llmops.training.preference import read_preferences

    name = params.eval.gate.preference_split
    if not name:
        return None
    path = Path(name) if Path(name).is_absolute() else settings.project_dir / name
    if not path.is_file():
        raise DataError(f"eval.gate.preference_split {path} does not exist",
                        "build it (python -m llmops.training.preference_split SPLIT --out PATH) or set it to \"\"")
    records = read_preferences(path)
    n = params.eval.max_examples
    return records[:n] if n > 0 else records


def score_models(settings: Settings, params: Params, adapters: list[tuple[str, Path | None]], base_model_dir: Path,
                 models: dict[str, dict[str, float]], precision: str) -> None:
    """Add the preference metrics to each model's metrics (`adapters` in order, "base" first); no-op without a split."""
    records = load_split(settings, params)
    if not records:
        return
    from llmops.modeling.generation import load_model
    from llmops.precision import autocast
    from llmops.training.preference import score_pairs

    base_logps = None
    beta = params.train.dpo.beta
    for name, adapter in adapters:
        t0 = time.perf_counter()
        model, tokenizer = load_model(base_model_dir, adapter)
        with autocast(model.device.type, precision):
            scored = score_pairs(model, tokenizer, records, params.train.seq_len, params.eval.batch_size)
        del model
        gc.collect()
        chosen, rejected = scored.pop("chosen_logps"), scored.pop("rejected_logps")
        if base_logps is None:
            base_logps = (chosen, rejected)
        margins = [beta * ((c - bc) - (r - br)) for c, r, bc, br in zip(chosen, rejected, *base_logps, strict=True)]
        scored["preference_reward_margin"] = sum(margins) / len(margins)
        models[name].update(scored)
        print(f"[evaluate] {name}: prefers the chosen answer on {scored['preference_accuracy']:.1%} of "
              f"{scored['preference_pairs']} held-out pairs, reward margin vs base "
              f"{scored['preference_reward_margin']:+.4f} ({time.perf_counter() - t0:.1f} s)",
              file=sys.stderr, flush=True)
