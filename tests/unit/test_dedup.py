"""Near-duplicate control (llmops/data/dedup.py): planted near-copies are found inside and across splits, fail
validation as leakage across splits (naming the pairs), and distinct records in one template are not paired."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from llmops.data.dedup import near_duplicates, repeats
from llmops.params import DedupParams
from llmops.settings import Settings

REPO = Path(__file__).resolve().parents[2]
P = DedupParams()


def _rec(i: str, instruction: str, output: str, inp: str = "") -> dict[str, str]:
    return {"id": i, "instruction": instruction, "input": inp, "output": output, "source": "test"}


DOC = ("Return a new list containing all items from the iterable in ascending order. A custom key function can "
       "be supplied to customize the sort order, and the reverse flag can be set to request the result in "
       "descending order.")


def test_planted_near_duplicates_inside_and_across() -> None:
    train = [_rec("t1", "Explain what `sorted` does in one sentence.", DOC),
             _rec("t2", "What does `logging.info` do?", "Log a message with severity 'INFO' on the root logger."),
             _rec("t3", "Explain what `sorted` does, in ONE sentence!", DOC)]  # re-cased, re-punctuated copy of t1
    test = [_rec("x1", "Explain what `sorted` does in one sentence.", DOC.replace("ascending", "increasing")),
            _rec("x2", "What does `logging.critical` do?", "Log a message with severity 'CRITICAL' on the root "
                 "logger.")]
    pairs = near_duplicates({"train": train, "test": test}, P)
    found = {frozenset({(p.a, p.a_id), (p.b, p.b_id)}) for p in pairs}
    assert frozenset({("train", "t1"), ("train", "t3")}) in found  # inside a split
    assert frozenset({("test", "x1"), ("train", "t1")}) in found  # one word changed, across splits
    assert frozenset({("test", "x1"), ("train", "t3")}) in found
    assert all("t2" not in (p.a_id, p.b_id) and "x2" not in (p.a_id, p.b_id) for p in pairs)  # another fact
    assert all(p.similarity >= P.threshold for p in pairs)


def test_threshold_comes_from_params() -> None:
    recs = {"a": [_rec("1", "Explain `sorted`.", DOC)], "b": [_rec("2", "Explain `sorted`.",
                                                                   DOC.replace("reverse", "descending"))]}
    assert near_duplicates(recs, DedupParams(threshold=0.8))
    assert not near_duplicates(recs, DedupParams(threshold=0.99))


def test_repeats_name_the_training_record() -> None:
    train = [_rec("t1", "Explain what `sorted` does in one sentence.", DOC)]
    feedback = [_rec("f1", "explain what sorted does in one sentence", DOC),
                _rec("f2", "Explain what `sorted` does in one sentence.", "It sorts, but returns a new list.")]
    assert [(i, ref) for i, ref, _ in repeats(feedback, train, P)] == [(0, "t1")]


def test_near_duplicates_across_splits_fail_validation(settings: Settings, tmp_path: Path) -> None:
    from llmops.data.records import read_jsonl, write_jsonl
    from llmops.data.validate import validate_splits

    base = REPO / "data" / "sample" / "base.jsonl"
    if not base.is_file():
        pytest.skip("the DVC-tracked sample corpus is missing (dvc pull / llmops data build)")
    sample = read_jsonl(base).head(120).reset_index(drop=True)
    train, test = sample.iloc[:60].copy(), sample.iloc[60:].copy()
    long_doc = _rec("plant-train", "Explain what `sorted` does in one sentence.", DOC)
    near = _rec("plant-test", "Explain what `sorted` does, in one sentence?", DOC.replace("ascending", "increasing"))
    train = pd.concat([train, pd.DataFrame([long_doc])], ignore_index=True)
    test = pd.concat([test, pd.DataFrame([near])], ignore_index=True)
    paths = {"train": tmp_path / "train.jsonl", "test": tmp_path / "test.jsonl"}
    write_jsonl(train, paths["train"])
    write_jsonl(test, paths["test"])
    result = validate_splits(paths, settings, settings.params(), data_docs=False)
    assert not result.success
    failure = next(f for f in result.failures if f.expectation == "no_near_duplicates_across_splits")
    assert "plant-train" in failure.message and "plant-test" in failure.message and "Fix:" in failure.message
    assert failure.unexpected_count == 1
    assert "splits:no_near_duplicates_across_splits" in result.summary()["failed"]
