"""Registry on a real MLflow sqlite store + sqlite audit trail: aliases, promotions, rollbacks, history."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from llmops.errors import RegistryError
from llmops.registry import SqlAuditStore, parse_ref
from llmops.settings import Settings
from tests.registry_setup import backend_settings, registry_with_versions  # noqa: F401 - backend_settings: fixture

NAME = "reg-test"


def test_parse_ref() -> None:
    assert parse_ref("m") == ("m", None, None)
    assert parse_ref("m@champion") == ("m", "champion", None)
    assert parse_ref("m/07") == ("m", None, "7")
    for bad in ("", "m@", "@a", "m/x", "m/0", "/3"):
        with pytest.raises(RegistryError):
            parse_ref(bad)


def test_promote_rollback_history(settings: Settings) -> None:
    reg = registry_with_versions(settings, 3, NAME)
    assert reg.alias_version(NAME, "champion") is None

    e1 = reg.promote(NAME, 1, reason="first", actor="alice@lab")
    e2 = reg.promote(NAME, "2", reason="better rouge", actor="bob@lab")
    assert (e1["from_version"], e1["to_version"], e1["changed"]) == (None, "1", True)
    assert (e2["from_version"], e2["to_version"]) == ("1", "2")
    assert reg.alias_version(NAME, "champion") == "2"

    # Same version again: nothing changes, nothing is recorded.
    again = reg.promote(NAME, 2, reason="again")
    assert again["changed"] is False
    assert len(reg.history(NAME)) == 2

    back = reg.rollback(NAME, reason="latency regression", actor="carol@lab")
    assert (back["action"], back["from_version"], back["to_version"]) == ("rollback", "2", "1")
    assert reg.alias_version(NAME, "champion") == "1"
    assert reg.show(f"{NAME}@champion")["version"] == "1"

    reg.promote(NAME, 3, alias="canary", reason="canary 10%")
    hist = reg.history(NAME)
    assert [(h["alias"], h["action"], h["from_version"], h["to_version"], h["actor"], h["reason"])
            for h in hist] == [
        ("champion", "promote", None, "1", "alice@lab", "first"),
        ("champion", "promote", "1", "2", "bob@lab", "better rouge"),
        ("champion", "rollback", "2", "1", "carol@lab", "latency regression"),
        ("canary", "promote", None, "3", hist[3]["actor"], "canary 10%"),
    ]
    assert "@" in hist[3]["actor"]  # default actor is user@host
    assert [h["alias"] for h in reg.history(NAME, "canary")] == ["canary"]
    stamps = [dt.datetime.fromisoformat(h["timestamp"]) for h in hist]
    assert all(s.utcoffset() == dt.timedelta(0) for s in stamps) and stamps == sorted(stamps)

    # A second rollback undoes the first (like `kubectl rollout undo`).
    assert reg.rollback(NAME, reason="undo")["to_version"] == "2"

    # Every version we hand out is a string, wherever it came from.
    listed = reg.list_models()
    assert listed == [{"name": NAME, "latest_version": "3", "versions": 3,
                       "aliases": {"canary": "3", "champion": "2"}, "description": ""}]
    model = reg.show(NAME)
    assert model["latest_version"] == "3" and model["aliases"] == {"canary": "3", "champion": "2"}
    assert [v["version"] for v in model["versions"]] == ["3", "2", "1"]
    assert model["versions"][0]["aliases"] == ["canary"]
    v2 = reg.show(f"{NAME}/2")
    assert v2["version"] == "2" and v2["aliases"] == ["champion"] and v2["model_uri"] == f"models:/{NAME}/2"
    assert reg.resolve(NAME) == (NAME, "3")
    assert all(isinstance(e[k], str) for e in reg.history(NAME) for k in ("to_version",))


def test_rollback_without_earlier_version_fails_cleanly(settings: Settings) -> None:
    reg = registry_with_versions(settings, 2, NAME)
    with pytest.raises(RegistryError, match="no recorded change"):
        reg.rollback(NAME, reason="nothing to undo")
    reg.promote(NAME, 1, reason="first")
    with pytest.raises(RegistryError, match="no earlier version") as info:
        reg.rollback(NAME, reason="undo first")
    assert info.value.fix and "promote" in info.value.fix
    assert reg.alias_version(NAME, "champion") == "1"
    assert len(reg.history(NAME)) == 1  # the failed rollback recorded nothing


def test_alias_moved_outside_llmops_blocks_rollback(settings: Settings) -> None:
    reg = registry_with_versions(settings, 3, NAME)
    reg.promote(NAME, 1, reason="a")
    reg.promote(NAME, 2, reason="b")
    reg.client.set_registered_model_alias(NAME, "champion", "3")  # e.g. from the MLflow UI
    with pytest.raises(RegistryError, match="outside llmops"):
        reg.rollback(NAME, reason="undo")
    # An explicit promotion records the real current version as its origin.
    assert reg.promote(NAME, 1, reason="fix")["from_version"] == "3"


def test_remove_alias_is_audited_and_rollback_restores(settings: Settings) -> None:
    reg = registry_with_versions(settings, 2, NAME)
    reg.promote(NAME, 2, alias="canary", reason="start canary")
    removed = reg.remove_alias(NAME, "canary", reason="canary failed")
    assert (removed["action"], removed["from_version"], removed["to_version"]) == ("remove", "2", None)
    assert reg.alias_version(NAME, "canary") is None
    assert reg.rollback(NAME, "canary", reason="retry")["to_version"] == "2"
    with pytest.raises(RegistryError):
        reg.remove_alias(NAME, "challenger", reason="x")


def test_unknown_things_raise_registry_error(settings: Settings, tmp_path: Path) -> None:
    reg = registry_with_versions(settings, 1, NAME)
    cases = [
        lambda: reg.show("nope"),
        lambda: reg.show("nope/1"),
        lambda: reg.show(f"{NAME}/9"),
        lambda: reg.show(f"{NAME}@champion"),
        lambda: reg.alias_version("nope", "champion"),
        lambda: reg.promote(NAME, 9, reason="x"),
        lambda: reg.promote("nope", 1, reason="x"),
        lambda: reg.promote(NAME, "abc", reason="x"),
        lambda: reg.promote(NAME, 1, reason="  "),
        lambda: reg.promote(NAME, 1, alias="v1", reason="reserved alias"),
        lambda: reg.rollback("nope", reason="x"),
        lambda: reg.history("nope"),
        lambda: reg.download_adapter(f"{NAME}/1", tmp_path / "dl"),  # version without a run/adapter
    ]
    for case in cases:
        with pytest.raises(RegistryError) as info:
            case()
        assert info.value.cause and info.value.fix and "\n" not in info.value.cause
    assert reg.history(NAME) == []  # a known model with no changes is an empty trail, not an error


def test_audit_store_rejects_unsupported_backend() -> None:
    with pytest.raises(RegistryError, match="not supported"):
        SqlAuditStore("mysql://u:secret@db/audit")
