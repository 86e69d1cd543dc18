"""Rollout analysis and config without processes: breaches, the request minimum (inconclusive, never a pass), the
latency noise floor, quality drops, and the steps a rollout resolves to."""

from __future__ import annotations

import pytest

from llmops.settings import Settings
from serving.rollout.actuators.base import SideStats, WindowStats
from serving.rollout.analysis import QualityScores, analyse
from serving.rollout.config import RolloutConfig, parse_weights, resolve
from serving.rollout.errors import RolloutError


def side(requests: int, errors: int = 0, p95: float | None = 0.10, ttft: float | None = 0.05) -> SideStats:
    return SideStats(requests=requests, errors=errors, latency_p95_s=p95, ttft_p95_s=ttft)


@pytest.fixture
def bounds(settings: Settings):
    return settings.params().canary.analysis


def verdicts(a) -> dict[str, str]:
    return {m.name: m.verdict for m in a.metrics}


def test_healthy_canary_passes(bounds) -> None:
    a = analyse(WindowStats(side(40), side(12)), bounds, 10,
                quality=QualityScores({"rouge_l": 0.5, "embed_similarity": 0.8}, {"rouge_l": 0.48,
                                                                                 "embed_similarity": 0.79}, 12))
    assert a.verdict == "pass" and not a.breaches and a.enough_requests


def test_too_few_requests_is_inconclusive_never_a_pass(bounds) -> None:
    a = analyse(WindowStats(side(40), side(9)), bounds, 10, quality=QualityScores({}, {}, 0))
    assert a.verdict == "inconclusive" and not a.enough_requests
    assert verdicts(a)["error_rate"] == "inconclusive" and verdicts(a)["latency_p95_ratio"] == "inconclusive"
    # the stable side short of requests counts the same
    assert analyse(WindowStats(side(3), side(40)), bounds, 10).verdict == "inconclusive"


def test_error_rate_breach_names_value_and_threshold(bounds) -> None:
    a = analyse(WindowStats(side(40), side(20, errors=4)), bounds, 10)
    assert a.verdict == "fail"
    err = next(m for m in a.breaches if m.name == "error_rate")
    assert err.value == pytest.approx(0.2) and err.threshold == bounds.error_rate.max and "4/20" in err.detail


def test_latency_ratio_needs_the_noise_floor(bounds) -> None:
    # 2.4x slower but only 7 ms: jitter on a fast model, not a breach
    fast = analyse(WindowStats(side(40, p95=0.005), side(20, p95=0.012)), bounds, 10)
    assert verdicts(fast)["latency_p95_ratio"] == "pass"
    slow = analyse(WindowStats(side(40, ttft=0.05), side(20, ttft=1.05)), bounds, 10)
    assert verdicts(slow)["ttft_p95_ratio"] == "fail" and slow.verdict == "fail"
    ttft = next(m for m in slow.metrics if m.name == "ttft_p95_ratio")
    assert ttft.value == pytest.approx(21.0)


def test_quality_drop_fails_even_before_enough_traffic(bounds) -> None:
    q = QualityScores({"rouge_l": 0.9, "embed_similarity": 0.9}, {"rouge_l": 0.1, "embed_similarity": 0.4}, 6)
    a = analyse(WindowStats(side(2), side(0)), bounds, 10, quality=q)
    assert a.verdict == "fail" and {m.name for m in a.breaches} == {"rouge_l_drop", "embed_similarity_drop"}


def test_pending_quality_blocks_a_pass(bounds) -> None:
    a = analyse(WindowStats(side(40), side(20)), bounds, 10, quality_pending=True)
    assert a.verdict == "inconclusive"


def test_unmeasured_ttft_on_both_sides_is_no_data_not_a_failure(bounds) -> None:
    a = analyse(WindowStats(side(40, ttft=None), side(20, ttft=None)), bounds, 10)
    assert verdicts(a)["ttft_p95_ratio"] == "no_data" and a.verdict == "pass"


def test_config_steps_resolve_and_round_trip(settings: Settings) -> None:
    # params.yaml's rate/golden size are `auto` (calibrated at rollout start): resolve takes concrete values
    params = settings.params(["canary.loadgen.rate=1.5", "canary.quality.golden_size=8"])
    cfg = resolve(params.canary, parse_weights("10, 25,50,100"))
    assert [s.weight for s in cfg.steps] == [10, 25, 50, 100]
    assert all(s.min_requests == params.canary.step_defaults.min_requests for s in cfg.steps)
    assert RolloutConfig.from_json(cfg.to_json()) == cfg
    assert params.canary.failure_limit == 0  # as in Argo: the first failed analysis aborts


@pytest.mark.parametrize("text", ["10,5", "0,50", "50,150", "x", "100"])
def test_bad_steps_are_clear_errors(settings: Settings, text: str) -> None:
    with pytest.raises(RolloutError) as exc:
        resolve(settings.params().canary, parse_weights(text))
    assert exc.value.fix


def test_progress_line_shows_step_weight_requests_and_metrics_vs_thresholds(bounds) -> None:
    from cli.canary import progress_line

    a = analyse(WindowStats(side(40), side(20, errors=4)), bounds, 10)
    line = progress_line({"kind": "analysis", "step": 1, "steps": 3, "weight": 25, "elapsed_s": 7.2,
                          "min_duration_s": 15, "analysis": a.to_json()})
    assert "step 1/3" in line and "25%" in line and "canary 20" in line and "stable 40" in line
    assert f"error_rate 0.2/{bounds.error_rate.max:g}" in line and "FAIL" in line and line.endswith("fail")
