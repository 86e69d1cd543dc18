"""Drift monitors with the real MiniLM embedder: detectors, severities, reference storage, reports, and the
calibration figures (false `drift` on paraphrased in-domain windows, detection on three shifts).

Embeddings are computed once per session (MemoEmbedder over the real model), so the many windows cost
only the statistics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmops.data.records import read_jsonl
from llmops.errors import LlmopsError
from llmops.modeling.embedder import ensure_embedder, load_embedder
from llmops.modeling.prompts import user_message
from llmops.params import Params
from llmops.settings import Settings
from monitoring.drift import (
    Reference,
    WindowRecord,
    build_reference,
    evaluate_window,
    window_from_dataset,
    window_from_logged,
)
from monitoring.drift.calibration import MemoEmbedder, draw_windows, severity_rates
from monitoring.drift.publish import log_to_mlflow, write_html
from monitoring.drift.report import Severity
from monitoring.drift.shifted_slice import DEFAULT_OUT, build_shifted_sql

REPO = Path(__file__).resolve().parents[2]
SPLITS = REPO / "data" / "splits"


def _records(path: Path) -> list[dict]:
    return read_jsonl(path).to_dict(orient="records")


@pytest.fixture(scope="session")
def drift_params() -> Params:
    params = Settings(project_dir=REPO).params()
    return params  # as shipped: the calibration figures hold for the project's own settings


@pytest.fixture(scope="session")
def memo(tmp_path_factory: pytest.TempPathFactory) -> MemoEmbedder:
    settings = Settings(project_dir=REPO, state_dir=tmp_path_factory.mktemp("drift-state"))
    ensure_embedder(settings, settings.params())
    return MemoEmbedder(load_embedder(settings.embedder_dir))


@pytest.fixture(scope="session")
def reference(memo: MemoEmbedder, drift_params: Params) -> Reference:
    train = _records(SPLITS / "train.jsonl")  # file order is by module: a reference must be a random sample
    train = [train[int(i)] for i in np.random.default_rng(0).choice(len(train), size=600, replace=False)]
    return build_reference([user_message(r) for r in train], Settings(project_dir=REPO), drift_params,
                           responses=[r["output"] for r in train], prompt_source="600 random train records",
                           embedder=memo)


@pytest.fixture(scope="session")
def holdout() -> list[WindowRecord]:
    return window_from_dataset(_records(SPLITS / "validation.jsonl") + _records(SPLITS / "test.jsonl"))


def _window(holdout: list[WindowRecord], n: int = 120, seed: int = 0) -> list[WindowRecord]:
    idx = np.random.default_rng(seed).choice(len(holdout), size=n, replace=False)
    return [holdout[int(i)] for i in idx]


def _fired(report) -> set[str]:
    return set(report.fired)


def test_reference_like_window_is_quiet(reference, holdout, drift_params, memo) -> None:
    report = evaluate_window(reference, _window(holdout), drift_params, embedder=memo)
    assert not report.drifted, report.to_json()
    names = {d.name for d in report.detectors}
    assert {"prompt_embedding_mmd", "prompt_length_ks", "prompt_length_psi", "response_length_ks",
            "error_rate", "empty_or_refusal_rate"} <= names
    skipped = {d.name: d.skipped for d in report.detectors if d.skipped}
    assert set(skipped) == {"response_logprob_ks", "negative_feedback_rate"}


def _severity(report, name: str) -> Severity:
    return next(d.severity for d in report.detectors if d.name == name)


def test_error_feedback_and_refusal_detectors_fire_on_their_own_signal(reference, holdout, drift_params,
                                                                       memo) -> None:
    base = _window(holdout, seed=1)
    errors = [WindowRecord(r.prompt, "", status=500) if i % 5 == 0 else r for i, r in enumerate(base)]
    report = evaluate_window(reference, errors, drift_params, embedder=memo)
    # errors are the servers' problem, not something retraining fixes: watch-only
    assert report.severity is Severity.WATCH and _severity(report, "error_rate") is Severity.WATCH, report.to_json()
    rated = [WindowRecord(r.prompt, r.response, feedback=-1.0 if i % 2 else 1.0) for i, r in enumerate(base)]
    assert _fired(evaluate_window(reference, rated, drift_params, embedder=memo)) == {"negative_feedback_rate"}
    refusing = [WindowRecord(r.prompt, "I'm sorry, I can't help with that." if i % 4 == 0 else r.response)
                for i, r in enumerate(base)]
    assert "empty_or_refusal_rate" in _fired(evaluate_window(reference, refusing, drift_params, embedder=memo))


def test_logprob_detector_effect_and_missing_reason(reference, holdout, drift_params, memo) -> None:
    rng = np.random.default_rng(4)
    with_lp = Reference(reference.prompt_embeddings, reference.prompt_lengths, reference.response_lengths,
                        rng.normal(-1.0, 0.3, size=500), reference.refusal_rate, reference.meta)
    far = [WindowRecord(r.prompt, r.response, mean_logprob=float(rng.normal(-2.0, 0.3)))
           for r in _window(holdout, seed=2)]
    report = evaluate_window(with_lp, far, drift_params, embedder=memo)
    lp = next(d for d in report.detectors if d.name == "response_logprob_ks")
    assert lp.effect == pytest.approx(1.0, abs=0.15) and lp.p_value < 1e-6
    # past its threshold, but alone and not calibrated on real served windows (drift.output_alone_watch): watch
    assert report.severity is Severity.WATCH and lp.severity is Severity.WATCH and not report.fired
    assert "output_alone_watch" in report.note
    near = [WindowRecord(r.prompt, r.response, mean_logprob=float(rng.normal(-1.2, 0.3)))
            for r in _window(holdout, seed=2)]  # significant (n=120) but a 0.2 nats shift: watch, not drift
    assert _severity(evaluate_window(with_lp, near, drift_params, embedder=memo), "response_logprob_ks") \
        is Severity.WATCH
    report = evaluate_window(reference, far, drift_params, embedder=memo)
    lp = next(d for d in report.detectors if d.name == "response_logprob_ks")
    assert lp.skipped.startswith("reference has no log-probabilities") and report.window["mean_logprob"] < -1.5
    # through the router without the server's record: the report says why and what the serving side must send
    routed = window_from_logged([{"prompt": r.prompt, "response": r.response, "status": 200, "side": "stable",
                                  "extra": {"backend": "http://127.0.0.1:8001"}} for r in _window(holdout, seed=3)])
    report = evaluate_window(with_lp, routed, drift_params, embedder=memo)
    reason = next(d.skipped for d in report.detectors if d.name == "response_logprob_ks")
    assert reason.startswith("0 of 120 answered requests") and "logged by the router" in reason
    assert "LLMOPS_INFERENCE_LOG_URI" in reason and report.window["via_router"] == 120


def test_small_window_gives_no_verdict(reference, holdout, drift_params, memo) -> None:
    report = evaluate_window(reference, _window(holdout, n=10), drift_params, embedder=memo)
    assert not report.drifted and report.detectors == [] and "min_window" in report.note


def test_repeated_prompts_are_volume_not_embedding_drift(reference, holdout, drift_params, memo) -> None:
    base = _window(holdout, n=60, seed=5)
    report = evaluate_window(reference, base * 5, drift_params, embedder=memo)  # 300 rows, 60 distinct
    mmd = next(d for d in report.detectors if d.name == "prompt_embedding_mmd")
    assert report.window["distinct_prompts"] == 60 and not mmd.fired, report.to_json()
    one = evaluate_window(reference, [base[0]] * 60, drift_params, embedder=memo)
    assert next(d for d in one.detectors if d.name == "prompt_embedding_mmd").skipped


def test_reference_roundtrip_and_embedder_check(reference, holdout, drift_params, memo, tmp_path) -> None:
    out = reference.save(tmp_path / "ref")
    loaded = Reference.load(out)
    np.testing.assert_array_equal(loaded.prompt_embeddings, reference.prompt_embeddings)
    np.testing.assert_array_equal(loaded.response_lengths, reference.response_lengths)
    assert loaded.meta["prompts"] == 600 and loaded.refusal_rate == reference.refusal_rate
    reference.save(out)  # overwriting an existing reference works
    with pytest.raises(LlmopsError, match="no drift reference"):
        Reference.load(tmp_path / "missing")
    other = Reference(loaded.prompt_embeddings, loaded.prompt_lengths, meta={**loaded.meta, "embedder": "f" * 64})
    with pytest.raises(LlmopsError, match="rebuild the reference"):
        evaluate_window(other, _window(holdout), drift_params, embedder=memo)


def test_window_from_logged_reads_log_rows() -> None:
    rows = [
        {"prompt": json.dumps([{"role": "system", "content": "be brief"}, {"role": "user", "content": "Hi?"}]),
         "response": "Hello.", "prompt_tokens": 12, "completion_tokens": 3, "status": 200,
         "extra": {"mean_logprob": -0.7}, "rating": -1},
        {"prompt": "plain text", "response": "", "status": 503, "rating": None, "feedback": []},
        {"prompt": "p", "response": "r", "rating": None, "feedback": [{"rating": 1}, {"rating": -1}]},
    ]
    first, second, third = window_from_logged(rows)
    assert first == WindowRecord("Hi?", "Hello.", 12, 3, 200, -0.7, -1.0)
    assert second.prompt == "plain text" and not second.ok and second.feedback is None
    assert third.feedback == -1.0


def test_report_outputs(reference, holdout, drift_params, memo, settings, tmp_path) -> None:
    shifted = window_from_dataset(_records(REPO / DEFAULT_OUT)[:150])
    report = evaluate_window(reference, shifted, drift_params, embedder=memo)
    assert report.severity is Severity.DRIFT and "prompt_embedding_mmd" in report.fired
    data = json.loads(report.to_json())  # strict JSON: no NaN
    assert data["severity"] == "drift" and data["drifted"] is True
    assert {d["name"] for d in data["detectors"]} >= set(report.fired)
    mmd = next(d for d in data["detectors"] if d["name"] == "prompt_embedding_mmd")
    assert mmd["effect_name"] == "MMD^2" and mmd["effect"] >= mmd["effect_threshold"] and mmd["severity"] == "drift"
    assert data["moved"][0]["x_threshold"] >= 1 and data["clusters"]
    page = write_html(report, tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 5 and "severity: DRIFT" in page and "What changed" in page

    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(report.prometheus_lines())}
    assert families["llmops_drift_detected"].samples[0].value == 1
    assert families["llmops_drift_severity"].samples[0].value == 2
    scores = {s.labels["detector"]: s.value for s in families["llmops_drift_score"].samples}
    assert scores["prompt_embedding_mmd"] > 0
    sev = {s.labels["detector"]: s.value for s in families["llmops_drift_detector_severity"].samples}
    assert sev["prompt_embedding_mmd"] == 2 and sev["prompt_length_ks"] <= 1
    assert {s.labels["detector"] for s in families["llmops_drift_effect"].samples} >= set(report.fired)

    from mlflow.tracking import MlflowClient

    from llmops import tracking

    run_id = tracking.start_pipeline_run(settings, "drift-test")
    log_to_mlflow(report, run_id, settings)
    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(run_id)
    assert run.data.metrics["drift_detected"] == 1.0 and run.data.tags["llmops.drift.severity"] == "drift"
    assert {a.path for a in client.list_artifacts(run_id, "drift")} == {"drift/drift-report.html",
                                                                      "drift/drift-report.json"}


def test_shifted_slice_is_deterministic_and_shipped() -> None:
    from llmops.data.records import dumps_record

    shipped = (REPO / DEFAULT_OUT).read_text(encoding="utf-8").splitlines()
    assert [dumps_record(r) for r in build_shifted_sql()] == shipped
    assert len(shipped) >= 40 * 25  # enough for many disjoint windows


def test_paraphrase_and_shift_slices_are_deterministic_and_shipped() -> None:
    """The calibration slices are what their generators write (same facts as the training set, new phrasing)."""
    from llmops.data.records import dumps_record
    from monitoring.drift.paraphrase import DEFAULT_OUT as PARAPHRASED
    from monitoring.drift.paraphrase import build_paraphrased
    from monitoring.drift.shifts import COOKING_OUT, SPANISH_OUT, build_cooking, build_spanish

    for path, records in ((PARAPHRASED, build_paraphrased()), (SPANISH_OUT, build_spanish()),
                          (COOKING_OUT, build_cooking())):
        assert [dumps_record(r) for r in records] == (REPO / path).read_text(encoding="utf-8").splitlines(), path
        assert len(records) >= 1000
    train = {user_message(r) for r in _records(SPLITS / "train.jsonl")}
    assert not train & {user_message(r) for r in _records(REPO / PARAPHRASED)}  # rephrased, never a training prompt


def test_held_out_windows_never_reach_drift(reference, holdout, drift_params, memo) -> None:
    """Windows of the training generator's own held-out prompts: the classic no-drift control."""
    null = severity_rates(reference, draw_windows(holdout, 10, 100, seed=11, params=drift_params), drift_params, memo)
    assert null["severity"]["drift"] == 0, null


