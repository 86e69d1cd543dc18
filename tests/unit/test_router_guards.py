"""Issue 17, the parts that need no server: the inference log never lets one request overwrite another's row,
binds feedback to the key that made the request, keeps unauthenticated requests out, and survives a client's
lone surrogate; what the router charges a side with; the keyed session hash; the signed internal marker; the
OpenAI stream error event; the probe's and load generator's key."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest

from llmops.params import InferenceLogParams
from monitoring.inference_log import InferenceLog, UnknownRequest
from monitoring.inference_log.store import open_store
from serving.records import RequestRecord


def rec(rid: str, *, side: str | None = None, key_id: str | None = None, content: str = "q", status: int = 200,
        **extra: object) -> RequestRecord:
    return RequestRecord(request_id=rid, route="/v1/chat/completions", model="m", model_version=None,
                         prompt=[{"role": "user", "content": content}], response=f"answer to {content}",
                         prompt_tokens=3, completion_tokens=2, latency_s=0.1, ttft_s=None, status=status,
                         finish_reason="stop", time=time.time(), side=side,
                         extra={**extra, **({"key_id": key_id} if key_id else {})})


@pytest.fixture
def ilog(tmp_path: Path):
    log = InferenceLog(open_store(f"sqlite:///{tmp_path / 'log.db'}"), InferenceLogParams(flush_interval_ms=1.0))
    yield log
    log.close()


def _together(log: InferenceLog, *records: RequestRecord) -> None:
    """Hooked at once from one event loop: they share one batch."""
    async def go() -> None:
        await asyncio.wait_for(asyncio.gather(*(log.hook(r) for r in records)), 30)

    asyncio.run(go())


def _log(log: InferenceLog, *records: RequestRecord) -> None:
    async def go() -> None:
        for r in records:  # one after the other, as a server's and then the router's hook commit
            fut = log.hook(r)
            if fut is not None:
                await fut

    asyncio.run(go())


def test_a_logged_row_is_never_overwritten(ilog: InferenceLog) -> None:
    # the legitimate merge: the server logs first, the router's record of the same request joins it
    _log(ilog, rec("r1", content="real", mean_logprob=-0.5), rec("r1", side="stable", key_id="k_a", content="real"))
    row = ilog.get("r1")
    assert (row.side, row.mean_logprob, row.key_id) == ("stable", -0.5, "k_a")
    # a client reusing the id, straight at a server (side None) or through a router (side set): a new row each
    _log(ilog, rec("r1", content="forged direct"), rec("r1", side="canary", key_id="k_a", content="forged routed"))
    assert ilog.get("r1").prompt == [{"role": "user", "content": "real"}] and ilog.get("r1").side == "stable"
    dups = [r for r in ilog.query() if r.request_id.startswith("r1.dup-")]
    assert sorted(r.prompt[0]["content"] for r in dups) == ["forged direct", "forged routed"]
    assert all(r.extra["duplicate_of"] == "r1" for r in dups) and ilog.count() == 3
    # another key's router record cannot join a server row that a key already owns
    _log(ilog, rec("r2", key_id="k_a", content="mine"), rec("r2", side="stable", key_id="k_b", content="theirs"))
    assert ilog.get("r2").prompt[0]["content"] == "mine" and ilog.get("r2").side is None
    # the same id twice in one batch: the second is a new row too
    _together(ilog, *(rec("r3", side="stable", content=c) for c in ("first", "second")))
    assert ilog.get("r3").prompt[0]["content"] == "first" and ilog.count() == 7


def test_feedback_is_bound_to_the_key_identity(ilog: InferenceLog) -> None:
    _log(ilog, rec("mine", side="stable", key_id="k_a"), rec("open", side="stable"))
    with pytest.raises(UnknownRequest):
        ilog.feedback("mine", -1, "a poisoned correction", key_id="k_b")
    with pytest.raises(UnknownRequest):
        ilog.feedback("mine", -1, "no key at all")
    assert ilog.get("mine").feedback == []
    ilog.feedback("mine", -1, "the fix", key_id="k_a")
    ilog.feedback("open", 1)  # logged with auth off: no identity to bind
    assert ilog.get("mine").correction == "the fix" and ilog.get("open").rating == 1


def test_unauthenticated_requests_are_not_logged(ilog: InferenceLog) -> None:
    assert ilog.hook(rec("anon", status=401)) is None and ilog.hook(rec("anon2", status=403)) is None
    _log(ilog, rec("ok"))
    assert ilog.get("anon") is None and ilog.get("anon2") is None and ilog.count() == 1


def test_a_lone_surrogate_does_not_fail_the_batch(ilog: InferenceLog) -> None:
    odd = rec("odd", content="a\ud800b")
    odd.model, odd.session = "m\udfff" * 300, "s\ud800"
    _together(ilog, odd, rec("neighbour"))
    assert ilog.get("neighbour") is not None
    row = ilog.get("odd")
    assert row.prompt[0]["content"] == "a\ufffdb" and len(row.model) == 256


def test_an_old_table_gains_the_key_column(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE requests (id INTEGER PRIMARY KEY, request_id VARCHAR(128) UNIQUE NOT NULL, "
                 "time FLOAT NOT NULL, model VARCHAR(256) NOT NULL, model_version VARCHAR(64), route VARCHAR(64) "
                 "NOT NULL, prompt TEXT NOT NULL, response TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, "
                 "completion_tokens INTEGER NOT NULL, latency_s FLOAT NOT NULL, ttft_s FLOAT, status INTEGER NOT "
                 "NULL, finish_reason VARCHAR(32), error TEXT, session VARCHAR(256), side VARCHAR(16), "
                 "mean_logprob FLOAT, extra TEXT NOT NULL)")
    conn.execute("INSERT INTO requests (request_id, time, model, route, prompt, response, prompt_tokens, "
                 "completion_tokens, latency_s, status, extra) VALUES ('v1', ?, 'm', '/v1/completions', '\"p\"', "
                 "'a', 1, 1, 0.1, 200, '{}')", (time.time(),))
    conn.commit()
    conn.close()
    log = InferenceLog(open_store(f"sqlite:///{db}"), InferenceLogParams(flush_interval_ms=1.0))
    try:
        _log(log, rec("v2", side="stable", key_id="k_a"))
        assert log.get("v1").key_id is None and log.get("v2").key_id == "k_a"
    finally:
        log.close()


def test_what_a_side_is_charged_with() -> None:
    from serving.http.errors import client_caused
    from serving.router.metrics import Observation, Window, error_kind

    assert error_kind(429, False) == "rate_limited" and error_kind(408, False) == "timeout"
    assert error_kind(504, False) == "timeout" and error_kind(200, True) == "broken_stream"
    assert error_kind(200, False) is None and error_kind(400, False) is None
    assert all(client_caused(s) for s in (400, 401, 404, 413, 422, 499))
    assert not any(client_caused(s) for s in (200, 408, 429, 500, 502))
    w = Window(10)
    w.add(Observation(5.0, "canary", True, 0.01, None))  # a 429: an error, whose latency is not a serving time
    w.add(Observation(5.0, "canary", False, 1.0, None))
    assert w.stats(0, 10)["canary"] == {"requests": 2, "errors": 1, "latency_p50_s": 1.0, "latency_p95_s": 1.0,
                                        "ttft_p50_s": None, "ttft_p95_s": None}


def test_session_sides_are_keyed() -> None:
    from serving.router.split import CANARY, Split, session_bucket

    sessions = [f"user-{i}" for i in range(200)]
    assert [session_bucket(s, b"k1") for s in sessions] != [session_bucket(s, b"k2") for s in sessions]
    split = Split(30, session_key=b"secret")
    assert all((split.side(s) == CANARY) == (session_bucket(s, b"secret") < 30) for s in sessions)


def test_internal_marker_is_signed_per_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.http.internal import SECRET_ENV, internal_secret, is_shadow, sign, verify

    monkeypatch.delenv(SECRET_ENV, raising=False)
    secret = internal_secret(tmp_path)
    assert secret == internal_secret(tmp_path) and (tmp_path / "internal-secret").stat().st_mode & 0o777 == 0o600
    marker = sign(secret, "req-1-shadow", "shadow")
    assert verify(secret, "req-1-shadow", marker) == "shadow"
    assert verify(secret, "req-2-shadow", marker) is None  # replayed onto another request
    assert verify(b"other", "req-1-shadow", marker) is None and verify(secret, "req-1-shadow", "1") is None
    assert verify(None, "req-1-shadow", marker) is None
    assert is_shadow(secret, "req-1-shadow", {"x-llmops-internal": marker})
    assert not is_shadow(secret, "req-1-shadow", {"x-llmops-shadow": "1"})  # what any client can send


def test_stream_error_event_shapes() -> None:
    from serving.router.stream import StreamParser, error_event

    chat = error_event("/v1/chat/completions", "the stream broke", "backend_stream_broken")
    assert chat.startswith(b"data: ") and chat.endswith(b"\n\n")
    assert json.loads(chat[6:])["error"] == {"message": "the stream broke", "type": "server_error", "param": None,
                                              "code": "backend_stream_broken"}
    parser = StreamParser("/v1/chat/completions")
    parser.feed(chat)
    assert parser.error == "the stream broke"  # a client reading OpenAI streams sees the error
    resp = error_event("/v1/responses", "x", "backend_stream_broken")
    assert resp.startswith(b"event: error\ndata: ") and json.loads(resp.split(b"data: ")[1])["type"] == "error"


def test_probe_and_load_generator_send_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.rollout.quality import auth_headers

    monkeypatch.delenv("LLMOPS_API_KEY", raising=False)
    monkeypatch.delenv("LLMOPS_API_KEY_FILE", raising=False)
    assert auth_headers() == {}
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    monkeypatch.setenv("LLMOPS_API_KEY_FILE", str(key_file))
    assert auth_headers() == {"Authorization": "Bearer s3cret"}


def test_one_bearer_check_and_one_request_id_rule(tmp_path: Path) -> None:
    """The router's admin routes and the feedback route use serving.http's token compare and request-id rule
    (whole match: a trailing newline or a space is not an id), not their own."""
    from starlette.testclient import TestClient

    from llmops.settings import get_settings
    from monitoring.inference_log.feedback import parse_feedback
    from serving.http.auth import token_matches
    from serving.router import create_router_app

    assert token_matches("k", "k") and not token_matches("", "") and not token_matches("k\n", "k")
    assert not token_matches("\udcff", "k")  # a lone surrogate from a header is a mismatch, not a 500
    for rid in ("req-1\n", "a b", "x" * 129, ""):
        with pytest.raises(ValueError, match="request_id"):
            parse_feedback(json.dumps({"request_id": rid, "rating": 1}).encode())
    assert parse_feedback(b'{"request_id": "req_1-shadow", "rating": 1}')["request_id"] == "req_1-shadow"
    params = get_settings().params([]).router
    app = create_router_app(params, stable="http://127.0.0.1:9", token="admin-t")
    with TestClient(app) as client:
        assert client.get("/admin/state").status_code == 401
        assert client.get("/admin/state", headers={"Authorization": "Bearer nope"}).status_code == 403
        assert client.get("/admin/state", headers={"Authorization": "Bearer admin-t"}).status_code == 200
