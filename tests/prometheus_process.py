"""Start a real Prometheus (Debian's `prometheus`, infra/apt-packages.txt) on 127.0.0.1 with its own data dir,
scraping the given targets every second; stop it by its own PID."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.serve_process import free_port


def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run `make sysdeps` (infra/apt-packages.txt)")
    return binary


@contextlib.contextmanager
def running_prometheus(tmp: Path, targets: list[tuple[str, dict[str, str]]]) -> Iterator[str]:
    """Yield the base URL of a ready Prometheus scraping each (host:port, extra labels) target every 1 s."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": f"t{i}", "static_configs": [{"targets": [addr], "labels": labels}]}
                           for i, (addr, labels) in enumerate(targets)],
    }
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen([prometheus_binary(), f"--config.file={tmp / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {proc.returncode}: {(tmp / 'prometheus.log').read_text()}")
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/-/ready", timeout=1).status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("prometheus not ready after 60 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