def _pool(name: str, n: int, seed: int = 0) -> list[WindowRecord]:
    """A seeded random sample of a shipped slice (files are ordered by module / kind)."""
    records = _records(REPO / "data" / "drift" / name)
    idx = np.random.default_rng(seed).choice(len(records), size=min(n, len(records)), replace=False)
    return window_from_dataset([records[int(i)] for i in idx])


def test_paraphrased_in_domain_traffic_stays_below_drift(reference, drift_params, memo) -> None:
    """>= 40 windows of 200 paraphrased in-domain requests (the training facts asked the way people write them):
    at most 5% reach `drift`, with the 95% Wilson interval's upper end under 17%. They are statistically
    different from the templated training prompts (mostly `watch`), which is why effect sizes decide."""
    pool = _pool("paraphrased.jsonl", 900, seed=1)
    rates = severity_rates(reference, draw_windows(pool, 40, 200, seed=21, params=drift_params), drift_params, memo)
    assert rates["windows"] == 40 and rates["drift_rate"] <= 0.05, rates["severity"]
    assert rates["drift_wilson95"][1] <= 0.17, rates["drift_wilson95"]
    mmd = rates["effects"]["prompt_embedding_mmd"]
    assert max(mmd) < drift_params.drift.effect.prompt_mmd2, mmd


