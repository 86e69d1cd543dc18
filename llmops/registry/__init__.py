"""MLflow model registry with aliases (champion, challenger, canary) and our own audit trail of alias changes."""

from llmops.registry.audit import AliasEvent, AuditStore, SqlAuditStore, default_actor
from llmops.registry.client import Registry, normalize_version, parse_ref

__all__ = ["AliasEvent", "AuditStore", "Registry", "SqlAuditStore", "default_actor", "normalize_version",
           "parse_ref"]
