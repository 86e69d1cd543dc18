"""The model server as a real process over the tiny model, driven by the official `openai` client:
chat, completions, streaming, usage, request ids, models.list, strict JSON-schema output, a forced tool
call, the Responses API, continuous batching (interleaving), overload (429s), bad requests (4xx, server
keeps serving), a disconnecting client freeing its slot. One server for the whole module."""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import jsonschema
import openai
import pytest

from tests.serve_process import running_server

pytestmark = pytest.mark.slow  # a real server process per module

MAX_CONCURRENT = 4
QUEUE = 2
SETS = (f"serve.max_concurrent={MAX_CONCURRENT}", f"serve.queue_size={QUEUE}", "serve.max_prompt_tokens=200",
        "serve.max_tokens=1800", "serve.max_body_bytes=65536", "serve.request_timeout_s=60")


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with running_server(str(tiny_model_dir), log, sets=SETS) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model_id(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def scheduler(server: str) -> dict:
    return httpx.get(f"{server}/ready", timeout=10).json()["scheduler"]


def metric(server: str, name: str) -> float:
    text = httpx.get(f"{server}/metrics", timeout=10).text
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


def test_models_list_and_health(server: str, client: openai.OpenAI, tiny_model_dir: Path) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [tiny_model_dir.name]
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server}/ready").json()
    assert ready["ready"] is True and ready["engine"]["kind"] == "eager"


def test_chat_completion_usage_and_request_id(client: openai.OpenAI, model_id: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=model_id, messages=[{"role": "user", "content": "Say hi"}], max_tokens=6, temperature=0,
        extra_headers={"x-request-id": "test-req-42"})
    assert raw.headers["x-request-id"] == "test-req-42"
    chat = raw.parse()
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason == "length"  # a random model never says eos in 6 tokens
    assert chat.usage.completion_tokens == 6 and chat.usage.prompt_tokens > 5
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + 6
    # greedy is deterministic; a generated request id is on every response
    again = client.chat.completions.with_raw_response.create(
        model=model_id, messages=[{"role": "user", "content": "Say hi"}], max_tokens=6, temperature=0)
    assert re.fullmatch(r"req_[0-9a-f]{32}", again.headers["x-request-id"])
    assert again.parse().choices[0].message.content == chat.choices[0].message.content


def test_seeded_sampling_reproduces(client: openai.OpenAI, model_id: str) -> None:
    def run(seed: int) -> str:
        return client.completions.create(model=model_id, prompt="Once upon", max_tokens=8, temperature=1.0,
                                         top_p=0.9, seed=seed).choices[0].text
    assert run(7) == run(7)


def test_completion_and_stop(client: openai.OpenAI, model_id: str) -> None:
    out = client.completions.create(model=model_id, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert out.object == "text_completion" and out.usage.completion_tokens == 5 and out.choices[0].text
    # a stop string taken from the greedy continuation cuts the text before it
    full = client.completions.create(model=model_id, prompt="Hello", max_tokens=12, temperature=0).choices[0].text
    stop = full.strip()[len(full.strip()) // 2:][:3]
    cut = client.completions.create(model=model_id, prompt="Hello", max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].text
    assert full.startswith(cut.choices[0].text)


def test_streaming_chat_and_completion(server: str, client: openai.OpenAI, model_id: str) -> None:
    chunks = list(client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Count"}], max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 10
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    plain = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Count"}],
                                           max_tokens=10, temperature=0)
    assert text == plain.choices[0].message.content
    comp = list(client.completions.create(model=model_id, prompt="abc", max_tokens=4, stream=True, temperature=0))
    assert comp[-1].choices[0].finish_reason == "length"
    # the wire format ends with data: [DONE]
    with httpx.stream("POST", f"{server}/v1/chat/completions", timeout=60, json={
            "model": model_id, "messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "stream": True}) as r:
        body = r.read().decode()
    assert body.rstrip().endswith("data: [DONE]")


def test_strict_json_schema_output(client: openai.OpenAI, model_id: str) -> None:
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "age", "admin", "role"],
              "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"},
                             "admin": {"type": "boolean"}, "role": {"enum": ["user", "owner"]}}}
    for temperature in (0.0, 1.0):
        out = client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "Give me a user as JSON"}], max_tokens=120,
            temperature=temperature, seed=3,
            response_format={"type": "json_schema", "json_schema": {"name": "user", "schema": schema, "strict": True}})
        assert out.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(out.choices[0].message.content), schema)
    obj = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "JSON please"}],
                                         max_tokens=120, temperature=0, response_format={"type": "json_object"})
    assert obj.choices[0].message.content.startswith("{")


