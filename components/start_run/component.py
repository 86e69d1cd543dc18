"""KFP wrappers that open and close the pipeline's parent MLflow run."""

from kfp import dsl

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def start_run(kfp_run_id: str, kfp_run_name: str, overrides: list) -> str:
    """Open the pipeline's MLflow run; returns its id for every later step."""
    from components.start_run.logic import start_run as _start
    from llmops.settings import get_settings
    from llmops.steplog import step_report

    with step_report("start_run") as step:
        settings = get_settings()
        run_id = _start(settings, settings.params(overrides), kfp_run_id=kfp_run_id, kfp_run_name=kfp_run_name,
                        overrides=list(overrides))
        step.figures(mlflow_run=run_id)
    return run_id


@dsl.component(base_image=BASE_IMAGE)
def finish_run(kfp_run_id: str, status: dsl.PipelineTaskFinalStatus):
    """Exit handler: close the MLflow run with the pipeline's final state, whatever happened."""
    from components.start_run.logic import finish_run as _finish
    from llmops.settings import get_settings

    _finish(get_settings(), kfp_run_id=kfp_run_id, state=status.state, error=status.error_message)
