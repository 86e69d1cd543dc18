"""The golden set belongs to the rollout: found through the champion's lineage tags and verified by md5 (working
tree, else DVC's local remote by content hash), never guessed; judge replies parsed or refused."""

from __future__ import annotations

import shutil

import pytest

from llmops.modeling.hashing import file_md5
from llmops.settings import Settings
from serving.rollout.errors import RolloutError
from serving.rollout.quality import champion_test_split, parse_score, pick_golden, read_records

SPLIT = "data/splits/test.jsonl"


def test_champion_split_is_found_by_lineage_md5(settings: Settings) -> None:
    path = settings.project_dir / SPLIT
    md5 = file_md5(path)
    tags = {"data.test.md5": md5, "data.test.dvc": f"{SPLIT}@{md5}"}
    assert champion_test_split(settings, tags, "m/1") == path


def test_changed_split_is_read_from_the_dvc_remote_by_md5(settings: Settings, tmp_path) -> None:
    old = tmp_path / "old.jsonl"
    lines = (settings.project_dir / SPLIT).read_text().splitlines(keepends=True)
    old.write_text("".join(lines[:20]))
    md5 = file_md5(old)
    tags = {"data.test.md5": md5, "data.test.dvc": f"{SPLIT}@{md5}"}  # the working tree's split differs now
    with pytest.raises(RolloutError) as exc:
        champion_test_split(settings, tags, "m/1")
    assert "dvc pull" in exc.value.fix
    cached = settings.state_dir / "dvc-remote" / "files" / "md5" / md5[:2] / md5[2:]
    cached.parent.mkdir(parents=True)
    shutil.copy(old, cached)
    found = champion_test_split(settings, tags, "m/1")
    assert found == cached and len(read_records(found)) == 20


def test_no_lineage_is_an_error_with_the_fix(settings: Settings) -> None:
    with pytest.raises(RolloutError) as exc:
        champion_test_split(settings, {}, "m/1")
    assert "golden_source" in exc.value.fix


def test_golden_pick_is_seeded_and_stable(settings: Settings) -> None:
    records = read_records(settings.project_dir / SPLIT)
    q = settings.params(["canary.quality.golden_size=5"]).canary.quality
    first, again = pick_golden(records, q), pick_golden(list(reversed(records)), q)
    assert len(first) == 5 and first == again


@pytest.mark.parametrize(("text", "score"), [('{"score": 7}', 7.0), ("8", 8.0), ("I'd say 10/10", 10.0),
                                             ('{"score": 0}', None), ("great", None), ("", None)])
def test_judge_replies(text: str, score: float | None) -> None:
    assert parse_score(text) == score
