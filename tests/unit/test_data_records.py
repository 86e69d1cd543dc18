"""The JSONL reader turns every kind of bad file into a one-line DataError; the writer is byte-exact."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmops.data.records import COLUMNS, read_jsonl, write_jsonl
from llmops.data.text import group_key, record_id
from llmops.errors import DataError

GOOD = {"id": "r1", "instruction": "What does `json.dumps` do?", "input": "",
        "output": "Serialize ``obj`` to a JSON formatted ``str``.", "source": "stdlib:json"}


def _write(tmp_path: Path, text: str | bytes, name: str = "d.jsonl") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_write_is_byte_deterministic_and_round_trips(tmp_path: Path) -> None:
    rec = dict(GOOD, output="Größe → ∞")  # non-ASCII stays as UTF-8, not \u escapes
    shuffled = {k: rec[k] for k in reversed(COLUMNS)}  # key order of the input does not matter
    path = tmp_path / "out.jsonl"
    assert write_jsonl([shuffled, rec], path) == 2
    line = ('{"id": "r1", "instruction": "What does `json.dumps` do?", "input": "", '
            '"output": "Größe → ∞", "source": "stdlib:json"}\n')
    assert path.read_bytes() == (line * 2).encode("utf-8")
    df = read_jsonl(path)
    assert list(df.columns) == list(COLUMNS)
    assert df.iloc[0].to_dict() == rec
    write_jsonl(df, tmp_path / "again.jsonl")  # a DataFrame writes the same bytes
    assert (tmp_path / "again.jsonl").read_bytes() == path.read_bytes()
    assert not list(tmp_path.glob("*.tmp"))


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    write_jsonl([GOOD], path)
    path.write_text("\n" + path.read_text() + "\n\n")
    assert len(read_jsonl(path)) == 1


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("", "file is empty"),
        ("\n  \n", "file is empty"),
        ('{"id": "r1", "instruction": "x", "input": "", "output": "y", "source": "s"}\n{not json}\n',
         "line 2 is not valid JSON"),
        ('["a", "b"]\n', "line 1 is a JSON list, not an object"),
        ('{"id": "r1", "instruction": "x", "input": "", "source": "s"}\n', "line 1 has missing column(s) output"),
        ('{"id": "r1", "instruction": "x", "input": "", "output": "y", "source": "s", "extra": 1}\n',
         "line 1 has unexpected column(s) extra"),
        ('{"id": "r1", "prompt": "x", "input": "", "output": "y", "source": "s"}\n',
         "missing column(s) instruction and unexpected column(s) prompt"),
        ('{"id": 7, "instruction": "x", "input": "", "output": "y", "source": "s"}\n',
         "line 1 column 'id' is int 7, not a string"),
        ('{"id": "r1", "instruction": "x", "input": null, "output": "y", "source": "s"}\n',
         "column 'input' is NoneType None, not a string"),
        ('{"id": "r1", "instruction": "half \\ud83d emoji", "input": "", "output": "y", "source": "s"}\n',
         "line 1 column 'instruction' has an unpaired surrogate \\ud83d"),
    ],
)
def test_bad_content_raises_one_line_data_error(tmp_path: Path, content: str, needle: str) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    assert needle in info.value.cause
    assert "\n" not in info.value.cause and info.value.fix


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    good = b'{"id": "r1", "instruction": "x", "input": "", "output": "y", "source": "s"}\n'
    path = _write(tmp_path, good + good + b'{"id": "r3", "instruction": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"invalid UTF-8 at line 3"):
        read_jsonl(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="not a file"):
        read_jsonl(tmp_path)


def test_ids_and_group_keys() -> None:
    assert record_id(GOOD) == record_id(dict(GOOD, id="other"))  # the id is a hash of content, not of itself
    assert record_id(GOOD) != record_id(dict(GOOD, output="different"))
    assert len(record_id(GOOD)) == 16
    # near-identical prompts share a key; a different character does not
    assert group_key("What does `json.dumps` do?", "") == group_key("what does json.dumps do", " ")
    assert group_key("What is the code point of ‹?", "") != group_key("What is the code point of ›?", "")
