"""The sample corpus builds with no download, deterministically, and says real things about the stdlib."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmops.data.build import STDLIB_MODULES, build, build_base, collect_api, summarise_doc
from llmops.data.records import read_jsonl
from llmops.params import BuildParams

REPO = Path(__file__).resolve().parents[2]


def _md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def _locked_md5s() -> dict[str, str]:
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for o in lock["stages"]["build"]["outs"]}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmops.params import load_params

    out = tmp_path_factory.mktemp("sample")
    build(out, load_params(REPO / "params.yaml").data.build)
    return out


def test_fresh_build_matches_the_md5_in_dvc_lock(built: Path) -> None:
    locked = _locked_md5s()
    assert _md5(built / "base.jsonl") == locked["data/sample/base.jsonl"]
    assert _md5(built / "shifted.jsonl") == locked["data/sample/shifted.jsonl"]


def test_build_is_independent_of_hash_seed_and_process(built: Path, tmp_path: Path) -> None:
    """Another interpreter with another PYTHONHASHSEED writes the same bytes (the DVC stage's command)."""
    env = dict(os.environ, PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, "-m", "llmops.data.build", "--out-dir", str(tmp_path),
                    "--params", str(REPO / "params.yaml")], check=True, env=env, capture_output=True, cwd=REPO)
    for name in ("base.jsonl", "shifted.jsonl"):
        assert (tmp_path / name).read_bytes() == (built / name).read_bytes()


def test_base_slice_content(built: Path) -> None:
    from llmops.params import load_params

    params = load_params(REPO / "params.yaml").data.build
    df = read_jsonl(built / "base.jsonl")
    assert 2000 <= len(df) <= 8000  # "a few thousand"
    assert df["id"].is_unique
    per_module = collections.Counter(df["source"])
    assert max(per_module.values()) <= params.max_per_module
    assert len(per_module) >= 100
    assert set(per_module) <= {f"stdlib:{m}" for m in STDLIB_MODULES}
    rows = {(r.instruction, r.input): r.output for r in df.itertuples()}
    # answers really come from the objects they are about
    import json as json_module

    signature = next(v for k, v in rows.items() if "`heapq.heappush`" in k[0] and "ignature" in k[0])
    assert signature == "heapq.heappush(heap, item, /)"
    module_q = [(k, v) for k, v in rows.items() if re.search(r"module", k[0]) and v == "json"]
    assert module_q, "no 'which module provides ...' question answered with json"
    describe = rows.get(("What does `json.loads` do?", "")) or next(
        v for k, v in rows.items() if "`json.loads`" in k[0] and not k[1] and "ignature" not in k[0])
    assert describe.split()[0] in json_module.loads.__doc__
    assert (df["input"] != "").sum() > 100  # "identify" questions carry the description as input
    assert df["output"].str.len().max() <= 240
    assert not df.apply(lambda r: bool(re.search(r" at 0x[0-9a-f]+", r.output)), axis=1).any()


def test_shifted_slice_is_another_domain(built: Path) -> None:
    from llmops.params import load_params

    params = load_params(REPO / "params.yaml").data.build
    df = read_jsonl(built / "shifted.jsonl")
    assert len(df) == params.shifted_records
    assert df["id"].is_unique
    assert set(df["source"]) <= {"unicode:name", "unicode:char", "unicode:codepoint", "unicode:category",
                                 "unicode:html"}
    assert {"unicode:name", "unicode:codepoint"} <= set(df["source"])
    base_ids = set(read_jsonl(built / "base.jsonl")["id"])
    assert not base_ids & set(df["id"])
    rows = dict(zip(df["instruction"], df["output"], strict=True))
    import unicodedata

    for instruction, output in rows.items():
        m = re.fullmatch(r"What is the code point of (.)\?", instruction)
        if m:
            assert output == f"U+{ord(m.group(1)):04X}"
        m = re.fullmatch(r"What is the Unicode name of the character (.)\?", instruction)
        if m:
            assert output == unicodedata.name(m.group(1))


def test_introspection_ignores_the_callers_monkeypatches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Libraries patch the stdlib (pytest and logging replace warnings.showwarning); the data must not see it."""
    import warnings

    def patched_showwarning(*args: object, **kwargs: object) -> None:
        """Patched by a test."""

    monkeypatch.setattr(warnings, "showwarning", patched_showwarning)
    api, builtin_names = collect_api(("warnings",))
    show = next(o for o in api["warnings"] if o.name == "showwarning")
    assert show.summary == "Hook to write a warning to a file; replace if you like."
    assert "open" in builtin_names


def test_params_change_the_output(tmp_path: Path) -> None:
    small = build_base(BuildParams(seed=1, max_per_module=3, shifted_records=10), modules=("json", "heapq"))
    assert 0 < len(small) <= 6
    assert {r["source"] for r in small} == {"stdlib:json", "stdlib:heapq"}
    other = build_base(BuildParams(seed=2, max_per_module=3, shifted_records=10), modules=("json", "heapq"))
    assert [r["id"] for r in small] != [r["id"] for r in other]  # the seed picks which records survive the cap


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (None, None),
        ("Return the thing.\n\n    More detail here.", "Return the thing."),
        ("dumps(obj) -> bytes\n\nReturn the pickled representation of obj.",
         "Return the pickled representation of obj."),
        ("Point(x, y)", None),  # generated namedtuple/dataclass docs carry no description
        (">>> f(1)\n2", None),
        ("A " + "very " * 60 + "long first sentence. Second.", None),
        ("First sentence here. " + "Filler words go on. " * 20, "First sentence here."),
    ],
)
def test_summarise_doc(doc: str | None, expected: str | None) -> None:
    assert summarise_doc(doc) == expected


def test_main_refuses_a_missing_params_file(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "llmops.data.build", "--out-dir", str(tmp_path / "o"),
                           "--params", str(tmp_path / "missing.yaml")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "params file not found" in proc.stderr
    assert not (tmp_path / "o").exists()
