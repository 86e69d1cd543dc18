"""The container image every component runs in on a cluster (the project's image carries the code, so
`packages_to_install` stays empty and local runs need no network)."""

from llmops.settings import get_settings

BASE_IMAGE: str = get_settings().image
