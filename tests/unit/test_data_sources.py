"""data.sources: merge + split is deterministic, leaks no prompt across splits, lets the last source own a prompt,
and the sources it read end up in lineage tags (verified against the split files actually read)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmops.data.records import read_jsonl, write_jsonl
from llmops.data.sources import MANIFEST, check_stage_deps, merge_and_split, user_dataset_splits
from llmops.data.split import SPLITS, split_file
from llmops.data.splits_manifest import read_manifest
from llmops.data.text import group_key
from llmops.errors import DataError
from llmops.lineage import source_lineage
from llmops.modeling.hashing import file_md5
from llmops.params import SourceParams
from llmops.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _records(n: int, prefix: str, answer: str = "Answer") -> list[dict[str, str]]:
    return [{"id": f"{prefix}{i}", "instruction": f"What is item {i}?", "input": "", "output": f"{answer} {i}.",
             "source": prefix} for i in range(n)]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project with a sample file, a user folder (two datasets) and an empty feedback folder."""
    write_jsonl(_records(600, "s"), tmp_path / "data/sample/base.jsonl")
    # user/a: 100 prompts the sample has, in another spelling (case, punctuation), with another answer
    variants = [dict(r, id=f"a{i}", instruction=r["instruction"].upper().rstrip("?"), output=f"Better {i}.",
                     source="a") for i, r in enumerate(_records(100, "s"))]
    write_jsonl(variants, tmp_path / "data/user/a.jsonl")
    # user/b: 200 new prompts, one exact duplicate row of its own
    fresh = [dict(r, instruction=f"Define thing {i}.") for i, r in enumerate(_records(200, "b"))]
    write_jsonl([*fresh, fresh[0]], tmp_path / "data/user/b.jsonl")
    (tmp_path / "data/feedback").mkdir(parents=True)
    return tmp_path


SOURCES = [SourceParams(name="sample", path="data/sample/base.jsonl"), SourceParams(name="user", path="data/user"),
           SourceParams(name="feedback", path="data/feedback")]


def _params(settings: Settings):
    return settings.params()


def test_merge_split_is_deterministic_and_leaks_no_prompt(project: Path, settings: Settings) -> None:
    params = _params(settings)
    first = merge_and_split(project, params, project / "out1", SOURCES)
    second = merge_and_split(project, params, project / "out2", SOURCES)
    for name in (*(f"{s}.jsonl" for s in SPLITS), MANIFEST):
        assert (project / "out1" / name).read_bytes() == (project / "out2" / name).read_bytes()
    assert first == second

    parts = {s: read_jsonl(project / "out1" / f"{s}.jsonl") for s in SPLITS}
    where: dict[str, set[str]] = {}
    for split, df in parts.items():
        for ins, inp in zip(df["instruction"], df["input"], strict=True):
            where.setdefault(group_key(ins, inp), set()).add(split)
    assert all(len(s) == 1 for s in where.values())  # no normalised prompt in two splits
    # user/a owns the 100 prompts it shares with the sample: only its answers remain for them
    merged = [r for df in parts.values() for r in df.to_dict(orient="records")]
    for i in range(100):
        owners = {r["source"] for r in merged if group_key(r["instruction"], r["input"]) == group_key(
            f"What is item {i}?", "")}
        assert owners == {"a"}
    assert len(merged) == 600 - 100 + 100 + 200  # b's exact duplicate row dropped
    entries = {s["entry"]: s for s in first["sources"]}
    assert list(entries) == ["sample", "user/a", "user/b"]  # declared order, folder files by name
    assert entries["sample"]["kept"] == 500 and entries["user/b"]["rows"] == 201
    assert first["exact_duplicates_dropped"] == 1 and first["replaced_by_a_later_source"] == 100
    assert all(first["splits"][s]["md5"] == file_md5(project / "out1" / f"{s}.jsonl") for s in SPLITS)


def test_adding_a_dataset_moves_no_record_between_splits(project: Path, settings: Settings) -> None:
    params = _params(settings)
    merge_and_split(project, params, project / "before", SOURCES[:1])
    merge_and_split(project, params, project / "after", SOURCES)
    split_of = {}
    for s in SPLITS:
        for r in read_jsonl(project / "after" / f"{s}.jsonl").to_dict(orient="records"):
            split_of[r["id"]] = s
    for s in SPLITS:
        for r in read_jsonl(project / "before" / f"{s}.jsonl").to_dict(orient="records"):
            if r["id"] in split_of:  # still owned by the sample
                assert split_of[r["id"]] == s