def test_forced_tool_call(client: openai.OpenAI, model_id: str) -> None:
    params = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
              "properties": {"city": {"type": "string", "maxLength": 16}, "unit": {"enum": ["c", "f"]}}}
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                               "parameters": params}}]
    out = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Weather in Paris?"}], max_tokens=120, tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=0)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), params)
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "x"}], tools=tools,
                                       max_tokens=5)


def test_responses_api(client: openai.OpenAI, model_id: str) -> None:
    resp = client.responses.create(model=model_id, input="Say hello", instructions="Be brief",
                                   max_output_tokens=8, temperature=0)
    assert resp.object == "response" and resp.status == "incomplete" and resp.output_text
    assert resp.usage.output_tokens == 8
    events = list(client.responses.create(model=model_id, input=[{"role": "user", "content": "Say hello"}],
                                          instructions="Be brief", max_output_tokens=8, temperature=0, stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.incomplete"
    assert "response.output_text.delta" in types and "response.output_text.done" in types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == resp.output_text
    schema = {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}},
              "additionalProperties": False}
    structured = client.responses.create(model=model_id, input="ok?", max_output_tokens=40, text={
        "format": {"type": "json_schema", "name": "ok", "schema": schema, "strict": True}})
    assert structured.status == "completed"
    jsonschema.validate(json.loads(structured.output_text), schema)


def test_concurrent_streams_interleave(client: openai.OpenAI, model_id: str) -> None:
    """Continuous batching: a short request that starts after a long one finishes first."""
    finished: dict[str, float] = {}
    long_started = threading.Event()

    def long() -> None:
        stream = client.completions.create(model=model_id, prompt="long", max_tokens=600, temperature=0, stream=True)
        for i, _ in enumerate(stream):
            if i == 2:
                long_started.set()
        finished["long"] = time.monotonic()

    t = threading.Thread(target=long)
    t.start()
    assert long_started.wait(60)
    short = client.completions.create(model=model_id, prompt="short", max_tokens=4, temperature=0)
    finished["short"] = time.monotonic()
    t.join(120)
    assert short.usage.completion_tokens == 4
    assert finished["short"] < finished["long"]


def test_overload_gives_429_and_every_request_an_answer(server: str, model_id: str) -> None:
    total = MAX_CONCURRENT + QUEUE + 6

    def one(i: int) -> tuple[int, str | None]:
        r = httpx.post(f"{server}/v1/completions", timeout=120, json={
            "model": model_id, "prompt": f"req {i}", "max_tokens": 300, "temperature": 0})
        return r.status_code, r.headers.get("retry-after")

    with ThreadPoolExecutor(total) as pool:
        results = list(pool.map(one, range(total)))
    codes = [c for c, _ in results]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) >= 1 and codes.count(200) >= MAX_CONCURRENT
    assert all(ra and int(ra) >= 1 for c, ra in results if c == 429)
    assert metric(server, "llmops_rejected_total") >= codes.count(429)


