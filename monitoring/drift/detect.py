"""Score one window of traffic against the reference: every detector's test and effect size, then one verdict.

Each detector yields a p-value valid when the window comes from the reference distribution, and an effect size
with a meaning. Holm's procedure over the detectors that had data decides which are statistically significant
(family-wise false-alarm rate `drift.alpha`); a significant detector is `drift` only when its effect also
reaches `drift.effect.*` (practical significance), `watch` otherwise, and watch-only detectors (lengths, errors:
they move with phrasing, the client or the servers, and retraining does not fix them) never exceed `watch`.
The window's severity is the highest detector's. Detectors:

- prompt_embedding_mmd: MMD^2 (RBF, median bandwidth) between MiniLM embeddings of distinct prompts, permutation
  p-value; effect = MMD^2 (a classifier two-sample test's AUC was measured and rejected: it reads 0.93-0.96 on
  paraphrased in-domain traffic, i.e. it detects phrasing, not a change of subject; benchmarks/README.md)
- prompt_novel_share: share of window prompts with no reference prompt within `drift.novel_similarity` cosine,
  one-sided binomial vs the reference's own (leave-one-out) share; effect = the difference
- prompt_length_ks / _psi, response_length_ks / _psi: token lengths (watch-only); effect = KS D / PSI
- response_logprob_ks: mean token log-probability of answers; effect = |shift of the mean| in nats/token
- empty_or_refusal_rate, error_rate, negative_feedback_rate: one-sided exact binomial tests; effect = the rate
  minus its baseline, and `drift` needs the effect's lower confidence bound (`drift.rate_confidence`, both
  sample sizes) to reach the threshold: on the real base model behind the router a paraphrase window of 60
  requests reached drift on 4 refusals vs 0 (+0.067 point difference, no evidence of a rise that large)

Output signals whose threshold was not calibrated on real served windows (`drift.output_alone_watch`, the
log-probability shift) give at most `watch` unless another detector is at `drift`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmops.errors import LlmopsError
from llmops.params import DriftParams, Params
from llmops.settings import Settings, get_settings
from monitoring.drift import stats
from monitoring.drift.features import embed, embedder_for, token_lengths
from monitoring.drift.records import WindowRecord, is_negative, is_refusal, logprob_missing_reason
from monitoring.drift.reference import Reference, embedder_identity
from monitoring.drift.report import DetectorResult, DriftReport, Severity


@dataclass
class _Test:
    name: str
    description: str
    result: stats.TestResult | None = None
    skipped: str | None = None
    effect: float | None = None
    effect_name: str = ""
    effect_threshold: float | None = None
    min_effect: float | None = None
    effect_lower: float | None = None  # rates: the lower confidence bound of the effect, what `drift` needs


def _subsample(n: int, cap: int, seed: int) -> np.ndarray:
    if cap <= 0 or n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def _length_tests(name: str, what: str, ref: np.ndarray | None, win: np.ndarray, p: DriftParams,
                  missing: str) -> list[_Test]:
    ks = _Test(f"{name}_ks", f"Kolmogorov-Smirnov D on {what}", effect_name="KS D")
    psi = _Test(f"{name}_psi", f"PSI on {what} ({p.psi_bins} reference-quantile bins)", effect_name="PSI",
                effect_threshold=p.effect.length_psi, min_effect=p.psi_min)
    if ref is None or len(ref) == 0 or len(win) < 2:
        reason = missing if ref is None or len(ref) == 0 else f"fewer than 2 {what} in the window"
        ks.skipped = psi.skipped = reason
        return [ks, psi]
    ks.result, psi.result = stats.ks_test(ref, win), stats.psi_test(ref, win, p.psi_bins)
    ks.effect, psi.effect = ks.result.statistic, psi.result.statistic
    return [ks, psi]


def novel_mask(ref_emb: np.ndarray, win_emb: np.ndarray, similarity: float) -> tuple[np.ndarray, np.ndarray]:
    """(window prompts with no reference prompt within `similarity` cosine, nearest similarity of each)."""
    nearest = (np.asarray(win_emb, np.float32) @ np.asarray(ref_emb, np.float32).T).max(axis=1)
    return nearest < similarity, nearest


def reference_novel_rate(ref_emb: np.ndarray, similarity: float) -> float:
    """The reference's own share of "new" prompts, leave-one-out (each against the others)."""
    sims = np.asarray(ref_emb, np.float32) @ np.asarray(ref_emb, np.float32).T
    np.fill_diagonal(sims, -1.0)
    return float(np.mean(sims.max(axis=1) < similarity))


