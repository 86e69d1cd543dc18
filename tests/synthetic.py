"""A learnable toy task for training tests: reverse a few colour words. Seeded, so every run sees the same data."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ["red", "green", "blue", "cyan", "magenta", "yellow", "black", "white", "orange", "purple", "brown", "pink"]


def word_reversal_jsonl(path: Path, n: int, seed: int) -> Path:
    """Write `n` instruction records (the project's record schema) to `path`; returns `path`."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 7))]
        rows.append({"id": f"{seed}-{i}", "instruction": "Reverse the order of these words.",
                     "input": " ".join(words), "output": " ".join(reversed(words)), "source": "synthetic"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
