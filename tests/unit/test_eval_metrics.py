"""Evaluation measures on hand-made examples whose values are worked out by hand."""

from __future__ import annotations

import math

import pytest

from components.evaluate import metrics as m
from components.evaluate.report import comparison_table


def test_normalize_text_ignores_case_punctuation_and_whitespace() -> None:
    assert m.normalize_text("  Hello,   World!\n") == "hello world"
    assert m.normalize_text("os.path.join()") == "os path join"
    assert m.normalize_text("") == ""


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [
        ("Paris.", "paris", 1.0),
        ("  The  ANSWER is 42 ", "the answer is 42!", 1.0),
        ("The answer is 41", "The answer is 42", 0.0),
        ("", "", 1.0),
        ("something", "", 0.0),
    ],
)
def test_exact_match(pred: str, ref: str, expected: float) -> None:
    assert m.exact_match(pred, ref) == expected


def test_lcs_length_known_values() -> None:
    assert m.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook example
    assert m.lcs_length([], ["a"]) == 0
    assert m.lcs_length(["a", "b"], ["a", "b"]) == 2


def test_rouge_l_f1_hand_examples() -> None:
    # pred 6 tokens, ref 6 tokens, LCS "the cat on the mat" = 5 -> P = R = 5/6 -> F1 = 5/6
    assert m.rouge_l_f1("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)
    # pred 2 tokens, ref 4 tokens, LCS 2 -> P = 1, R = 0.5 -> F1 = 2/3
    assert m.rouge_l_f1("police killed", "police killed the gunman") == pytest.approx(2 / 3)
    # order matters: LCS of (a b c) and (c b a) is 1 -> P = R = 1/3
    assert m.rouge_l_f1("a b c", "c b a") == pytest.approx(1 / 3)
    assert m.rouge_l_f1("Identical, text.", "identical text") == 1.0
    assert m.rouge_l_f1("nothing shared", "completely different") == 0.0
    assert m.rouge_l_f1("", "") == 1.0
    assert m.rouge_l_f1("", "reference") == 0.0


def test_percentiles_and_latency_summary() -> None:
    lat = [10.0, 20.0, 30.0, 40.0, 100.0]
    out = m.latency_summary(lat, new_tokens=[5, 5, 10, 10, 20], seconds=2.0)
    assert out["latency_p50_ms"] == 30.0
    assert out["latency_p95_ms"] == pytest.approx(40.0 + 0.8 * 60.0)  # numpy linear interpolation
    assert out["tokens_per_s"] == 25.0
    assert math.isnan(m.percentile([], 50))
    assert math.isnan(m.mean([]))


class _FakeUnitEmbedder:
    """Deterministic 2-d unit vectors: lets the pairing/averaging logic be checked by hand."""

    def __init__(self) -> None:
        self.vectors = {"a": (1.0, 0.0), "b": (0.0, 1.0), "c": (math.sqrt(0.5), math.sqrt(0.5))}

    def encode(self, texts):
        import numpy as np

        return np.array([self.vectors[t] for t in texts], dtype=np.float32)


def test_embedding_similarity_pairs_each_prediction_with_its_reference() -> None:
    sims = m.embedding_similarity(_FakeUnitEmbedder(), ["a", "a", "c"], ["a", "b", "a"])
    assert sims == pytest.approx([1.0, 0.0, math.sqrt(0.5)], abs=1e-6)
    with pytest.raises(ValueError):
        m.embedding_similarity(_FakeUnitEmbedder(), ["a"], ["a", "b"])


def test_comparison_table_lists_every_model_and_metric() -> None:
    table = comparison_table({"base": {"perplexity": 12.3456, "rouge_l": 0.25},
                              "candidate": {"perplexity": 10.0, "rouge_l": float("nan")}})
    lines = table.strip().splitlines()
    assert lines[0] == "| metric | better | base | candidate |"
    assert "| answer perplexity | lower | 12.346 | 10.000 |" in lines
    assert "| ROUGE-L F1 | higher | 0.2500 | n/a |" in lines
