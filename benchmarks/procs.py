"""Helpers the benchmarks share for the processes they start."""

from __future__ import annotations

import subprocess
import time
import urllib.request


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60, poll_s: float = 0.2) -> None:
    """Return once `url` answers 200; raise if `proc` exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not ready after {timeout:.0f}s")
        time.sleep(poll_s)
