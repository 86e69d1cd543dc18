"""A person's erasure reaches training: once `llmops log erase` marks an exported dataset version, the merge that
builds the splits and every training run (train_adapter, before any model work) refuse it, naming the version,
the erasure and the fix; after a re-export without their records and a re-split, training goes ahead.

No model is needed: the check runs before train_adapter looks for the base model, so "goes ahead" shows as the
next check's error (no checkpoint at the given path)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from llmops.data.erasures import check_training_data, read_erasures, source_md5s_from_tags
from llmops.data.sources import merge_and_split
from llmops.errors import DataError, ModelError
from llmops.modeling.hashing import file_md5
from llmops.settings import Settings
from monitoring.inference_log import open_log
from monitoring.inference_log.export import export_feedback
from monitoring.review.queue import ReviewQueue
from tests.unit.test_log_privacy import _log, project, rec  # noqa: F401 (project: the fixture)

PROMPTS = {"r0": ("How do I sort a list in reverse?", "sess-a"), "r1": ("How do I read an env var?", "sess-b"),
           "r2": ("How do I join two paths?", "sess-c"), "r3": ("How do I copy a file?", "sess-d")}


def _seed(settings: Settings) -> None:
    with open_log(settings) as ilog:
        _log(ilog, [rec(rid, prompt, "a wrong answer", session=s) for rid, (prompt, s) in PROMPTS.items()])
        for rid, (prompt, _) in PROMPTS.items():
            ilog.feedback(rid, -1, f"The right answer to: {prompt}")
        queue = ReviewQueue(ilog.store)
        for item in queue.items():
            queue.decide(item.id, "accept", reviewer="test")


def _export(settings: Settings, out: Path, kind: str = "sft") -> None:
    with open_log(settings, start_writer=False) as ilog:
        export_feedback(ilog, settings, settings.params(), since=time.time() - 3600, out=out, data_docs=False,
                        kind=kind, name=out.stem)


def _train(settings: Settings, splits: Path, tmp: Path, params=None) -> None:
    from components.train.logic import train_adapter

    train_adapter(settings, params or settings.params(), train_path=splits / "train.jsonl",
                  validation_path=splits / "validation.jsonl", base_model_dir=tmp / "no-model", out_dir=tmp / "out")


def _goes_ahead(settings: Settings, splits: Path, tmp: Path) -> None:
    with pytest.raises(ModelError, match="no model checkpoint"):  # past the erasure check: the model is next
        _train(settings, splits, tmp)


def test_training_refuses_an_erased_export_until_it_is_exported_again(project: Settings,  # noqa: F811
                                                                      tmp_path: Path) -> None:
    settings = project
    root = settings.project_dir
    _seed(settings)
    first = root / "data/feedback/fb-1.jsonl"
    _export(settings, first)
    splits = root / "data/splits"
    merge_and_split(root, settings.params(), splits)
    _goes_ahead(settings, splits, tmp_path)  # nothing erased yet

    erased = CliRunner().invoke(app, ["log", "erase", "--session", "sess-a", "--json"])
    assert erased.exit_code == 0, erased.output
    marked = json.loads(erased.output)["datasets"]
    assert [(m["dataset"], m["md5"], len(m["record_ids"])) for m in marked] == [("fb-1", file_md5(first), 1)]

    with pytest.raises(DataError) as refused:
        _train(settings, splits, tmp_path)
    cause, fix = refused.value.cause, refused.value.fix or ""
    assert "feedback/fb-1" in cause and "llmops log erase" in cause and "r0" in cause
    assert "delete that version" in fix and "dvc repro split" in fix and "erasures.jsonl" in fix
    with pytest.raises(DataError, match="the merge reads feedback/fb-1"):  # the splits cannot be rebuilt with it
        merge_and_split(root, settings.params(), splits)

    # the pipeline's artifacts (no sources.json beside them): the source md5s validate_data attached
    alone = tmp_path / "artifact"
    alone.mkdir()
    for name in ("train", "validation"):
        shutil.copy2(splits / f"{name}.jsonl", alone / f"{name}.jsonl")
    files = {"train": alone / "train.jsonl", "validation": alone / "validation.jsonl"}
    tags = {"data.source.sample.md5": file_md5(root / "data/sample/base.jsonl"),
            "data.source.feedback/fb-1.md5": file_md5(first), "data.sources": "..."}
    with pytest.raises(DataError, match="this training run reads feedback/fb-1"):
        check_training_data(settings.state_dir, root, files, source_md5s_from_tags(tags))
    # a copy with no sources at all (the Ray job's): the erased record itself is found
    held = next(s for s in ("train", "validation", "test")
                if any(json.loads(line)["id"] in marked[0]["record_ids"]
                       for line in (splits / f"{s}.jsonl").read_text().splitlines()))
    shutil.copy2(splits / f"{held}.jsonl", alone / "copy.jsonl")
    with pytest.raises(DataError, match="holds records from dataset 'fb-1'"):
        check_training_data(settings.state_dir, root, {"train": alone / "copy.jsonl"})

    # the fix: drop the marked version, export again (r0 is gone from the log), re-split, train
    first.unlink()
    _export(settings, root / "data/feedback/fb-2.jsonl")
    assert "sort a list" not in (root / "data/feedback/fb-2.jsonl").read_text()
    merge_and_split(root, settings.params(), splits)
    _goes_ahead(settings, splits, tmp_path)


def test_dpo_refuses_erased_preference_pairs(project: Settings, tmp_path: Path) -> None:  # noqa: F811
    settings = project
    _seed(settings)
    pairs = settings.project_dir / "data/preferences/p-1.jsonl"
    _export(settings, pairs, kind="preference")
    assert read_erasures(settings.state_dir) is None
    check_training_data(settings.state_dir, settings.project_dir, {"train": pairs})  # nothing erased: fine

    assert CliRunner().invoke(app, ["log", "erase", "--request-id", "r1"]).exit_code == 0
    dpo = settings.params(["train.objective=dpo"])
    from components.train.logic import train_adapter

    with pytest.raises(DataError, match=r"p-1\.jsonl\) is dataset 'p-1'") as refused:
        train_adapter(settings, dpo, train_path=pairs, validation_path=pairs, base_model_dir=tmp_path / "none",
                      out_dir=tmp_path / "out")
    assert "--kind preference" in (refused.value.fix or "")
    # the pairs re-written elsewhere (the retrain's DPO stage splits them into its own files): by request id
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    copy = tmp_path / "train.jsonl"
    copy.write_text("".join(json.dumps(r) + "\n" for r in rows if "r1" in r["request_ids"]))
    with pytest.raises(DataError, match="holds records from dataset 'p-1'"):
        check_training_data(settings.state_dir, settings.project_dir, {"train": copy})
    from llmops.training.preference import read_preferences

    with pytest.raises(DataError, match="holds records from dataset 'p-1'"):  # the DPO stage's reader, first
        read_preferences(copy)
    rest = tmp_path / "rest.jsonl"
    rest.write_text("".join(json.dumps(r) + "\n" for r in rows if "r1" not in r["request_ids"]))
    check_training_data(settings.state_dir, settings.project_dir, {"train": rest})  # the others' pairs: fine
    assert len(read_preferences(rest)) == len(rows) - 1
