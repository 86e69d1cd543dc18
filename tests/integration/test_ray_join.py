"""Joining a Ray cluster that does not answer: one clear error, and this process can still start its own Ray.

A failed `ray.init("ray://...")` leaves Ray's client mode switched on process-wide; before the reset in
`components.train._ray._join`, every later `ray.init()` in the process failed (seen in a CI run: one Ray
Client failure took four training tests with it)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.serve_process import free_port

pytestmark = pytest.mark.slow


def test_unreachable_cluster_is_one_clear_error_and_leaves_local_ray_usable():
    import ray
    from ray._private import client_mode_hook

    from components.train._ray import _join
    from llmops.errors import LlmopsError

    with pytest.raises(LlmopsError, match="could not join the Ray cluster") as err:
        _join(f"ray://127.0.0.1:{free_port()}", attempts=1)  # nothing listens there: Ray Client times out
    assert "LLMOPS_RAY_ADDRESS" in (err.value.fix or "")
    assert not client_mode_hook.is_client_mode_enabled
    ray.init(include_dashboard=False, num_cpus=1, object_store_memory=128 * 2**20)
    try:
        assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
    finally:
        ray.shutdown()


_RAY_TIMEOUT = ("The current node timed out during startup. This could happen because some of the raylet failed "
                "to startup or the GCS has become overloaded.")


def test_a_local_start_that_times_out_once_is_retried(tmp_path, monkeypatch):
    """Seen once in CI: the raylet missed Ray's fixed 30 s registration window. The first `ray.init` here fails
    the way Ray does; the retry is a real start that runs a task."""
    import ray

    from components.train import _ray

    real_init, calls = ray.init, []

    def flaky_init(*args, **kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise Exception(_RAY_TIMEOUT)
        return real_init(*args, num_cpus=1, **kwargs)

    monkeypatch.setattr(ray, "init", flaky_init)
    temp = Path(tempfile.mkdtemp(prefix="llmops-ray-t-"))  # Ray's socket paths must stay under 107 bytes
    _ray._start_local(temp)
    try:
        assert ray.get(ray.remote(lambda: 6 * 7).remote()) == 42
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    assert len(calls) == 2


def test_a_local_start_that_keeps_timing_out_is_one_clear_error(tmp_path, monkeypatch):
    import ray

    from components.train import _ray
    from llmops.errors import LlmopsError

    logs = tmp_path / "r" / "session_latest" / "logs"
    logs.mkdir(parents=True)
    (logs / "raylet.err").write_text("raylet: could not bind the node manager port\n")

    def failing_init(*args, **kwargs):
        raise Exception(_RAY_TIMEOUT)

    monkeypatch.setattr(ray, "init", failing_init)
    with pytest.raises(LlmopsError, match=r"did not start \(2 attempts\)") as err:
        _ray._start_local(tmp_path / "r")
    assert "could not bind the node manager port" in str(err.value)
    assert "LLMOPS_RAY_ADDRESS" in (err.value.fix or "")
