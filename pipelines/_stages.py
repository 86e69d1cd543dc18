"""The one definition of the training DAG's wiring, shared by every pipeline that produces a model.

validate -> train -> evaluate -> (gate) -> register -> compile_engine -> canary_deploy: `pipelines/finetune.py`
and `pipelines/retrain.py` both call `model_stages` inside their own exit handler, so a step added here (the
canary, a new check) reaches both DAGs and their compiled YAMLs cannot drift apart. What differs between the
DAGs is only what comes before (retrain refreshes the data and plans the run from the champion's lineage).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kfp import dsl

from components.canary_deploy.component import canary_deploy
from components.compile_engine.component import compile_engine
from components.compile_trtllm.component import attach_trtllm, compile_trtllm, stage_checkpoint
from components.evaluate.component import evaluate
from components.register.component import register
from components.train.component import train
from components.validate_data.component import validate_data
from pipelines._resources import building_for_cluster


@dataclass
class StageTasks:
    """The tasks `model_stages` created, for a caller that wires something after them."""

    data: Any
    trained: Any
    evaluated: Any
    registered: Any
    compiled: Any
    deployed: Any
    refined: Any = None


def model_stages(*, parent_run_id: Any, kfp_run_id: Any, overrides: Any, data_dir: Any,
                 refine: Callable[[Any], Any] | None = None) -> StageTasks:
    """Add validate -> train [-> refine] -> evaluate -> gate -> register -> compile_engine -> canary_deploy.

    Every argument may be a pipeline parameter or an upstream task's output (retrain passes the refreshed
    data dir and the planned overrides from its own steps). `refine(trained)` adds a task after train whose
    `adapter` output is what evaluate and register take (retrain: the DPO stage).
    """
    data = validate_data(parent_run_id=parent_run_id, overrides=overrides, data_dir=data_dir)
    trained = train(parent_run_id=parent_run_id, overrides=overrides, train_data=data.outputs["train_data"],
                    validation_data=data.outputs["validation_data"])
    refined = refine(trained) if refine is not None else None
    adapter = (refined or trained).outputs["adapter"]
    evaluated = evaluate(parent_run_id=parent_run_id, overrides=overrides, test_data=data.outputs["test_data"],
                         adapter=adapter)
    # kfp.local resolves conditions on a component's single return value, not on NamedTuple fields.
    with dsl.If(evaluated.outputs["Output"] == "pass", name="gate-passed"):
        registered = register(parent_run_id=parent_run_id, overrides=overrides, kfp_run_id=kfp_run_id,
                              adapter=adapter, eval_metrics=evaluated.outputs["metrics"])
        compiled = compile_engine(parent_run_id=parent_run_id, overrides=overrides, model_version=registered.output)
        cluster = building_for_cluster()
        if cluster is not None and cluster.trtllm_engine:  # kfp.local cannot run the TRT-LLM container step
            staged = stage_checkpoint(parent_run_id=parent_run_id, overrides=overrides,
                                      model_version=registered.output)
            built = compile_trtllm(checkpoint=staged.outputs["checkpoint"],
                                   weights_digest=staged.outputs["weights_digest"],
                                   build_config=staged.outputs["build_config"],
                                   min_compute_capability=staged.outputs["min_compute_capability"])
            attach_trtllm(parent_run_id=parent_run_id, overrides=overrides, model_version=registered.output,
                          engine=built.outputs["engine"]).after(compiled)
        # The first version becomes champion (register); a later one is rolled out against the champion.
        deployed = canary_deploy(parent_run_id=parent_run_id, overrides=overrides,
                                 model_version=registered.output).after(compiled)
    return StageTasks(data=data, trained=trained, evaluated=evaluated, registered=registered, compiled=compiled,
                      deployed=deployed, refined=refined)
