"""Great Expectations validation (real GX, real base tokenizer): good data passes, each defect fails alone."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from llmops.data.records import read_jsonl, write_jsonl
from llmops.data.validate import validate_file, validate_frames, validate_splits
from llmops.errors import DataError
from llmops.settings import Settings

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "data" / "sample" / "base.jsonl"
SPLITS = {n: REPO / "data" / "splits" / f"{n}.jsonl" for n in ("train", "validation", "test")}


@pytest.fixture(scope="module", autouse=True)
def shipped_data() -> None:
    if not BASE.is_file() or not all(p.is_file() for p in SPLITS.values()):
        pytest.fail("the DVC-tracked sample data is missing: run `dvc pull` (or `llmops data build`)")


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    """80 real records (above data.limits.min_rows) from the shipped sample."""
    return read_jsonl(BASE).head(80).reset_index(drop=True)


def _failed(result) -> dict[str, object]:
    return {(f.expectation, f.column): f for f in result.failures}


def test_shipped_data_passes_with_data_docs(settings: Settings, tmp_path: Path) -> None:
    params = settings.params()
    result = validate_file(BASE, settings, params, report_dir=tmp_path / "docs")
    assert result.success, [f.message for f in result.failures]
    assert result.rows == {"base": len(read_jsonl(BASE))}
    assert result.expectations_evaluated >= 20
    assert set(result.timings) == {"gx_import", "derive", "setup", "validate", "data_docs"}
    assert sum(result.timings.values()) <= result.seconds + 0.01
    assert result.report_html is not None and result.report_html.is_file()
    assert tmp_path / "docs" in result.report_html.parents
    html = result.report_html.read_text()
    assert "llmops_records" in html and "n_tokens" in html
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["success"] is True and payload["report_html"] == str(result.report_html)


def test_shipped_splits_pass_and_have_no_leakage(settings: Settings) -> None:
    result = validate_splits(SPLITS, settings, settings.params(), data_docs=False)
    assert result.success, [f.message for f in result.failures]
    assert set(result.rows) == {"train", "validation", "test"}
    assert result.report_html is None


def test_default_report_dir_is_in_the_state_dir(settings: Settings, sample: pd.DataFrame) -> None:
    result = validate_frames({"sample": sample}, settings, settings.params())
    assert result.success
    assert settings.reports_dir in result.report_html.parents


@pytest.mark.parametrize(
    ("corrupt", "expectation", "column", "words"),
    [
        (lambda d: d.assign(id=d["id"].where(d.index != 3, d.loc[4, "id"])),
         "expect_column_values_to_be_unique", "id", "ids are unique"),
        (lambda d: d.assign(output=d["output"].where(d.index != 7, "   ")),
         "expect_column_values_to_match_regex", "output", "not empty"),
        (lambda d: d.assign(output=d["output"].where(d.index != 9, "token " * 600)),
         "expect_column_values_to_be_between", "n_tokens", "tokens"),
        (lambda d: d.assign(instruction=d["instruction"].where(d.index != 2, "bell \x07 here")),
         "expect_column_values_to_not_match_regex", "instruction", "control characters"),
        (lambda d: pd.concat([d, d.iloc[[11]].assign(id="another-id")], ignore_index=True),
         "expect_compound_columns_to_be_unique", None, "exact duplicate"),
        (lambda d: d.head(10), "expect_table_row_count_to_be_between", None, "at least"),
        (lambda d: d.assign(extra="x"), "expect_table_columns_to_match_set", None, "exactly the record columns"),
        (lambda d: d.assign(source=d["source"].where(d.index != 1, None)),
         "expect_column_values_to_not_be_null", "source", "has a value for source"),
    ],
    ids=["duplicate-ids", "empty-output", "too-many-tokens", "control-char",
         "duplicate-record", "too-few-rows", "extra-column", "null"],
)
def test_each_defect_fails_with_its_own_message(settings: Settings, sample: pd.DataFrame, corrupt, expectation,
                                                column, words) -> None:
    result = validate_frames({"bad": corrupt(sample.copy())}, settings, settings.params(), data_docs=False)
    assert not result.success
    failed = _failed(result)
    assert (expectation, column) in failed, sorted(failed)
    failure = failed[(expectation, column)]
    assert words in failure.message
    assert failure.dataset == "bad"
    assert 1 <= len(failure.examples) <= 5
    if expectation not in {"expect_table_row_count_to_be_between", "expect_table_columns_to_match_set"}:
        assert all("record" in ex for ex in failure.examples)  # points at the bad rows
    summary = result.summary()
    assert summary["success"] is False and any(expectation in name for name in summary["failed"])


def test_token_bounds_come_from_params(settings: Settings, sample: pd.DataFrame) -> None:
    strict = settings.params(["data.limits.max_tokens=12"])
    result = validate_frames({"sample": sample}, settings, strict, data_docs=False)
    failure = _failed(result)[("expect_column_values_to_be_between", "n_tokens")]
    assert failure.unexpected_count and failure.unexpected_count > 0
    assert all(ex["n_tokens"] > 12 for ex in failure.examples)
    assert f"(allowed: {strict.data.limits.min_tokens} to 12)" in failure.message


def test_leakage_across_splits_is_caught(settings: Settings, sample: pd.DataFrame, tmp_path: Path) -> None:
    train, test = sample.iloc[:60].copy(), sample.iloc[60:].copy()
    # the same prompt in both splits (case/punctuation changed, new id) and one record copied verbatim
    near = train.iloc[[0]].assign(id="near-copy", instruction=train.iloc[0]["instruction"].upper() + " ")
    test = pd.concat([test, near, train.iloc[[1]]], ignore_index=True)
    paths = {"train": tmp_path / "train.jsonl", "test": tmp_path / "test.jsonl"}
    write_jsonl(train, paths["train"])
    write_jsonl(test, paths["test"])
    result = validate_splits(paths, settings, settings.params().model_copy(), data_docs=False)
    failed = _failed(result)
    ids = failed[("expect_column_values_to_be_in_set", "id_splits")]
    prompts = failed[("expect_column_values_to_be_in_set", "prompt_splits")]
    assert ids.dataset == "splits" and "more than one split" in ids.message
    assert {ex["id"] for ex in ids.examples} == {train.iloc[1]["id"]}
    assert {"near-copy", train.iloc[0]["id"]} <= {ex["id"] for ex in prompts.examples}
    assert {ex["split"] for ex in prompts.examples} == {"train", "test"}


def test_unreadable_input_raises_data_error(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        validate_file(tmp_path / "missing.jsonl", settings, settings.params())
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "\xff"}\n')
    with pytest.raises(DataError, match="invalid UTF-8 at line 1"):
        validate_file(bad, settings, settings.params())
    surrogate = pd.DataFrame([{"id": "a", "instruction": "lone \ud800", "input": "", "output": "b", "source": "s"}])
    with pytest.raises(DataError, match="record 1 column 'instruction' has an unpaired surrogate"):
        validate_frames({"mem": surrogate}, settings, settings.params(), data_docs=False)
    with pytest.raises(DataError, match="at least two split files"):
        validate_splits({"train": BASE}, settings, settings.params())


def test_summary_is_deterministic(settings: Settings, sample: pd.DataFrame) -> None:
    a = validate_frames({"s": sample}, settings, settings.params(), data_docs=False)
    b = validate_frames({"s": sample}, settings, settings.params(), data_docs=False)
    assert a.summary() == b.summary()
    assert set(a.summary()) == {"success", "rows", "expectations_evaluated", "failed"}
