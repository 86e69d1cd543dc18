"""The model server's side of contract C1 and C3, in-process over the tiny model: awaitable hooks are awaited
before the response completes (a stream's `data: [DONE]` comes after them), records carry `time` and the
generated tokens' mean log-probability, and the test-only fault setting fails or delays requests."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from serving.records import RequestRecord


@pytest.fixture(scope="module")
def serve_params():
    from llmops.settings import get_settings

    return get_settings().params(["serve.max_concurrent=2", "serve.max_len=256"]).serve


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, serve_params):
    from serving.engines import load_engine

    return load_engine("eager", tiny_model_dir, serve_params)


def _client(engine, tiny_model_dir: Path, serve_params, hooks, internal_secret: bytes | None = None):
    from starlette.testclient import TestClient

    from serving.model_source import ResolvedModel
    from serving.server import build_app

    resolved = ResolvedModel(name="tiny", version="3", model_dir=tiny_model_dir, ref="tiny/3", source="local")
    app = build_app(engine, resolved, serve_params, hooks=hooks, internal_secret=internal_secret)
    return app, TestClient(app)


@contextlib.contextmanager
def _served(app) -> Iterator[str]:
    import uvicorn

    from tests.serve_process import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        while not app.state.llmops.ready.wait(0.1):
            pass
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}


def test_awaitable_hooks_run_before_the_response_completes(engine, tiny_model_dir: Path, serve_params) -> None:
    records: list[RequestRecord] = []

    async def durable(record: RequestRecord) -> None:  # e.g. an inference log's group commit
        await asyncio.sleep(0.3)
        records.append(record)

    app, _ = _client(engine, tiny_model_dir, serve_params, [durable])
    seen_at_done = []
    with _served(app) as url:  # a real socket: the test client buffers whole bodies, so it could not tell
        t0 = time.time()
        r = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60)
        assert r.status_code == 200 and len(records) == 1  # awaited before the body was returned
        with httpx.stream("POST", f"{url}/v1/chat/completions", json={**CHAT, "stream": True}, timeout=60) as s:
            for line in s.iter_lines():
                if line == "data: [DONE]":
                    seen_at_done.append(len(records))  # the hook (0.3 s) has already run
    assert seen_at_done == [2]
    rec = records[0]
    assert t0 - 1 <= rec.time <= time.time() and rec.side is None and rec.session is None
    assert rec.completion_tokens == 4
    # the model's own mean log-probability of what it generated: a random tiny model is near uniform
    assert -math.log(engine.tokenizer.__len__()) - 3 < rec.extra["mean_logprob"] < 0
    assert records[1].extra["mean_logprob"] == pytest.approx(rec.extra["mean_logprob"], abs=1e-4)  # greedy, same


def test_fault_setting_fails_and_delays(engine, tiny_model_dir: Path, serve_params,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    records: list[RequestRecord] = []
    monkeypatch.setenv("LLMOPS_SERVE_FAULTS", "error_rate=1.0")
    app, client = _client(engine, tiny_model_dir, serve_params, [records.append])
    with client:
        assert app.state.llmops.ready.wait(120)
        for body in (CHAT, {**CHAT, "stream": True}):
            r = client.post("/v1/chat/completions", json=body)
            assert r.status_code == 500 and "injected fault" in r.json()["error"]["message"]
    assert [x.status for x in records] == [500, 500]
    monkeypatch.setenv("LLMOPS_SERVE_FAULTS", "latency_s=0.4")
    app, client = _client(engine, tiny_model_dir, serve_params, [records.append])
    with client:
        assert app.state.llmops.ready.wait(120)
        t0 = time.perf_counter()
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert time.perf_counter() - t0 >= 0.4
    assert records[-1].status == 200 and records[-1].latency_s >= 0.4


def test_only_the_routers_signed_marker_makes_a_shadow_copy(engine, tiny_model_dir: Path, serve_params) -> None:
    """A client talking to a server directly cannot keep its request out of the inference log with
    `x-llmops-shadow: 1` (nor with a forged or replayed marker); the router's signed marker still works."""
    from serving.http.internal import sign

    records: list[RequestRecord] = []
    secret = b"deployment-secret"
    app, client = _client(engine, tiny_model_dir, serve_params, [records.append], internal_secret=secret)
    marker = sign(secret, "req-1-shadow", "shadow")
    sent = {"client-bare": {"x-llmops-shadow": "1"},
            "client-forged": {"x-llmops-shadow": "1", "x-llmops-internal": "shadow.forged"},
            "client-replayed": {"x-llmops-internal": marker},  # a real marker, for another request id
            "req-1-shadow": {"x-llmops-internal": marker}}  # what the router's Mirror sends
    with client:
        assert app.state.llmops.ready.wait(120)
        for rid, headers in sent.items():
            r = client.post("/v1/chat/completions", json=CHAT, headers={**headers, "x-request-id": rid})
            assert r.status_code == 200 and r.headers["x-request-id"] == rid
    shadow = {rec.request_id: bool((rec.extra or {}).get("shadow")) for rec in records}
    assert shadow == {"client-bare": False, "client-forged": False, "client-replayed": False, "req-1-shadow": True}


