"""Train/validation/test split by a hash of each record's group key, never by row position.

Exact duplicate records are dropped first; then every record goes to the split chosen by a seeded hash of
its normalised prompt (`text.group_key`), so duplicates and near-identical prompts always land together
and the held-out splits measure generalisation rather than recall. Records that are near-duplicates
(llmops/data/dedup.py, the measure the validation's leakage check applies) are grouped too: a group takes
the split of its first record in file order, so templated corrections that differ by a word cannot straddle
two splits and fail validation. A record's split depends only on its own group and the seed: adding records
moves existing ones only when a new record joins their near-duplicates to ones in another split.
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
from llmops.params import DedupParams, SplitParams

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


def _anchors(keys: list[str], records: list[dict[str, Any]], dedup: DedupParams | None) -> list[int]:
    """For each record, the first record (file order) of its group: same prompt key or near-duplicate text."""
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(i: int, j: int) -> None:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        join(first.setdefault(key, i), i)
    if dedup is not None and len(records) > 1:
        from llmops.data.dedup import near_duplicates

        rows = [{**rec, "id": str(i)} for i, rec in enumerate(records)]
        for pair in near_duplicates({"all": rows}, dedup):
            join(int(pair.a_id), int(pair.b_id))
    return [root(i) for i in range(len(keys))]


def split_frame(df: Any, params: SplitParams, dedup: DedupParams | None = None) -> dict[str, Any]:
    """Split a records DataFrame into {train, validation, test} DataFrames (file order kept); with `dedup`,
    near-duplicate records share a split."""
    if not (0 <= params.validation < 1 and 0 <= params.test < 1 and params.validation + params.test < 1):
        raise DataError(
            f"split fractions validation={params.validation} test={params.test} leave no training data",
            "set data.split.validation and data.split.test to fractions summing to less than 1",
        )
    deduped = df.drop_duplicates(subset=["instruction", "input", "output"], keep="first")
    keys = [group_key(i, x) for i, x in zip(deduped["instruction"], deduped["input"], strict=True)]
    records = deduped.to_dict("records") if dedup is not None else []
    assigned = [assign_split(keys[a], params) for a in _anchors(keys, records, dedup)]
    return {name: deduped[[a == name for a in assigned]].reset_index(drop=True) for name in SPLITS}


def split_file(path: Path, out_dir: Path, params: SplitParams, dedup: DedupParams | None = None) -> dict[str, int]:
    """Read `path`, split it and write `<out_dir>/{train,validation,test}.jsonl`; returns rows per split."""
    parts = split_frame(read_jsonl(path), params, dedup)
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
        data = load_params(args.params or get_settings().params_path).data
        rows = split_file(args.input, args.out_dir, data.split, data.dedup)
    except LlmopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, count in rows.items():
        print(f"{args.out_dir / name}.jsonl: {count} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
