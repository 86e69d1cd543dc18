"""Issue 17 against real processes: a keyed tiny-model server (`llmops serve`) behind the router (in-process,
with a real inference log in the server's database). Unauthenticated traffic never reaches a side, the window
or the log; a client cannot overwrite a logged row or pass internal headers; client 4xx stay out of the canary
window; feedback checks its key, its size (before reading) and its owner; the load generator and probe send
the key; `llmops router` reads a key file; a backend that dies mid-stream ends the stream with an error event;
and a fuzz run of a few thousand malformed or extreme requests leaves no 500, no hung request and a healthy
router and server."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx2 as httpx
import pytest

from tests.integration.test_router import _InProcessRouter
from tests.serve_process import REPO, free_port, running_server

pytestmark = pytest.mark.slow  # real server processes

KEY = "hardening-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TOKEN = "hardening-admin"
SETS = ("serve.max_concurrent=8", "serve.queue_size=256", "serve.max_len=256", "serve.default_max_tokens=4")
MODEL = "model"


def _router_app(stable: str, *, api_key: str | None, ilog=None, auth_failures: int = 100_000):
    """The router on `stable`; wrong keys are limited only where a test asks (the fuzz run sends thousands)."""
    from llmops.settings import get_settings
    from monitoring.inference_log import add_feedback_route
    from serving.router import create_router_app

    params = get_settings().params().router.model_copy(update={"auth_failures": auth_failures})
    app = create_router_app(params, stable=stable, token=TOKEN,
                            hooks=[ilog.hook] if ilog else [], api_key=api_key, internal_secret=b"test-secret",
                            id_exists=ilog.exists_async if ilog else None)
    if ilog is not None:
        add_feedback_route(app.app, ilog, guard=app.state.guard)
    return app


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from llmops.params import InferenceLogParams
    from monitoring.inference_log import InferenceLog
    from monitoring.inference_log.store import open_store

    tmp = tmp_path_factory.mktemp("hardening")
    uri = f"sqlite:///{tmp / 'log.db'}"
    env = {"LLMOPS_API_KEY": KEY, "LLMOPS_INFERENCE_LOG_URI": uri}
    with running_server(str(tiny_model_dir), tmp / "server.log", sets=SETS, env=env, ready_timeout=300) as url:
        ilog = InferenceLog(open_store(uri), InferenceLogParams(flush_interval_ms=1.0))
        app = _router_app(url, api_key=KEY, ilog=ilog)
        try:
            with _InProcessRouter(app) as r:
                yield SimpleNamespace(url=r.url, server=url, log=ilog, state=app.state)
        finally:
            ilog.close()


def chat(url: str, content: str = "hi", headers: dict | None = None, **extra) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers or {}, timeout=60)


def _window(stack) -> dict:
    return stack.state.window.stats(0, time.time() + 1)["stable"]


def test_unauthenticated_requests_reach_no_side_no_window_no_log(stack) -> None:
    real = chat(stack.url, "the real question", {**AUTH, "x-request-id": "real-1"})
    assert real.status_code == 200, real.text
    before, seen = _window(stack)["requests"], stack.log.get("real-1")
    assert seen is not None and seen.prompt[0]["content"] == "the real question" and seen.key_id
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        for rid in ("real-1", "anon-1"):
            r = chat(stack.url, "overwrite me", {**headers, "x-request-id": rid})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
            assert r.json()["error"]["code"] == "invalid_api_key"
    row = stack.log.get("real-1")
    assert (row.prompt, row.response, row.status) == (seen.prompt, seen.response, 200)
    assert stack.log.get("anon-1") is None and _window(stack)["requests"] == before
    assert re.search(r'llmops_router_rejected_total\{reason="unauthorized"\} 6', httpx.get(f"{stack.url}/metrics").text)


def test_a_client_request_id_never_overwrites_a_row(stack) -> None:
    assert chat(stack.url, "first", {**AUTH, "x-request-id": "reused-1"}).status_code == 200
    again = chat(stack.url, "second", {**AUTH, "x-request-id": "reused-1"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "request_id_conflict"
    assert stack.log.get("reused-1").prompt[0]["content"] == "first"
    fresh = chat(stack.url, "no id", AUTH)  # without an id the router makes one
    assert fresh.status_code == 200 and stack.log.get(fresh.headers["x-request-id"]) is not None


def test_internal_headers_from_clients_are_stripped(stack) -> None:
    """A client's `x-llmops-shadow` would make the server drop its record of the request; the router strips it,
    so the row holds the server's part (its mean log-probability) joined by the router's (side)."""
    r = chat(stack.url, "am I a shadow", {**AUTH, "x-request-id": "not-a-shadow", "x-llmops-shadow": "1",
                                          "x-llmops-internal": "shadow.forged"})
    assert r.status_code == 200
    row = stack.log.get("not-a-shadow")
    assert row.side == "stable" and row.mean_logprob is not None, row


def test_client_errors_stay_out_of_the_canary_window(stack) -> None:
    before = _window(stack)
    for bad in ({"max_tokens": "many"}, {"messages": "not a list"}, {"temperature": 7}):
        r = httpx.post(f"{stack.url}/v1/chat/completions", json={"model": MODEL, "messages": [
            {"role": "user", "content": "x"}], **bad}, headers=AUTH, timeout=60)
        assert 400 <= r.status_code < 500 and r.status_code not in (408, 429), r.text
    assert chat(stack.url, "fine", AUTH).status_code == 200
    after = _window(stack)
    assert after["requests"] == before["requests"] + 1 and after["errors"] == before["errors"]


def _raw_post(port: int, path: str, headers: dict[str, str], body: bytes, timeout: float = 5) -> int:
    """POST that declares its Content-Length but may send less: the status line, or -1 on timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        s.sendall(head.encode() + b"\r\n" + body)
        try:
            return int(s.recv(100).split(b" ")[1])
        except TimeoutError:
            return -1


