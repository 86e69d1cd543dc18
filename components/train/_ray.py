"""Starting (or joining) Ray for a training run, with the settings measured to work on a laptop.

Local: a private Ray instance with no dashboard, no usage stats, a small object store and its scratch
files in the state dir. Ray's unix socket paths must stay under ~107 bytes, so when the state dir's path is
long (pytest temp dirs) the scratch dir moves to a short one under the system temp dir. Cluster
(`settings.ray_address`): join that cluster. A session this process already started is reused as is.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from llmops.errors import LlmopsError
from llmops.settings import Settings

OBJECT_STORE_BYTES = 256 * 2**20
_MAX_TEMP_DIR_CHARS = 40  # Ray appends session_<date>_<pid>/sockets/plasma_store (~65 chars)
_NOISE = "Failed to query Ray Train Controller actor state|has constructor arguments in the object store"


def quiet_ray_env() -> None:
    """Environment Ray reads at import/init: no usage reporting, no token auth on a private local cluster."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray Train's print patch tees every worker print into its logger too: each line would show twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    # Without the dashboard (not installed) the state API is down and Ray Train's placement-group cleaner
    # warns about it every second; the cleaner only matters when the controller itself dies.
    os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", _NOISE)


def ray_temp_dir(settings: Settings) -> Path:
    """Ray's scratch dir: `settings.ray_dir`, or a short per-state-dir path when that one is too long."""
    preferred = settings.ray_dir
    if len(str(preferred)) <= _MAX_TEMP_DIR_CHARS:
        return preferred
    digest = hashlib.sha1(str(preferred).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"llmops-ray-{digest}"


@contextlib.contextmanager
def ray_session(settings: Settings) -> Iterator[None]:
    """Ray initialised for the block; shut down afterwards only if this block started it."""
    quiet_ray_env()
    import ray

    if ray.is_initialized():
        yield
        return
    if settings.ray_address:
        _join(settings.ray_address)
    else:
        _start_local(ray_temp_dir(settings))
    try:
        yield
    finally:
        ray.shutdown()


def _start_local(temp: Path, attempts: int = 2) -> None:
    """A private local Ray. Its raylet must register with the GCS within Ray's fixed 30 s; on a loaded 2-core
    host (seen once in CI, after other tests' servers and Ray sessions) it sometimes does not. What the failed
    start left behind is stopped and the start is tried once more; a second failure names the raylet's log."""
    import ray

    temp.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        try:
            ray.init(include_dashboard=False, _temp_dir=str(temp), object_store_memory=OBJECT_STORE_BYTES,
                     log_to_driver=True, configure_logging=False)
            return
        except Exception as exc:
            if "timed out during startup" not in str(exc):
                raise
            _stop_leftovers(temp)
            if attempt == attempts:
                raise LlmopsError(f"the local Ray node did not start ({attempt} attempts): {exc}"
                                  f"{_raylet_log_tail(temp)}",
                                  "the host is probably overloaded: stop other heavy processes (`uptime`, `ps`) "
                                  "and retry, or set LLMOPS_RAY_ADDRESS to train on a running cluster") from exc
            time.sleep(2.0)  # the killed processes release their ports and sockets


def _stop_leftovers(temp: Path) -> None:
    """Kill the Ray processes a failed start left running (this process's children that use `temp`)."""
    import psutil
    import ray

    with contextlib.suppress(Exception):
        ray.shutdown()
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if str(temp) in " ".join(child.cmdline()):
                child.kill()


def _raylet_log_tail(temp: Path, lines: int = 8) -> str:
    logs = temp / "session_latest" / "logs"
    tails = []
    for name in ("raylet.err", "raylet.out", "gcs_server.err"):
        path = logs / name
        if path.is_file():
            text = path.read_text(errors="replace").strip().splitlines()[-lines:]
            if text:
                tails.append(f"\n--- {path} ---\n" + "\n".join(text))
    return "".join(tails)


def _join(address: str, attempts: int = 3) -> None:
    """Join an existing cluster. Through Ray Client (`ray://`) the head's proxy starts one server process per
    client; on a loaded head that start can fail once and succeed the next time, so it is retried. A failed
    connect leaves Ray's client mode switched on in this process, which would break any later `ray.init`:
    it is reset after each failure."""
    import ray

    tries = attempts if address.startswith("ray://") else 1
    for attempt in range(1, tries + 1):
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=True)
            return
        except ConnectionError as exc:  # ConnectionAbortedError: the proxy's server for this client failed
            _reset_client_mode()
            if attempt == tries:
                raise LlmopsError(f"could not join the Ray cluster at {address} ({attempt} attempts): {exc}",
                                  "check the head is up (`ray status` there) and its ray_client_server_*.err "
                                  "logs, or unset LLMOPS_RAY_ADDRESS to train locally") from exc
            time.sleep(2 * attempt)


def _reset_client_mode() -> None:
    import ray
    from ray._private.client_mode_hook import _explicitly_disable_client_mode  # no public way after a failure
    from ray.util.client import ray as client

    with contextlib.suppress(Exception):
        client.disconnect()
    with contextlib.suppress(Exception):
        ray.shutdown()
    _explicitly_disable_client_mode()
