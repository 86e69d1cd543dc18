"""The MLflow model registry as llmops uses it: aliases (never stages), every alias change audited.

One class, `Registry`, is what the CLI, the register step, evaluation (load the champion) and the
canary controller (move `champion`) call. It hides three MLflow traps:
- versions come back as ints from a local store and as strings over HTTP: here they are always strings;
- `search_model_versions` does not return aliases: aliases are always read from the registered model;
- MLflow keeps no alias history: every change goes through `set_alias`, which holds the audit store's
  per-model lock while it reads the current alias, moves it and records the event.
References (`ref`) are `NAME` (the latest version), `NAME@ALIAS` or `NAME/VERSION`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from llmops.errors import NotFound, RegistryError
from llmops.registry.audit import Action, AuditStore, SqlAuditStore, default_actor
from llmops.settings import Settings

ADAPTER_ARTIFACT = "adapter"  # run-relative artifact dir: PEFT adapter safetensors + adapter_config.json


def _iso_ms(ms: int | str | None) -> str | None:
    if ms in (None, ""):
        return None
    return dt.datetime.fromtimestamp(int(ms) / 1000, tz=dt.UTC).isoformat()


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """Split `NAME`, `NAME@ALIAS` or `NAME/VERSION` into (name, alias, version)."""
    ref = ref.strip()
    if "@" in ref:
        name, _, alias = ref.rpartition("@")
        if not name or not alias:
            raise RegistryError(f"bad model reference {ref!r}", "write NAME, NAME@ALIAS or NAME/VERSION")
        return name, alias, None
    name, sep, version = ref.rpartition("/")
    if sep and name and version:
        return name, None, normalize_version(version)
    if not ref or sep:
        raise RegistryError(f"bad model reference {ref!r}", "write NAME, NAME@ALIAS or NAME/VERSION")
    return ref, None, None


def normalize_version(version: int | str) -> str:
    """Versions as strings of digits, whatever the store returned (int locally, str over HTTP)."""
    text = str(version).strip()
    if not text.isdigit() or int(text) < 1:
        raise RegistryError(f"bad model version {version!r}", "a version is a positive integer, e.g. 3")
    return str(int(text))


class Registry:
    """Model registry operations for `settings.registered_model` (or any name) with an audited alias trail."""

    def __init__(self, settings: Settings, audit: AuditStore | None = None) -> None:
        from mlflow import MlflowClient

        from llmops.tracking import configure

        configure(settings)
        self.settings = settings
        self.client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
        self._audit = audit

    @property
    def audit(self) -> AuditStore:
        if self._audit is None:
            self._audit = SqlAuditStore(self.settings.audit_db_uri)
        return self._audit

    # ---- reading -------------------------------------------------------------------------------

    def _model(self, name: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise NotFound(f"no registered model named {name!r}",
                                    "see `llmops models list` for the registered names") from None
            raise RegistryError(f"registry error for {name!r}: {exc.message}",
                                f"check the tracking URI {self.settings.tracking_uri}") from None

    def _aliases(self, name: str) -> dict[str, str]:
        """alias -> version (strings) of a registered model; raises RegistryError if it does not exist."""
        return {a: normalize_version(v) for a, v in (self._model(name).aliases or {}).items()}

    def _version(self, name: str, version: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(name, version)
        except MlflowException as exc:
            self._model(name)  # unknown name: say so rather than "no version"
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise RegistryError(f"registry error for {name}/{version}: {exc.message}",
                                    f"check the tracking URI {self.settings.tracking_uri}") from None
            raise NotFound(f"model {name!r} has no version {version}",
                                f"`llmops models show {name}` lists its versions") from None

    def _versions(self, name: str) -> list[Any]:
        """Every version of `name`, newest first (aliases are not filled in by MLflow here)."""
        escaped = name.replace("'", "\\'")
        out, token = [], None
        while True:
            page = self.client.search_model_versions(
                filter_string=f"name='{escaped}'", order_by=["version_number DESC"], page_token=token
            )
            out.extend(page)
            token = page.token
            if not token:
                break
        return sorted(out, key=lambda mv: int(mv.version), reverse=True)

    def resolve(self, ref: str) -> tuple[str, str]:
        """(name, version) that `ref` points at now; unknown name/alias/version -> RegistryError."""
        name, alias, version = parse_ref(ref)
        if alias is not None:
            found = self.alias_version(name, alias)
            if found is None:
                raise NotFound(f"model {name!r} has no alias {alias!r}",
                                    f"set it with `llmops models promote {name} VERSION --alias {alias} "
                                    "--reason ...`")
            return name, found
        if version is not None:
            self._version(name, version)
            return name, version
        versions = self._versions(name)
        if not versions:
            self._model(name)
            raise NotFound(f"model {name!r} has no versions", "register one with `llmops run finetune`")
        return name, normalize_version(versions[0].version)

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version `name@alias` points at, or None when the alias is not set."""
        return self._aliases(name).get(alias)

    def model_uri(self, ref: str) -> str:
        """`models:/NAME/VERSION` for `ref`, pinned to a number so a later alias move cannot change it."""
        name, version = self.resolve(ref)
        return f"models:/{name}/{version}"

    def list_models(self) -> list[dict[str, Any]]:
        """Every registered model: name, latest version (string), aliases {alias: version}."""
        out, token = [], None
        while True:
            page = self.client.search_registered_models(page_token=token)
            for rm in page:
                versions = self._versions(rm.name)
                out.append({
                    "name": rm.name,
                    "latest_version": normalize_version(versions[0].version) if versions else None,
                    "versions": len(versions),
                    "aliases": {a: normalize_version(v) for a, v in sorted((rm.aliases or {}).items())},
                    "description": rm.description or "",
                })
            token = page.token
            if not token:
                break
        return sorted(out, key=lambda m: m["name"])

    def _version_dict(self, mv, aliases: dict[str, str]) -> dict[str, Any]:
        version = normalize_version(mv.version)
        return {
            "name": mv.name,
            "version": version,
            "aliases": sorted(a for a, v in aliases.items() if v == version),
            "status": str(mv.status),
            "run_id": mv.run_id,
            "source": mv.source,
            "created": _iso_ms(mv.creation_timestamp),
            "description": mv.description or "",
            "tags": dict(sorted((mv.tags or {}).items())),
            "model_uri": f"models:/{mv.name}/{version}",
        }

    def show(self, ref: str) -> dict[str, Any]:
        """A version (`NAME@ALIAS`, `NAME/VERSION`: info, aliases, tags, run id, source) or, for a bare
        `NAME`, the model (aliases, tags, latest version and every version)."""
        name, alias, version = parse_ref(ref)
        if alias is None and version is None:
            rm = self._model(name)
            aliases = {a: normalize_version(v) for a, v in (rm.aliases or {}).items()}
            versions = [self._version_dict(mv, aliases) for mv in self._versions(name)]
            return {
                "kind": "model",
                "name": rm.name,
                "description": rm.description or "",
                "tags": dict(sorted((rm.tags or {}).items())),
                "aliases": dict(sorted(aliases.items())),
                "latest_version": versions[0]["version"] if versions else None,
                "versions": [{k: v[k] for k in ("version", "aliases", "status", "run_id", "created")}
                             for v in versions],
            }
        name, version = self.resolve(ref)
        info = self._version_dict(self._version(name, version), self._aliases(name))
        return {"kind": "version", "ref": ref, **info}

    def history(self, name: str, alias: str | None = None) -> list[dict[str, Any]]:
        """Audited alias events of `name` (one alias when given), oldest first."""
        events = self.audit.history(name, alias)
        if not events:
            self._model(name)  # an unknown name is an error; a known one with no changes is just empty
        return [e.to_dict() for e in events]

    # ---- changing aliases (always audited) -------------------------------------------------------

    def set_alias(
        self,
        name: str,
        alias: str,
        version: str | int,
        *,
        action: Action,
        reason: str,
        actor: str | None = None,
        only_if_unset: bool = False,
    ) -> dict[str, Any] | None:
        """Point `name@alias` at `version` and record the event, atomically per model across processes.

        Returns the event (with `changed`), or None when `only_if_unset` and the alias was already set.
        Moving an alias to the version it already points at changes nothing and records nothing."""
        from mlflow.exceptions import MlflowException

        version = normalize_version(version)
        reason = _require_reason(reason)
        actor = actor or default_actor()
        mv = self._version(name, version)
        if str(mv.status) not in ("READY", "ModelVersionStatus.READY"):
            raise RegistryError(f"{name}/{version} is {mv.status}, not READY", "wait for registration to finish")
        with self.audit.transaction(name) as tx:
            current = self._aliases(name).get(alias)
            if only_if_unset and current is not None:
                return None
            if current == version:
                return {"model": name, "alias": alias, "action": action, "from_version": current,
                        "to_version": version, "actor": actor, "reason": reason, "changed": False}
            try:
                self.client.set_registered_model_alias(name, alias, version)
            except MlflowException as exc:
                raise RegistryError(f"cannot set alias {alias!r} on {name}/{version}: {exc.message}",
                                    "use a plain name such as champion, challenger or canary") from None
            event = tx.record(alias, action, current, version, actor, reason)
        return {**event.to_dict(), "changed": True}

    def promote(
        self,
        name: str,
        version: str | int,
        alias: str = "champion",
        *,
        reason: str,
        actor: str | None = None,
    ) -> dict[str, Any]:
        """Point `name@alias` at `version` (audited) and return the event."""
        event = self.set_alias(name, alias, version, action="promote", reason=reason, actor=actor)
        assert event is not None
        return event

    def rollback(
        self, name: str, alias: str = "champion", *, reason: str, actor: str | None = None
    ) -> dict[str, Any]:
        """Return `name@alias` to the version it pointed at before its latest change (from the audit
        trail). Rolling back twice undoes the rollback, like `kubectl rollout undo`."""
        from mlflow.exceptions import MlflowException

        reason = _require_reason(reason)
        actor = actor or default_actor()
        with self.audit.transaction(name) as tx:
            current = self._aliases(name).get(alias)
            last = tx.latest(alias)
            if last is None:
                raise RegistryError(f"{name}@{alias} has no recorded change to roll back",
                                    f"promote a version explicitly: `llmops models promote {name} VERSION "
                                    f"--alias {alias} --reason ...`")
            if last.to_version != current:
                raise RegistryError(
                    f"{name}@{alias} points at {current} but its last audited change set {last.to_version}: "
                    "it was moved outside llmops",
                    f"promote the version you want explicitly: `llmops models promote {name} VERSION "
                    f"--alias {alias} --reason ...`")
            target = last.from_version
            if target is None:
                raise RegistryError(f"{name}@{alias} has no earlier version to roll back to "
                                    f"(it was first set to {current})",
                                    f"promote another version instead: `llmops models promote {name} VERSION "
                                    f"--alias {alias} --reason ...`")
            self._version(name, target)  # it may have been deleted since
            try:
                self.client.set_registered_model_alias(name, alias, target)
            except MlflowException as exc:
                raise RegistryError(f"cannot set alias {alias!r} on {name}/{target}: {exc.message}",
                                    "check the registry") from None
            event = tx.record(alias, "rollback", current, target, actor, reason)
        return {**event.to_dict(), "changed": True}

    def remove_alias(self, name: str, alias: str, *, reason: str, actor: str | None = None) -> dict[str, Any]:
        """Unset `name@alias` (audited as `remove`); an error if it is not set."""
        reason = _require_reason(reason)
        actor = actor or default_actor()
        with self.audit.transaction(name) as tx:
            current = self._aliases(name).get(alias)
            if current is None:
                raise NotFound(f"model {name!r} has no alias {alias!r}", f"`llmops models show {name}`")
            self.client.delete_registered_model_alias(name, alias)
            event = tx.record(alias, "remove", current, None, actor, reason)
        return {**event.to_dict(), "changed": True}

    # ---- artifacts -------------------------------------------------------------------------------

    def download_adapter(self, ref: str, dst: Path) -> Path:
        """Fetch the version's `adapter/` run artifact into `dst`; returns the directory holding
        adapter_config.json and the adapter safetensors (load it as base + adapter with PEFT)."""
        import mlflow

        name, version = self.resolve(ref)
        mv = self._version(name, version)
        if not mv.run_id:
            raise RegistryError(f"{name}/{version} has no run, so no adapter artifact",
                                "register versions with the register step (it logs adapter/)")
        dst = Path(dst)
        dst.mkdir(parents=True, exist_ok=True)
        try:
            local = Path(mlflow.artifacts.download_artifacts(
                run_id=mv.run_id, artifact_path=ADAPTER_ARTIFACT, dst_path=str(dst),
                tracking_uri=self.settings.tracking_uri,
            ))
        except Exception as exc:  # MlflowException or OSError, depending on the artifact store
            raise RegistryError(f"{name}/{version} (run {mv.run_id}) has no {ADAPTER_ARTIFACT}/ artifact: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                                "register versions with the register step (it logs adapter/)") from None
        if not (local / "adapter_config.json").is_file() or not any(local.glob("*.safetensors")):
            raise RegistryError(f"{name}/{version}'s {ADAPTER_ARTIFACT}/ holds no safetensors PEFT adapter",
                                "re-register it; pickled adapters are never loaded")
        return local

    def card(self, ref: str) -> dict[str, Any]:
        """The model card (Hugging Face format) of the version `ref` points at: {name, version, artifact,
        run_id, card}; NotFound when the version has none (llmops.registry.card)."""
        from llmops.registry import card

        return card.read(self, ref)


def champion_adapter(settings: Settings, dst: Path, alias: str = "champion") -> Path | None:
    """The current champion's adapter downloaded to `dst`, or None when the name has no champion yet
    (the first run of a pipeline compares the candidate with the base model only).

    Fails closed: only "no such registered model" and "no such alias" mean no champion. Any other registry
    error (bad tracking URI, server down, lost artifact) raises, because treating it as "no champion"
    would drop the gate's champion checks and let a regressing candidate through."""
    _require_existing_sqlite_store(settings.tracking_uri)
    registry = Registry(settings)
    try:
        if registry.alias_version(settings.registered_model, alias) is None:
            return None
    except NotFound:
        return None  # the registered model does not exist yet
    return registry.download_adapter(f"{settings.registered_model}@{alias}", dst)


def _require_existing_sqlite_store(uri: str) -> None:
    """MLflow creates a missing sqlite file (and its directories) as an empty store, which reads as "no model,
    no champion": a mistyped path must fail instead. The pipeline's first step has created the real one."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///").split("?")[0])
        if not path.is_file():
            raise RegistryError(f"the tracking store {path} does not exist",
                                f"check the tracking URI {uri} (LLMOPS_TRACKING_URI); the pipeline's start step "
                                "creates it")


def _require_reason(reason: str | None) -> str:
    text = (reason or "").strip()
    if not text:
        raise RegistryError("a reason is required for every alias change", "pass --reason TEXT")
    return text
