"""Drift statistics on synthetic samples whose answer is known (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from monitoring.drift import stats


def _naive_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    z = np.concatenate([x, y])
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    sigma2 = np.median(d2[np.triu_indices(len(z), 1)])
    k = np.exp(-d2 / (2 * sigma2))
    n = len(x)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def test_mmd_matches_the_naive_formula_and_detects_a_mean_shift() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(30, 6)) + 0.8
    res = stats.mmd_permutation_test(x, y, permutations=300, seed=1)
    assert res.statistic == pytest.approx(_naive_mmd2(x, y), rel=1e-9)
    assert res.p_value == pytest.approx(1 / 301)  # no permutation reaches a shift this large


def test_mmd_p_values_are_roughly_uniform_without_drift() -> None:
    rng = np.random.default_rng(1)
    ps = [stats.mmd_permutation_test(rng.normal(size=(40, 4)), rng.normal(size=(25, 4)), 200, seed=i).p_value
          for i in range(60)]
    assert min(ps) >= 1 / 201
    assert np.mean(np.asarray(ps) <= 0.1) <= 0.25  # expected 0.1
    assert 0.3 < np.mean(ps) < 0.7  # expected 0.5


def test_mmd_rejects_tiny_samples() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        stats.mmd_permutation_test(np.zeros((1, 3)), np.zeros((5, 3)), 10)


def test_ks_and_psi_on_lengths() -> None:
    rng = np.random.default_rng(2)
    ref = rng.poisson(20, size=3000)
    same, longer = rng.poisson(20, size=200), rng.poisson(28, size=200)
    assert stats.ks_test(ref, same).p_value > 0.01
    assert stats.ks_test(ref, longer).p_value < 1e-6
    quiet, loud = stats.psi_test(ref, same, 10), stats.psi_test(ref, longer, 10)
    assert quiet.p_value > 0.01 and quiet.statistic < 0.1
    assert loud.p_value < 1e-6 and loud.statistic > 0.5


def test_psi_value_for_a_known_split() -> None:
    ref = np.array([0] * 500 + [1] * 500)
    win = np.array([0] * 300 + [1] * 700)
    # one inner edge (the median, 0.5 -> values 0 | 1); smoothing of 0.5 per bin is negligible here
    r, w = np.array([0.5, 0.5]), np.array([0.3, 0.7])
    assert stats.psi_test(ref, win, 2).statistic == pytest.approx(np.sum((w - r) * np.log(w / r)), rel=5e-3)


def test_psi_null_false_alarm_rate_is_near_nominal() -> None:
    rng = np.random.default_rng(3)
    ref = rng.normal(size=5000)
    ps = np.array([stats.psi_test(ref, rng.normal(size=100), 10).p_value for _ in range(300)])
    assert np.mean(ps <= 0.05) <= 0.09


def test_binomial_greater() -> None:
    assert stats.binomial_greater(6, 100, 0.01).p_value < 0.001
    assert stats.binomial_greater(1, 100, 0.01).p_value > 0.5
    assert stats.binomial_greater(0, 0, 0.01) == stats.TestResult(0.0, 1.0)


def test_holm_step_down() -> None:
    rejected, levels = stats.holm([0.01, 0.04, 0.03, 0.005], 0.05)
    assert rejected == [True, False, False, True]
    assert levels == pytest.approx([0.05 / 3, 0.05, 0.05 / 2, 0.05 / 4])
    assert stats.holm([], 0.05) == ([], [])


def test_wilson_interval() -> None:
    low, high = stats.wilson_interval(0, 40)
    assert low == 0.0 and high == pytest.approx(0.0876, abs=1e-4)
    low, high = stats.wilson_interval(40, 40)
    assert high == 1.0 and low == pytest.approx(0.9124, abs=1e-4)
    low, high = stats.wilson_interval(5, 100)
    assert low == pytest.approx(0.0215, abs=1e-3) and high == pytest.approx(0.1118, abs=1e-3)
