"""Validate datasets with Great Expectations 1.x: the gate in front of every training run.

The checks live as GX expectation-suite JSON in `data/expectations/` (reviewable, versioned with the
code); thresholds are `$PARAMETER`s filled from `data.limits` in params.yaml at run time, so changing a
limit never means editing a suite. Each call walks GX's own chain: an ephemeral, in-memory context
(nothing written into the repo) -> pandas data source -> dataframe asset -> whole-frame batch definition
-> suite -> validation definition -> checkpoint, then renders Data Docs HTML under the report directory.

Some checks need derived columns: `n_tokens` (the record's length in tokens of the base model's own
tokenizer, read with the `tokenizers` library so validation never imports torch) and, across splits,
how many splits each id and each normalised prompt occurs in (leakage).

Cost: importing GX takes ~3 s once per process; a context and its chain take milliseconds, so one is
built per call rather than cached (no state leaks between calls); validation and Data Docs dominate.
`ValidationResult.timings` says where each call's time went.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmops.data.records import COLUMNS, check_encodable, read_jsonl
from llmops.data.text import group_key
from llmops.errors import DataError, LlmopsError
from llmops.params import Params
from llmops.settings import Settings

RECORDS_SUITE = "records.json"
SPLITS_SUITE = "splits.json"
MAX_EXAMPLES = 5
_SITE = "llmops"
_EXAMPLE_CHARS = 160


@dataclass
class Failure:
    """One failed expectation, said so that a person can fix the data."""

    dataset: str  # file stem or split name ("splits" for cross-split checks)
    expectation: str  # GX expectation type
    column: str | None
    message: str  # the suite's description of what should hold, plus what was found
    unexpected_count: int | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)  # up to 5 bad rows/values


@dataclass
class ValidationResult:
    success: bool
    rows: dict[str, int]
    failures: list[Failure]
    report_html: Path | None
    expectations_evaluated: int = 0
    seconds: float = 0.0  # wall time of the whole call
    # where the time went: gx_import (0 once imported in this process), derive (token counts, leakage
    # frame), setup (context -> checkpoint), validate (checkpoint runs), data_docs (HTML rendering)
    timings: dict[str, float] = field(default_factory=dict)
    # near-duplicate pairs inside one dataset (llmops/data/dedup.py): reported, not a failure; across splits
    # they are the failure `no_near_duplicates_across_splits` (leakage)
    near_duplicates: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["report_html"] = str(self.report_html) if self.report_html else None
        return out

    def summary(self) -> dict[str, Any]:
        """Deterministic digest (no timings, no paths): the DVC `metrics` output of the validate stage."""
        return {
            "success": self.success,
            "rows": dict(sorted(self.rows.items())),
            "expectations_evaluated": self.expectations_evaluated,
            "failed": sorted(
                f"{f.dataset}:{f.expectation}" + (f"[{f.column}]" if f.column else "") for f in self.failures
            ),
        }


# --------------------------------------------------------------------------------------------------
# derived columns


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def tokenizer_file(settings: Settings, params: Params) -> Path:
    """tokenizer.json of the base model, whose token counts bound record lengths."""
    from llmops.modeling.base import base_model_path

    model_dir = base_model_path(settings, params)
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"no tokenizer.json in {model_dir}", "run `llmops model pull` to provision the base model")
    return path


def count_tokens(df: Any, tokenizer_path: Path) -> list[int]:
    """Tokens of each record's user message plus its answer, as the model sees them (no special tokens)."""
    from llmops.modeling.prompts import user_message

    texts = []
    for rec in df[["instruction", "input", "output"]].to_dict(orient="records"):
        rec = {k: v if isinstance(v, str) else "" for k, v in rec.items()}  # nulls: their own expectation
        texts.append(f"{user_message(rec)}\n{rec['output']}")
    encodings = _load_tokenizer(str(tokenizer_path)).encode_batch(texts, add_special_tokens=False)
    return [len(e.ids) for e in encodings]


def records_frame(df: Any, tokenizer_path: Path) -> Any:
    """The frame the records suite sees: the record columns plus `n_tokens` (when the text columns exist)."""
    frame = df.copy()
    if all(c in frame.columns for c in ("instruction", "input", "output")):
        frame["n_tokens"] = count_tokens(frame, tokenizer_path)
    return frame


