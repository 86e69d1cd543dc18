"""Splits by a hash of the normalised prompt: duplicates dropped, near-duplicates kept together, stable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from llmops.data.records import COLUMNS, read_jsonl, write_jsonl
from llmops.data.split import SPLITS, assign_split, split_file, split_frame
from llmops.data.text import group_key
from llmops.errors import DataError
from llmops.params import SplitParams

PARAMS = SplitParams(seed=13, validation=0.1, test=0.1)
REPO = Path(__file__).resolve().parents[2]


def _frame(n: int) -> pd.DataFrame:
    rows = [{"id": f"r{i}", "instruction": f"What is item {i}?", "input": "", "output": f"Item {i}.",
             "source": "test"} for i in range(n)]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def test_fractions_are_close_to_params() -> None:
    parts = split_frame(_frame(4000), PARAMS)
    sizes = {k: len(v) for k, v in parts.items()}
    assert sum(sizes.values()) == 4000
    assert 0.08 * 4000 < sizes["validation"] < 0.12 * 4000
    assert 0.08 * 4000 < sizes["test"] < 0.12 * 4000


def test_exact_duplicates_are_dropped_and_near_duplicates_stay_together() -> None:
    df = _frame(300)
    variants = []
    for i in range(0, 300, 3):  # near-identical prompts: case, punctuation and spacing differ
        variants.append({"id": f"v{i}", "instruction": f"what is ITEM {i}", "input": " ", "output": f"item {i}",
                         "source": "test"})
    dup = df.iloc[[5]].assign(id="dup-of-r5")  # same instruction/input/output as r5, other id
    parts = split_frame(pd.concat([df, pd.DataFrame(variants), dup], ignore_index=True), PARAMS)
    where = {rid: name for name, part in parts.items() for rid in part["id"]}
    assert "dup-of-r5" not in where and "r5" in where
    for i in range(0, 300, 3):
        assert where[f"v{i}"] == where[f"r{i}"]
    keys = {name: {group_key(a, b) for a, b in zip(p["instruction"], p["input"], strict=True)}
            for name, p in parts.items()}
    assert not (keys["train"] & keys["test"]) and not (keys["train"] & keys["validation"])
    assert not (keys["validation"] & keys["test"])


def test_assignment_is_stable_when_records_are_added() -> None:
    small = split_frame(_frame(200), PARAMS)
    big = split_frame(_frame(1000), PARAMS)
    for name in SPLITS:
        assert set(small[name]["id"]) <= set(big[name]["id"])


def test_seed_changes_assignment() -> None:
    keys = [f"prompt {i}" for i in range(500)]
    other = SplitParams(seed=14, validation=0.1, test=0.1)
    assert [assign_split(k, PARAMS) for k in keys] != [assign_split(k, other) for k in keys]


def test_bad_fractions_raise() -> None:
    with pytest.raises(DataError, match="leave no training data"):
        split_frame(_frame(10), SplitParams(seed=1, validation=0.6, test=0.5))


def test_split_file_and_main(tmp_path: Path) -> None:
    src = tmp_path / "base.jsonl"
    write_jsonl(_frame(500).to_dict(orient="records"), src)
    from llmops.params import load_params

    rows = split_file(src, tmp_path / "a", load_params(REPO / "params.yaml").data.split)
    assert sum(rows.values()) == 500
    proc = subprocess.run(
        [sys.executable, "-m", "llmops.data.split", "--input", str(src), "--out-dir", str(tmp_path / "b"),
         "--params", str(REPO / "params.yaml")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    for name in SPLITS:  # same params -> same bytes
        assert (tmp_path / "a" / f"{name}.jsonl").read_bytes() == (tmp_path / "b" / f"{name}.jsonl").read_bytes()
        assert len(read_jsonl(tmp_path / "b" / f"{name}.jsonl")) == rows[name]
    bad = subprocess.run([sys.executable, "-m", "llmops.data.split", "--input", str(tmp_path / "none.jsonl"),
                          "--out-dir", str(tmp_path / "c"), "--params", str(REPO / "params.yaml")],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "no such file" in bad.stderr


def test_templated_near_duplicates_share_a_split_so_validation_finds_no_leak() -> None:
    """Corrections from one template differ by a word in the prompt: different group keys (so the prompt hash
    alone sends them to different splits), one near-duplicate group for dedup -- the split must keep them
    together, or the validation's leakage check fails the retrain."""
    from llmops.data.dedup import near_duplicates
    from llmops.params import DedupParams

    body = ("Write a SQL query that returns the ten most recent orders of the customer with the given id, newest "
            "first, joining the customers table on customer_id and selecting the order id, date and total")
    rows = [{"id": f"t{i}", "instruction": f"{body} (ticket {i}).", "input": "",
             "output": "SELECT o.id, o.date, o.total FROM orders o JOIN customers c ON c.id = o.customer_id "
                       "WHERE c.id = :id ORDER BY o.date DESC LIMIT 10;", "source": "feedback"} for i in range(40)]
    df = pd.concat([_frame(200), pd.DataFrame(rows, columns=list(COLUMNS))], ignore_index=True)
    keys = {group_key(r["instruction"], r["input"]) for r in rows}
    assert len({assign_split(k, PARAMS) for k in keys}) > 1  # by prompt hash alone they would straddle splits
    dedup = DedupParams()
    parts = split_frame(df, PARAMS, dedup)
    homes = {name for name, part in parts.items() if part["id"].str.startswith("t").any()}
    assert len(homes) == 1, homes
    leaks = [p for p in near_duplicates(parts, dedup) if p.a != p.b]
    assert leaks == []
    plain = split_frame(_frame(200), PARAMS, dedup)  # records with no near-duplicate keep their hash split
    assert {k: list(v["id"]) for k, v in plain.items()} == {k: list(v["id"]) for k, v in
                                                            split_frame(_frame(200), PARAMS).items()}
