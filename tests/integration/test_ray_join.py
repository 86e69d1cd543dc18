"""Joining a Ray cluster that does not answer: one clear error, and this process can still start its own Ray.

A failed `ray.init("ray://...")` leaves Ray's client mode switched on process-wide; before the reset in
`components.train._ray._join`, every later `ray.init()` in the process failed (seen in a CI run: one Ray
Client failure took four training tests with it)."""

from __future__ import annotations

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
