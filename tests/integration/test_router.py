"""The router in front of real tiny-model servers (separate processes): the split is exact within sampling
error and changes live without dropping streams in flight, sessions stick, streams pass through as they are
generated, request ids propagate, the admin API needs its token, a dead backend is a fast 502, /admin/window
counts a faulty canary's errors, shadow answers are scored but never returned, hooks get every request and
/metrics is labelled by side. One set of servers for the module; the router runs in-process (for its hooks)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx2 as httpx
import pytest
import uvicorn

from llmops.modeling.tiny import build_tiny_model
from serving.records import RequestRecord
from tests.serve_process import REPO, free_port, running_server

pytestmark = pytest.mark.slow  # real server processes

TOKEN = "test-admin-token"
SETS = ("serve.max_concurrent=8", "serve.queue_size=64", "serve.max_len=512")
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "model"  # the tiny model's directory name, which the server serves it as


@pytest.fixture(scope="module")
def servers(tiny_model_dir: Path, base_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """stable (tiny model), canary (another tiny model: different answers), faulty (every request a 500)."""
    tmp = tmp_path_factory.mktemp("router")
    other = _different_model(build_tiny_model(tmp / "other" / MODEL, tokenizer_dir=base_tokenizer_dir, seed=7))
    assert tiny_model_dir.name == MODEL  # both sides serve the same model name, as two versions of one model do
    specs = {"stable": (tiny_model_dir, {}), "canary": (other, {}),
             "faulty": (tiny_model_dir, {"LLMOPS_SERVE_FAULTS": "error_rate=1.0"})}
    with ExitStack() as stack:
        cms = {k: running_server(str(m), tmp / f"{k}.log", sets=SETS, env=env, ready_timeout=600)
               for k, (m, env) in specs.items()}  # 600 s: three model servers loading at once on shared cores
        with ThreadPoolExecutor(len(cms)) as pool:  # start the three at once: model loading overlaps
            futures = {k: pool.submit(cm.__enter__) for k, cm in cms.items()}
            for cm in cms.values():
                stack.push(cm.__exit__)
            urls = {k: f.result() for k, f in futures.items()}
        yield urls


def _different_model(model_dir: Path) -> Path:
    """A tiny random model's logits are nearly flat, so two of them answer alike; scaled weights do not."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(25)
    model.save_pretrained(model_dir, safe_serialization=True)
    return model_dir


class _InProcessRouter:
    def __init__(self, app) -> None:
        self.app, self.port = app, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _InProcessRouter:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "router did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture(scope="module")
def router(servers):
    from llmops.settings import get_settings
    from serving.router import create_router_app

    records: list[RequestRecord] = []

    async def slow_durable_hook(record: RequestRecord) -> None:  # an inference log that group-commits
        await asyncio.sleep(0.05)
        records.append(record)

    params = get_settings().params().router
    app = create_router_app(params, stable=servers["stable"], canary=servers["canary"], token=TOKEN,
                            hooks=[slow_durable_hook], seed=1)
    with _InProcessRouter(app) as r:
        r.records = records
        yield r


@pytest.fixture(autouse=True)
def _reset(request: pytest.FixtureRequest) -> None:
    """Every router test starts from: stable + canary, weight 0, no shadow."""
    if "router" in request.fixturenames:
        servers, router = request.getfixturevalue("servers"), request.getfixturevalue("router")
        set_backends(router.url, servers["stable"], servers["canary"], 0, shadow=0)


