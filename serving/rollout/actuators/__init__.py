"""Actuators execute a rollout's traffic decisions; the controller decides (see base.Actuator).

`build(spec, settings)` rebuilds the actuator a rollout recorded (its `spec`), so `llmops canary resume/abort`
in a new process acts on the same router or InferenceService as the controller that died.
"""

from __future__ import annotations

from typing import Any

from serving.rollout.actuators.base import Actuator


def build(spec: dict[str, Any], settings: Any) -> Actuator:
    """The actuator described by a recorded spec ({"kind": "local" | "kserve", ...})."""
    from serving.rollout.errors import RolloutError

    kind = spec.get("kind")
    if kind == "local":
        from serving.rollout.actuators.local import LocalRouterActuator, read_admin_token

        return LocalRouterActuator(spec["router_url"], read_admin_token(settings.state_dir),
                                   canary_url=spec.get("canary_url"))
    if kind == "kserve":
        from serving.rollout.actuators import kserve

        return kserve.from_spec(spec, settings)  # type: ignore[attr-defined]
    raise RolloutError(f"unknown actuator kind {kind!r} in the rollout state", "abort it from the platform by hand")