def _prompt_tests(reference: Reference, distinct: list[str], p: DriftParams, embedder: Any,
                  timings: dict[str, float], plots: dict[str, np.ndarray]) -> tuple[list[_Test], dict[str, Any]]:
    """Embedding MMD and the share of new prompts; returns the tests and what the clusters need."""
    t = time.perf_counter()
    ref_emb = reference.prompt_embeddings[_subsample(len(reference.prompt_embeddings), p.mmd_reference_size, p.seed)]
    win_idx = _subsample(len(distinct), p.mmd_max_window, p.seed + 1)
    texts = [distinct[i] for i in win_idx]
    win_emb = embed(embedder, texts, p.embed_batch_size)
    timings["embed_s"] = time.perf_counter() - t
    t = time.perf_counter()
    mmd = _Test("prompt_embedding_mmd", f"MMD^2 of MiniLM prompt embeddings (RBF, median bandwidth, {p.permutations} "
                f"permutations; {len(ref_emb)} reference vs {len(win_emb)} distinct window prompts)",
                effect_name="MMD^2", effect_threshold=p.effect.prompt_mmd2)
    novel = _Test("prompt_novel_share", f"share of prompts with no reference prompt within cosine "
                  f"{p.novel_similarity:g}, minus the reference's own share (one-sided binomial)",
                  effect_name="share difference", effect_threshold=p.effect.prompt_novel_share)
    extra: dict[str, Any] = {"texts": texts, "emb": win_emb, "novel": np.zeros(len(texts), bool)}
    if len(win_emb) < 2:
        mmd.skipped = novel.skipped = "fewer than 2 distinct prompts"
        return [mmd, novel], extra
    mmd.result = stats.mmd_permutation_test(ref_emb, win_emb, p.permutations, p.seed)
    mmd.effect = mmd.result.statistic
    timings["mmd_s"] = time.perf_counter() - t
    mask, nearest = novel_mask(ref_emb, win_emb, p.novel_similarity)
    base = max(reference_novel_rate(ref_emb, p.novel_similarity), 0.01)
    novel.result = stats.binomial_greater(int(mask.sum()), len(mask), base)
    novel.effect = float(mask.mean()) - base
    extra.update(novel=mask, nearest=nearest, base_novel_rate=base)
    mean, axes = reference.projection()
    plots["proj_ref"], plots["proj_win"] = (ref_emb - mean) @ axes, (win_emb - mean) @ axes
    return [mmd, novel], extra


def _logprob_test(reference: Reference, ok: list[WindowRecord], p: DriftParams) -> tuple[_Test, float | None]:
    test = _Test("response_logprob_ks", "KS on the mean token log-probability of answers; effect = shift of the "
                 "mean (window - reference)", effect_name="|mean shift| nats/token",
                 effect_threshold=p.effect.logprob_shift)
    logprobs = np.asarray([r.mean_logprob for r in ok if r.mean_logprob is not None], dtype=np.float64)
    mean = float(logprobs.mean()) if len(logprobs) else None
    if reference.response_logprobs is None or len(reference.response_logprobs) == 0:
        test.skipped = ("reference has no log-probabilities: build it with the champion's answers and their "
                        "mean_logprob (as `llmops demo drift` does: build_reference(..., response_logprobs=...))")
    elif len(logprobs) < p.min_window:
        test.skipped = logprob_missing_reason(ok, p.min_window)
    else:
        test.result = stats.ks_test(reference.response_logprobs, logprobs)
        test.effect = abs(mean - float(np.mean(reference.response_logprobs)))
    return test, mean


def _rate_test(name: str, what: str, hits: int, trials: int, base: float, threshold: float,
               skipped: str | None, z: float, measured: tuple[float, int] | None = None) -> _Test:
    """One-sided exact binomial against `base` for significance; for `drift` the rate's rise must clear
    `threshold` by its lower confidence bound (stats.rate_difference_lower: the window's size and, with
    `measured` = (rate, answers) of the reference, its size too), not by the point difference, which moves by
    several points between windows of 60-200 requests of the same traffic."""
    test = _Test(name, f"{what} vs {base:.3g} (one-sided binomial); effect = rate - {base:.3g}, drift when its "
                 f"lower confidence bound reaches the threshold", effect_name="rate difference",
                 effect_threshold=threshold, skipped=skipped)
    if skipped is None:
        test.result = stats.binomial_greater(hits, trials, base)
        test.effect = (hits / trials if trials else 0.0) - base
        ref_rate, ref_n = measured if measured else (base, None)
        test.effect_lower = min(test.effect, stats.rate_difference_lower(hits, trials, ref_rate, ref_n, z))
    return test


