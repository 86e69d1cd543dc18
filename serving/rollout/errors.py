"""Rollout errors: a failure the user can fix (cause + fix), like every llmops error."""

from __future__ import annotations

from llmops.errors import LlmopsError


class RolloutError(LlmopsError):
    """A rollout that cannot start, continue or finish as asked (bad config, lock held, actuator failure)."""


class RolloutLocked(RolloutError):
    """Another rollout of the same model is active (its controller alive, or dead and not yet resumed/aborted)."""
