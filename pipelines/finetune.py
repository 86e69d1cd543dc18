"""The fine-tuning DAG: validate -> train -> evaluate -> (gate) -> register -> compile_engine, inside an exit
handler that closes the run's MLflow record with the final state whatever happens.

Parameters are strings/lists only, so the same compiled YAML runs on a KFP cluster and through
`kfp.local` on a laptop; every default lives in params.yaml and arrives here as `overrides`.
"""

from kfp import dsl

from components.compile_engine.component import compile_engine
from components.evaluate.component import evaluate
from components.register.component import register
from components.start_run.component import finish_run, start_run
from components.train.component import train
from components.validate_data.component import validate_data
from pipelines._resources import apply_cluster_settings

PIPELINE_NAME = "llmops-finetune"


@dsl.pipeline(name=PIPELINE_NAME, description="Validate data, LoRA fine-tune on Ray, evaluate against the "
              "champion, and register the candidate when the gate passes.")
def finetune(overrides: list = [], data_dir: str = "data/splits"):  # noqa: B006 - KFP needs a literal default
    run_id, run_name = dsl.PIPELINE_JOB_ID_PLACEHOLDER, dsl.PIPELINE_JOB_NAME_PLACEHOLDER
    with dsl.ExitHandler(finish_run(kfp_run_id=run_id), name="close-mlflow-run"):
        started = start_run(kfp_run_id=run_id, kfp_run_name=run_name, overrides=overrides)
        parent = started.output
        data = validate_data(parent_run_id=parent, overrides=overrides, data_dir=data_dir)
        trained = train(parent_run_id=parent, overrides=overrides, train_data=data.outputs["train_data"],
                        validation_data=data.outputs["validation_data"])
        evaluated = evaluate(parent_run_id=parent, overrides=overrides, test_data=data.outputs["test_data"],
                             adapter=trained.outputs["adapter"])
        # kfp.local resolves conditions on a component's single return value, not on NamedTuple fields.
        with dsl.If(evaluated.outputs["Output"] == "pass", name="gate-passed"):
            registered = register(parent_run_id=parent, overrides=overrides, kfp_run_id=run_id,
                                  adapter=trained.outputs["adapter"], eval_metrics=evaluated.outputs["metrics"])
            compile_engine(parent_run_id=parent, overrides=overrides, model_version=registered.output)
    apply_cluster_settings()  # pods, GPUs, secrets, retries, caching from params.yaml: cluster profile only
