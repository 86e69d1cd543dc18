"""Endpoint auth on a real server: with a key (here from a key file) every /v1 route needs the bearer token
(401 otherwise), /health, /ready and /metrics stay open. Without a key (test_server_openai.py) no token
is needed."""

from __future__ import annotations

import time
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from cli.serve import read_api_key
from tests.serve_process import running_server

pytestmark = pytest.mark.slow  # a real server process per module

KEY = "sk-test-0123456789abcdef"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("serve-auth")
    key_file = tmp / "api-key"
    key_file.write_text(KEY + "\n")
    with running_server(str(tiny_model_dir), tmp / "server.log", env={"LLMOPS_API_KEY_FILE": str(key_file)},
                        sets=("serve.max_concurrent=2",)) as url:
        yield url


def test_v1_routes_need_the_key(server: str, tiny_model_dir: Path) -> None:
    body = {"model": tiny_model_dir.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.post(f"{server}/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer" and r.headers["x-request-id"]
    assert httpx.get(f"{server}/v1/models", timeout=30).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    assert client.models.list().data[0].id == tiny_model_dir.name
    assert client.chat.completions.create(**body).usage.completion_tokens == 2
    for open_route in ("/health", "/ready", "/metrics"):
        assert httpx.get(f"{server}{open_route}", timeout=30).status_code == 200


def test_read_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmops.errors import LlmopsError

    monkeypatch.setenv("MY_KEY", "from-env")
    assert read_api_key("MY_KEY", None) == "from-env"
    monkeypatch.delenv("MY_KEY")
    assert read_api_key("MY_KEY", None) is None  # no key: auth off
    (tmp_path / "k").write_text("\n")
    with pytest.raises(LlmopsError, match="empty"):
        read_api_key("MY_KEY", tmp_path / "k")


def test_wrong_keys_are_limited_per_address(server: str, tiny_model_dir: Path) -> None:
    """Last in the module: it spends this address's tries. Before, a client could try keys as fast as the
    server answered 401s; now serve.auth_failures (20) wrong keys in a burst, then 429 + Retry-After, and while
    refused even the right key is not compared (no oracle)."""
    body = {"model": tiny_model_dir.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    statuses, t0 = [], time.monotonic()
    for i in range(40):
        r = httpx.post(f"{server}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer guess-{i}"},
                       timeout=30)
        statuses.append(r.status_code)
        if r.status_code == 429:
            break
    refilled = (time.monotonic() - t0) * 20 / 60  # serve.auth_failures per serve.auth_window_s
    assert statuses[-1] == 429 and set(statuses[:-1]) == {401}, statuses
    assert len(statuses) - 1 <= 20 + refilled + 1, statuses
    assert r.json()["error"]["code"] == "rate_limit_exceeded" and int(r.headers["retry-after"]) >= 1
    right = httpx.post(f"{server}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                       timeout=30)
    assert right.status_code == 429  # refused unchecked: a right guess looks like a wrong one
    assert httpx.get(f"{server}/health", timeout=30).status_code == 200
    assert 'llmops_rejected_total{reason="auth_limited"}' in httpx.get(f"{server}/metrics", timeout=30).text
