"""The inference log behind a real `llmops serve` (tiny model): feedback 200/404/400/401, and durability — the
server is SIGKILLed mid-load and every request that got a complete 200 must be in the log by its request id."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.serve_process import running_server

pytestmark = pytest.mark.slow
SETS = ("serve.max_concurrent=4", "serve.queue_size=64", "serve.default_max_tokens=6")
KEY = "feedback-test-key"


def _logged_ids(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute("SELECT request_id FROM requests")}
    finally:
        conn.close()


async def _load(url: str, acked: list[str], stop: asyncio.Event, workers: int = 12) -> None:
    """Concurrent chat requests (half streamed) until `stop`; a request is acknowledged when its complete
    200 arrived (non-streaming: the body; streaming: `data: [DONE]`)."""
    headers = {"Authorization": f"Bearer {KEY}"}

    async def worker(i: int, client: httpx.AsyncClient) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            rid = f"kill-{i}-{n}-{uuid.uuid4().hex[:8]}"
            body = {"model": "model", "max_tokens": 6, "messages": [{"role": "user", "content": f"say {i} {n}"}]}
            try:
                if n % 2:
                    r = await client.post(f"{url}/v1/chat/completions", json=body,
                                          headers={**headers, "x-request-id": rid})
                    if r.status_code == 200 and r.json()["choices"]:
                        acked.append(rid)
                else:
                    async with client.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True},
                                             headers={**headers, "x-request-id": rid}) as r:
                        done = False
                        async for line in r.aiter_lines():
                            done = done or line.strip() == "data: [DONE]"
                        if r.status_code == 200 and done:
                            acked.append(rid)
            except httpx.HTTPError:  # the server was killed under this request: not acknowledged
                if stop.is_set():
                    return
                await asyncio.sleep(0.05)

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(worker(i, client) for i in range(workers)))


def test_feedback_route_and_no_acknowledged_request_lost_on_sigkill(tiny_model_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    db = state / "inference-log.db"
    procs: list[subprocess.Popen] = []
    env = {"LLMOPS_STATE_DIR": str(state), "LLMOPS_API_KEY": KEY}
    with running_server(str(tiny_model_dir), tmp_path / "server.log", sets=SETS, env=env,
                        on_start=procs.append) as url:
        auth = {"Authorization": f"Bearer {KEY}"}
        r = httpx.post(f"{url}/v1/chat/completions", headers={**auth, "x-request-id": "fb-1"}, timeout=60,
                       json={"model": "model", "messages": [{"role": "user", "content": "What is 2+2?"}]})
        assert r.status_code == 200 and r.headers["x-request-id"] == "fb-1"
        assert "fb-1" in _logged_ids(db)  # committed before the response completed

        fb = f"{url}/v1/feedback"
        ok = httpx.post(fb, headers=auth, json={"request_id": "fb-1", "rating": -1, "correction": "4"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["rating"] == -1 and ok.json()["correction"] == "4"
        unknown = httpx.post(fb, headers=auth, json={"request_id": "never-sent", "rating": 1})
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "request_id"
        for bad in ({"request_id": "fb-1", "rating": 5}, {"request_id": "fb-1", "rating": True},
                    {"request_id": "fb-1"}, {"rating": 1}, {"request_id": "fb-1", "correction": 3},
                    {"request_id": "fb-1", "rating": 1, "extra": 1}, [1, 2]):
            r = httpx.post(fb, headers=auth, json=bad)
            assert r.status_code == 400, (bad, r.text)
        assert httpx.post(fb, headers={**auth, "content-type": "application/json"},
                          content=b"{nope").status_code == 400
        assert httpx.post(fb, json={"request_id": "fb-1", "rating": 1}).status_code == 401  # as every /v1 route
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT rating, correction FROM feedback WHERE request_id='fb-1'").fetchall() == [(-1, "4")]
        conn.close()

        acked: list[str] = []

        async def drive() -> None:
            stop = asyncio.Event()
            load = asyncio.create_task(_load(url, acked, stop))
            deadline = time.monotonic() + 120
            while len(acked) < 40 and time.monotonic() < deadline:  # well into the load, requests in flight
                await asyncio.sleep(0.02)
            os.kill(procs[0].pid, signal.SIGKILL)
            stop.set()
            await load

        asyncio.run(drive())
        assert procs[0].wait(timeout=10) == -signal.SIGKILL
    assert len(acked) >= 40
    logged = _logged_ids(db)
    lost = sorted(set(acked) - logged)
    assert not lost, f"{len(lost)} acknowledged requests missing from the log after SIGKILL: {lost[:5]}"


def _register_tiny(settings, tiny_model_dir: Path, name: str) -> tuple[str, dict[str, str]]:
    """Register the tiny model as the register step does (transformers flavour, save_pretrained, lineage tags on
    the version, champion alias); returns (version, tags)."""
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmops.lineage import collect_lineage, data_lineage
    from llmops.registry import Registry
    from llmops.tracking import configure
    from tests.serve_process import REPO

    configure(settings)
    split = REPO / "data" / "splits" / "train.jsonl"
    tags = {**collect_lineage(settings, settings.params(), kfp_run_id="kfp-run-7", mlflow_run_id="mlflow-run-9",
                              base_model_id="tiny", base_model_sha256="ab" * 32,
                              step_lineage=data_lineage(REPO, {"train": split})), "register.run_id": "reg-run-1"}
    with mlflow.start_run():
        info = mlflow.transformers.log_model({"model": AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                              "tokenizer": AutoTokenizer.from_pretrained(tiny_model_dir)},
                                             name="model", task="text-generation", save_pretrained=True,
                                             pip_requirements=["torch", "transformers"])
    mv = mlflow.register_model(info.model_uri, name, tags=tags)
    Registry(settings).set_alias(name, "champion", str(mv.version), action="promote", reason="test")
    return str(mv.version), tags


def test_router_logs_feedback_and_lineage_of_a_registered_tiny_model(settings, tiny_model_dir: Path,
                                                                     tmp_path: Path) -> None:
    """`llmops serve NAME@champion` (a registered tiny model) behind `llmops router`, both logging into one
    database: the request is there when the response arrives, as ONE row merging both (the router's side and
    session, the server's log-probability); POST /v1/feedback on the router: 200 / 404 / 400, and 401 without
    the key as on the servers; `llmops models lineage` traces the answer back to the version's commit, data
    and pipeline run."""
    import json
    import sqlite3

    from typer.testing import CliRunner

    from cli.main import app
    from serving.local_stack import LocalStack

    version, tags = _register_tiny(settings, tiny_model_dir, "lineage-tiny")
    env = {"LLMOPS_STATE_DIR": str(settings.state_dir), "LLMOPS_API_KEY": KEY, "OMP_NUM_THREADS": "1",
           "LLMOPS_API_KEY_FILE": None}
    with LocalStack(tmp_path / "logs", env=env) as stack:
        server = stack.server("server", "lineage-tiny@champion", engine="eager")
        stack.wait_ready(server)
        router = stack.router(server.url)
        stack.wait_ready(router)
        auth = {"Authorization": f"Bearer {KEY}"}
        r = httpx.post(f"{router.url}/v1/chat/completions", timeout=60,
                       headers={**auth, "x-request-id": "via-router", "x-llmops-session": "sess-1"},
                       json={"model": "lineage-tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        conn = sqlite3.connect(settings.state_dir / "inference-log.db")
        rows = conn.execute("SELECT side, session, mean_logprob, completion_tokens, model_version FROM requests "
                            "WHERE request_id='via-router'").fetchall()
        conn.close()
        assert len(rows) == 1 and rows[0][:2] == ("stable", "sess-1") and rows[0][2] is not None, rows
        assert rows[0][3:] == (r.json()["usage"]["completion_tokens"], version)

        fb = f"{router.url}/v1/feedback"
        assert httpx.post(fb, headers=auth, json={"request_id": "via-router", "rating": 1}).status_code == 200
        assert httpx.post(fb, headers=auth, json={"request_id": "unknown", "rating": 1}).status_code == 404
        assert httpx.post(fb, headers=auth, json={"request_id": "via-router", "rating": 2}).status_code == 400
        assert httpx.post(fb, json={"request_id": "via-router", "rating": 1}).status_code == 401

    runner = CliRunner()
    out = runner.invoke(app, ["models", "lineage", "via-router", "--json"])
    assert out.exit_code == 0, out.output
    lineage = json.loads(out.stdout)
    assert lineage["model"]["name"] == "lineage-tiny" and lineage["model"]["version"] == version
    assert "champion" in lineage["model"]["aliases"] and lineage["side"] == "stable"
    assert lineage["git_commit"] == tags["git.commit"] and lineage["git_commit"] != "unknown"
    assert lineage["data"]["train"] == {"md5": tags["data.train.md5"], "dvc": tags["data.train.dvc"]}
    assert lineage["pipeline"] == {"kfp_run_id": "kfp-run-7", "mlflow_run_id": "mlflow-run-9",
                                   "register_run_id": "reg-run-1"}
    shown = runner.invoke(app, ["log", "show", "via-router", "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["rating"] == 1
    unknown = runner.invoke(app, ["models", "lineage", "never-sent"])
    assert unknown.exit_code == 2 and "no logged request" in unknown.output
