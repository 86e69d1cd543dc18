"""Score one window of traffic against the reference: every detector's test, then one family-wise verdict.

Each detector yields a p-value valid when the window comes from the reference distribution; Holm's
procedure over the detectors that had data decides which fired, so the monitor as a whole raises a false
alarm in at most `drift.alpha` of no-drift windows (measured: monitoring/README.md). Detectors:

- prompt_embedding_mmd: MMD (RBF, median bandwidth) between MiniLM embeddings of distinct prompts,
  permutation p-value
- prompt_length_ks / prompt_length_psi, response_length_ks / response_length_psi: token lengths
- response_logprob_ks: mean token log-probability of answers, when both the log and the reference have it
- empty_or_refusal_rate, error_rate, negative_feedback_rate: one-sided exact binomial tests
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from llmops.errors import LlmopsError
from llmops.params import Params
from llmops.settings import Settings, get_settings
from monitoring.drift import stats
from monitoring.drift.features import embed, embedder_for, token_lengths
from monitoring.drift.records import WindowRecord, is_negative, is_refusal
from monitoring.drift.reference import Reference, embedder_identity
from monitoring.drift.report import DetectorResult, DriftReport

_Pending = tuple[str, str, "stats.TestResult | None", "float | None", "str | None"]


def _subsample(n: int, cap: int, seed: int) -> np.ndarray:
    if cap <= 0 or n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def _length_tests(name: str, what: str, ref: np.ndarray | None, win: np.ndarray, bins: int,
                  missing: str) -> list[_Pending]:
    if ref is None or len(ref) == 0:
        return [(f"{name}_ks", f"KS on {what}", None, None, missing), (f"{name}_psi", f"PSI on {what}", None, None,
                                                                       missing)]
    if len(win) < 2:
        reason = f"fewer than 2 {what} in the window"
        return [(f"{name}_ks", f"KS on {what}", None, None, reason), (f"{name}_psi", f"PSI on {what}", None, None,
                                                                      reason)]
    return [(f"{name}_ks", f"Kolmogorov-Smirnov D on {what}", stats.ks_test(ref, win), None, None),
            (f"{name}_psi", f"PSI on {what} ({bins} reference-quantile bins)", stats.psi_test(ref, win, bins),
             None, None)]


def evaluate_window(
    reference: Reference,
    window: Sequence[WindowRecord],
    params: Params,
    *,
    settings: Settings | None = None,
    embedder: Any = None,
    progress: Callable[[str], None] | None = None,
) -> DriftReport:
    """Run every detector on `window` and return the report (plots' data included for `to_html`)."""
    p = params.drift
    t0 = time.perf_counter()
    say = progress or (lambda _msg: None)
    window = list(window)
    ok = [r for r in window if r.ok]
    summary: dict[str, Any] = {
        "requests": len(window),
        "ok": len(ok),
        "errors": len(window) - len(ok),
        "rated": sum(r.feedback is not None for r in window),
        "with_logprob": sum(r.mean_logprob is not None for r in ok),
        "logged_prompt_tokens_mean": float(np.mean([r.prompt_tokens for r in window])) if window else None,
        "logged_completion_tokens_mean": float(np.mean([r.completion_tokens for r in ok])) if ok else None,
    }
    ref_meta = {k: reference.meta.get(k) for k in ("prompts", "responses", "prompt_source", "response_source",
                                                   "embedder", "created")}
    if len(window) < p.min_window:
        note = (f"{len(window)} requests in the window, fewer than drift.min_window={p.min_window}: "
                "no verdict (too little evidence)")
        return DriftReport(False, [], p.alpha, summary, ref_meta, time.time(), note=note,
                           timings={"total_s": time.perf_counter() - t0})

    embedder = embedder or embedder_for(settings or get_settings())
    want, have = reference.meta.get("embedder"), embedder_identity(embedder)
    if want and want != have:
        raise LlmopsError(f"the drift reference was embedded with {want[:16]}, the loaded embedder is {have[:16]}",
                          "rebuild the reference (ensure_reference(..., rebuild=True)) with the pinned embedder")

    timings: dict[str, float] = {}
    pending: list[_Pending] = []
    plots: dict[str, np.ndarray] = {}

    # Prompt embeddings of the window's DISTINCT prompts (the reference, a training split, is deduplicated
    # too): a burst of one repeated prompt (retries, a load test, a popular question) is volume, not a change
    # of topic, and as exact duplicates it would dominate the kernel means and read as drift (measured: a
    # 10,000-row window resampled from 757 held-out prompts fired the MMD). A seeded subsample of each side
    # then bounds the O(N^2) kernel and the embedding time.
    distinct = list(dict.fromkeys(r.prompt for r in window))
    summary["distinct_prompts"] = len(distinct)
    say(f"embedding prompts ({min(len(distinct), p.mmd_max_window or len(distinct))} of {len(distinct)} distinct)")
    t = time.perf_counter()
    ref_idx = _subsample(len(reference.prompt_embeddings), p.mmd_reference_size, p.seed)
    win_idx = _subsample(len(distinct), p.mmd_max_window, p.seed + 1)
    ref_emb = reference.prompt_embeddings[ref_idx]
    win_emb = embed(embedder, [distinct[i] for i in win_idx], p.embed_batch_size)
    timings["embed_s"] = time.perf_counter() - t
    say("MMD permutation test")
    t = time.perf_counter()
    mmd_desc = (f"MMD^2 of MiniLM prompt embeddings (RBF, median bandwidth, {p.permutations} permutations; "
                f"{len(ref_emb)} reference vs {len(win_emb)} distinct window prompts)")
    if len(win_emb) < 2:
        pending.append(("prompt_embedding_mmd", mmd_desc, None, None, "fewer than 2 distinct prompts"))
    else:
        pending.append(("prompt_embedding_mmd", mmd_desc,
                        stats.mmd_permutation_test(ref_emb, win_emb, p.permutations, p.seed), None, None))
    timings["mmd_s"] = time.perf_counter() - t
    mean, axes = reference.projection()
    plots["proj_ref"], plots["proj_win"] = (ref_emb - mean) @ axes, (win_emb - mean) @ axes

    t = time.perf_counter()
    prompt_len = token_lengths(embedder, [r.prompt for r in window])
    resp_len = token_lengths(embedder, [r.response for r in ok])
    timings["tokenize_s"] = time.perf_counter() - t
    plots["prompt_len_ref"], plots["prompt_len_win"] = reference.prompt_lengths, prompt_len
    if reference.response_lengths is not None:
        plots["response_len_ref"], plots["response_len_win"] = reference.response_lengths, resp_len
    pending += _length_tests("prompt_length", "prompt tokens", reference.prompt_lengths, prompt_len, p.psi_bins,
                             "reference has no prompt lengths")
    pending += _length_tests("response_length", "response tokens", reference.response_lengths, resp_len,
                             p.psi_bins, "reference has no responses")

    logprobs = np.asarray([r.mean_logprob for r in ok if r.mean_logprob is not None], dtype=np.float64)
    summary["mean_logprob"] = float(logprobs.mean()) if len(logprobs) else None
    lp_name, lp_desc = "response_logprob_ks", "KS on the mean token log-probability of answers"
    if reference.response_logprobs is None or len(reference.response_logprobs) == 0:
        pending.append((lp_name, lp_desc, None, None, "reference has no log-probabilities"))
    elif len(logprobs) < p.min_window:
        pending.append((lp_name, lp_desc, None, None, f"{len(logprobs)} answers with a log-probability"))
    else:
        pending.append((lp_name, lp_desc, stats.ks_test(reference.response_logprobs, logprobs), None, None))

    refusals = sum(is_refusal(r.response) for r in ok)
    base = max(reference.refusal_rate or 0.0, p.refusal_rate_floor)
    pending.append(("empty_or_refusal_rate", f"empty/refusal answers vs {base:.3f} (one-sided binomial)",
                    stats.binomial_greater(refusals, len(ok), base), None,
                    None if ok else "no successful requests"))
    pending.append(("error_rate", f"error responses vs baseline {p.error_rate_baseline} (one-sided binomial)",
                    stats.binomial_greater(len(window) - len(ok), len(window), p.error_rate_baseline), None, None))
    rated = [r for r in window if r.feedback is not None]
    negative = sum(is_negative(r.feedback) for r in rated)
    pending.append(("negative_feedback_rate",
                    f"negative ratings vs baseline {p.negative_feedback_baseline} (one-sided binomial)",
                    stats.binomial_greater(negative, len(rated), p.negative_feedback_baseline), None,
                    None if rated else "no rated requests"))

    active = [i for i, item in enumerate(pending) if item[4] is None and item[2] is not None]
    rejected, levels = stats.holm([pending[i][2].p_value for i in active], p.alpha)  # type: ignore[union-attr]
    level_of = {i: (rej, lev) for i, rej, lev in zip(active, rejected, levels, strict=True)}
    results = []
    for i, (name, desc, res, _unused, skipped) in enumerate(pending):
        if i not in level_of:
            results.append(DetectorResult(name, None if res is None else res.statistic, None, None, False, desc,
                                          skipped=skipped or "no data"))
            continue
        rej, lev = level_of[i]
        min_effect = p.psi_min if name.endswith("_psi") else None
        fired = rej and (min_effect is None or res.statistic >= min_effect)
        results.append(DetectorResult(name, res.statistic, res.p_value, lev, fired, desc, min_effect=min_effect))
    timings["total_s"] = time.perf_counter() - t0
    return DriftReport(any(d.fired for d in results), results, p.alpha, summary, ref_meta, time.time(),
                       timings=timings, plots=plots)
