"""The ONNX Runtime engine times its pool's spinning where it serves (at warm-up), on the tiny model's real
engine: the build host's load said little about the serving host's (issue 18)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmops.settings import Settings


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict:
    from serving.engine_build import store as engine_store

    return engine_store.build_cpu_engine(Settings(state_dir=tmp_path_factory.mktemp("ort-tuning")), tiny_model_dir,
                                         "onnxruntime")


def test_warmup_times_both_spinning_settings_and_keeps_the_faster(manifest: dict, tiny_model_dir: Path) -> None:
    from serving.engines.ort import OnnxRuntimeEngine

    engine = OnnxRuntimeEngine(Path(manifest["engine_dir"]), tiny_model_dir, manifest=manifest, max_slots=2,
                               threads=2)
    assert engine.tuning["when"] == "engine build"
    engine.warmup()
    tuning = engine.info()["thread_tuning"]
    assert tuning["when"] == "serve start"
    times = tuning["ms_per_token_batch1"]
    assert set(times) == {"spinning", "not spinning"} and all(t > 0 for t in times.values())
    assert engine.spinning is tuning["spinning"]
    assert times["spinning" if engine.spinning else "not spinning"] == min(times.values())
    first = [int(engine.prefill(0, [5, 6, 7]).argmax())]  # the chosen session serves (views bound to it)
    first.append(int(engine.decode([0], [first[-1]])[0].argmax()))
    other = OnnxRuntimeEngine(Path(manifest["engine_dir"]), tiny_model_dir, manifest=manifest, max_slots=2,
                              threads=2, spinning=not engine.spinning)
    again = [int(other.prefill(0, [5, 6, 7]).argmax())]
    again.append(int(other.decode([0], [again[-1]])[0].argmax()))
    assert first == again


def test_a_given_spinning_setting_is_kept(manifest: dict, tiny_model_dir: Path) -> None:
    from serving.engines.ort import OnnxRuntimeEngine

    engine = OnnxRuntimeEngine(Path(manifest["engine_dir"]), tiny_model_dir, manifest=manifest, max_slots=2,
                               threads=2, spinning=True)
    engine.warmup()
    assert engine.spinning is True and engine.tuning["when"] == "given"
