"""Train/validation/test split by a hash of each record's group key, never by row position.

Exact duplicate records are dropped first; then every record goes to the split chosen by a seeded hash of
its normalised prompt (`text.group_key`), so duplicates and near-identical prompts always land together
and the held-out splits measure generalisation rather than recall. A record's split depends only on its
own prompt and the seed: adding records never moves existing ones between splits.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

from llmops.data.records import read_jsonl, write_jsonl
from llmops.data.text import group_key
from llmops.errors import DataError, LlmopsError
from llmops.params import SplitParams

SPLITS: tuple[str, ...] = ("train", "validation", "test")


def assign_split(key: str, params: SplitParams) -> str:
    """The split of one group key: a uniform draw in [0, 1) from sha256(seed, key) against the fractions."""
    digest = hashlib.sha256(f"{params.seed}\0{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < params.test:
        return "test"
    if u < params.test + params.validation:
        return "validation"
    return "train"


def split_frame(df: Any, params: SplitParams) -> dict[str, Any]:
    """Split a records DataFrame into {train, validation, test} DataFrames (file order kept)."""
    if not (0 <= params.validation < 1 and 0 <= params.test < 1 and params.validation + params.test < 1):
        raise DataError(
            f"split fractions validation={params.validation} test={params.test} leave no training data",
            "set data.split.validation and data.split.test to fractions summing to less than 1",
        )
    deduped = df.drop_duplicates(subset=["instruction", "input", "output"], keep="first")
    keys = [group_key(i, x) for i, x in zip(deduped["instruction"], deduped["input"], strict=True)]
    assigned = [assign_split(k, params) for k in keys]
    return {name: deduped[[a == name for a in assigned]].reset_index(drop=True) for name in SPLITS}


def split_file(path: Path, out_dir: Path, params: SplitParams) -> dict[str, int]:
    """Read `path`, split it and write `<out_dir>/{train,validation,test}.jsonl`; returns rows per split."""
    parts = split_frame(read_jsonl(path), params)
    return {name: write_jsonl(frame, out_dir / f"{name}.jsonl") for name, frame in parts.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--input", type=Path, default=Path("data/sample/base.jsonl"))
    parser.add_argument("--out-dir", type=Path, default=Path("data/splits"))
    parser.add_argument("--params", type=Path, default=None, help="params.yaml (default: the project's)")
    args = parser.parse_args(argv)
    from llmops.params import load_params
    from llmops.settings import get_settings

    try:
        params = load_params(args.params or get_settings().params_path).data.split
        rows = split_file(args.input, args.out_dir, params)
    except LlmopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, count in rows.items():
        print(f"{args.out_dir / name}.jsonl: {count} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
