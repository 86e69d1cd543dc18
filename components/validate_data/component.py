"""KFP wrapper of validate_data: DVC splits in, validated Dataset artifacts + Data Docs out."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Metrics, Output

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def validate_data(parent_run_id: str, overrides: list, data_dir: str, train_data: Output[Dataset],
                  validation_data: Output[Dataset], test_data: Output[Dataset], data_docs: Output[HTML],
                  metrics: Output[Metrics]):
    """Great Expectations gate on the train/validation/test splits; fails the run on bad data."""
    from pathlib import Path

    from components.validate_data.logic import validate_data as _validate
    from llmops.settings import get_settings
    from llmops.steplog import step_report

    outs = {"train": train_data, "validation": validation_data, "test": test_data}
    with step_report("validate_data", parent_run_id) as report:
        settings = get_settings()
        done = _validate(settings, settings.params(overrides), data_dir=data_dir,
                         out_paths={k: Path(a.path) for k, a in outs.items()}, report_path=Path(data_docs.path),
                         parent_run_id=parent_run_id)
        report.figures(rows=" / ".join(str(done.result.rows.get(k, 0)) for k in outs), expectations="passed")
    for name, artifact in outs.items():
        artifact.metadata["rows"] = done.result.rows.get(name, 0)
        artifact.metadata.update({k: v for k, v in done.hashes.items() if k.startswith(f"data.{name}.")})
        metrics.log_metric(f"rows_{name}", done.result.rows.get(name, 0))
    # which datasets the splits were merged from: train carries it to the adapter, register to the version
    train_data.metadata.update({k: v for k, v in done.hashes.items() if k.startswith("data.source")})
