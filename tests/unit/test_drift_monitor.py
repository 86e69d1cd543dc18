"""Drift monitors with the real MiniLM embedder: detectors, reference storage, reports, and the calibration
figures (false alarms on held-out no-drift windows, detections on the shipped shifted slice).

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
from monitoring.drift.calibration import MemoEmbedder, draw_windows, fire_rate
from monitoring.drift.shifted_slice import DEFAULT_OUT, build_shifted_sql
from monitoring.drift.stats import wilson_interval

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


def test_error_feedback_and_refusal_detectors_fire_on_their_own_signal(reference, holdout, drift_params,
                                                                       memo) -> None:
    base = _window(holdout, seed=1)
    errors = [WindowRecord(r.prompt, "", status=500) if i % 5 == 0 else r for i, r in enumerate(base)]
    assert _fired(evaluate_window(reference, errors, drift_params, embedder=memo)) == {"error_rate"}
    rated = [WindowRecord(r.prompt, r.response, feedback=-1.0 if i % 2 else 1.0) for i, r in enumerate(base)]
    assert _fired(evaluate_window(reference, rated, drift_params, embedder=memo)) == {"negative_feedback_rate"}
    refusing = [WindowRecord(r.prompt, "I'm sorry, I can't help with that." if i % 4 == 0 else r.response)
                for i, r in enumerate(base)]
    assert "empty_or_refusal_rate" in _fired(evaluate_window(reference, refusing, drift_params, embedder=memo))


def test_logprob_detector_needs_reference_logprobs(reference, holdout, drift_params, memo) -> None:
    rng = np.random.default_rng(4)
    window = [WindowRecord(r.prompt, r.response, mean_logprob=float(rng.normal(-2.0, 0.3)))
              for r in _window(holdout, seed=2)]
    with_lp = Reference(reference.prompt_embeddings, reference.prompt_lengths, reference.response_lengths,
                        rng.normal(-1.0, 0.3, size=500), reference.refusal_rate, reference.meta)
    assert _fired(evaluate_window(with_lp, window, drift_params, embedder=memo)) == {"response_logprob_ks"}
    report = evaluate_window(reference, window, drift_params, embedder=memo)
    lp = next(d for d in report.detectors if d.name == "response_logprob_ks")
    assert lp.skipped == "reference has no log-probabilities" and report.window["mean_logprob"] < -1.5


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
    assert report.drifted and "prompt_embedding_mmd" in report.fired
    data = json.loads(report.to_json())  # strict JSON: no NaN
    assert data["drifted"] is True and {d["name"] for d in data["detectors"]} >= set(report.fired)
    page = report.to_html(tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "DRIFT DETECTED" in page

    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(report.prometheus_lines())}
    assert families["llmops_drift_detected"].samples[0].value == 1
    scores = {s.labels["detector"]: s.value for s in families["llmops_drift_score"].samples}
    assert scores["prompt_embedding_mmd"] > 0
    assert {s.labels["detector"] for s in families["llmops_drift_p_value"].samples} >= set(report.fired)

    from mlflow.tracking import MlflowClient

    from llmops import tracking

    run_id = tracking.start_pipeline_run(settings, "drift-test")
    report.log_to_mlflow(run_id, settings)
    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(run_id)
    assert run.data.metrics["drift_detected"] == 1.0 and run.data.tags["llmops.drift.detected"] == "true"
    assert {a.path for a in client.list_artifacts(run_id, "drift")} == {"drift/drift-report.html",
                                                                      "drift/drift-report.json"}


def test_shifted_slice_is_deterministic_and_shipped() -> None:
    from llmops.data.records import dumps_record

    shipped = (REPO / DEFAULT_OUT).read_text(encoding="utf-8").splitlines()
    assert [dumps_record(r) for r in build_shifted_sql()] == shipped
    assert len(shipped) >= 40 * 25  # enough for many disjoint windows


def test_calibration_false_alarms_and_detections(reference, holdout, drift_params, memo) -> None:
    """>= 40 no-drift windows from held-out splits (not in the reference): the whole monitor fires in at most
    5% of them; >= 40 windows of the shipped shifted slice: it fires in every one."""
    shifted = window_from_dataset(_records(REPO / DEFAULT_OUT)[:300])
    null = fire_rate(reference, draw_windows(holdout, 40, 100, seed=11, params=drift_params), drift_params, memo)
    assert null["fired"] <= 2, null  # <= 5% of 40
    assert wilson_interval(null["fired"], 40)[1] <= 0.17, null
    alt = fire_rate(reference, draw_windows(shifted, 40, 100, seed=12, params=drift_params), drift_params, memo)
    assert alt["fired"] == 40, alt
    assert alt["by_detector"]["prompt_embedding_mmd"] == 40
