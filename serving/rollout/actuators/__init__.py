"""Actuators execute a rollout's traffic decisions; the controller decides (see base.Actuator)."""