def set_backends(url: str, stable: str, canary: str | None, percent: int, shadow: int | None = None) -> dict:
    body = {"stable": stable, "canary": canary, "canary_percent": percent}
    if shadow is not None:
        body["shadow_percent"] = shadow
    r = httpx.put(f"{url}/admin/backends", json=body, headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def set_weight(url: str, percent: int) -> None:
    r = httpx.put(f"{url}/admin/weight", json={"canary_percent": percent}, headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text


def chat(url: str, content: str = "hi", max_tokens: int = 2, headers: dict | None = None,
         client: httpx.Client | None = None, **extra) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, **extra}
    return (client or httpx).post(f"{url}/v1/chat/completions", json=body, headers=headers or {}, timeout=60)


def test_weights_exact_within_sampling_error_and_live(router) -> None:
    set_weight(router.url, 25)
    with httpx.Client() as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: chat(router.url, f"q{i}", 1, client=client), range(200)))
    assert {r.status_code for r in answers} == {200}
    n = Counter(r.headers["x-llmops-side"] for r in answers)["canary"]
    # binomial(200, 0.25): mean 50, sd 6.1 -> 4 sd; the router's blocks of 100 make it exactly 50
    assert 26 <= n <= 74 and n == 50, n
    set_weight(router.url, 0)
    assert {chat(router.url).headers["x-llmops-side"] for _ in range(10)} == {"stable"}
    set_weight(router.url, 100)
    assert {chat(router.url).headers["x-llmops-side"] for _ in range(10)} == {"canary"}


def test_live_changes_drop_no_stream_in_flight(router, servers) -> None:
    def stream(i: int) -> tuple[int, str, int]:
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"count {i}"}], "max_tokens": 60,
                "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{router.url}/v1/chat/completions", json=body, timeout=120) as r:
            text = r.read().decode()
        chunks = [json.loads(line[6:]) for line in text.splitlines()
                  if line.startswith("data: {")]
        tokens = sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content"))
        return r.status_code, text.rstrip().rsplit("\n", 1)[-1], tokens

    set_weight(router.url, 50)
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(stream, i) for i in range(12)]
        time.sleep(0.3)
        for percent in (0, 100, 10):
            set_weight(router.url, percent)
            time.sleep(0.1)
        set_backends(router.url, servers["canary"], None, 0)  # a promotion while streams run
        results = [f.result() for f in futures]
    assert all(status == 200 and last == "data: [DONE]" for status, last, _ in results), results
    assert all(tokens > 0 for *_, tokens in results)


def test_sticky_sessions_hold_while_weight_does_not_move_past_them(router) -> None:
    from serving.router.split import session_bucket

    set_weight(router.url, 30)
    sessions = [f"user-{i}" for i in range(20)]
    with httpx.Client() as client:
        def sides() -> dict[str, set[str]]:
            return {s: {chat(router.url, headers={"x-llmops-session": s}, client=client).headers["x-llmops-side"]
                        for _ in range(2)} for s in sessions}

        before = sides()
        assert all(len(v) == 1 for v in before.values())  # one side per session
        assert {s for s, v in before.items() if v == {"canary"}} == {s for s in sessions if session_bucket(s) < 30}
        set_weight(router.url, 60)
        after = sides()
    assert all(after[s] == {"canary"} for s, v in before.items() if v == {"canary"})  # canary sessions stay
    assert all(len(v) == 1 for v in after.values())


