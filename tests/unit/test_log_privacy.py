"""PII at the inference log's edges: every export is scrubbed (counted, with a manifest of its request ids) and
drops feedback that repeats training data; `log erase` removes a person's rows (SQLite and PostgreSQL) and marks
the exported dataset versions that held them; `monitoring.log.redact` scrubs before anything is stored."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmops.params import InferenceLogParams
from llmops.settings import Settings, get_settings
from monitoring.inference_log import InferenceLog, open_log
from monitoring.inference_log.export import export_feedback
from monitoring.inference_log.privacy import REPEATS
from monitoring.inference_log.store import open_store
from monitoring.review.queue import ReviewQueue
from serving.records import RequestRecord

REPO = Path(__file__).resolve().parents[2]
SAMPLE = {"id": "s1", "instruction": "What does `os.path.join` do?", "input": "",
          "output": "Join one or more path segments intelligently, inserting the separator between them.",
          "source": "stdlib:os.path"}
EMAIL, KEY = "anna.schmidt@example.com", "AKIAIOSFODNN7EXAMPLE"


def rec(rid: str, prompt: str, response: str = "an answer", session: str | None = None) -> RequestRecord:
    return RequestRecord(request_id=rid, route="/v1/chat/completions", model="m", model_version="1",
                         prompt=[{"role": "user", "content": prompt}], response=response, prompt_tokens=5,
                         completion_tokens=3, latency_s=0.2, ttft_s=0.05, status=200, finish_reason="stop",
                         time=time.time(), session=session)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A project with the real params and suites, a one-record sample corpus, and empty user/feedback sources."""
    repo = tmp_path / "repo"
    (repo / "data/sample").mkdir(parents=True)
    (repo / "data/user").mkdir()
    (repo / "data/feedback").mkdir()
    shutil.copy2(REPO / "params.yaml", repo / "params.yaml")
    shutil.copytree(REPO / "data/expectations", repo / "data/expectations")
    (repo / "data/sample/base.jsonl").write_text(json.dumps(SAMPLE) + "\n")
    monkeypatch.setenv("LLMOPS_PROJECT_DIR", str(repo))
    monkeypatch.setenv("LLMOPS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LLMOPS_MODELS_DIR", str(REPO / ".llmops" / "models"))  # read-only: the base tokenizer
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def _log(ilog: InferenceLog, records: list[RequestRecord]) -> None:
    for r in records:
        ilog.hook(r)  # from a plain thread: returns once committed


def test_export_scrubs_drops_repeats_writes_manifest_and_erase_marks_it(project: Settings) -> None:
    settings, params = project, project.params()
    since = time.time() - 60
    out = settings.project_dir / "exports" / "fb.jsonl"
    with open_log(settings) as ilog:
        _log(ilog, [rec("r0", f"I am {EMAIL}, how do I sort a list?", session="sess-a"),
                    rec("r1", SAMPLE["instruction"], SAMPLE["output"]),  # repeats the training data
                    rec("r2", "How do I read an env var?", session="sess-b")])
        ilog.feedback("r0", -1, f"Use sorted(); I will mail {EMAIL} the details.")
        ilog.feedback("r1", 1)
        ilog.feedback("r2", -1, f"os.environ['AWS_KEY'] gives e.g. {KEY}")
        queue = ReviewQueue(ilog.store)
        for item in queue.items():
            queue.decide(item.id, "accept", reviewer="test")
        result = export_feedback(ilog, settings, params, since=since, out=out, data_docs=False)
    text = out.read_text()
    assert EMAIL not in text and KEY not in text and "<EMAIL>" in text and "<SECRET>" in text
    assert result.rows == 2 and result.skipped[REPEATS] == 1
    assert result.privacy["scrubbed"] == {"EMAIL": 2, "SECRET": 1} and result.privacy["repeats_dropped"] == 1
    rows = [json.loads(line) for line in text.splitlines()]
    from llmops.data.text import record_id

    assert all(r["id"] == record_id(r) for r in rows)  # ids hash the scrubbed content
    manifest = json.loads(Path(result.manifest).read_text())
    assert manifest["request_ids"] == ["r0", "r2"] and manifest["scrubbed_total"] == 3 and manifest["erasures"] == []

    from typer.testing import CliRunner

    from cli.main import app

    cli = CliRunner().invoke(app, ["log", "erase", "--session", "sess-a", "--json"])
    assert cli.exit_code == 0, cli.output
    done = json.loads(cli.output)
    assert done["deleted"] == ["r0"] and [d["request_ids"] for d in done["datasets"]] == [["r0"]]
    manifest = json.loads(Path(result.manifest).read_text())
    assert [e["request_ids"] for e in manifest["erasures"]] == [["r0"]]
    with open_log(settings, start_writer=False) as ilog:
        assert ilog.get("r0") is None and ilog.get("r2") is not None
        assert all(item.request_id != "r0" for item in ReviewQueue(ilog.store).items(None))
    erasures = (settings.state_dir / "erasures.jsonl").read_text().splitlines()
    assert json.loads(erasures[-1])["session"] == "sess-a"
    again = CliRunner().invoke(app, ["log", "erase", "--request-id", "nobody", "--json"])
    assert again.exit_code == 2 and "nothing to erase" in again.output


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'log.db'}"
        return
    from tests.postgres_stack import create_database

    yield create_database(*request.getfixturevalue("pg_server"), f"erase_log_{time.time_ns()}")


def test_store_erase_by_id_with_its_renamed_copies_and_by_session(store_uri: str) -> None:
    ilog = InferenceLog(open_store(store_uri), InferenceLogParams(flush_interval_ms=1.0))
    try:
        _log(ilog, [rec("a", "hi"), rec("a", "hi again"), rec("b", "x", session="s"), rec("c", "y", session="s"),
                    rec("d", "z")])  # the second "a" is stored as a.dup-<hex>
        ilog.feedback("a", 1, "fine")
        ilog.feedback("b", -1, "better")
        assert ilog.count() == 5
        erased = ilog.store.erase(["a"])
        assert erased[0] == "a" and len(erased) == 2 and erased[1].startswith("a.dup-")
        assert sorted(ilog.store.erase([], session="s")) == ["b", "c"]
        assert [r.request_id for r in ilog.query()] == ["d"] and ilog.get("b") is None
        assert ilog.store.erase(["nobody"]) == []
    finally:
        ilog.close()


def test_redact_at_log_time(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = settings.params(["monitoring.log.redact=true"])
    with open_log(settings, params) as ilog:
        _log(ilog, [rec("p", f"mail {EMAIL} please", response=f"Sure, {EMAIL}.")])
        ilog.feedback("p", -1, f"key {KEY}")
        got = ilog.get("p")
    assert got is not None and got.prompt == [{"role": "user", "content": "mail <EMAIL> please"}]
    assert got.response == "Sure, <EMAIL>." and got.extra["redacted"] == {"EMAIL": 2}
    assert got.feedback[0].correction == "key <SECRET>"
    with open_log(settings, settings.params()) as ilog:  # the default keeps what was said
        _log(ilog, [rec("q", f"mail {EMAIL}")])
        assert EMAIL in json.dumps(ilog.get("q").prompt)


def test_erase_needs_an_id_or_a_session(project: Settings) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    done = CliRunner().invoke(app, ["log", "erase", "--json"])
    assert done.exit_code == 2 and "--request-id" in done.output
