"""The pipeline's first gate: the DVC-versioned splits must pass their Great Expectations suites (schema,
token lengths, duplicates, leakage across splits) before any compute is spent on training."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from llmops.data.validate import ValidationResult, validate_splits
from llmops.errors import DataError
from llmops.lineage import data_lineage, source_lineage
from llmops.params import Params
from llmops.settings import Settings
from llmops.tracking import step_run

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class ValidatedData:
    paths: dict[str, Path]
    hashes: dict[str, str]
    result: ValidationResult


def split_paths(settings: Settings, data_dir: str) -> dict[str, Path]:
    root = Path(data_dir)
    root = root if root.is_absolute() else settings.project_dir / root
    paths = {name: root / f"{name}.jsonl" for name in SPLITS}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(f"split files missing: {', '.join(missing)}", "run `dvc pull` or `dvc repro` (make setup)")
    return paths


def validate_data(settings: Settings, params: Params, *, data_dir: str, out_paths: dict[str, Path],
                  report_path: Path | None, parent_run_id: str | None = None) -> ValidatedData:
    """Validate the splits in `data_dir`, copy them to `out_paths` (the step's Dataset outputs) and log the
    verdict; raises DataError naming each failed expectation so nothing downstream runs."""
    import mlflow

    paths = split_paths(settings, data_dir)
    with step_run(settings, parent_run_id, "validate_data"):
        result = validate_splits(paths, settings, params, report_dir=settings.reports_dir / "validation")
        hashes = data_lineage(settings.project_dir, paths)  # the files validated, not what dvc.lock expects
        hashes |= source_lineage(settings.project_dir, paths["train"].parent,
                                 {name: hashes[f"data.{name}.md5"] for name in paths})
        mlflow.log_metrics({f"rows.{name}": float(n) for name, n in result.rows.items()})
        mlflow.set_tags({"validation.success": str(result.success)} | hashes)
        mlflow.log_dict(result.to_dict(), "validation.json")
        if result.report_html is not None:
            mlflow.log_artifact(str(result.report_html), "data_docs")
            if report_path is not None:
                report_path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(result.report_html, report_path)
        if not result.success:
            failed = "; ".join(f"{f.dataset}: {f.message}" for f in result.failures[:5])
            raise DataError(f"data validation failed ({len(result.failures)} expectation(s)): {failed}",
                            f"see the Data Docs report: {result.report_html}")
    for name, src in paths.items():
        dst = out_paths[name]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return ValidatedData(paths=paths, hashes=hashes, result=result)
