"""Registry test setup shared by the registry unit, CLI and race tests."""

from __future__ import annotations

from llmops.registry import Registry
from llmops.settings import Settings


def registry_with_versions(settings: Settings, n: int, name: str) -> Registry:
    """A registered model with `n` real versions (source: a directory in the state dir)."""
    reg = Registry(settings)
    src = settings.state_dir / "src"
    src.mkdir(exist_ok=True)
    reg.client.create_registered_model(name)
    for _ in range(n):
        reg.client.create_model_version(name, source=str(src))
    return reg
