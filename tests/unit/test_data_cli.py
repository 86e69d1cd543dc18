"""`llmops data validate` as a user runs it: exit 0 good, 1 failed expectations (with rows), 2 unreadable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmops.data.records import read_jsonl, write_jsonl
from llmops.settings import Settings

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "data" / "sample" / "base.jsonl"
GOOD_LINE = '{"id": "r1", "instruction": "What is x?", "input": "", "output": "An x.", "source": "test"}\n'


def llmops(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="250")  # no wrapping of causes and paths in the captured output
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, check=False, timeout=300)


@pytest.fixture
def sample_records() -> list[dict]:
    if not BASE.is_file():
        pytest.fail("the DVC-tracked sample data is missing: run `dvc pull` (or `llmops data build`)")
    return read_jsonl(BASE).head(80).to_dict(orient="records")


def test_good_file_exits_0_with_json_and_summary(settings: Settings, tmp_path: Path,
                                                 sample_records: list[dict]) -> None:
    path = tmp_path / "good.jsonl"
    write_jsonl(sample_records, path)
    proc = llmops("data", "validate", str(path), "--json", "--report-dir", str(tmp_path / "docs"),
                  "--summary", str(tmp_path / "m" / "summary.json"))
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["success"] is True and payload["rows"] == {"good": 80}
    assert Path(payload["report_html"]).is_file()
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert summary == {"success": True, "rows": {"good": 80}, "expectations_evaluated":
                       payload["expectations_evaluated"], "failed": []}


def test_failed_expectations_exit_1_with_bad_rows_and_report(settings: Settings, tmp_path: Path,
                                                             sample_records: list[dict]) -> None:
    records = [dict(r) for r in sample_records]
    records[3]["id"] = records[4]["id"]
    records[7]["output"] = " "
    records[9]["output"] = "word " * 600
    path = tmp_path / "bad.jsonl"
    write_jsonl(records, path)
    proc = llmops("data", "validate", str(path), "--report-dir", str(tmp_path / "docs"))
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    assert "invalid" in err and "3 of" in err
    assert "Record ids are unique: 2 of 80 rows break it." in err
    assert "output is not empty or blank: 1 of 80 rows break it." in err
    assert "n_tokens" in err and "'record': 10" in err  # the bad row, 1-based, with its token count
    assert f"'id': '{records[4]['id']}'" in err
    docs = next(line for line in err.splitlines() if line.startswith("Data Docs: "))
    assert Path(docs.removeprefix("Data Docs: ")).is_file()


def test_leaking_splits_exit_1(settings: Settings, tmp_path: Path, sample_records: list[dict]) -> None:
    train, test = sample_records[:60], [*sample_records[60:], sample_records[0]]
    write_jsonl(train, tmp_path / "train.jsonl")
    write_jsonl(test, tmp_path / "test.jsonl")
    proc = llmops("data", "validate", str(tmp_path / "train.jsonl"), str(tmp_path / "test.jsonl"), "--splits",
                  "--no-docs", "--json")
    assert proc.returncode == 1
    payload = json.loads(proc.stdout)
    leaks = [f for f in payload["failures"] if f["dataset"] == "splits"]
    assert {f["column"] for f in leaks} == {"id_splits", "prompt_splits", None}
    # the copied record is also a near-duplicate across splits (llmops/data/dedup.py)
    assert {f["expectation"] for f in leaks if f["column"] is None} == {"no_near_duplicates_across_splits"}
    assert payload["report_html"] is None


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (None, "no such file"),
        (GOOD_LINE + "{oops\n", "line 2 is not valid JSON"),
        (GOOD_LINE.replace('"source"', '"origin"'), "missing column(s) source and unexpected column(s) origin"),
        ("", "file is empty"),
        (GOOD_LINE.encode() + b'{"id": "caf\xe9"}\n', "invalid UTF-8 at line 2"),
    ],
    ids=["missing-file", "non-json-line", "wrong-column", "empty-file", "invalid-utf8"],
)
def test_unreadable_input_exits_2_with_one_line_cause(settings: Settings, tmp_path: Path,
                                                      content: str | bytes | None, cause: str) -> None:
    path = tmp_path / "in.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    proc = llmops("data", "validate", str(path))
    assert proc.returncode == 2
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and cause in error[0]
    assert "Traceback" not in proc.stderr
    assert "fix:" in proc.stderr


HEAVY = ("torch", "transformers", "mlflow", "great_expectations", "dvc", "pandas", "ray", "kfp", "peft")
HELP_IMPORTS = """
import sys
from cli.main import app
try:
    app(["data", "--help"])
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
print("heavy:" + ",".join(m for m in {heavy!r} if m in sys.modules))
"""


def test_help_lists_commands_and_loads_no_heavy_library() -> None:
    """`--help` stays instant because it imports none of the heavy libraries: checked by module, not by a
    clock (no timed assertions in unit tests)."""
    proc = llmops("data", "--help")
    assert proc.returncode == 0
    for command in ("validate", "build", "add", "status"):
        assert command in proc.stdout
    done = subprocess.run([sys.executable, "-c", HELP_IMPORTS.format(heavy=HEAVY)], capture_output=True, text=True,
                          cwd=REPO, check=False, timeout=300, env=dict(os.environ, COLUMNS="250"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "heavy:", f"--help imported {done.stdout.splitlines()[-1]}"