def test_stream_passes_through_as_generated(router, servers) -> None:
    set_backends(router.url, servers["stable"], None, 0)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "tell me more"}], "max_tokens": 300,
            "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    stamps, text = [], []
    with httpx.stream("POST", f"{router.url}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                assert chunk["choices"], "the usage chunk the router asked for must not reach the client"
                if chunk["choices"][0]["delta"].get("content"):
                    stamps.append(time.perf_counter() - t0)
                    text.append(chunk["choices"][0]["delta"]["content"])
    total = time.perf_counter() - t0
    assert len(stamps) > 100
    assert stamps[0] < 0.5 * total, (stamps[0], total)  # the first token did not wait for the last one
    direct = chat(servers["stable"], "tell me more", 300).json()["choices"][0]["message"]["content"]
    assert "".join(text) == direct


def test_request_id_propagates_and_hooks_get_records(router, servers) -> None:
    router.records.clear()
    r = chat(router.url, "hello", 3, headers={"x-request-id": "trace-abc-1", "x-llmops-session": "s1"})
    assert r.headers["x-request-id"] == "trace-abc-1"  # echoed by the model server the router sent it to
    assert r.headers["x-llmops-side"] == "stable" and r.headers["x-llmops-model-version"] == ""
    # the hook is awaited before the body is sent: the record is there as soon as the response is
    [rec] = [x for x in router.records if x.request_id == "trace-abc-1"]
    assert rec.side == "stable" and rec.session == "s1" and rec.status == 200 and rec.completion_tokens == 3
    assert rec.response == r.json()["choices"][0]["message"]["content"]
    assert rec.prompt == [{"role": "user", "content": "hello"}] and rec.time <= time.time()
    body = {"model": MODEL, "prompt": "abc", "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{router.url}/v1/completions", json=body, timeout=60,
                      headers={"x-request-id": "trace-abc-2"}) as s:
        assert s.headers["x-request-id"] == "trace-abc-2"
        text = s.read().decode()
        [srec] = [x for x in router.records if x.request_id == "trace-abc-2"]  # before [DONE] reached us
    assert text.rstrip().endswith("data: [DONE]") and '"usage"' not in text
    assert srec.completion_tokens == 4 and srec.ttft_s is not None and srec.latency_s >= srec.ttft_s
    generated = re.sub(r"\s", "", "".join(json.loads(line[6:])["choices"][0]["text"]
                                         for line in text.splitlines() if line.startswith("data: {")))
    assert re.sub(r"\s", "", srec.response) == generated


def test_admin_needs_token(router) -> None:
    assert httpx.get(f"{router.url}/admin/state").status_code == 401
    assert httpx.put(f"{router.url}/admin/weight", json={"canary_percent": 50},
                     headers={"Authorization": "Bearer wrong"}).status_code == 403
    state = httpx.get(f"{router.url}/admin/state", headers=AUTH).json()
    assert state["canary_percent"] == 0 and state["canary"]["url"]
    bad = httpx.put(f"{router.url}/admin/weight", json={"canary_percent": 101}, headers=AUTH)
    assert bad.status_code == 400 and "0 to 100" in bad.json()["error"]["message"]


def test_window_counts_a_faulty_canary(router, servers) -> None:
    since = time.time()
    set_backends(router.url, servers["stable"], servers["faulty"], 50)
    statuses = Counter()
    for i in range(20):
        r = chat(router.url, f"w{i}")
        statuses[(r.headers["x-llmops-side"], r.status_code)] += 1
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "stream": True}
    set_weight(router.url, 100)
    streamed = httpx.post(f"{router.url}/v1/chat/completions", json=body, timeout=30)
    assert streamed.status_code == 500 and "injected fault" in streamed.json()["error"]["message"]
    n_canary, n_stable = statuses[("canary", 500)], statuses[("stable", 200)]
    assert n_canary + n_stable == 20 and n_canary > 0 and n_stable > 0  # canary always 500, stable always 200
    window = httpx.get(f"{router.url}/admin/window", params={"since": since, "until": time.time() + 1},
                       headers=AUTH).json()
    assert window["canary"]["requests"] == n_canary + 1 and window["canary"]["errors"] == n_canary + 1
    assert window["stable"]["requests"] == n_stable and window["stable"]["errors"] == 0
    assert window["stable"]["latency_p95_s"] >= window["stable"]["latency_p50_s"] > 0
    assert window["canary"]["latency_p50_s"] is None  # failures have no serving latency
    empty = httpx.get(f"{router.url}/admin/window", params={"since": 0, "until": since - 60}, headers=AUTH).json()
    assert empty["stable"]["requests"] == 0


