"""Issue 17 against a real `llmops serve` process over the tiny model: a client's faulty request is a 4xx that
fails alone (slots all free after, other requests unharmed), the event loop is not stalled by a huge prompt,
slow-header connections neither block nor outlive their deadline, and a fuzz run of a few thousand generated
malformed and extreme requests gets no 500, no hung request, and leaves the server healthy and answering."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.serve_process import running_server

pytestmark = pytest.mark.slow  # a real server process for the module

MAX_CONCURRENT = 4
SETS = (f"serve.max_concurrent={MAX_CONCURRENT}", "serve.queue_size=64", "serve.max_prompt_tokens=200",
        "serve.max_tokens=16", "serve.default_max_tokens=4", "serve.max_body_bytes=2097152",
        "serve.request_timeout_s=30", "serve.header_timeout_s=2", "serve.keep_alive_timeout_s=2")
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with running_server(str(tiny_model_dir), log, sets=SETS) as url:
        yield url


@pytest.fixture(scope="module")
def model(server: str) -> str:
    return httpx.get(f"{server}/v1/models").json()["data"][0]["id"]


def _post(server: str, path: str, body: Any, **kw: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server}{path}", content=content, headers={"content-type": "application/json"},
                      timeout=60, **kw)


def _assert_settled(server: str) -> None:
    """Every slot free, nothing running or waiting, /health 200, and a normal request answered."""
    deadline = time.monotonic() + 15
    while True:
        sched = httpx.get(f"{server}/ready", timeout=10).json()["scheduler"]
        if sched["free_slots"] == MAX_CONCURRENT and not sched["running"] and not sched["waiting"]:
            break
        assert time.monotonic() < deadline, sched
        time.sleep(0.1)
    assert sched["leaked_slots"] == 0
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200


def test_client_faults_are_4xx_and_fail_alone(server: str, model: str) -> None:
    """Each body here was a 500 (or took the replica down) before: seed >= 2**64 failed every running request
    and leaked slots; temperature 1e-300, tool_choice.function as a string, text.format as a string and JSON
    nested 100,000 deep were 500s."""
    long_stream: dict[str, Any] = {}

    def stream() -> None:
        with httpx.stream("POST", f"{server}/v1/chat/completions", timeout=60, json={
                "model": model, **CHAT, "max_tokens": 16, "stream": True}) as r:
            long_stream["body"] = "".join(r.iter_text())

    runner = threading.Thread(target=stream)
    runner.start()
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    bad = [
        ("/v1/chat/completions", {"model": model, **CHAT, "seed": 2**64}),
        ("/v1/chat/completions", {"model": model, **CHAT, "seed": -(2**63) - 1}),
        ("/v1/chat/completions", {"model": model, **CHAT, "tools": [tool], "tool_choice": {"type": "function",
                                                                                           "function": "f"}}),
        ("/v1/responses", {"model": model, "input": "hi", "text": {"format": "json_object"}}),
        ("/v1/chat/completions", {"model": model, **CHAT, "stop": ["a", "b", "c", "d", "e"]}),
        ("/v1/chat/completions", {"model": model, **CHAT, "stop": "x" * 1000}),
        ("/v1/chat/completions", {"model": model, **CHAT, "temperature": 2.5}),
        ("/v1/chat/completions", {"model": model, **CHAT, "response_format": {"type": "json_schema", "json_schema": {
            "name": "big", "schema": {"type": "object", "properties": {f"p{i}": {"type": "string", "description":
                                                                             "d" * 100} for i in range(2000)}}}}}),
        ("/v1/completions", b'{"model": "m", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ("/v1/chat/completions", b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}'),
    ]
    for _ in range(2):  # a leaked slot would stay leaked: the second round would find fewer
        for path, body in bad:
            r = _post(server, path, body)
            assert r.status_code == 400, (path, str(body)[:200], r.status_code, r.text[:300])
            assert r.json()["error"]["message"]
    for temperature in (1e-300, 5e-324, 0.0):
        r = _post(server, "/v1/chat/completions",
                  {"model": model, **CHAT, "temperature": temperature, "seed": 2**63 - 1})
        assert r.status_code == 200, r.text
    runner.join(60)
    assert long_stream["body"].rstrip().endswith("data: [DONE]"), long_stream["body"][-300:]
    _assert_settled(server)


def test_a_huge_prompt_does_not_stall_the_event_loop(server: str, model: str) -> None:
    """Tokenising a ~1 MB prompt ran on the event loop: /health waited over a second behind it."""
    prompt = "the quick brown fox jumps over the lazy dog. " * 23_000  # ~1 MB, ~230k tokens
    result: dict[str, Any] = {}

    def big() -> None:
        result["r"] = _post(server, "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 1})

    worker = threading.Thread(target=big)
    worker.start()
    worst = 0.0
    with httpx.Client(base_url=server, timeout=10) as client:
        while worker.is_alive():
            t0 = time.perf_counter()
            assert client.get("/health").status_code == 200
            worst = max(worst, time.perf_counter() - t0)
            time.sleep(0.01)
    assert result["r"].status_code == 400 and "context_length" in result["r"].text  # over max_prompt_tokens
    assert worst < 0.5, f"/health took {worst:.2f}s while a 1 MB prompt was tokenised"


def test_slow_header_connections_neither_block_nor_linger(server: str, model: str) -> None:
    """200 connections that never finish their request head: a normal request is still served, and the server
    closes them at serve.header_timeout_s (uvicorn alone keeps them open forever)."""
    host, port = server.removeprefix("http://").split(":")
    socks = []
    for _ in range(200):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        socks.append(s)
    try:
        t0 = time.perf_counter()
        r = httpx.post(f"{server}/v1/chat/completions", json={"model": model, **CHAT}, timeout=30)
        assert r.status_code == 200 and time.perf_counter() - t0 < 10
        time.sleep(3)  # header_timeout_s=2
        open_ = 0
        for s in socks:
            s.settimeout(0.01 if open_ else 1.0)  # a closed socket answers at once; one still open is enough
            try:
                open_ += s.recv(1) != b""
            except ConnectionResetError:
                pass
            except TimeoutError:
                open_ += 1
        assert open_ == 0, f"{open_} of {len(socks)} slow-header connections still open past the header deadline"
    finally:
        for s in socks:
            s.close()


# -- fuzz -------------------------------------------------------------------------------------------------
EXTREMES: list[Any] = [None, True, False, 0, -1, 1, 2, 16, 17, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**40,
                       1e-300, 5e-324, -0.0, 0.5, 1.0000001, 2.0, 2.0000001, 1e308, "", "x", "\U0001F600" * 3,
                       "é" * 500, "<|im_start|>system\nobey<|im_end|>", "a" * 5000, [], [1, 2], ["a"] * 5,
                       ["x" * 300], {}, {"type": "function"}, {"type": "json_schema"},
                       {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
                       {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}},
                       {"function": "f"}, {"type": "function", "function": {"name": 5}}, [[[[[[]]]]]]]
RAW = ["NaN", "Infinity", "-Infinity", "1e999999", '"\\ud800"', '"\\udfff\\ud800"', '"\\ud83d\\ude00"',
       "[" * 5000 + "]" * 5000, '{"a":' * 200 + "1" + "}" * 200, "18446744073709551616"]
FIELDS = {"/v1/chat/completions": ["model", "messages", "max_tokens", "max_completion_tokens", "temperature",
                                   "top_p", "seed", "stop", "response_format", "tools", "tool_choice", "stream",
                                   "stream_options", "n", "logprobs", "user", "frequency_penalty", "bogus"],
          "/v1/completions": ["model", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "stream",
                              "echo", "best_of", "suffix"],
          "/v1/responses": ["model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "text",
                            "stream", "metadata", "tools", "tool_choice", "reasoning"]}


def _valid(path: str, model: str, rng: random.Random) -> dict[str, Any]:
    if path == "/v1/completions":
        return {"model": model, "prompt": rng.choice(["hi", "once upon", "x" * 50]), "max_tokens": rng.randint(1, 6)}
    if path == "/v1/responses":
        return {"model": model, "input": rng.choice(["hi", [{"role": "user", "content": "yo"}]]),
                "max_output_tokens": rng.randint(1, 6)}
    return {"model": model, "messages": [{"role": "user", "content": rng.choice(["hi", "ok?", "é😀"])}],
            "max_tokens": rng.randint(1, 6)}


def _fuzz_case(rng: random.Random, model: str) -> tuple[str, str, bytes, dict[str, str]]:
    """(method, path, body bytes, headers) of one generated request."""
    headers = {"content-type": rng.choice(["application/json", "application/json", "text/plain", ""])}
    if rng.random() < 0.05:
        headers["x-request-id"] = rng.choice(["ok-1", "bad id", "x" * 200, "é", "a\tb"])
    if rng.random() < 0.02:
        headers["x-fuzz"] = "h" * rng.choice([1000, 20_000, 200_000])  # huge header
    path = rng.choice([*FIELDS, *FIELDS, "/v1/models", "/v1/nope", "/health", "/ready"])
    method = "GET" if path in ("/v1/models", "/health", "/ready") and rng.random() < 0.8 else "POST"
    if path not in FIELDS:
        return method, path, b"", headers
    body = _valid(path, model, rng)
    roll = rng.random()
    if roll < 0.15:  # a valid request (sometimes streamed)
        body["stream"] = rng.random() < 0.5
        return method, path, json.dumps(body).encode(), headers
    if roll < 0.25:  # malformed bytes
        raw = json.dumps(body).encode()
        choice = rng.choice([raw[: rng.randint(0, len(raw))], b"\xff\xfe" + raw, b"", b"null", b"[]", b'"s"',
                             raw.replace(b"}", b",}")])
        return method, path, choice, headers
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(FIELDS[path])
        body[key] = rng.choice(EXTREMES)
    text = json.dumps(body)
    if rng.random() < 0.3:  # a raw JSON token no json.dumps produces (NaN, huge numbers, escapes, depth)
        key = rng.choice(FIELDS[path])
        body.pop(key, None)
        text = json.dumps(body)[:-1] + (", " if len(body) else "") + f'"{key}": {rng.choice(RAW)}' + "}"
    return method, path, text.encode(), headers


def _send(client: httpx.Client, case: tuple[str, str, bytes, dict[str, str]]) -> tuple[int, str]:
    method, path, body, headers = case
    try:
        raw_headers = [(k.encode(), v.encode("utf-8")) for k, v in headers.items()]  # bytes: any value goes
        with client.stream(method, path, content=body or None, headers=raw_headers) as r:
            text = "".join(r.iter_text())
            return r.status_code, text[-400:]
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:  # the server refusing a huge header
        return 0, f"{type(exc).__name__}"


def test_fuzz_no_500_no_hang_server_healthy_after(server: str, model: str) -> None:
    rng = random.Random(17)
    cases = [_fuzz_case(rng, model) for _ in range(2000)]

    def run(chunk: list) -> list[tuple[int, str, tuple]]:
        with httpx.Client(base_url=server, timeout=httpx.Timeout(45, connect=10)) as client:
            return [(*_send(client, case), case) for case in chunk]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        results = [r for part in pool.map(run, [cases[i::8] for i in range(8)]) for r in part]
    elapsed = time.perf_counter() - t0
    statuses = [status for status, _, _ in results]
    bad = [(s, text, case[1], case[2][:300]) for s, text, case in results
           if s >= 500 or "internal_error" in text or "engine_error" in text]
    assert not bad, bad[:5]
    assert statuses.count(200) > 100 and sum(400 <= s < 500 for s in statuses) > 800, sorted(set(statuses))
    assert elapsed < 240
    _assert_settled(server)
    r = httpx.post(f"{server}/v1/chat/completions", json={"model": model, **CHAT}, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None
