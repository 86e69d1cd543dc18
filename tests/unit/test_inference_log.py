"""The inference log: both store backends (SQLite WAL; PostgreSQL, slow), group commit from concurrent callers,
retention, the feedback export rule, a GX-validated DVC export (a bad correction refused), request lineage."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmops.params import InferenceLogParams
from llmops.settings import Settings, get_settings
from llmops.timeparse import parse_time
from monitoring.inference_log import InferenceLog, UnknownRequest, open_log
from monitoring.inference_log.export import ExportRefused, export_feedback, feedback_records
from monitoring.inference_log.store import open_store
from monitoring.review.queue import ReviewQueue
from serving.records import RequestRecord

REPO = Path(__file__).resolve().parents[2]
DAY = 86400.0


def record(rid: str, *, t: float | None = None, prompt: object = None, response: str = "an answer", status: int = 200,
           version: str | None = None, model: str = "m", **kw: object) -> RequestRecord:
    return RequestRecord(request_id=rid, route="/v1/chat/completions", model=model, model_version=version,
                         prompt=prompt if prompt is not None else [{"role": "user", "content": f"question {rid}"}],
                         response=response, prompt_tokens=5, completion_tokens=3, latency_s=0.2, ttft_s=0.05,
                         status=status, finish_reason="stop", time=time.time() if t is None else t, **kw)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def log(request: pytest.FixtureRequest, settings: Settings) -> Iterator[InferenceLog]:
    uri = f"sqlite:///{settings.state_dir / 'inference-log.db'}"
    if request.param == "postgresql":  # a fresh database per test: llmops/db.py migrates a URL once per process
        from tests.postgres_stack import create_database

        uri = create_database(*request.getfixturevalue("pg_server"), f"log_{uuid.uuid4().hex[:10]}")
    ilog = InferenceLog(open_store(uri), InferenceLogParams(flush_interval_ms=1.0, batch_size=64))
    try:
        yield ilog
    finally:
        ilog.close()


def test_store_upsert_feedback_query_and_retention(log: InferenceLog) -> None:
    now = time.time()
    asyncio.run(_hooks(log, [record("old", t=now - 40 * DAY), record("a", t=now - 2, extra={"mean_logprob": -1.25}),
                             record("b", t=now - 1, status=500, error="boom")]))
    # the router logs the same request after the model server did: its side/session win, the logprob stays
    asyncio.run(_hooks(log, [record("a", t=now - 2, side="canary", session="s1", version="3",
                                    extra={"backend": "http://x"})]))
    a = log.get("a")
    assert a is not None and (a.side, a.session, a.model_version, a.mean_logprob) == ("canary", "s1", "3", -1.25)
    assert a.extra == {"backend": "http://x"} and a.prompt == [{"role": "user", "content": "question a"}]
    assert log.count() == 3
    assert log.hook(record("mirror", extra={"shadow": True})) is None and log.get("mirror") is None  # shadow copy

    log.feedback("a", 1)
    log.feedback("a", -1, "the corrected answer", comment="wrong")
    with pytest.raises(UnknownRequest):
        log.feedback("nope", 1)
    a = log.get("a")
    assert (a.rating, a.correction, len(a.feedback)) == (-1, "the corrected answer", 2)
    assert [r.request_id for r in log.query(since=now - 10)] == ["a", "b"]  # window, oldest first
    assert [r.request_id for r in log.query(limit=2)] == ["a", "b"]  # the latest two
    assert [r.request_id for r in log.query(until=now - 1.5)] == ["old", "a"]

    assert log.prune(max_age_days=30, max_rows=10) == {"deleted_by_age": 1, "deleted_by_size": 0,
                                                       "feedback_deleted": 0}
    assert log.prune(max_age_days=30, max_rows=1) == {"deleted_by_age": 0, "deleted_by_size": 1,
                                                      "feedback_deleted": 2}  # "a" went, with its feedback
    assert [r.request_id for r in log.query()] == ["b"]


async def _hooks(log: InferenceLog, records: list[RequestRecord]) -> None:
    await asyncio.gather(*(log.hook(r) for r in records))


def test_logged_traffic_feeds_the_canary_load_generator(settings: Settings, tmp_path: Path) -> None:
    """`llmops log tail --json` output is a valid `canary.loadgen.source`: chat prompts (message lists) give their
    last user turn, completion prompts their text."""
    from typer.testing import CliRunner

    from cli.main import app
    from serving.rollout.loadgen import read_prompts

    ilog = open_log(settings, InferenceLogParams(flush_interval_ms=1.0, batch_size=8))
    try:
        now = time.time()
        asyncio.run(_hooks(ilog, [
            record("c1", t=now - 3, prompt=[{"role": "system", "content": "be brief"},
                                            {"role": "user", "content": "What is DVC?"}]),
            record("c2", t=now - 2, prompt="def add(a, b):", status=500, error="boom"),
            record("c3", t=now - 1, prompt=[{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
                                            {"role": "user", "content": "and then?"}])]))
    finally:
        ilog.close()
    result = CliRunner().invoke(app, ["log", "tail", "-n", "10", "--json"])
    assert result.exit_code == 0, result.output
    traffic = tmp_path / "traffic.jsonl"
    traffic.write_text(result.stdout)
    assert sorted(read_prompts(traffic)) == sorted(["What is DVC?", "def add(a, b):", "and then?"])


def test_group_commit_from_tasks_and_threads(settings: Settings) -> None:
    """Many concurrent hook calls (asyncio tasks, plus plain threads) -> all committed, in far fewer commits."""
    ilog = open_log(settings, InferenceLogParams(batch_size=128, flush_interval_ms=2.0, max_queue=50))
    n_tasks, n_threads, per_thread = 600, 4, 25
    errors: list[BaseException] = []

    def thread_calls(k: int) -> None:
        try:
            for i in range(per_thread):
                assert ilog.hook(record(f"t{k}-{i}")) is None  # no loop: blocks until committed
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=thread_calls, args=(k,)) for k in range(n_threads)]
    for th in threads:
        th.start()
    asyncio.run(_hooks(ilog, [record(f"a{i}") for i in range(n_tasks)]))  # max_queue=50: backpressure, no drop
    for th in threads:
        th.join()
    assert not errors
    total = n_tasks + n_threads * per_thread
    assert ilog.count() == total and ilog.writer.committed == total
    assert ilog.writer.batches < total / 5  # grouped
    ilog.close()
    assert open_log(settings, start_writer=False).count() == total


def test_export_rule() -> None:
    from monitoring.inference_log.store import FeedbackEntry, LoggedRequest

    def logged(rid: str, t: float, prompt: object, rating: int | None, correction: str | None = None,
               status: int = 200, **extra: object) -> LoggedRequest:
        fb = [FeedbackEntry(rid, t, rating, correction)] if (rating, correction) != (None, None) else []
        return LoggedRequest(rid, t, "m", "1", "/v1/chat/completions", prompt, f"answer {rid}", 1, 1, 0.1, None,
                             status, "stop", None, None, None, None, dict(extra), rating, correction, fb)

    user = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    records, skipped = feedback_records([
        logged("corrected", 1, user("What is 2+2?"), -1, "4"),
        logged("good", 2, "Complete: abc", 1),
        logged("bad-no-fix", 3, user("x"), -1),
        logged("no-feedback", 4, user("y"), None),
        logged("system", 5, [{"role": "system", "content": "s"}, *user("z")], None, "fix"),
        logged("failed", 6, user("w"), 1, status=500),
        logged("tool", 7, user("v"), 1, tool="f"),
        logged("again", 8, user("what is 2+2 ?"), None, "four"),  # same prompt, later: wins
    ])
    assert [(r["instruction"], r["output"]) for r in records] == [("Complete: abc", "answer good"),
                                                                  ("what is 2+2 ?", "four")]
    assert all(r["source"] == "feedback" and r["input"] == "" and len(r["id"]) == 16 for r in records)
    assert skipped == {"no correction and not rated good": 1, "not one user turn (system prompt or multi-turn)": 1,
                       "not answered (status != 200)": 1, "tool call": 1, "same prompt answered again later": 1}
    assert parse_time("2026-11-23T00:00:00Z") == parse_time("2026-11-23") == 1795392000.0
    assert parse_time("2h", now=10000.0) == 2800.0


@pytest.fixture
def dvc_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A git + DVC project with the real params, suites and feedback source folder, and a local remote."""
    repo = tmp_path / "repo"
    for rel in ["params.yaml", "data/expectations", "data/feedback/README.md"]:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (REPO / rel).is_dir() else shutil.copy2)(REPO / rel, repo / rel)
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                [sys.executable, "-m", "dvc", "remote", "add", "-d", "tmp", str(tmp_path / "remote")]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
    monkeypatch.setenv("LLMOPS_PROJECT_DIR", str(repo))
    monkeypatch.setenv("LLMOPS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LLMOPS_MODELS_DIR", str(REPO / ".llmops" / "models"))  # read-only: the base tokenizer
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_export_validates_then_tracks_with_dvc_and_refuses_a_bad_correction(dvc_repo: Settings) -> None:
    settings, params = dvc_repo, dvc_repo.params()
    since = time.time() - 60
    with open_log(settings) as ilog:
        asyncio.run(_hooks(ilog, [record(f"r{i}") for i in range(4)]))
        ilog.feedback("r0", -1, "A corrected answer.")
        ilog.feedback("r1", 1)
        ilog.feedback("r2", -1)
        queue = ReviewQueue(ilog.store)  # only reviewed feedback is exported: accept all three
        for item in queue.items():
            queue.decide(item.id, "accept", reviewer="test")
        result = export_feedback(ilog, settings, params, since=since, dvc=True, name="fb1", data_docs=False)
        assert result.rows == 2 and result.path == "data/feedback/fb1.jsonl" and result.pushed
        path = settings.project_dir / result.path
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert [(r["instruction"], r["output"]) for r in rows] == [("question r0", "A corrected answer."),
                                                                  ("question r1", "an answer")]
        assert (settings.project_dir / "data/feedback/fb1.jsonl.dvc").is_file()
        assert result.md5 and result.md5 in (settings.project_dir / "data/feedback/fb1.jsonl.dvc").read_text()

        ilog.feedback("r3", -1, "   ")  # a blank correction: the records suite refuses the export
        queue.decide(queue.items()[0].id, "accept", reviewer="test")
        with pytest.raises(ExportRefused) as refused:
            export_feedback(ilog, settings, params, since=since, dvc=True, name="fb2", data_docs=False)
        assert "output" in json.dumps(refused.value.validation["failures"])
        assert not list((settings.project_dir / "data/feedback").glob("fb2*"))  # nothing written
    from typer.testing import CliRunner

    from cli.main import app

    cli = CliRunner().invoke(app, ["log", "export", "--since", "1h", "--dvc", "--name", "fb3", "--no-docs"])
    assert cli.exit_code == 1 and "refused" in cli.output and "output" in cli.output
    assert not list((settings.project_dir / "data/feedback").glob("fb3*"))
