"""KFP wrapper of the canary rollout: runs after compile_engine on the new version; returns the decision."""

from kfp import dsl

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def canary_deploy(parent_run_id: str, overrides: list, model_version: str) -> str:
    """Roll `model_version` out against the champion (params.yaml `canary:`); returns "promoted",
    "rolled_back:<why>", "first_version" or "skipped:<why>"."""
    from components.canary_deploy.logic import canary_deploy as run_canary
    from llmops.settings import get_settings
    from llmops.steplog import step_report

    with step_report("canary_deploy", parent_run_id) as step:
        settings = get_settings()
        params = settings.params(overrides)
        result = run_canary(settings, params, name=settings.registered_model, version=model_version,
                            parent_run_id=parent_run_id, overrides=list(overrides))
        decision = result["decision"]
        step.figures(decision=decision.split(":", 1)[0], champion=f"v{result['champion_after']}",
                     seconds=result["seconds"])
    return decision
