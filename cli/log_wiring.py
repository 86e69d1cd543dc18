"""How `llmops serve` and `llmops router` open the inference log: on by default, off with `--no-log` or
LLMOPS_INFERENCE_LOG_ENABLED=false; the CLI says where it logs."""

from __future__ import annotations

from llmops.settings import Settings
from monitoring.inference_log.log import InferenceLog, open_log


def inference_log_for(settings: Settings, overrides: list[str] | tuple[str, ...] = (), *,
                      enabled: bool = True) -> InferenceLog | None:
    if not (enabled and settings.inference_log_enabled):
        return None
    from cli._common import console
    from monitoring.inference_log.store import safe_uri

    ilog = open_log(settings, settings.params(list(overrides)))
    where = safe_uri(str(settings.inference_log_uri))
    console.print(f"inference log: {where} (POST /v1/feedback; --no-log to disable)", highlight=False)
    return ilog