def test_sample_alone_gives_the_split_stage_bytes(settings: Settings, tmp_path: Path) -> None:
    params = _params(settings)
    manifest = merge_and_split(REPO, params, tmp_path / "merged", params.data.sources[:1])
    split_file(REPO / "data/sample/base.jsonl", tmp_path / "plain", params.data.split)
    for s in SPLITS:
        assert (tmp_path / "merged" / f"{s}.jsonl").read_bytes() == (tmp_path / "plain" / f"{s}.jsonl").read_bytes()
    assert manifest["sources"][0]["md5"] == file_md5(REPO / "data/sample/base.jsonl")


def test_checked_in_manifest_describes_the_tracked_splits() -> None:
    manifest = read_manifest(REPO / "data/splits")
    assert manifest is not None
    assert manifest["sources"][0]["entry"] == "sample"
    for s in SPLITS:
        assert manifest["splits"][s]["md5"] == file_md5(REPO / "data/splits" / f"{s}.jsonl")


def test_sources_are_named_in_lineage_and_checked_against_the_splits(project: Path, settings: Settings) -> None:
    out = project / "splits"
    merge_and_split(project, _params(settings), out, SOURCES)
    md5s = {s: file_md5(out / f"{s}.jsonl") for s in SPLITS}
    tags = source_lineage(project, out, md5s)
    assert tags["data.sources"] == ",".join(f"{e}@{file_md5(project / p)}" for e, p in [
        ("sample", "data/sample/base.jsonl"), ("user/a", "data/user/a.jsonl"), ("user/b", "data/user/b.jsonl")])
    assert tags["data.source.user/b.rows"] == "200/201"
    assert tags["data.source.user/a.dvc"] == "untracked"  # no .dvc file in this project
    # the same bytes tracked by a .dvc file: named with its path
    md5 = file_md5(project / "data/user/a.jsonl")
    (project / "data/user/a.jsonl.dvc").write_text(f"outs:\n- md5: {md5}\n  path: a.jsonl\n")
    assert source_lineage(project, out, md5s)["data.source.user/a.dvc"] == f"data/user/a.jsonl@{md5}"
    # an edited split: the manifest no longer describes it, so no source is claimed
    rows = (out / "train.jsonl").read_text().splitlines()
    (out / "train.jsonl").write_text("\n".join(rows[:-1]) + "\n")
    edited = source_lineage(project, out, {**md5s, "train": file_md5(out / "train.jsonl")})
    assert edited == {"data.sources": "unknown: the splits differ from those sources.json describes"}
    assert source_lineage(project, project / "data", md5s)["data.sources"].startswith("unknown: no sources.json")


def test_missing_sources_and_untracked_sources_are_errors(project: Path, settings: Settings) -> None:
    with pytest.raises(DataError, match="does not exist"):
        merge_and_split(project, _params(settings), project / "x", [SourceParams(name="gone", path="data/nope")])
    with pytest.raises(DataError, match="more than once"):
        merge_and_split(project, _params(settings), project / "x", [SOURCES[0], SOURCES[0]])
    with pytest.raises(DataError, match="no dataset at all"):
        merge_and_split(project, _params(settings), project / "x", [SOURCES[2]])
    check_stage_deps(REPO, settings.params().data.sources)  # the project's own dvc.yaml covers its sources
    with pytest.raises(DataError, match="not a dependency of the `split` stage"):
        check_stage_deps(REPO, [SourceParams(name="elsewhere", path="data/elsewhere")])


def test_user_dataset_splits_names_the_dataset(settings: Settings, tmp_path: Path, monkeypatch) -> None:
    write_jsonl(_records(700, "u"), tmp_path / "data/user/mine.jsonl")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    local = settings.model_copy(update={"project_dir": tmp_path})
    out = user_dataset_splits(local, local.params(), ["mine"])
    assert out.parent == local.state_dir / "datasets"
    manifest = json.loads((out / MANIFEST).read_text())
    assert [s["entry"] for s in manifest["sources"]] == ["user/mine"]
    assert manifest["sources"][0]["path"] == "data/user/mine.jsonl"
    assert sum(s["rows"] for s in manifest["splits"].values()) == 700
    assert user_dataset_splits(local, local.params(), ["mine"]) == out  # same data, same folder
    with pytest.raises(DataError, match=r"no dataset named 'other'.*added so far: mine"):
        user_dataset_splits(local, local.params(), ["other"])


def test_run_finetune_dataset_errors_name_the_fix(settings: Settings) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    missing = CliRunner().invoke(app, ["run", "finetune", "--dataset", "no-such-dataset"])
    assert missing.exit_code == 2 and "no dataset named 'no-such-dataset'" in missing.output
    assert "llmops data add" in missing.output
    both = CliRunner().invoke(app, ["run", "finetune", "--dataset", "x", "--data-dir", "elsewhere"])
    assert both.exit_code == 2 and "--dataset and --data-dir both name the training data" in both.output
