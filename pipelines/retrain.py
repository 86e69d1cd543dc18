"""The retraining DAG: champion's recipe -> refresh data (DVC merge + split of the newest sources, exported feedback
included) -> the shared stages of `pipelines/_stages.py` (validate -> train -> evaluate -> gate -> register ->
compile_engine [-> canary]), inside the same exit handler as the finetune DAG, with one stage of its own after
train: DPO on the reviewed preference pairs starting from the SFT model (components/retrain/dpo.py; skipped,
with the reason on the run, when there are none), so evaluate and register see the SFT->DPO adapter.

Started on demand (`llmops run retrain`), by the drift trigger (`llmops monitor run` passes the drift report) or
by a schedule. Training restarts from the champion's base model with the champion's params on the refreshed data
(why not from the champion's adapter: components/retrain/logic.py).
"""

from kfp import dsl

from components.retrain.component import champion_recipe, refresh_data, train_dpo
from components.start_run.component import finish_run, start_run
from pipelines._resources import apply_cluster_settings
from pipelines._stages import model_stages

PIPELINE_NAME = "llmops-retrain"


@dsl.pipeline(name=PIPELINE_NAME, description="Retrain the champion's recipe on the newest data version "
              "(feedback included), then DPO on the reviewed preference pairs, evaluate against the champion, "
              "register and compile when the gate passes.")
def retrain(overrides: list = [], reason: str = "", drift_report: str = "",  # noqa: B006 - KFP needs a literal
            drift_report_path: str = ""):
    run_id, run_name = dsl.PIPELINE_JOB_ID_PLACEHOLDER, dsl.PIPELINE_JOB_NAME_PLACEHOLDER
    with dsl.ExitHandler(finish_run(kfp_run_id=run_id), name="close-mlflow-run"):
        recipe = champion_recipe(overrides=overrides)
        planned = recipe.outputs["overrides"]
        started = start_run(kfp_run_id=run_id, kfp_run_name=run_name, overrides=planned)
        data = refresh_data(parent_run_id=started.output, champion=recipe.outputs["champion"], reason=reason,
                            drift_report=drift_report, drift_report_path=drift_report_path)
        model_stages(parent_run_id=started.output, kfp_run_id=run_id, overrides=planned, data_dir=data.output,
                     refine=lambda trained: train_dpo(parent_run_id=started.output, overrides=planned,
                                                      sft_adapter=trained.outputs["adapter"]))
    apply_cluster_settings()  # pods, GPUs, secrets, retries, caching from params.yaml: cluster profile only
