"""Start `llmops serve` as a real process on a free 127.0.0.1 port, wait for /ready, stop it by its own PID."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2 as httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(model: str, log_path: Path, *, sets: tuple[str, ...] = (), env: dict[str, str] | None = None,
                   ready_timeout: float = 180, args: tuple[str, ...] = (),
                   on_start: Callable[[subprocess.Popen], None] | None = None) -> Iterator[str]:
    """Yield the base URL (`http://127.0.0.1:PORT`) of a ready server; the process is stopped afterwards.
    `args` go to `llmops serve`; `on_start` gets the process (a test that kills it)."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if k not in ("LLMOPS_API_KEY", "LLMOPS_API_KEY_FILE")}
    full_env.update({"LLMOPS_PROJECT_DIR": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})})
    if "LLMOPS_STATE_DIR" not in full_env and "LLMOPS_INFERENCE_LOG_URI" not in full_env:
        # a test's traffic never lands in the developer's own inference log (.llmops/), which monitors read
        full_env["LLMOPS_INFERENCE_LOG_URI"] = f"sqlite:///{log_path.with_suffix('.inference-log.db')}"
    if "LLMOPS_INFERENCE_LOG_URI" not in full_env and "LLMOPS_STATE_DIR" not in full_env:
        # a test server never writes the user's .llmops/inference-log.db
        full_env["LLMOPS_INFERENCE_LOG_URI"] = f"sqlite:///{log_path.parent / f'inference-log-{port}.db'}"
    cmd = [sys.executable, "-m", "cli.main", "serve", model, "--port", str(port), "--engine", "eager",
           "--log-level", "warning", *[a for s in sets for a in ("--set", s)], *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO)
    if on_start is not None:
        on_start(proc)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {ready_timeout}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