def test_shadow_is_scored_never_returned(router, servers) -> None:
    seeded = {"temperature": 1.0, "seed": 11}  # the same answer every time from one model, another from the other
    direct = {i: chat(servers["stable"], f"shadow {i}", 8, **seeded).json()["choices"][0]["message"]["content"]
              for i in range(6)}
    canary_answer = chat(servers["canary"], "shadow 0", 8, **seeded).json()["choices"][0]["message"]["content"]
    assert canary_answer != direct[0]  # a different model: returning its answer would show
    set_backends(router.url, servers["stable"], servers["canary"], 0, shadow=100)
    for i in range(6):
        r = chat(router.url, f"shadow {i}", 8, **seeded)
        assert r.headers["x-llmops-side"] == "stable" and r.json()["choices"][0]["message"]["content"] == direct[i]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = httpx.get(f"{router.url}/metrics").text
        scored = re.search(r'llmops_router_shadow_requests_total\{[^}]*outcome="scored"[^}]*\} ([0-9.]+)', text)
        if scored and float(scored.group(1)) >= 6:
            break
        time.sleep(0.2)
    assert scored and float(scored.group(1)) >= 6, text
    assert re.search(r"llmops_router_shadow_rouge_l_count\{[^}]*\} [1-9]", text)
    mean = re.search(r"llmops_router_shadow_rouge_l_sum\{[^}]*\} ([0-9.e+-]+)", text)
    assert float(mean.group(1)) / float(scored.group(1)) < 1.0  # scored against a different answer


def test_metrics_labelled_by_side_and_version(router) -> None:
    set_weight(router.url, 50)
    for i in range(4):
        chat(router.url, f"m{i}")
    text = httpx.get(f"{router.url}/metrics").text
    for side in ("stable", "canary"):
        assert re.search(rf'llmops_router_requests_total\{{[^}}]*side="{side}"[^}}]*\}} [1-9]', text), side
        assert re.search(rf'llmops_router_request_latency_seconds_count\{{[^}}]*side="{side}"', text)
    assert 'model_version="' in text and "llmops_router_canary_weight_percent 50.0" in text


def test_cli_router_process_and_dead_backend(tmp_path: Path) -> None:
    """`llmops router --json` as a real process: its startup line, then a dead stable backend is a fast 502."""
    dead, port = f"http://127.0.0.1:{free_port()}", free_port()
    env = {**os.environ, "LLMOPS_ROUTER_ADMIN_TOKEN": TOKEN, "LLMOPS_STATE_DIR": str(tmp_path)}
    log = tmp_path / "router.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "router", "--stable", dead, "--port",
                                 str(port), "--json"], stdout=subprocess.PIPE, stderr=err, cwd=REPO, env=env, text=True)
    try:
        lines = []
        while not lines or lines[-1].strip() != "}":  # --json: one JSON document on stdout, people's text on stderr
            line = proc.stdout.readline()
            assert line, f"router exited: {''.join(lines)}{log.read_text()}"
            lines.append(line)
        info = json.loads("".join(lines))
        assert info["stable"]["url"] == dead and info["canary"] is None
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"{url}/health", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert health.status_code == 200 and httpx.get(f"{url}/ready").status_code == 503
        t0 = time.perf_counter()
        r = chat(url)
        assert r.status_code == 502 and time.perf_counter() - t0 < 5
        assert "unreachable" in r.json()["error"]["message"] and dead in r.json()["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_client_leaving_a_stream_frees_the_backend_slot(router, servers) -> None:
    set_backends(router.url, servers["stable"], None, 0)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "go on"}], "max_tokens": 400, "stream": True}
    with httpx.stream("POST", f"{router.url}/v1/chat/completions", json=body, timeout=60) as r:
        for i, _line in enumerate(r.iter_lines()):
            if i > 4:
                break  # leave mid-stream
    deadline = time.monotonic() + 20
    while httpx.get(f"{servers['stable']}/ready", timeout=10).json()["scheduler"]["running"]:
        assert time.monotonic() < deadline, "the backend kept generating for a client that left"
        time.sleep(0.2)
    text = httpx.get(f"{router.url}/metrics").text
    assert re.search(r'llmops_router_requests_total\{[^}]*status="499"[^}]*\} [1-9]', text)
