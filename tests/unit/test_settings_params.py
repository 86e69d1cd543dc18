"""Settings resolve one state dir for everything; params.yaml is typed and overrides are checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmops.errors import LlmopsError
from llmops.params import load_params
from llmops.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_local_profile_keeps_all_state_under_one_dir(tmp_path: Path) -> None:
    s = Settings(project_dir=REPO, state_dir=tmp_path / "st")
    assert s.profile == "local"
    assert s.tracking_uri == f"sqlite:///{tmp_path / 'st' / 'mlflow.db'}"
    for path in (s.artifact_root, s.dvc_remote_url, s.ray_dir, s.reports_dir, s.ray_storage):
        assert str(path).startswith(str(tmp_path / "st"))
    # models are a cache shared by every state dir of the project
    assert s.base_model_dir == REPO / ".llmops" / "models" / "smollm2-135m-instruct"
    assert s.audit_db_uri.endswith("audit.db")
    assert not s.ray_storage_is_remote


def test_ray_storage_may_be_shared_object_storage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMOPS_RAY_STORAGE", "s3://bucket/ray-results")
    s = Settings(project_dir=REPO, state_dir=tmp_path)
    assert s.ray_storage == "s3://bucket/ray-results" and s.ray_storage_is_remote


def test_env_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMOPS_PROFILE", "cluster")
    monkeypatch.setenv("LLMOPS_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("LLMOPS_STATE_DIR", str(tmp_path))
    s = Settings()
    assert (s.profile, s.tracking_uri, s.state_dir) == ("cluster", "http://mlflow:5000", tmp_path.resolve())


def test_params_load_and_override() -> None:
    p = load_params(REPO / "params.yaml",
                    ["train.max_steps=7", "lora.target_modules=[q_proj]", "train.precision=fp32"])
    assert p.train.max_steps == 7 and p.lora.target_modules == ["q_proj"] and p.train.precision == "fp32"
    assert p.digest() != load_params(REPO / "params.yaml").digest()
    assert load_params(REPO / "params.yaml").digest() == load_params(REPO / "params.yaml").digest()


def test_precision_defaults_to_auto_and_takes_explicit_values() -> None:
    assert load_params(REPO / "params.yaml").train.precision == "auto"
    for value in ("fp32", "bf16", "fp16"):
        assert load_params(REPO / "params.yaml", [f"train.precision={value}"]).train.precision == value
    with pytest.raises(LlmopsError, match=r"invalid parameter train\.precision"):
        load_params(REPO / "params.yaml", ["train.precision=int8"])


@pytest.mark.parametrize(("old", "mapped"), [("false", "fp32"), ("true", "bf16")])
def test_old_bf16_override_is_read_with_a_deprecation_warning(old: str, mapped: str) -> None:
    with pytest.warns(FutureWarning, match=f"train.bf16 is deprecated: read as train.precision={mapped}"):
        p = load_params(REPO / "params.yaml", [f"train.bf16={old}"])
    assert p.train.precision == mapped and "bf16" not in p.train.model_dump()


def test_old_bf16_key_in_a_params_file_is_read(tmp_path: Path) -> None:
    text = (REPO / "params.yaml").read_text()
    old = tmp_path / "params.yaml"
    old.write_text("\n".join("  bf16: false" if ln.startswith("  precision:") else ln for ln in text.splitlines()))
    with pytest.warns(FutureWarning, match="deprecated"):
        assert load_params(old).train.precision == "fp32"
    with pytest.raises(LlmopsError, match=r"contradicts train\.precision=bf16"):
        load_params(REPO / "params.yaml", ["train.precision=bf16", "train.bf16=false"])


@pytest.mark.parametrize(
    ("override", "message"),
    [("train.max_stepz=3", "unknown parameter"), ("nosection.x=1", "unknown parameter"),
     ("train.max_steps", "bad override"), ("train.max_steps=many", "invalid parameter train.max_steps"),
     ("train.strategy=zero3", "invalid parameter train.strategy")],
)
def test_bad_overrides_name_the_cause(override: str, message: str) -> None:
    with pytest.raises(LlmopsError, match=message):
        load_params(REPO / "params.yaml", [override])


def test_missing_params_file(tmp_path: Path) -> None:
    with pytest.raises(LlmopsError, match="params file not found"):
        load_params(tmp_path / "params.yaml")


def test_params_parsed_once_per_file_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    import llmops.params as params_mod

    path = tmp_path / "params.yaml"
    path.write_text(Path("params.yaml").read_text())
    calls: list[str] = []
    real = yaml.safe_load
    def counting(text: str):  # overrides' values are parsed too: count whole files only
        return (len(text) > 200 and calls.append("file")) or real(text)

    monkeypatch.setattr(params_mod.yaml, "safe_load", counting)
    first, second = load_params(path), load_params(path, ["train.max_steps=3"])
    assert len(calls) == 1 and second.train.max_steps == 3 and first.train.max_steps != 3  # copies, not shared
    path.write_text(path.read_text().replace("  max_steps:", "  max_steps: 7 #", 1))  # edited: read again
    assert load_params(path).train.max_steps == 7 and len(calls) == 2
