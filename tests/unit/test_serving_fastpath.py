"""The served path's per-token work stays off torch's thread pool and off per-token asyncio tasks (issue 18
part 2): numpy sampling that matches the torch semantics it replaced, the numpy grammar mask, and the one
watchdog that still answers a request whose scheduler never does."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from serving.api import ApiError
from serving.sampling import Sampler, SamplingParams, _nucleus, logsumexp


def test_logsumexp_matches_torch() -> None:
    rows = np.random.default_rng(0).normal(size=(3, 4096)).astype(np.float32) * 4
    assert np.allclose(logsumexp(rows), torch.logsumexp(torch.from_numpy(rows), -1).numpy(), atol=1e-4)


@pytest.mark.parametrize("top_p", [0.01, 0.5, 0.51, 0.8, 0.81, 0.999])
def test_nucleus_is_the_smallest_prefix_reaching_top_p(top_p: float) -> None:
    probs = np.array([0.05, 0.5, 0.1, 0.3, 0.05])
    order = np.argsort(-probs, kind="stable")
    keep = (np.cumsum(probs[order]) - probs[order]) < top_p  # the torch rule this replaced
    assert _nucleus(probs, top_p).tolist() == order[keep].tolist()
    flat = np.random.default_rng(1).uniform(1, 1.01, 5000)  # mass spread wide: the candidate set has to grow
    flat /= flat.sum()
    order = np.argsort(-flat, kind="stable")
    keep = (np.cumsum(flat[order]) - flat[order]) < top_p
    assert sorted(_nucleus(flat, top_p).tolist()) == sorted(order[keep].tolist())


def test_sampler_takes_arrays_and_tensors_alike() -> None:
    row = np.array([0.0, 3.0, 1.0, 2.9], dtype=np.float32)
    params = SamplingParams(max_tokens=1, temperature=1.0, seed=7)
    assert [Sampler(params)(row) for _ in range(3)] == [Sampler(params)(torch.from_numpy(row)) for _ in range(3)]
    masked = np.array([-np.inf, 1.0, -np.inf, -np.inf], dtype=np.float32)
    assert {Sampler(SamplingParams(max_tokens=1, temperature=2.0))(masked) for _ in range(20)} == {1}


def test_events_watchdog_answers_when_the_scheduler_does_not() -> None:
    from serving.generation import GenerationService
    from serving.scheduler import Sequence

    async def run() -> ApiError:
        seq = Sequence(prompt_ids=[1], sampling=SamplingParams(max_tokens=1), loop=asyncio.get_running_loop(),
                       events=asyncio.Queue(), deadline=time.perf_counter() - 4.9)
        service = SimpleNamespace(params=SimpleNamespace(request_timeout_s=1.0), cancel=lambda s: s.cancel())
        with pytest.raises(ApiError) as err:
            async for _ in GenerationService.events(service, seq):  # type: ignore[arg-type]
                pass
        assert seq.cancelled
        return err.value

    assert asyncio.run(asyncio.wait_for(run(), 5)).status == 504