@pytest.mark.parametrize("slice_name", ["shifted.jsonl", "spanish.jsonl", "cooking.jsonl"])
def test_every_shift_reaches_drift_in_every_window(slice_name, reference, drift_params, memo) -> None:
    """The SQL slice, Spanish questions about the same library, and cooking questions: `drift` every time,
    with the prompt-embedding effect above its threshold."""
    pool = _pool(slice_name, 260, seed=2)
    rates = severity_rates(reference, draw_windows(pool, 8, 200, seed=22, params=drift_params), drift_params, memo)
    assert rates["severity"]["drift"] == 8, rates["severity"]
    assert min(rates["effects"]["prompt_embedding_mmd"]) >= drift_params.drift.effect.prompt_mmd2


def test_lengths_alone_never_make_drift(reference, holdout, drift_params, memo) -> None:
    """Answers ten times longer than the reference's: the length detectors move, the verdict stays `watch`."""
    long = [WindowRecord(r.prompt, (r.response + " ") * 10) for r in _window(holdout, seed=6)]
    report = evaluate_window(reference, long, drift_params, embedder=memo)
    psi = next(d for d in report.detectors if d.name == "response_length_psi")
    assert psi.effect > drift_params.drift.effect.length_psi and psi.severity is Severity.WATCH
    assert report.severity is Severity.WATCH and not report.drifted, report.to_json()


def test_report_clusters_name_a_planted_new_topic(reference, drift_params, memo, tmp_path) -> None:
    """140 paraphrased in-domain requests + 60 cooking questions: the new-prompt clusters are the cooking ones,
    with examples and their share of the window, in the JSON and the HTML."""
    cooking = _pool("cooking.jsonl", 60, seed=3)
    window = _pool("paraphrased.jsonl", 140, seed=4) + cooking
    report = evaluate_window(reference, window, drift_params, embedder=memo)
    assert report.drifted, report.to_json()
    cooking_prompts = {r.prompt for r in cooking}
    topical = [c for c in report.clusters if all(e in cooking_prompts for e in c["examples"])]
    assert topical and sum(c["share"] for c in topical) >= 0.15, report.clusters
    assert sum(c["share"] for c in report.clusters if c not in topical) < 0.1, report.clusters
    page = write_html(report, tmp_path / "r.html").read_text()
    example = topical[0]["examples"][0]
    import html as _html

    assert "New prompt clusters" in page and _html.escape(example) in page
