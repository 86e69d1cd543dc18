"""The promotion gate: each check passes and fails on the numbers it should, and says them."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.evaluate.gate import decide
from llmops.params import GateParams
from tests.conftest import REPO

GATE = GateParams(min_ppl_improvement=0.05, max_regression=0.02, max_general_ppl_increase=0.25,
                  task_metric="rouge_l")
BASE = {"perplexity": 10.0, "general_perplexity": 20.0, "rouge_l": 0.20}


def _failed(verdict) -> set[str]:
    return {c["name"] for c in verdict.checks if not c["passed"]}


def test_good_candidate_without_champion_passes_two_checks() -> None:
    verdict = decide(BASE, {"perplexity": 9.0, "general_perplexity": 21.0, "rouge_l": 0.3}, None, GATE)
    assert verdict.passed
    assert verdict.reasons == []
    assert [c["name"] for c in verdict.checks] == ["improvement_over_base", "no_forgetting"]
    first = verdict.checks[0]
    assert first["candidate"] == 9.0 and first["reference"] == 10.0
    assert first["limit"] == pytest.approx(9.5)


def test_too_small_improvement_fails_and_says_its_numbers() -> None:
    verdict = decide(BASE, {"perplexity": 9.6, "general_perplexity": 20.0, "rouge_l": 0.3}, None, GATE)
    assert not verdict.passed
    assert _failed(verdict) == {"improvement_over_base"}
    assert len(verdict.reasons) == 1
    assert "9.6" in verdict.reasons[0] and "9.5" in verdict.reasons[0] and "10" in verdict.reasons[0]


def test_exact_threshold_passes() -> None:
    verdict = decide(BASE, {"perplexity": 9.5, "general_perplexity": 25.0}, None, GATE)
    assert verdict.passed, verdict.reasons


def test_forgetting_fails_even_when_the_task_improves() -> None:
    verdict = decide(BASE, {"perplexity": 5.0, "general_perplexity": 25.5, "rouge_l": 0.9}, None, GATE)
    assert not verdict.passed
    assert _failed(verdict) == {"no_forgetting"}
    assert "25.5" in verdict.reasons[0]


def test_forgetting_guard_at_its_params_yaml_value(base_tokenizer_dir: Path) -> None:
    """The guard as configured (params.yaml, not a test constant) on the real base model's general-text
    perplexity, measured by the same function at pull time (provenance.json): 25% above it passes, more fails."""
    from llmops.modeling.base import read_provenance
    from llmops.params import load_params

    gate = load_params(REPO / "params.yaml").eval.gate
    assert gate.max_general_ppl_increase == 0.25  # the shipped default; change this test with it on purpose
    base_general = read_provenance(base_tokenizer_dir).perplexity_general
    base = {"perplexity": 4.0, "general_perplexity": base_general}
    at_limit = {"perplexity": 3.0, "general_perplexity": base_general * 1.25}
    assert decide(base, at_limit, None, gate).passed
    over = decide(base, {**at_limit, "general_perplexity": base_general * 1.26}, None, gate)
    assert _failed(over) == {"no_forgetting"}
    assert f"{base_general * 1.25:.4g}" in over.reasons[0]


def test_champion_perplexity_regression_fails() -> None:
    champion = {"perplexity": 8.0, "general_perplexity": 20.0, "rouge_l": 0.30}
    cand = {"perplexity": 8.3, "general_perplexity": 20.0, "rouge_l": 0.30}  # limit 8.16
    verdict = decide(BASE, cand, champion, GATE)
    assert not verdict.passed
    assert _failed(verdict) == {"no_regression_vs_champion_ppl"}


def test_champion_task_metric_regression_fails() -> None:
    champion = {"perplexity": 9.0, "general_perplexity": 20.0, "rouge_l": 0.30}
    cand = {"perplexity": 8.9, "general_perplexity": 20.0, "rouge_l": 0.29}  # limit 0.294
    verdict = decide(BASE, cand, champion, GATE)
    assert _failed(verdict) == {"no_regression_vs_champion_task"}
    # a little worse than the champion, within 2%: passes
    ok = decide(BASE, {**cand, "perplexity": 9.1, "rouge_l": 0.295}, champion, GATE)
    assert ok.passed, ok.reasons
    assert len(ok.checks) == 4


def test_task_metric_is_configurable() -> None:
    champion = {"perplexity": 9.0, "general_perplexity": 20.0, "rouge_l": 0.30, "exact_match": 0.5}
    cand = {"perplexity": 8.9, "general_perplexity": 20.0, "rouge_l": 0.10, "exact_match": 0.5}
    gate = GATE.model_copy(update={"task_metric": "exact_match"})
    assert decide(BASE, cand, champion, gate).passed
    assert not decide(BASE, cand, champion, GATE).passed


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), "oops"])
def test_missing_or_non_finite_numbers_fail_closed(bad) -> None:
    cand = {"perplexity": bad, "general_perplexity": 20.0}
    verdict = decide(BASE, cand, None, GATE)
    assert not verdict.passed
    assert "missing or not a finite number" in verdict.reasons[0]
    assert not decide(BASE, {"perplexity": 9.0}, None, GATE).passed  # no general_perplexity at all


def test_verdict_serialises_and_summarises() -> None:
    verdict = decide(BASE, {"perplexity": 9.0, "general_perplexity": 30.0}, None, GATE)
    d = verdict.to_dict()
    assert d["passed"] is False and len(d["checks"]) == 2
    lines = verdict.summary().splitlines()
    assert lines[0].startswith("[pass] improvement_over_base")
    assert lines[1].startswith("[FAIL] no_forgetting")
