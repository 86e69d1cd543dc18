"""KFP wrappers of the retraining DAG's own steps: the champion's recipe, then refreshed data."""

from typing import NamedTuple

from kfp import dsl

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
