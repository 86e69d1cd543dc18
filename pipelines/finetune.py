"""The fine-tuning DAG: validate -> train -> evaluate -> (gate) -> register -> compile_engine (the shared wiring in
`pipelines/_stages.py`), inside an exit handler that closes the run's MLflow record with the final state
whatever happens.

Parameters are strings/lists only, so the same compiled YAML runs on a KFP cluster and through
`kfp.local` on a laptop; every default lives in params.yaml and arrives here as `overrides`.
"""

from kfp import dsl

from components.start_run.component import finish_run, start_run
from pipelines._resources import apply_cluster_settings
from pipelines._stages import model_stages

PIPELINE_NAME = "llmops-finetune"


@dsl.pipeline(name=PIPELINE_NAME, description="Validate data, LoRA fine-tune on Ray, evaluate against the "
              "champion, and register the candidate when the gate passes.")
def finetune(overrides: list = [], data_dir: str = "data/splits"):  # noqa: B006 - KFP needs a literal default
    run_id, run_name = dsl.PIPELINE_JOB_ID_PLACEHOLDER, dsl.PIPELINE_JOB_NAME_PLACEHOLDER
    with dsl.ExitHandler(finish_run(kfp_run_id=run_id), name="close-mlflow-run"):
        started = start_run(kfp_run_id=run_id, kfp_run_name=run_name, overrides=overrides)
        model_stages(parent_run_id=started.output, kfp_run_id=run_id, overrides=overrides, data_dir=data_dir)
    apply_cluster_settings()  # pods, GPUs, secrets, retries, caching from params.yaml: cluster profile only
