"""Throughput-derived canary defaults (issue 16 part 3): `canary.loadgen.rate: auto` and `canary.quality.golden_size:
auto` come from measuring the stable server before the first step, within params.yaml `canary.calibration`
bounds, and a slow host gets longer (conclusive) steps instead of an inconclusive one. The derivation is
checked from given measurements; the measurement itself against a real `llmops serve` of the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmops.settings import Settings
from serving.rollout.config import calibrate, derive, describe_calibration, resolve
from serving.rollout.errors import RolloutError


def _canary(settings: Settings, *sets: str):
    return settings.params(["canary.steps=[{weight: 25}, {weight: 50}]", "canary.step_defaults.min_requests=8",
                            "canary.step_defaults.min_duration_s=15", "canary.max_step_duration_s=180",
                            "canary.quality.max_tokens=24", *sets]).canary


def test_a_fast_host_gets_more_load_and_a_bigger_golden_set(settings: Settings) -> None:
    params, record = derive(_canary(settings), {"requests_per_s": 10.0, "tokens_per_s": 200.0})
    assert params.loadgen.rate == pytest.approx(5.0)  # target_utilisation 0.5 x 10 req/s
    assert params.quality.golden_size == 32  # 90 s budget x 100 spare tok/s / 24 tokens: capped at golden_max
    assert params.max_step_duration_s == 180 and record["conclusive"]
    cfg = resolve(params)  # concrete values: the rollout can start
    assert cfg.params.loadgen.rate == pytest.approx(5.0)


def test_a_slow_host_gets_less_load_and_longer_steps_that_can_conclude(settings: Settings) -> None:
    params, record = derive(_canary(settings), {"requests_per_s": 0.2, "tokens_per_s": 3.0})
    assert params.loadgen.rate == pytest.approx(0.1)
    assert params.quality.golden_size == 5  # floor(90 s x 1.5 spare tok/s / 24)
    # 8 requests on the 25% side at 0.1 req/s take 320 s: the step is lengthened (x1.5 margin), not cut short
    assert params.max_step_duration_s == 480 and record["conclusive"] and record["expected_step_s"] == 320
    assert "rate 0.1" in describe_calibration(record) and "max_step_duration_s 480" in describe_calibration(record)


def test_a_host_too_slow_for_the_ceiling_is_told_so(settings: Settings) -> None:
    params, record = derive(_canary(settings), {"requests_per_s": 0.01, "tokens_per_s": 0.2})
    assert params.loadgen.rate == pytest.approx(0.05)  # min_rate
    assert params.quality.golden_size == 4  # golden_min
    assert params.max_step_duration_s == 900 and record["conclusive"] is False
    record["summary"] = describe_calibration(record)
    assert "may end inconclusive" in record["summary"]


def test_explicit_numbers_are_kept_and_auto_must_be_calibrated(settings: Settings) -> None:
    explicit = settings.params(["canary.loadgen.rate=1.5", "canary.quality.golden_size=8"])
    same, record = calibrate(explicit, "http://127.0.0.1:9", [])  # nothing auto: no request is made
    assert record is None and same.canary.loadgen.rate == 1.5 and same.canary.quality.golden_size == 8
    with pytest.raises(RolloutError, match="not calibrated"):
        resolve(settings.params().canary)  # params.yaml's defaults are `auto`
    params, record = calibrate(settings.params(["canary.loadgen.rate=2"]), None, [])  # no URL to measure
    assert record["measured"] is None and params.canary.quality.golden_size == params.canary.calibration.golden_min


def test_calibration_measures_a_real_running_server(settings: Settings, tiny_model_dir: Path, tmp_path: Path) -> None:
    from serving.rollout.loadgen import measure_capacity
    from tests.serve_process import free_port, running_server

    prompts = list(settings.params().engine.prompts)
    with pytest.raises(RolloutError, match="cannot calibrate"):
        measure_capacity(f"http://127.0.0.1:{free_port()}", prompts, max_tokens=4, seconds=0.5, concurrency=1)
    with running_server(str(tiny_model_dir), tmp_path / "serve.log", sets=("serve.max_len=256",)) as url:
        measured = measure_capacity(url, prompts, max_tokens=4, seconds=1.5, concurrency=2)
        assert measured["failed"] == 0 and measured["requests"] >= 2 and measured["seconds"] >= 1.5
        assert measured["requests_per_s"] > 0 and 0 < measured["tokens_per_s"] <= 4 * measured["requests_per_s"]
        params, record = calibrate(settings.params(["canary.calibration.seconds=1", "canary.loadgen.max_tokens=4"]),
                                   url + "/v1", prompts)
    c = params.canary
    assert record["measured"]["url"] == url and record["measured"]["max_tokens"] == 4
    expected = min(c.calibration.max_rate, max(c.calibration.min_rate, 0.5 * record["measured"]["requests_per_s"]))
    assert c.loadgen.rate == pytest.approx(expected)
    assert c.calibration.golden_min <= c.quality.golden_size <= c.calibration.golden_max
    assert record["summary"].startswith("calibration: stable server ")
    resolve(c)  # a concrete, valid rollout config
