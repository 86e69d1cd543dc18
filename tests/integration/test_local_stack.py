"""`make serve` (python -m serving.local_stack): a model behind the router, no canary; Ctrl-C stops both."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.serve_process import REPO, free_port

pytestmark = pytest.mark.slow


def _open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_serves_a_model_behind_the_router_and_stops_both(settings, tiny_model_dir: Path, tmp_path: Path) -> None:
    router_port, server_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("LLMOPS_API_KEY", "LLMOPS_API_KEY_FILE")}
    log = tmp_path / "stack.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "serving.local_stack", str(tiny_model_dir), "--port",
                                 str(router_port), "--server-port", str(server_port), "--engine", "eager"],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env={**env, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 180
        while "serving" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        r = httpx.post(f"http://127.0.0.1:{router_port}/v1/chat/completions", timeout=60, json={
            "model": tiny_model_dir.name, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        assert r.headers["x-llmops-side"] == "stable"
        assert r.json()["choices"][0]["message"]["role"] == "assistant"
        assert _open(server_port)  # the model server itself, on its own port
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()[-3000:]
    assert not _open(router_port) and not _open(server_port)