def leakage_frame(frames: Mapping[str, Any]) -> Any:
    """One row per (split, record) with how many splits its id and its normalised prompt occur in."""
    import pandas as pd

    parts = []
    for name, df in frames.items():
        keys = [group_key(str(i), str(x)) for i, x in zip(df["instruction"], df["input"], strict=True)]
        parts.append(pd.DataFrame({"split": name, "id": df["id"].astype(str).tolist(), "group_key": keys}))
    frame = pd.concat(parts, ignore_index=True)
    frame["id_splits"] = frame.groupby("id")["split"].transform("nunique").astype(int)
    frame["prompt_splits"] = frame.groupby("group_key")["split"].transform("nunique").astype(int)
    return frame


# --------------------------------------------------------------------------------------------------
# GX plumbing


def expectations_dir(settings: Settings) -> Path:
    return settings.project_dir / "data" / "expectations"


def load_suite_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"expectation suite not found: {path}", "restore data/expectations/ from git")
    try:
        suite = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"expectation suite {path} is not valid JSON ({exc.msg}, line {exc.lineno})",
                        "restore it from git") from None
    if not isinstance(suite, dict) or not suite.get("name") or not isinstance(suite.get("expectations"), list):
        raise DataError(f"expectation suite {path} needs a name and a list of expectations",
                        "restore it from git")
    return suite


def _build_suite(raw: dict[str, Any], path: Path) -> Any:
    """An ExpectationSuite from our JSON; GX silently drops invalid expectations, so refuse them here."""
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.exceptions import GreatExpectationsError

    suite = ExpectationSuite(name=raw["name"], meta=raw.get("meta"))
    for i, exp in enumerate(raw["expectations"]):
        try:
            suite.expectations.append(suite._process_expectation(dict(exp)))
        except (GreatExpectationsError, TypeError, ValueError, KeyError) as exc:
            raise DataError(f"expectation #{i + 1} in {path} is invalid: {exc}", "fix the suite JSON") from None
    return suite


