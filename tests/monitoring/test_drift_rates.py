"""The rate detectors' `drift` rule (issue 21): a rise must clear the threshold by its lower confidence bound, so
4 refusals in 60 answers against 0 in the reference's 60 (what the real base model behind the router did on a
paraphrase window, +0.057 over the 1% floor) is not retrain-level, a large rise is; and an output signal not
calibrated on real served windows cannot make `drift` alone. Synthetic windows, no model: milliseconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmops.params import Params
from llmops.settings import Settings
from monitoring.drift import stats
from monitoring.drift.detect import _rate_tests, _Test, verdict
from monitoring.drift.publish import write_html
from monitoring.drift.records import WindowRecord
from monitoring.drift.reference import Reference
from monitoring.drift.report import Severity

REFUSAL = "I'm sorry, but I can't help with that."
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def params() -> Params:
    return Settings(project_dir=REPO).params()  # as shipped: the thresholds under test are params.yaml's


def _reference(refusals: int, answers: int) -> Reference:
    return Reference(np.zeros((answers, 4), np.float32), np.full(answers, 20), np.full(answers, 30),
                     refusal_rate=refusals / answers, meta={"responses": answers})


def _window(refusals: int, size: int = 60) -> list[WindowRecord]:
    return [WindowRecord(f"q{i}", REFUSAL if i < refusals else "Use json.dumps(obj).") for i in range(size)]


def _score(reference: Reference, window: list[WindowRecord], params: Params):
    results, severity, note = verdict(_rate_tests(reference, window, window, params.drift), params.drift)
    return {d.name: d for d in results}, severity, note


def test_newcombe_lower_bound_matches_the_published_example() -> None:
    # Newcombe (1998), method 10, 56/70 vs 48/80: 95% interval 0.0524 to 0.3339
    assert stats.rate_difference_lower(56, 70, 48 / 80, 80, z=1.959964) == pytest.approx(0.0524, abs=5e-4)
    # a known baseline: only the window's Wilson bound counts
    assert stats.rate_difference_lower(4, 60, 0.01, None) == pytest.approx(stats.wilson_interval(4, 60, 1.644854)[0]
                                                                          - 0.01)
    # the wider, the smaller the reference
    assert stats.rate_difference_lower(4, 60, 0.0, 60) < stats.rate_difference_lower(4, 60, 0.0, 3000)


def test_four_refusals_in_sixty_against_none_is_not_drift(params: Params) -> None:
    dets, severity, _ = _score(_reference(0, 60), _window(4), params)
    refusal = dets["empty_or_refusal_rate"]
    threshold = params.drift.effect.refusal_rate_diff
    # significant, and the point difference is over the threshold: the old rule said drift
    assert refusal.p_value is not None and refusal.p_value < 0.01 and refusal.effect >= threshold
    assert refusal.effect_lower < threshold and refusal.severity is Severity.WATCH and not refusal.fired
    assert severity is Severity.WATCH
    # the same with the training answers as the reference (3,099 answers, none a refusal)
    assert _score(_reference(0, 3099), _window(4), params)[1] is Severity.WATCH


def test_a_large_refusal_rise_is_drift_alone(params: Params) -> None:
    dets, severity, note = _score(_reference(0, 60), _window(30), params)
    refusal = dets["empty_or_refusal_rate"]
    assert refusal.severity is Severity.DRIFT and refusal.effect_lower >= params.drift.effect.refusal_rate_diff
    assert severity is Severity.DRIFT and note == ""
    # the bound grows with the window: 20% refusals are drift in 200 answers
    assert _score(_reference(0, 60), _window(40, size=200), params)[1] is Severity.DRIFT


def test_negative_feedback_uses_the_bound_too(params: Params) -> None:
    ref = _reference(0, 60)
    few = [WindowRecord(f"q{i}", "ok", feedback=-1.0 if i < 4 else 1.0) for i in range(20)]  # 20% of 20 rated
    many = [WindowRecord(f"q{i}", "ok", feedback=-1.0 if i % 2 else 1.0) for i in range(120)]  # 50% of 120
    assert _score(ref, few, params)[0]["negative_feedback_rate"].severity is not Severity.DRIFT
    assert _score(ref, many, params)[1] is Severity.DRIFT


def _fake(name: str, p_value: float, effect: float, threshold: float) -> _Test:
    return _Test(name, name, stats.TestResult(effect, p_value), effect=effect, effect_threshold=threshold)


def test_an_uncalibrated_output_signal_alone_is_watch(params: Params) -> None:
    assert "response_logprob" in params.drift.output_alone_watch
    logprob = _fake("response_logprob_ks", 1e-6, 1.0, params.drift.effect.logprob_shift)
    quiet_mmd = _fake("prompt_embedding_mmd", 1e-3, 0.02, params.drift.effect.prompt_mmd2)  # watch-level
    results, severity, note = verdict([quiet_mmd, logprob], params.drift)
    lp = next(d for d in results if d.name == "response_logprob_ks")
    assert severity is Severity.WATCH and lp.severity is Severity.WATCH and lp.cap is Severity.WATCH
    assert "response_logprob_ks" in note and "output_alone_watch" in note
    shifted_mmd = _fake("prompt_embedding_mmd", 1e-3, 0.2, params.drift.effect.prompt_mmd2)
    results, severity, note = verdict([shifted_mmd, logprob], params.drift)
    assert severity is Severity.DRIFT and note == ""
    assert {d.name for d in results if d.fired} == {"prompt_embedding_mmd", "response_logprob_ks"}


def test_report_shows_the_bound_and_why_it_is_watch(params: Params, tmp_path) -> None:
    from monitoring.drift.report import DriftReport

    results, severity, note = _score(_reference(0, 60), _window(4), params)
    report = DriftReport(severity, list(results.values()), params.drift.alpha, {"requests": 60}, {}, 0.0, note=note)
    page = write_html(report, tmp_path / "r.html").read_text()
    lower = results["empty_or_refusal_rate"].effect_lower
    assert f"lower bound {lower:.3g}" in page and "WATCH" in page
    assert report.to_dict()["detectors"][0]["effect_lower"] == pytest.approx(lower)
