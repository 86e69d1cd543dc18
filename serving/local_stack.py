"""Model servers and the router as local processes: what the canary_deploy step (stable + canary + router),
`make serve` (the champion behind the router) and the rollback benchmark start.

Each process is a real `llmops serve` / `llmops router` on a 127.0.0.1 port, started with this interpreter,
logging to its own file; `LocalStack` stops every process it started (terminate, then kill) when the block
ends, failure or not, and never touches a process it did not start.

    python -m serving.local_stack llmops-smollm2@champion     # make serve: router :8080 -> server :8000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from llmops.errors import LlmopsError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Process:
    name: str
    url: str
    proc: subprocess.Popen
    log: Path
    ready_path: str

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class LocalStack:
    """Starts processes; `stop()` (or leaving the `with` block) ends them all."""

    log_dir: Path
    overrides: tuple[str, ...] = ()  # --set values every process gets (the pipeline's overrides)
    env: dict[str, str] = field(default_factory=dict)  # extra environment for every process
    ready_timeout_s: float = 300
    processes: list[Process] = field(default_factory=list)

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, args: list[str], port: int, ready_path: str, env: dict[str, str] | None) -> Process:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        full_env = {**os.environ, **self.env, **(env or {})}
        for key in [k for k, v in full_env.items() if v is None]:
            del full_env[key]
        cmd = [sys.executable, "-m", "cli.main", *args, "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", *[a for s in self.overrides for a in ("--set", s)]]
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        p = Process(name, f"http://127.0.0.1:{port}", proc, log, ready_path)
        self.processes.append(p)
        return p

    def server(self, name: str, model: str, *, engine: str | None = None, threads: int | None = None,
               env: dict[str, str] | None = None, port: int | None = None, log_requests: bool = True) -> Process:
        """Start `llmops serve MODEL` (not waiting: call `wait_ready`). `log_requests=False`: synthetic traffic
        (a rollout's load generator and probe) stays out of the inference log the drift monitors read."""
        args = ["serve", model] + ([] if log_requests else ["--no-log"])
        if engine:
            args += ["--engine", engine]
        if threads:
            args += ["--set", f"serve.threads={threads}"]
        return self._spawn(name, args, port or free_port(), "/ready", env)

    def router(self, stable_url: str, *, canary_url: str | None = None, env: dict[str, str] | None = None,
               port: int | None = None, log_requests: bool = True) -> Process:
        """Start `llmops router` (not waiting). `log_requests=False`: as for `server`, keep synthetic traffic out."""
        args = ["router", "--stable", stable_url] + ([] if log_requests else ["--no-log"])
        if canary_url:
            args += ["--canary", canary_url]
        return self._spawn("router", args, port or free_port(), "/health", env)

    def wait_ready(self, *procs: Process) -> None:
        """Wait until each answers 200 on its readiness route; a process that exits is an error with its log."""
        deadline = time.monotonic() + self.ready_timeout_s
        pending = list(procs)
        while pending:
            for p in list(pending):
                if p.proc.poll() is not None:
                    raise LlmopsError(f"{p.name} exited with code {p.proc.returncode} while starting:\n{p.tail()}",
                                      f"see its log {p.log}")
                with contextlib.suppress(OSError), urllib.request.urlopen(p.url + p.ready_path, timeout=2) as r:
                    if r.status == 200:
                        pending.remove(p)
            if pending and time.monotonic() > deadline:
                names = ", ".join(p.name for p in pending)
                raise LlmopsError(f"{names} not ready after {self.ready_timeout_s:.0f} s",
                                  f"see the logs in {self.log_dir}")
            if pending:
                time.sleep(0.3)

    def stop(self, timeout_s: float = 15) -> None:
        """Terminate every started process (router first), kill what does not exit in `timeout_s`."""
        for p in reversed(self.processes):
            if p.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.proc.terminate()
        for p in reversed(self.processes):
            try:
                p.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    p.proc.kill()
                p.proc.wait()
        self.processes.clear()


def serve_behind_router(model: str, *, server_port: int, router_port: int, log_dir: Path,
                        engine: str | None = None) -> None:
    """`make serve`: the model behind the router, in the foreground until Ctrl-C (no canary until a rollout
    attaches one through the router's admin API)."""
    with LocalStack(log_dir, ready_timeout_s=600) as stack:
        server = stack.server("server", model, engine=engine, port=server_port)
        print(f"starting {model} on {server.url} (log {server.log}) ...", flush=True)
        stack.wait_ready(server)
        router = stack.router(server.url, port=router_port)
        stack.wait_ready(router)
        print(f"serving {model}: OpenAI API on {router.url}/v1 (router -> {server.url}); Ctrl-C stops both",
              flush=True)
        stop = {"now": False}
        # Both signals set the flag explicitly: a process started with SIGINT ignored (any job a shell puts in
        # the background) never gets Python's KeyboardInterrupt, and Ctrl-C must still stop both.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.update(now=True))
        while not stop["now"]:
            for p in (server, router):
                if p.proc.poll() is not None:
                    raise LlmopsError(f"{p.name} exited with code {p.proc.returncode}:\n{p.tail()}",
                                      f"see its log {p.log}")
            time.sleep(0.5)
        print("stopping ...", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Serve a model behind the llmops router (both on 127.0.0.1).")
    ap.add_argument("model", help="registry reference (NAME@champion, NAME/VERSION) or a checkpoint directory")
    ap.add_argument("--port", type=int, default=None, help="router port (default: params.yaml router.port)")
    ap.add_argument("--server-port", type=int, default=None, help="model server port (default: serve.port)")
    ap.add_argument("--engine", default=None, help="auto | eager | a built engine (default: params.yaml)")
    args = ap.parse_args(argv)
    from llmops.settings import get_settings

    settings = get_settings()
    params = settings.params()
    try:
        serve_behind_router(args.model, server_port=args.server_port or params.serve.port,
                            router_port=args.port or params.router.port, log_dir=settings.state_dir / "logs" / "serve",
                            engine=args.engine)
    except LlmopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
