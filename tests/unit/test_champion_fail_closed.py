"""The champion lookup fails closed: only "no such model" / "no champion alias" mean no champion.

A registry that is down, misconfigured or loses an artifact must fail the evaluate step with its cause,
never silently drop the gate's champion checks (which would let a regressing candidate through).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llmops.errors import NotFound, RegistryError
from llmops.registry.client import Registry, champion_adapter
from llmops.settings import Settings, get_settings
from tests.registry_setup import registry_with_versions

NAME = "fail-closed-test"


def _settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tracking_uri: str) -> Settings:
    monkeypatch.setenv("LLMOPS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LLMOPS_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("LLMOPS_REGISTERED_MODEL", NAME)
    get_settings.cache_clear()
    s = get_settings()
    s.ensure_state_dir()
    return s


def _champion_with_adapter(settings: Settings) -> Registry:
    """Version 1 of NAME (registered if needed) made champion, its run holding a real adapter/ artifact."""
    reg = Registry(settings)
    if not reg.client.search_registered_models(f"name='{NAME}'"):
        registry_with_versions(settings, 1, NAME)
    run_id = reg.client.get_model_version(NAME, "1").run_id
    adapter = settings.state_dir / "adapter-src"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 8)
    reg.client.log_artifacts(run_id, str(adapter), "adapter")
    reg.promote(NAME, 1, reason="test champion")
    return reg


def test_no_model_and_no_alias_mean_no_champion(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = _settings(monkeypatch, tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert Registry(settings).list_models() == []  # creates the store, as the pipeline's start step does
    assert champion_adapter(settings, tmp_path / "c1") is None  # the name is not registered yet
    with pytest.raises(NotFound):
        Registry(settings).alias_version(NAME, "champion")
    registry_with_versions(settings, 1, NAME)
    assert champion_adapter(settings, tmp_path / "c2") is None  # registered, no champion alias
    _champion_with_adapter(settings)
    assert (champion_adapter(settings, tmp_path / "c3") / "adapter_config.json").is_file()
    get_settings.cache_clear()


@pytest.mark.parametrize("uri", ["sqlite:///{tmp}/no-such-dir/mlflow.db", "http://127.0.0.1:9"])
def test_broken_tracking_uri_fails_the_lookup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, uri: str) -> None:
    """A mistyped sqlite path (MLflow would create an empty store there: "no champion") and a server that is
    not there both fail with the URI to fix, instead of dropping the champion checks."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = uri.format(tmp=tmp_path)
    settings = _settings(monkeypatch, tmp_path, uri)
    with pytest.raises(RegistryError) as err:
        champion_adapter(settings, tmp_path / "champion")
    assert not isinstance(err.value, NotFound)
    assert err.value.fix and uri in err.value.fix  # names the setting to fix
    assert not (tmp_path / "no-such-dir").exists()  # nothing was created at the mistyped path
    get_settings.cache_clear()


@pytest.mark.parametrize("lost", ["before_alias_lookup", "after_alias_lookup"])
def test_store_lost_mid_run_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, lost: str) -> None:
    """The champion exists, then the store becomes unreadable mid-run (the database file is overwritten in
    place, so open connections read garbage too): before or after the champion alias was read."""
    db = tmp_path / "mlflow.db"
    settings = _settings(monkeypatch, tmp_path, f"sqlite:///{db}")
    _champion_with_adapter(settings)

    def lose_store() -> None:
        with db.open("r+b") as f:
            f.write(b"not a database" * 4096)

    real = Registry.alias_version if lost == "after_alias_lookup" else Registry._aliases

    def wrapped(self: Registry, *args: str):
        if lost == "before_alias_lookup":
            lose_store()
        found = real(self, *args)
        if lost == "after_alias_lookup":
            lose_store()
        return found

    monkeypatch.setattr(Registry, "alias_version" if lost == "after_alias_lookup" else "_aliases", wrapped)
    with pytest.raises(RegistryError) as err:
        champion_adapter(settings, tmp_path / "champion")
    assert not isinstance(err.value, NotFound)
    get_settings.cache_clear()


def test_champion_adapter_artifact_removed_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = _settings(monkeypatch, tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    reg = _champion_with_adapter(settings)
    run = reg.client.get_run(reg.client.get_model_version(NAME, "1").run_id)
    local = Path(run.info.artifact_uri.removeprefix("file://")) / "adapter"
    assert local.is_dir()
    shutil.rmtree(local)
    with pytest.raises(RegistryError, match="has no adapter/ artifact"):
        champion_adapter(settings, tmp_path / "champion")
    get_settings.cache_clear()