def test_client_errors_stay_out_of_the_latency_histogram(engine, tiny_model_dir: Path, serve_params) -> None:
    """On KServe the canary's p95 comes from this histogram (serving/rollout/prometheus.py): a client's fast
    401s and 400s must not pull it down, while they are still counted by status."""
    from starlette.testclient import TestClient

    from serving.model_source import ResolvedModel
    from serving.server import build_app

    resolved = ResolvedModel(name="tiny", version="3", model_dir=tiny_model_dir, ref="tiny/3", source="local")
    app = build_app(engine, resolved, serve_params, api_key="k")
    route = "/v1/chat/completions"
    with TestClient(app) as client:
        assert app.state.llmops.ready.wait(120)
        assert client.post(route, json=CHAT).status_code == 401  # no key
        auth = {"Authorization": "Bearer k"}
        assert client.post(route, json={**CHAT, "temperature": 7}, headers=auth).status_code == 400
        assert client.post(route, json=CHAT, headers=auth).status_code == 200
    metrics = app.state.llmops.metrics
    count = metrics.registry.get_sample_value("llmops_request_latency_seconds_count",
                                              {"route": route, "model": resolved.label})
    assert count == 1  # the 200 only
    for status in ("401", "400", "200"):
        assert metrics.registry.get_sample_value("llmops_requests_total", {"route": route, "status": status,
                                                                           "model": resolved.label}) == 1


def test_the_routers_shadow_copy_is_recognised_end_to_end(engine, tiny_model_dir: Path, serve_params) -> None:
    """Router -> server over real sockets, one deployment secret: the mirrored copy (shadow 100%, the canary
    being the same server here) is marked shadow by the server, the client's own request is not, even though
    the client sent `x-llmops-shadow: 1` itself."""
    import uvicorn

    from llmops.settings import get_settings
    from serving.router import create_router_app
    from tests.serve_process import free_port

    records: list[RequestRecord] = []
    secret = b"deployment-secret"
    app, _ = _client(engine, tiny_model_dir, serve_params, [records.append], internal_secret=secret)
    with _served(app) as url:
        router_app = create_router_app(get_settings().params().router, stable=url, canary=url, canary_percent=0,
                                       shadow_percent=100, token="admin", internal_secret=secret)
        port = free_port()
        router = uvicorn.Server(uvicorn.Config(router_app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=router.run, daemon=True)
        thread.start()
        try:
            while not router.started:
                time.sleep(0.05)
            r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT, timeout=60,
                           headers={"x-request-id": "e2e-1", "x-llmops-shadow": "1"})
            assert r.status_code == 200 and r.headers["x-llmops-side"] == "stable"
            deadline = time.monotonic() + 30
            while len(records) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            router.should_exit = True
            thread.join(timeout=15)
    shadow = {rec.request_id: bool((rec.extra or {}).get("shadow")) for rec in records}
    assert shadow == {"e2e-1": False, "e2e-1-shadow": True}
