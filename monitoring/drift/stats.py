"""The two-sample and rate tests behind the drift detectors, and the multiple-testing correction over them.

Every test returns a p-value that is valid under "the window comes from the reference distribution", so one
family-wise rate (Holm over all detectors) bounds how often the monitor as a whole raises a false alarm.
Pure numpy/scipy, no model: unit tests feed them synthetic samples whose answer is known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TestResult:
    statistic: float
    p_value: float


def mmd_permutation_test(x: np.ndarray, y: np.ndarray, permutations: int, seed: int = 0) -> TestResult:
    """Squared MMD (biased V-statistic) with an RBF kernel, bandwidth by the median heuristic on the pooled
    sample, and a permutation p-value `(1 + #{perm >= observed}) / (1 + permutations)`.

    Vectorised: with the pooled kernel matrix K, row sums r and total T, a split given by an indicator a
    has sum K_xx = a'Ka, sum K_xy = a'r - a'Ka and sum K_yy = T - 2a'r + a'Ka, so all permutations cost
    one matrix product K @ A (N x N x P flops) instead of P re-evaluations of the kernel.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"MMD needs at least 2 rows on each side (got {n} and {m})")
    z = np.concatenate([x, y])
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)
    iu = np.triu_indices(len(z), k=1)
    sigma2 = float(np.median(d2[iu])) or 1.0
    k = np.exp(-d2 / (2.0 * sigma2))
    r = k.sum(axis=1)
    total = float(r.sum())

    def mmd2(a: np.ndarray) -> np.ndarray:  # a: (N, P) 0/1 columns, each with n ones (the "x" side)
        aka = np.einsum("ip,ip->p", a, k @ a)
        ar = r @ a
        kxx, kxy, kyy = aka, ar - aka, total - 2.0 * ar + aka
        return kxx / n**2 + kyy / m**2 - 2.0 * kxy / (n * m)

    observed = float(mmd2(np.r_[np.ones(n), np.zeros(m)][:, None])[0])
    rng = np.random.default_rng(seed)
    exceed = 0
    chunk = 256
    for start in range(0, permutations, chunk):
        p = min(chunk, permutations - start)
        keys = rng.random((p, n + m))
        idx = np.argsort(keys, axis=1)[:, :n]
        a = np.zeros((n + m, p))
        a[idx.T, np.arange(p)[None, :]] = 1.0
        exceed += int(np.sum(mmd2(a) >= observed - 1e-12))
    return TestResult(observed, (1 + exceed) / (1 + permutations))


def ks_test(reference: np.ndarray, window: np.ndarray) -> TestResult:
    """Two-sample Kolmogorov-Smirnov. With tied (integer) lengths the p-value is conservative, never liberal."""
    from scipy.stats import ks_2samp

    res = ks_2samp(reference, window, method="asymp" if len(window) > 2000 else "auto")
    return TestResult(float(res.statistic), float(res.pvalue))


def psi_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges at the reference quantiles (deduplicated: integer lengths tie), open-ended outer bins."""
    qs = np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(qs)


def psi_test(reference: np.ndarray, window: np.ndarray, bins: int) -> TestResult:
    """Population stability index over reference-quantile bins, with an asymptotic p-value.

    PSI = sum (w - r) ln(w / r) is the symmetric (Jeffreys) divergence; for two samples of sizes N, n from one
    distribution, PSI * N n / (N + n) is asymptotically chi-square with (bins - 1) degrees of freedom (it
    equals the chi-square statistic to second order), which is what turns the rule-of-thumb threshold into
    a test with a known false-alarm rate.
    """
    from scipy.stats import chi2

    edges = psi_edges(reference, bins)
    ref_counts = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1)
    win_counts = np.bincount(np.searchsorted(edges, window, side="right"), minlength=len(edges) + 1)
    eps = 0.5  # add-half smoothing keeps an empty bin from making the statistic infinite
    r = (ref_counts + eps) / (ref_counts.sum() + eps * len(ref_counts))
    w = (win_counts + eps) / (win_counts.sum() + eps * len(win_counts))
    psi = float(np.sum((w - r) * np.log(w / r)))
    big_n, small_n = len(reference), len(window)
    dof = max(len(ref_counts) - 1, 1)
    p = float(chi2.sf(psi * big_n * small_n / (big_n + small_n), dof))
    return TestResult(psi, p)


def binomial_greater(successes: int, trials: int, rate: float) -> TestResult:
    """One-sided exact binomial test that the window's rate exceeds `rate`; statistic = observed rate."""
    from scipy.stats import binomtest

    if trials == 0:
        return TestResult(0.0, 1.0)
    res = binomtest(successes, trials, min(max(rate, 1e-12), 1 - 1e-12), alternative="greater")
    return TestResult(successes / trials, float(res.pvalue))


def holm(p_values: list[float], alpha: float) -> tuple[list[bool], list[float]]:
    """Holm's step-down procedure: which hypotheses are rejected, and the per-test level each p-value met.

    Controls the family-wise error rate at `alpha` under any dependence between the tests (the length KS
    and PSI of one feature are strongly dependent), and is uniformly more powerful than Bonferroni.
    The returned level of test i is alpha / (m - rank_i), the threshold its p-value is compared with.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    levels = [0.0] * m
    rejected = [False] * m
    still = True
    for rank, i in enumerate(order):
        levels[i] = alpha / (m - rank)
        if still and p_values[i] <= levels[i]:
            rejected[i] = True
        else:
            still = False
    return rejected, levels


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); sane at 0 and n successes."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def rate_difference_lower(hits: int, trials: int, base_rate: float, base_trials: int | None,
                          z: float = 1.644854) -> float:
    """Lower confidence bound of (window rate - baseline rate): how much the rate rose at least, given both sizes.

    Newcombe's hybrid score interval (his method 10: the Wilson limits of each proportion combined), one-sided
    at z (95% by default). `base_trials` None: the baseline is a configured constant, only the window varies.
    A rate estimated from 60 requests moves by several points between windows of the same traffic (4/60 refusals
    vs 0/60 is +0.067 and no evidence of a change of that size): the bound, not the point difference, is what
    must clear a practical threshold.
    """
    if trials == 0:
        return float("-inf")
    rate = hits / trials
    low = wilson_interval(hits, trials, z)[0]
    if base_trials is None or base_trials <= 0:
        return low - base_rate
    base_hits = round(base_rate * base_trials)
    base_high = wilson_interval(base_hits, base_trials, z)[1]
    base = base_hits / base_trials
    return rate - base - float(np.sqrt((rate - low) ** 2 + (base_high - base) ** 2))