def test_bad_requests_get_4xx_and_server_keeps_serving(server: str, client: openai.OpenAI, model_id: str) -> None:
    url = f"{server}/v1/chat/completions"
    ok = {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    cases = [
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "malformed JSON"),
        (dict(json={**ok, "temperature": "hot"}), 400, "temperature"),
        (dict(json={**ok, "messages": "hi"}), 400, "messages"),
        (dict(json={**ok, "model": "no-such-model"}), 404, "no-such-model"),
        (dict(json={**ok, "messages": []}), 400, "messages must not be empty"),
        (dict(json={**ok, "messages": [{"role": "user", "content": "word " * 400}]}), 400, "over the limit"),
        (dict(json={**ok, "max_tokens": 5000}), 400, "max_tokens"),
        (dict(json={**ok, "n": 2}), 400, "'n'"),
        (dict(json={**ok, "logprobs": True}), 400, "logprobs"),
        (dict(json={**ok, "frobnicate": 1}), 400, "frobnicate"),
        (dict(json={**ok, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}}),
         400, "schema"),
        (dict(json={**ok, "pad": "x" * 70000}), 413, "limit"),
    ]
    for kwargs, status, needle in cases:
        r = httpx.post(url, timeout=30, **kwargs)
        assert r.status_code == status, (needle, r.status_code, r.text)
        err = r.json()["error"]
        assert needle in err["message"] or needle.strip("'") == err.get("param"), (needle, err)
        assert "\n" not in err["message"] and r.headers["x-request-id"]
        assert client.completions.create(model=model_id, prompt="still there?", max_tokens=2).usage.completion_tokens
    text = httpx.get(f"{server}/metrics").text
    assert re.search(r'llmops_requests_total\{model="[^"]+",route="/v1/chat/completions",status="400"\} [1-9]', text)


def test_disconnecting_client_frees_its_slot(server: str, model_id: str) -> None:
    before = metric(server, "llmops_completion_tokens_total")
    with httpx.stream("POST", f"{server}/v1/completions", timeout=60, json={
            "model": model_id, "prompt": "go on", "max_tokens": 1800, "temperature": 0, "stream": True}) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data:") for line in got)
        assert scheduler(server)["running"] == 1
    # the connection is closed here, mid-stream
    deadline = time.monotonic() + 10
    while scheduler(server)["running"] != 0:
        assert time.monotonic() < deadline, "the slot of a disconnected client was not freed"
        time.sleep(0.05)
    generated = metric(server, "llmops_completion_tokens_total") - before
    assert 0 < generated < 1800
    assert scheduler(server)["free_slots"] == MAX_CONCURRENT


def test_disconnecting_non_streaming_client_frees_its_slot(server: str, model_id: str) -> None:
    """A plain (non-streaming) request whose client closes the connection mid-generation: the slot frees
    at once, not when its 1800 tokens are done."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(server)
    body = json.dumps({"model": model_id, "prompt": "go on", "max_tokens": 1800, "temperature": 0}).encode()
    steps_before = scheduler(server)["steps"]
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        deadline = time.monotonic() + 10
        while scheduler(server)["running"] != 1:
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.02)
    # the connection is closed here, before any answer
    deadline = time.monotonic() + 10
    while scheduler(server)["running"] != 0:
        assert time.monotonic() < deadline, "the slot of a disconnected non-streaming client was not freed"
        time.sleep(0.05)
    state = scheduler(server)
    assert state["free_slots"] == MAX_CONCURRENT
    # freed by the disconnect, not by running to max_tokens (it was the only request: one decode step per token)
    assert state["steps"] - steps_before < 1500


def test_metrics_exposed(server: str) -> None:
    text = httpx.get(f"{server}/metrics").text
    for name in ("llmops_requests_total", "llmops_request_latency_seconds_bucket",
                 "llmops_time_to_first_token_seconds_bucket", "llmops_inter_token_latency_seconds_bucket",
                 "llmops_prompt_tokens_total", "llmops_completion_tokens_total", "llmops_queue_depth",
                 "llmops_running_sequences", "llmops_decode_batch_size_bucket"):
        assert name in text, name
    assert metric(server, "llmops_decode_batch_size_count") > 0
    assert re.search(r'llmops_requests_total\{model="[^"]+",route="/v1/chat/completions",status="200"\} [1-9]', text)