def test_feedback_checks_key_size_and_owner(stack) -> None:
    assert chat(stack.url, "rate me", {**AUTH, "x-request-id": "fb-own"}).status_code == 200
    fb = f"{stack.url}/v1/feedback"
    assert httpx.post(fb, json={"request_id": "fb-own", "rating": -1, "correction": "x"}).status_code == 401
    port = int(stack.url.rsplit(":", 1)[1])
    declared = {"Content-Length": str(16 * 1024 * 1024), "Content-Type": "application/json"}
    t0 = time.perf_counter()
    assert _raw_post(port, "/v1/feedback", declared, b'{"request_id"') == 401  # unauthenticated: not read
    assert _raw_post(port, "/v1/feedback", {**declared, **AUTH}, b'{"request_id"') == 413  # too large: not read
    assert time.perf_counter() - t0 < 4
    assert httpx.post(fb, headers={"Authorization": "Bearer other"}, json={"request_id": "fb-own",
                                                                           "rating": 1}).status_code == 401
    ok = httpx.post(fb, headers=AUTH, json={"request_id": "fb-own", "rating": -1, "correction": "the fix"})
    assert ok.status_code == 200 and stack.log.get("fb-own").correction == "the fix"


def test_load_generator_and_probe_send_the_key(stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from llmops.params import LoadgenParams
    from serving.rollout.loadgen import LoadGenerator
    from serving.rollout.quality import _chat, auth_headers, served_model

    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    monkeypatch.delenv("LLMOPS_API_KEY", raising=False)
    monkeypatch.setenv("LLMOPS_API_KEY_FILE", str(key_file))
    with httpx.Client(timeout=60, headers=auth_headers()) as client:
        assert served_model(client, stack.url) == MODEL
        assert _chat(client, stack.url, MODEL, "golden?", 2) is not None
    params = LoadgenParams(rate=20, source="heldout", max_tokens=2, max_in_flight=4, stream=True, seed=1)
    with LoadGenerator(stack.url, MODEL, ["hello"], params) as gen:
        time.sleep(1.5)
    counts = gen.counts()
    assert counts.get("stable.ok", 0) >= 3 and not any(k.endswith("failed") for k in counts), counts


def test_router_cli_reads_the_key_file(stack, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"  {KEY}  \n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("LLMOPS_API_KEY",)}
    env.update({"LLMOPS_API_KEY_FILE": str(key_file), "LLMOPS_STATE_DIR": str(tmp_path / "state"),
                "LLMOPS_ROUTER_ADMIN_TOKEN": TOKEN})
    with open(tmp_path / "router.log", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "router", "--stable", stack.server,
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "router.log").read_text()
            try:
                httpx.get(f"{url}/health", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        fb = {"request_id": "nope", "rating": -1, "correction": "poison"}
        assert httpx.post(f"{url}/v1/feedback", json=fb, timeout=10).status_code == 401
        assert httpx.post(f"{url}/v1/feedback", json=fb, headers=AUTH, timeout=10).status_code == 404
        assert chat(url, "x").status_code == 401 and chat(url, "x", AUTH).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_a_backend_dying_mid_stream_ends_with_an_error_event(tiny_model_dir: Path, tmp_path: Path) -> None:
    procs: list[subprocess.Popen] = []
    body = {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "max_tokens": 1900, "stream": True}
    events: list[str] = []
    with (running_server(str(tiny_model_dir), tmp_path / "doomed.log", on_start=procs.append,
                         sets=("serve.max_len=2048", "serve.max_tokens=1900", "serve.max_concurrent=2")) as url,
          _InProcessRouter(_router_app(url, api_key=None)) as router):
        with httpx.stream("POST", f"{router.url}/v1/chat/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 3:
                        os.kill(procs[0].pid, signal.SIGKILL)
        metrics = httpx.get(f"{router.url}/metrics").text
    assert len(events) > 3 and "[DONE]" not in events, events[-3:]
    last = json.loads(events[-1])
    assert last["error"]["type"] == "server_error" and last["error"]["code"] == "backend_stream_broken", last
    assert re.search(r'llmops_router_upstream_errors_total\{kind="broken_stream"[^}]*\} 1', metrics), metrics


def _fuzz_cases(rng: random.Random, n: int) -> list[tuple[str, str, dict[str, bytes], bytes]]:
    """(method, path, headers, body) of malformed or extreme requests: types, ranges, nesting, unicode including
    lone surrogates (valid JSON escapes), invalid UTF-8, huge and odd headers, huge bodies."""
    values = [None, True, -1, 0, 2**64, -(2**63) - 1, 1e308, 1e-300, "x" * 5000, "\ud800", [], {}, [1, "a"],
              {"a": {"b": [None]}}, "0", 3.5]
    keys = ["messages", "prompt", "input", "max_tokens", "temperature", "top_p", "seed", "stop", "stream",
            "stream_options", "tools", "tool_choice", "response_format", "n", "model", "logprobs", "text"]
    cases = []
    for i in range(n):
        path = rng.choice(["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/models",
                           "/v1/feedback", "/v1/chat/completions/", "/v1/%00", "/" + "a" * 3000])
        headers = {**AUTH, "content-type": "application/json"}
        kind = i % 10
        body_obj: object = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        if kind < 5:  # a valid request with 1-3 fields replaced by odd values
            for _ in range(rng.randint(1, 3)):
                body_obj[rng.choice(keys)] = rng.choice(values)  # type: ignore[index]
        elif kind == 5:
            body_obj = json.loads("[" * 500 + "]" * 500) if rng.random() < 0.5 else rng.choice(values)
        elif kind == 6:
            headers[rng.choice(["x-request-id", "x-llmops-session", "x-big", "authorization"])] = rng.choice(
                ["a" * 20000, "id\u00e9\u00ff", "in ner", "bearer " + KEY, "Bearer  " + KEY, "r" * 129, "\u2028x"])
        elif kind == 7:
            headers.update({f"x-h{j}": "v" * 50 for j in range(rng.choice([10, 150]))})
        elif kind == 8:
            headers.pop("Authorization")
            headers["x-llmops-shadow"] = "1"
        raw = json.dumps(body_obj).encode() if kind != 9 else rng.choice(
            [b"", b"{", b"\xff\xfe{}", b'{"messages": "\xc3\x28"}', b"null", b"x" * (2 * 1024 * 1024)])
        if kind == 9 and "messages" in path and rng.random() < 0.3:
            body_obj = {"model": MODEL, "messages": [{"role": "user", "content": "\ud83d"}], "max_tokens": 1}
            raw = json.dumps(body_obj).encode()
        method = "GET" if path == "/v1/models" else "POST"
        cases.append((method, path, {k: v.encode("utf-8") for k, v in headers.items()}, raw))  # non-ASCII bytes
    return cases


def test_fuzz_no_500_no_hang_and_still_serving(stack) -> None:
    cases = _fuzz_cases(random.Random(17), 2500)
    statuses: dict[int, int] = {}
    bad: list[tuple[int, str, dict, bytes]] = []
    errors: list[str] = []

    async def run() -> None:
        sem = asyncio.Semaphore(16)
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=16)) as client:
            async def one(case: tuple[str, str, dict, bytes]) -> None:
                method, path, headers, raw = case
                async with sem:
                    try:
                        r = await client.request(method, stack.url + path, headers=headers, content=raw)
                        status = r.status_code
                    except httpx.TimeoutException:
                        status = -1  # hung
                    except httpx.HTTPError as exc:
                        status = -2  # the router dropped the connection without an answer
                        errors.append(f"{type(exc).__name__}: {exc}"[:200])
                statuses[status] = statuses.get(status, 0) + 1
                if status >= 500 or status < 0:
                    bad.append((status, path[:60], {k: v[:40] for k, v in headers.items()}, raw[:120]))

            await asyncio.gather(*(one(c) for c in cases))

    t0 = time.perf_counter()
    asyncio.run(run())
    elapsed = time.perf_counter() - t0
    assert not bad, (statuses, sorted(set(errors))[:5], [(b[0], b[1], {k: len(v) for k, v in b[2].items()},
                                                          len(b[3])) for b in bad[:10]])
    assert sum(statuses.values()) == len(cases) and statuses.get(200, 0) > 0, statuses
    assert httpx.get(f"{stack.url}/health", timeout=10).status_code == 200
    ready = httpx.get(f"{stack.server}/ready", timeout=10)
    assert ready.status_code == 200 and httpx.get(f"{stack.server}/health", timeout=10).status_code == 200
    deadline = time.monotonic() + 30  # every slot free again once the last answers are out
    while httpx.get(f"{stack.server}/ready", timeout=10).json()["scheduler"].get("running"):
        assert time.monotonic() < deadline, "slots still held after the fuzz run"
        time.sleep(0.2)
    assert chat(stack.url, "still there?", AUTH).status_code == 200
    print(f"fuzz: {len(cases)} requests in {elapsed:.1f}s, statuses {dict(sorted(statuses.items()))}")


def test_a_stream_abandoned_while_its_side_is_slow_counts_against_that_side(tiny_model_dir: Path,
                                                                            tmp_path: Path) -> None:
    """A client that gives up on a stream with no token after `router.abandoned_after_s` is charged to the side
    (here the server's only slot is busy, so the stream waits in its queue); leaving after tokens came is not."""
    import threading

    from llmops.settings import get_settings
    from serving.router import create_router_app

    long = {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "max_tokens": 1500, "stream": True}
    short = {**long, "max_tokens": 50}
    params = get_settings().params(["router.abandoned_after_s=1.0"]).router
    with running_server(str(tiny_model_dir), tmp_path / "slow.log",
                        sets=("serve.max_len=2048", "serve.max_tokens=1500", "serve.max_concurrent=1")) as url:
        app = create_router_app(params, stable=url, token=TOKEN)
        with _InProcessRouter(app) as router:
            def busy() -> None:  # holds the one slot for a while
                with httpx.stream("POST", f"{url}/v1/chat/completions", json=long, timeout=120) as r:
                    for _ in r.iter_lines():
                        pass

            # Several long answers queue behind the one slot: a fast host finishes one (or meets an EOS) in under
            # the 2.8 s below, so one hog alone made this a race; four keep the slot busy well past it.
            hogs = [threading.Thread(target=busy, daemon=True) for _ in range(4)]
            for hog in hogs:
                hog.start()
                time.sleep(0.25)
            time.sleep(0.25)
            with httpx.stream("POST", f"{router.url}/v1/chat/completions", json=short, timeout=60) as r:
                assert r.status_code == 200
                time.sleep(1.8)  # no token comes: the slot is taken; the client gives up
            deadline = time.monotonic() + 20
            while (stats := app.state.window.stats(0, time.time() + 1)["stable"])["errors"] < 1:
                assert time.monotonic() < deadline, stats
                time.sleep(0.1)
            metrics = httpx.get(f"{router.url}/metrics").text
            assert re.search(r'llmops_router_upstream_errors_total\{kind="abandoned"[^}]*\} 1', metrics), metrics
            for hog in hogs:
                hog.join(timeout=120)
            with httpx.stream("POST", f"{router.url}/v1/chat/completions", json=short, timeout=60) as r:
                for i, _line in enumerate(r.iter_lines()):
                    if i > 3:
                        break  # tokens came: leaving now is the client's own doing
            time.sleep(1.0)
            assert app.state.window.stats(0, time.time() + 1)["stable"]["errors"] == 1


def test_wrong_keys_are_limited_per_address(stack) -> None:
    """A router with router.auth_failures = 3: three wrong keys, then 429 + Retry-After for this address, the
    right key included (refused unchecked), and nothing reaches the backend or the log. Its feedback route
    counts against the same address: a key cannot be guessed there instead."""
    with _InProcessRouter(_router_app(stack.server, api_key=KEY, ilog=stack.log, auth_failures=3)) as router:
        def feedback(key: str) -> httpx.Response:
            return httpx.post(f"{router.url}/v1/feedback", json={"request_id": "real-1", "rating": 1},
                              headers={"Authorization": f"Bearer {key}"}, timeout=30)

        wrong = [chat(router.url, "guess", {"Authorization": f"Bearer guess-{i}"}) for i in range(2)]
        wrong += [feedback("guess-2"), chat(router.url, "guess", {"Authorization": "Bearer guess-3"})]
        assert [r.status_code for r in wrong] == [401, 401, 401, 429]
        assert wrong[-1].json()["error"]["code"] == "rate_limit_exceeded" and int(wrong[-1].headers["retry-after"])
        refused = chat(router.url, "the right key, too soon", {**AUTH, "x-request-id": "limited-1"})
        assert refused.status_code == 429 and stack.log.get("limited-1") is None
        limited = feedback(KEY)
        assert limited.status_code == 429 and int(limited.headers["retry-after"])
        metrics = httpx.get(f"{router.url}/metrics").text
        assert re.search(r'llmops_router_rejected_total\{reason="auth_limited"\} 2', metrics)
    assert chat(stack.url, "the stack router counts its own wrong keys", AUTH).status_code == 200