def _rate_tests(reference: Reference, window: list[WindowRecord], ok: list[WindowRecord],
                p: DriftParams) -> list[_Test]:
    from scipy.stats import norm

    z = float(norm.ppf(p.rate_confidence))
    base = max(reference.refusal_rate or 0.0, p.refusal_rate_floor)
    answers = int(reference.meta.get("responses") or 0)
    measured = (reference.refusal_rate, answers) if reference.refusal_rate is not None and answers else None
    rated = [r for r in window if r.feedback is not None]
    return [
        _rate_test("empty_or_refusal_rate", "empty/refusal answers", sum(is_refusal(r.response) for r in ok), len(ok),
                   base, p.effect.refusal_rate_diff, None if ok else "no successful requests", z, measured),
        _rate_test("error_rate", "error responses", len(window) - len(ok), len(window), p.error_rate_baseline,
                   p.effect.error_rate_diff, None, z),
        _rate_test("negative_feedback_rate", "negative ratings", sum(is_negative(r.feedback) for r in rated),
                   len(rated), p.negative_feedback_baseline, p.effect.negative_feedback_diff,
                   None if rated else "no rated requests", z),
    ]


def _severity(test: _Test, significant: bool, watch_only: bool) -> Severity:
    if not significant or test.effect is None:
        return Severity.NONE
    if test.min_effect is not None and test.effect < test.min_effect:
        return Severity.NONE
    effect = test.effect if test.effect_lower is None else test.effect_lower
    if not watch_only and test.effect_threshold is not None and effect >= test.effect_threshold:
        return Severity.DRIFT
    return Severity.WATCH


def _matches(name: str, prefixes: list[str]) -> bool:
    return any(name.startswith(prefix) for prefix in prefixes)


def _alone_note(names: list[str]) -> str:
    return (f"{', '.join(names)} passed the drift threshold while no prompt detector did: watch only "
            "(drift.output_alone_watch: an output signal whose threshold was not calibrated on real served "
            "windows; the outputs moved on unchanged traffic, so look at the model and the serving side, "
            "retraining on the same data would not change them)")


def verdict(tests: list[_Test], p: DriftParams) -> tuple[list[DetectorResult], Severity, str]:
    """Holm over the detectors that ran, then each one's severity; the window's is the highest. Detectors in
    `drift.output_alone_watch` reach `drift` only beside another detector's `drift` (else watch, said in the note)."""
    active = [i for i, t in enumerate(tests) if t.skipped is None and t.result is not None]
    rejected, levels = stats.holm([tests[i].result.p_value for i in active], p.alpha)  # type: ignore[union-attr]
    level_of = {i: (rej, lev) for i, rej, lev in zip(active, rejected, levels, strict=True)}
    sevs = {i: _severity(tests[i], rej, _matches(tests[i].name, p.watch_only)) for i, (rej, _) in level_of.items()}
    if not any(s is Severity.DRIFT and not _matches(tests[i].name, p.output_alone_watch) for i, s in sevs.items()):
        capped = [i for i, s in sevs.items() if s is Severity.DRIFT]  # only output-alone detectors are left
        sevs.update({i: Severity.WATCH for i in capped})
    else:
        capped = []
    results, worst = [], Severity.NONE
    for i, t in enumerate(tests):
        cap = Severity.WATCH if _matches(t.name, p.watch_only) or i in capped else Severity.DRIFT
        common = dict(description=t.description, min_effect=t.min_effect, effect_name=t.effect_name,
                      effect_threshold=t.effect_threshold, cap=cap)
        if i not in level_of:
            results.append(DetectorResult(t.name, None if t.result is None else t.result.statistic, None, None,
                                          False, skipped=t.skipped or "no data", **common))
            continue
        sev = sevs[i]
        worst = sev if sev.rank > worst.rank else worst
        results.append(DetectorResult(t.name, t.result.statistic, t.result.p_value, level_of[i][1],
                                      sev is Severity.DRIFT, effect=t.effect, effect_lower=t.effect_lower,
                                      severity=sev, **common))
    return results, worst, _alone_note([tests[i].name for i in capped]) if capped else ""


