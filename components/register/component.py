"""KFP wrapper of registration: runs only when the gate passed; returns the new model version."""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def register(parent_run_id: str, overrides: list, kfp_run_id: str, adapter: Input[Model],
             eval_metrics: Input[Metrics]) -> str:
    """MLflow model version (adapter + merged weights) with lineage tags and alias `challenger`."""
    from pathlib import Path

    from components.register.logic import EVALUATION_KEYS, register_candidate
    from llmops.lineage import collect_lineage
    from llmops.modeling.base import base_model_path, base_model_sha256
    from llmops.settings import get_settings
    from llmops.steplog import step_report

    with step_report("register", parent_run_id) as step:
        settings = get_settings()
        params = settings.params(overrides)
        base_dir = base_model_path(settings, params)
        lineage = collect_lineage(settings, params, kfp_run_id=kfp_run_id, mlflow_run_id=parent_run_id,
                                  base_model_id=params.model.base, base_model_sha256=base_model_sha256(base_dir),
                                  step_lineage={**adapter.metadata, **eval_metrics.metadata})
        metrics = {k: float(v) for k, v in eval_metrics.metadata.items() if isinstance(v, int | float)}
        evaluation = {k: str(v) for k, v in eval_metrics.metadata.items() if k in EVALUATION_KEYS}
        result = register_candidate(settings, params, adapter_dir=Path(adapter.path), base_model_dir=base_dir,
                                    metrics=metrics, lineage=lineage, parent_run_id=parent_run_id,
                                    evaluation=evaluation)
        step.figures(model=f"{result['name']} v{result['version']}", aliases=",".join(result.get("aliases", [])))
    return str(result["version"])
