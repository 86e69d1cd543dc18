"""Preference pairs built from our own instruction corpus, to train and measure DPO before production feedback
exists (and as a held-out preference split for the gate).

chosen = the record's real answer; rejected = the real answer of ANOTHER record asked the same way (same
instruction with its `code` spans masked: "Write the call signature of <X>."): a well-formed answer of the
right kind about the wrong API -- the hard negative a user's correction fixes, which plain likelihood
(SFT) does not learn to push down. A record whose template has no other answer takes one from any other
record. Deterministic for (records, seed); the pairs keep the record's id and source, with
`source = "built:<record source>"`, so they never pass for exported feedback.

    python -m llmops.training.preference_split data/splits/test.jsonl --out data/splits/preference_test.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

_CODE = re.compile(r"`[^`]*`")


def template(record: Mapping[str, Any]) -> str:
    """How a record asks, without what it asks about."""
    return _CODE.sub("<X>", str(record["instruction"]).strip())


def build_pairs(records: Sequence[Mapping[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """One pair per record (see module doc); records whose answer no other record differs from are skipped."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        groups[template(rec)].append(i)
    rejected: dict[int, str] = {}
    for key in sorted(groups):
        members = groups[key]
        if len(members) < 2:
            continue
        shift = int(rng.integers(1, len(members)))  # a rotation: every answer is used as a negative once
        for j, i in enumerate(members):
            other = records[members[(j + shift) % len(members)]]["output"]
            if str(other).strip() != str(records[i]["output"]).strip():
                rejected[i] = other
    pairs = []
    for i, rec in enumerate(records):
        if i not in rejected:  # a lone template, or an identical answer: any other record's answer
            candidates = [j for j in rng.permutation(len(records))[:32].tolist()
                          if str(records[j]["output"]).strip() != str(rec["output"]).strip()]
            if not candidates:
                continue
            rejected[i] = records[candidates[0]]["output"]
        pairs.append({"instruction": rec["instruction"], "input": rec.get("input") or "", "chosen": rec["output"],
                      "rejected": rejected[i], "id": rec.get("id", str(i)), "source": f"built:{rec.get('source', '')}"})
    return pairs


def write_pairs(pairs: Sequence[Mapping[str, Any]], path: Path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.writelines(json.dumps(dict(p), ensure_ascii=False) + "\n" for p in pairs)
    return len(pairs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llmops.training.preference_split", description=__doc__.splitlines()[0])
    ap.add_argument("records", type=Path, help="instruction records (JSONL: a split such as data/splits/test.jsonl)")
    ap.add_argument("--out", type=Path, required=True, help="where the preference pairs go (JSONL)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from llmops.data.records import read_jsonl

    n = write_pairs(build_pairs(read_jsonl(args.records).to_dict("records"), args.seed), args.out)
    print(f"{n} preference pairs -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