def evaluate_window(
    reference: Reference,
    window: Sequence[WindowRecord],
    params: Params,
    *,
    settings: Settings | None = None,
    embedder: Any = None,
    progress: Callable[[str], None] | None = None,
) -> DriftReport:
    """Run every detector on `window` and return the report (plots' data and new-prompt clusters included)."""
    from monitoring.drift.clusters import new_prompt_clusters

    p = params.drift
    t0 = time.perf_counter()
    say = progress or (lambda _msg: None)
    window = list(window)
    ok = [r for r in window if r.ok]
    summary: dict[str, Any] = {
        "requests": len(window), "ok": len(ok), "errors": len(window) - len(ok),
        "rated": sum(r.feedback is not None for r in window),
        "with_logprob": sum(r.mean_logprob is not None for r in ok),
        "via_router": sum(r.via_router for r in window),
        "logged_prompt_tokens_mean": float(np.mean([r.prompt_tokens for r in window])) if window else None,
        "logged_completion_tokens_mean": float(np.mean([r.completion_tokens for r in ok])) if ok else None,
    }
    ref_meta = {k: reference.meta.get(k) for k in ("prompts", "responses", "prompt_source", "response_source",
                                                   "embedder", "created")}
    if len(window) < p.min_window:
        note = (f"{len(window)} requests in the window, fewer than drift.min_window={p.min_window}: "
                "no verdict (too little evidence)")
        return DriftReport(Severity.NONE, [], p.alpha, summary, ref_meta, time.time(), note=note,
                           timings={"total_s": time.perf_counter() - t0})
    embedder = embedder or embedder_for(settings or get_settings())
    want, have = reference.meta.get("embedder"), embedder_identity(embedder)
    if want and want != have:
        raise LlmopsError(f"the drift reference was embedded with {want[:16]}, the loaded embedder is {have[:16]}",
                          "rebuild the reference (ensure_reference(..., rebuild=True)) with the pinned embedder")

    timings: dict[str, float] = {}
    plots: dict[str, np.ndarray] = {}
    # Distinct prompts only (the reference, a training split, is deduplicated too): a burst of one repeated
    # prompt (retries, a load test, a popular question) is volume, not a change of topic (measured: a 10,000-row
    # window resampled from 757 held-out prompts fired the MMD). Seeded subsamples bound the O(N^2) kernel.
    distinct = list(dict.fromkeys(r.prompt for r in window))
    summary["distinct_prompts"] = len(distinct)
    say(f"embedding prompts and MMD ({min(len(distinct), p.mmd_max_window or len(distinct))} distinct)")
    tests, emb = _prompt_tests(reference, distinct, p, embedder, timings, plots)
    summary["novel_prompts"] = int(emb["novel"].sum())

    t = time.perf_counter()
    prompt_len = token_lengths(embedder, [r.prompt for r in window])
    resp_len = token_lengths(embedder, [r.response for r in ok])
    timings["tokenize_s"] = time.perf_counter() - t
    plots["prompt_len_ref"], plots["prompt_len_win"] = reference.prompt_lengths, prompt_len
    if reference.response_lengths is not None:
        plots["response_len_ref"], plots["response_len_win"] = reference.response_lengths, resp_len
    tests += _length_tests("prompt_length", "prompt tokens", reference.prompt_lengths, prompt_len, p,
                           "reference has no prompt lengths")
    tests += _length_tests("response_length", "response tokens", reference.response_lengths, resp_len, p,
                           "reference has no responses")
    lp_test, summary["mean_logprob"] = _logprob_test(reference, ok, p)
    tests += [lp_test, *_rate_tests(reference, window, ok, p)]

    results, severity, note = verdict(tests, p)
    clusters = []
    if severity is not Severity.NONE and emb["novel"].any():
        t = time.perf_counter()
        clusters = new_prompt_clusters(emb["texts"], emb["emb"], emb["novel"], emb["nearest"], p)
        timings["clusters_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    return DriftReport(severity, results, p.alpha, summary, ref_meta, time.time(), timings=timings, note=note,
                       clusters=clusters, plots=plots,
                       new_prompts=[t for t, m in zip(emb["texts"], emb["novel"], strict=True) if m])