def _context(site_dir: Path | None) -> Any:
    """A fresh in-memory GX context, analytics and progress bars off, one Data Docs site at `site_dir`."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if site_dir is not None:
        sites[_SITE] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(site_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites=sites,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(project_config=config, mode="ephemeral")


@dataclass
class _Run:
    dataset: str
    frame: Any
    suite_path: Path
    index_columns: list[str]


def _examples(run: _Run, result: dict[str, Any], column: str | None, columns: list[str]) -> list[dict]:
    """Up to MAX_EXAMPLES bad rows: 1-based record number, the index columns and the offending values."""
    out: list[dict[str, Any]] = []
    index_list = result.get("partial_unexpected_index_list") or []
    frame = run.frame
    for item in index_list[:MAX_EXAMPLES]:
        pos = item if isinstance(item, int) else None
        if pos is None and isinstance(item, dict):
            pos = item.get("_row")
        example: dict[str, Any] = {}
        if isinstance(pos, int) and 0 <= pos < len(frame):
            example["record"] = pos + 1
            for col in [*run.index_columns, *(c for c in columns if c not in run.index_columns)]:
                if col in frame.columns:
                    value = frame.iloc[pos][col]
                    if isinstance(value, str) and len(value) > _EXAMPLE_CHARS:
                        value = value[: _EXAMPLE_CHARS - 3] + "..."
                    example[col] = value.item() if hasattr(value, "item") else value
        out.append(example)
    if not out:
        values = result.get("partial_unexpected_list")
        if values:
            out = [{column or "value": v} for v in values[:MAX_EXAMPLES]]
        elif "observed_value" in result:
            out = [{"observed": result["observed_value"]}]
    return out


def _bounds(kwargs: dict[str, Any], parameters: Mapping[str, Any]) -> str:
    """' (allowed: 3 to 384)' for an expectation with min/max values, $PARAMETERs resolved."""
    def value(v: Any) -> Any:
        v = parameters.get(v["$PARAMETER"]) if isinstance(v, dict) and "$PARAMETER" in v else v
        return int(v) if isinstance(v, float) and v.is_integer() else v  # GX hands bounds back as floats

    lo, hi = value(kwargs.get("min_value")), value(kwargs.get("max_value"))
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f" (allowed: at least {lo})"
    if lo is None:
        return f" (allowed: at most {hi})"
    return f" (allowed: {lo} to {hi})"


def _failure(run: _Run, res: Any, parameters: Mapping[str, Any]) -> Failure:
    cfg = res.expectation_config
    kwargs = dict(cfg.kwargs)
    column = kwargs.get("column")
    columns = kwargs.get("column_list") or ([column] if column else [])
    result = dict(res.result or {})
    described = cfg.description or cfg.type
    exc = (res.exception_info or {}) if isinstance(res.exception_info, dict) else {}
    if exc.get("raised_exception"):
        found = f"could not be evaluated: {str(exc.get('exception_message', '')).splitlines()[0][:200]}"
    elif result.get("unexpected_count") is not None:
        n, total = result["unexpected_count"], result.get("element_count")
        found = f"{n} of {total} rows break it" if total is not None else f"{n} rows break it"
    elif "observed_value" in result:
        found = f"observed {result['observed_value']!r}"
    else:
        found = "failed"
    return Failure(
        dataset=run.dataset,
        expectation=cfg.type,
        column=column,
        message=f"{described.rstrip('.')}{_bounds(kwargs, parameters)}: {found}.",
        unexpected_count=result.get("unexpected_count"),
        examples=_examples(run, result, column, columns),
    )


def _validate(runs: list[_Run], params: Params, report_dir: Path | None,
              timings: dict[str, float]) -> ValidationResult:
    """Run each frame through its suite with one checkpoint per frame; render Data Docs once at the end."""
    t0 = time.perf_counter()
    import great_expectations as gx

    timings["gx_import"] = time.perf_counter() - t0
    t_setup = time.perf_counter()
    spent_running = 0.0
    site_dir = report_dir
    if site_dir is not None:
        site_dir.mkdir(parents=True, exist_ok=True)
    context = _context(site_dir)
    source = context.data_sources.add_pandas("llmops")
    limits = params.data.limits
    expectation_parameters = {
        "min_rows": limits.min_rows, "min_tokens": limits.min_tokens, "max_tokens": limits.max_tokens,
    }
    suites: dict[Path, Any] = {}
    failures: list[Failure] = []
    evaluated = 0
    result_ids = []
    for i, run in enumerate(runs):
        if run.suite_path not in suites:
            suites[run.suite_path] = context.suites.add(_build_suite(load_suite_json(run.suite_path),
                                                                     run.suite_path))
        asset = source.add_dataframe_asset(f"{i:02d}-{run.dataset}")
        batch = asset.add_batch_definition_whole_dataframe("whole")
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{i:02d}-{run.dataset}", data=batch, suite=suites[run.suite_path])
        )
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"{i:02d}-{run.dataset}",
            validation_definitions=[definition],
            actions=[],
            # SUMMARY keeps up to 20 bad rows (by position) per expectation: cheap and enough for examples.
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20},
        ))
        frame = run.frame.reset_index(drop=True)
        t_run = time.perf_counter()
        checkpoint_result = checkpoint.run(
            batch_parameters={"dataframe": frame}, expectation_parameters=expectation_parameters
        )
        spent_running += time.perf_counter() - t_run
        for result_id, suite_result in checkpoint_result.run_results.items():
            result_ids.append(result_id)
            for res in suite_result.results:
                evaluated += 1
                if not res.success:
                    failures.append(_failure(run, res, expectation_parameters))
    timings["validate"] = spent_running
    timings["setup"] = time.perf_counter() - t_setup - spent_running
    report_html = None
    t_docs = time.perf_counter()
    if site_dir is not None:
        context.build_data_docs(site_names=[_SITE])
        if len(result_ids) == 1:
            urls = context.get_docs_sites_urls(resource_identifier=result_ids[0], site_names=[_SITE])
            report_html = _url_to_path(urls[0]["site_url"]) if urls else None
        if report_html is None or not report_html.is_file():
            report_html = site_dir / "index.html"
    timings["data_docs"] = time.perf_counter() - t_docs
    return ValidationResult(
        success=not failures,
        rows={run.dataset: len(run.frame) for run in runs if run.suite_path.name == RECORDS_SUITE},
        failures=failures,
        report_html=report_html,
        expectations_evaluated=evaluated,
        timings={k: round(v, 3) for k, v in timings.items()},
    )


def _url_to_path(url: str) -> Path:
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(url).path))


def _report_dir(settings: Settings, report_dir: Path | None, data_docs: bool) -> Path | None:
    if not data_docs:
        return None
    return Path(report_dir) if report_dir is not None else settings.reports_dir / "data_docs"


def validate_frames(frames: Mapping[str, Any], settings: Settings, params: Params,
                    report_dir: Path | None = None, leakage: bool = False,
                    data_docs: bool = True) -> ValidationResult:
    """Validate already-loaded record DataFrames (each with the records suite; across them for leakage)."""
    t0 = time.perf_counter()
    for name, df in frames.items():
        check_encodable(df, name)  # GX and pandas hashing crash on lone surrogates: refuse them up front
    tok = tokenizer_file(settings, params)
    suites = expectations_dir(settings)
    runs = [_Run(name, records_frame(df, tok), suites / RECORDS_SUITE, ["id"]) for name, df in frames.items()]
    if leakage:
        usable = {n: df for n, df in frames.items() if {"id", "instruction", "input"} <= set(df.columns)}
        runs.append(_Run("splits", leakage_frame(usable), suites / SPLITS_SUITE, ["split", "id"]))
    timings = {"derive": time.perf_counter() - t0}
    try:
        result = _validate(runs, params, _report_dir(settings, report_dir, data_docs), timings)
    except LlmopsError:
        raise
    except OSError as exc:
        raise DataError(f"could not write the validation report: {exc}", "check --report-dir") from None
    _check_near_duplicates(frames, params, result, leakage)
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def _check_near_duplicates(frames: Mapping[str, Any], params: Params, result: ValidationResult,
                           leakage: bool) -> None:
    """MinHash near-duplicates (params data.dedup): inside a dataset reported, across splits a failure."""
    from llmops.data.dedup import leakage_message, near_duplicates

    t0 = time.perf_counter()
    usable = {n: df for n, df in frames.items() if {"instruction", "input", "output"} <= set(df.columns)}
    pairs = near_duplicates(usable, params.data.dedup) if usable else []
    result.near_duplicates = [p.to_dict() for p in pairs if p.a == p.b]
    across = [p for p in pairs if p.a != p.b]
    if leakage and across:
        cause, fix = leakage_message(across, params.data.dedup)
        result.failures.append(Failure("splits", "no_near_duplicates_across_splits", None, f"{cause}. Fix: {fix}",
                                       len(across), [p.to_dict() for p in across[:MAX_EXAMPLES]]))
        result.success = False
    result.timings["derive"] = round(result.timings.get("derive", 0.0) + time.perf_counter() - t0, 3)


def validate_file(path: Path, settings: Settings, params: Params, report_dir: Path | None = None,
                  data_docs: bool = True) -> ValidationResult:
    """Validate one JSONL dataset; unreadable input raises DataError, failed expectations do not."""
    path = Path(path)
    return validate_frames({path.stem: read_jsonl(path)}, settings, params, report_dir, data_docs=data_docs)


def validate_splits(paths: Mapping[str, Path], settings: Settings, params: Params,
                    report_dir: Path | None = None, data_docs: bool = True) -> ValidationResult:
    """Validate each split with the records suite, plus no id or prompt shared between splits (leakage)."""
    if len(paths) < 2:
        raise DataError(f"--splits needs at least two split files, got {len(paths)}",
                        "pass e.g. data/splits/train.jsonl data/splits/validation.jsonl data/splits/test.jsonl")
    frames = {name: read_jsonl(p) for name, p in paths.items()}
    return validate_frames(frames, settings, params, report_dir, leakage=True, data_docs=data_docs)


def validate_with_suite(frames: Mapping[str, Any], suite_file: str, settings: Settings, params: Params, *,
                        index_columns: tuple[str, ...] = (), report_dir: Path | None = None,
                        data_docs: bool = True) -> ValidationResult:
    """Validate frames the caller derived (e.g. preference pairs with their token counts) with another suite of
    data/expectations/; the same $PARAMETERs (data.limits) and the same failure reports as the records suite."""
    t0 = time.perf_counter()
    for name, df in frames.items():
        check_encodable(df, name)
    suite = expectations_dir(settings) / suite_file
    runs = [_Run(name, df, suite, list(index_columns)) for name, df in frames.items()]
    try:
        result = _validate(runs, params, _report_dir(settings, report_dir, data_docs), {})
    except OSError as exc:
        raise DataError(f"could not write the validation report: {exc}", "check --report-dir") from None
    result.rows = {name: len(df) for name, df in frames.items()}
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


__all__ = [
    "COLUMNS",
    "Failure",
    "ValidationResult",
    "validate_file",
    "validate_frames",
    "validate_splits",
    "validate_with_suite",
]
