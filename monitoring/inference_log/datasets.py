"""What a logged request can give a training set, and where exported datasets go: shared by the SFT export,
the preference pairs and the privacy pass (one home, so none of them imports another)."""

from __future__ import annotations

from pathlib import Path

from llmops.errors import LlmopsError
from llmops.params import Params
from llmops.settings import Settings
from monitoring.inference_log.store import LoggedRequest

SOURCE = "feedback"  # the data.sources entry exports go to, and every exported record's `source`


def user_text(req: LoggedRequest) -> tuple[str | None, str | None]:
    """(instruction, None) or (None, why it cannot be a training record)."""
    if req.extra.get("tool"):
        return None, "tool call"
    prompt = req.prompt
    if isinstance(prompt, str):
        return (prompt.strip(), None) if prompt.strip() else (None, "empty prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        if len(prompt) == 1 and prompt[0].get("role") == "user" and isinstance(prompt[0].get("content"), str):
            text = prompt[0]["content"].strip()
            return (text, None) if text else (None, "empty prompt")
        return None, "not one user turn (system prompt or multi-turn)"
    return None, "token-id prompt"


def feedback_dir(settings: Settings, params: Params) -> Path:
    """The folder of the `feedback` entry of data.sources (H7's data sources declare it)."""
    for src in params.data.sources:
        if src.name == SOURCE:
            path = Path(src.path)
            path = path if path.is_absolute() else settings.project_dir / path
            if path.suffix == ".jsonl":
                raise LlmopsError(f"data.sources entry {SOURCE!r} is a file ({src.path}); exports need a folder",
                                  f"declare it as a folder: - {{name: {SOURCE}, path: data/feedback}}")
            return path
    raise LlmopsError(f"params.yaml data.sources has no {SOURCE!r} entry, so a retraining run would not read "
                      "the export", f"add `- {{name: {SOURCE}, path: data/feedback}}` to data.sources")


def preference_dir(settings: Settings, params: Params) -> Path:
    """Where preference exports go (params.yaml inference_log.preference_dir)."""
    path = Path(params.inference_log.preference_dir)
    return path if path.is_absolute() else settings.project_dir / path
