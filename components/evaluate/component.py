"""KFP wrapper of evaluation: base vs candidate vs champion on the same data; returns the gate verdict."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def evaluate(parent_run_id: str, overrides: list, test_data: Input[Dataset], adapter: Input[Model],
             metrics: Output[Metrics], report: Output[HTML]) -> str:
    """Returns "pass" or "fail" (the gate); the pipeline registers the candidate only on "pass"."""
    import shutil
    from pathlib import Path

    from components.evaluate.logic import evaluate_candidate
    from llmops.modeling.base import base_model_path
    from llmops.registry.client import champion_adapter
    from llmops.settings import get_settings
    from llmops.steplog import step_report

    with step_report("evaluate", parent_run_id) as step:
        settings = get_settings()
        params = settings.params(overrides)
        work = Path(report.path).parent / "evaluate"
        champion_dir = champion_adapter(settings, work / "champion")
        result = evaluate_candidate(settings, params, test_path=Path(test_data.path),
                                    base_model_dir=base_model_path(settings, params),
                                    adapter_dir=Path(adapter.path), champion_adapter_dir=champion_dir,
                                    out_dir=work, parent_run_id=parent_run_id)
        for model_name, values in result.models.items():
            for key, value in values.items():
                metrics.log_metric(f"{model_name}.{key}", float(value))
        metrics.metadata.update(result.lineage)  # data.test.* of the file really read: for register's lineage
        metrics.metadata.update({"gate.summary": result.verdict.summary(), "eval.judge": result.data["judge"],
                                 "eval.safety_set": result.data["safety_set"]})  # for register's model card
        shutil.copyfile(result.report_html, report.path)
        step.figures(**{f"ppl {name}": values["perplexity"] for name, values in result.models.items()
                        if "perplexity" in values}, gate="pass" if result.verdict.passed else "FAIL")
    return "pass" if result.verdict.passed else "fail"
