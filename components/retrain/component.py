"""KFP wrappers of the retraining DAG's own steps: the champion's recipe, refreshed data, and the DPO stage
after SFT."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Input, Model, Output

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def champion_recipe(overrides: list) -> NamedTuple("Recipe", [("overrides", list), ("champion", str)]):
    """The champion's overrides (base model, params), then this run's; fails with no champion."""
    from collections import namedtuple

    from components.retrain.logic import champion_recipe as _recipe
    from llmops.settings import get_settings
    from llmops.steplog import step_report

    with step_report("champion_recipe") as step:
        recipe = _recipe(get_settings(), list(overrides))
        step.figures(champion=recipe.champion, overrides=" ".join(recipe.overrides) or "(none)")
    return namedtuple("Recipe", ["overrides", "champion"])(recipe.overrides, recipe.champion)


@dsl.component(base_image=BASE_IMAGE)
def refresh_data(parent_run_id: str, champion: str, reason: str, drift_report: str, drift_report_path: str) -> str:
    """`dvc repro split` on the newest sources (exported feedback included); records why the run started."""
    from components.retrain.logic import refresh_data as _refresh
    from llmops.settings import get_settings
    from llmops.steplog import step_report

    with step_report("refresh_data", parent_run_id) as step:
        data_dir = _refresh(get_settings(), parent_run_id=parent_run_id, champion=champion, reason=reason,
                            drift_report=drift_report, drift_report_path=drift_report_path)
        step.figures(data_dir=data_dir, reason=reason or "on demand")
    return data_dir


@dsl.component(base_image=BASE_IMAGE)
def train_dpo(parent_run_id: str, overrides: list, sft_adapter: Input[Model], adapter: Output[Model]) -> str:
    """DPO on the reviewed preference pairs, starting from the SFT adapter (its model is the reference); one
    stacked adapter out, or the SFT adapter unchanged with the reason when there is nothing to learn from
    (components/retrain/dpo.py). Returns "trained" or "skipped"."""
    from pathlib import Path

    from components.retrain.dpo import record, run_dpo_stage
    from llmops.modeling.base import base_model_path
    from llmops.settings import get_settings
    from llmops.steplog import step_report

    with step_report("train_dpo", parent_run_id) as step:
        settings = get_settings()
        params = settings.params(overrides)
        outcome = run_dpo_stage(settings, params, base_model_dir=base_model_path(settings, params),
                                sft_adapter=Path(sft_adapter.path), out_dir=Path(adapter.path),
                                parent_run_id=parent_run_id)
        record(settings, parent_run_id, outcome)
        step.figures(dpo=outcome.reason)
    adapter.metadata.update(sft_adapter.metadata)  # the base and SFT data the stacked adapter stands on
    adapter.metadata.update(outcome.lineage)  # data.preferences.<export>.md5 of the pairs read
    adapter.metadata["dpo"] = "trained" if outcome.trained else "skipped"
    return "trained" if outcome.trained else "skipped"
