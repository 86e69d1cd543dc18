"""Chunked prefill (issue 18 part 4): a long prompt is fed in chunks with decode steps of the running sequences
in between, and its answer is exactly the one a whole-prompt prefill gives. On the tiny model's real ONNX
Runtime engine; the scheduler's calls are recorded by a pass-through wrapper around it."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import numpy as np
import pytest

from llmops.errors import LlmopsError
from llmops.settings import Settings
from serving.engines.base import can_extend

LONG = ("Explain, step by step and with an example for each, how Python lists, tuples, sets and dictionaries "
        "differ in mutability, ordering, hashing and typical uses, and when to pick each of them.")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    from serving.engine_build import store as engine_store
    from serving.engines import built

    settings = Settings(state_dir=tmp_path_factory.mktemp("chunked-prefill"))
    manifest = engine_store.build_cpu_engine(settings, tiny_model_dir, "onnxruntime")
    return built.load_built(manifest, tiny_model_dir, max_slots=3)


def test_extend_in_chunks_equals_one_prefill(engine) -> None:
    ids = engine.tokenizer.encode(LONG, add_special_tokens=False)
    assert can_extend(engine) and len(ids) > 30
    whole = engine.prefill(0, ids).numpy()
    engine.prefill(1, ids[:7])
    for start in range(7, len(ids), 10):
        last = engine.extend(1, ids[start:start + 10]).numpy()
    np.testing.assert_allclose(last, whole, rtol=0, atol=1e-4)
    a, b = [int(whole.argmax())], [int(last.argmax())]
    for _ in range(8):  # the caches are the same too: both slots decode the same tokens side by side
        rows = engine.decode([0, 1], [a[-1], b[-1]]).numpy()
        a.append(int(rows[0].argmax()))
        b.append(int(rows[1].argmax()))
    assert a == b
    with pytest.raises(LlmopsError, match="no started sequence"):
        engine.extend(2, ids[:3])
    with pytest.raises(LlmopsError, match="exceed max_len"):
        engine.extend(1, [ids[0]] * engine.max_len)
    for slot in (0, 1):
        engine.release(slot)


class _Recorder:
    """The real engine, with the order of the scheduler's calls written down."""

    def __init__(self, engine) -> None:
        self._engine, self.calls = engine, []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def prefill(self, slot, ids):
        self.calls.append(("prefill", slot, len(ids)))
        return self._engine.prefill(slot, ids)

    def prefill_many(self, slots, prompts):
        self.calls.append(("prefill_many", tuple(slots), sum(map(len, prompts))))
        return self._engine.prefill_many(slots, prompts)

    def extend(self, slot, ids):
        self.calls.append(("extend", slot, len(ids)))
        return self._engine.extend(slot, ids)

    def decode(self, slots, ids):
        self.calls.append(("decode", tuple(slots), len(ids)))
        return self._engine.decode(slots, ids)


def _answers(engine, chunk: int, short_tokens: int = 64) -> tuple[list[list[int]], list[tuple]]:
    """A short request running, then the long prompt arriving: each one's greedy tokens, and the calls."""
    from serving.metrics import Metrics
    from serving.sampling import SamplingParams
    from serving.scheduler import Scheduler, Sequence

    rec = _Recorder(engine)
    scheduler = Scheduler(rec, Metrics(), queue_size=4, prefill_chunk=chunk)
    short = engine.tokenizer.encode("Say hi.", add_special_tokens=False)
    long = engine.tokenizer.encode(LONG, add_special_tokens=False)

    async def main():
        loop = asyncio.get_running_loop()
        seqs = [Sequence(prompt_ids=ids, sampling=SamplingParams(max_tokens=n, temperature=0.0), loop=loop,
                         events=asyncio.Queue()) for ids, n in ((short, short_tokens), (long, 8))]
        scheduler.submit(seqs[0])
        while not seqs[0].generated:  # the short one is decoding before the long one arrives
            await asyncio.sleep(0.001)
        scheduler.submit(seqs[1])
        for seq in seqs:
            while (await asyncio.wait_for(seq.events.get(), 60)).kind == "delta":
                pass
        return seqs

    scheduler.start()
    try:
        seqs = asyncio.run(main())
    finally:
        scheduler.stop()
    assert scheduler.snapshot()["free_slots"] == engine.max_slots
    return [s.generated for s in seqs], rec.calls


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(engine) -> None:
    whole_answers, whole_calls = _answers(engine, chunk=0)
    chunked_answers, calls = _answers(engine, chunk=8)
    assert chunked_answers == whole_answers  # chunking changes when work is done, never the tokens
    n_long = len(engine.tokenizer.encode(LONG, add_special_tokens=False))
    assert any(k in ("prefill", "prefill_many") and n == n_long for k, _, n in whole_calls)  # one call, whole
    assert not any(k == "extend" for k, _, _ in whole_calls)
    long_slot = next(s for k, s, n in calls if k == "prefill" and n == 8)
    feed = [i for i, (k, s, _) in enumerate(calls) if s == long_slot and k in ("prefill", "extend")]
    assert sum(calls[i][2] for i in feed) == n_long and len(feed) == -(-n_long // 8)
    assert all(calls[i][2] == 8 for i in feed[:-1])
    # the running short request got a decode step between every two chunks of the long prompt
    between = [any(k == "decode" for k, _, _ in calls[a + 1:b]) for a, b in itertools.pairwise(feed)]
    assert between and all(between)


def test_an_engine_that_cannot_extend_gets_whole_prompts(tiny_model_dir: Path) -> None:
    from serving.engines.eager import EagerEngine
    from serving.metrics import Metrics
    from serving.scheduler import Scheduler

    eager = EagerEngine(tiny_model_dir, max_slots=2)
    assert not can_extend(eager)
    assert Scheduler(eager, Metrics(), queue_size=2, prefill_chunk=8).prefill_chunk == 0


def test_joining_and_leaving_move_rows_not_the_whole_view(engine, monkeypatch) -> None:
    """Before: every change of the running set rebuilt the view, copying every running slot's cache (at 16
    streams with long contexts, ~0.8 GB per join or leave). Now only capacity growth rebuilds it; the tokens
    are still each slot's own (the greedy tokens it gets decoded alone)."""
    ids = [engine.tokenizer.encode(t, add_special_tokens=False) for t in ("Say hi.", "Name a colour.", LONG)]

    def alone(prompt: list[int]) -> list[int]:
        out = [int(engine.prefill(0, prompt).argmax())]
        while len(out) < 6:
            out.append(int(engine.decode([0], [out[-1]])[0].argmax()))
        engine.release(0)
        return out

    expected = [alone(p) for p in ids]  # the last one leaves a view with room for the long prompt
    rebuilds = []
    real = engine._next_view
    monkeypatch.setattr(engine, "_next_view", lambda *a: rebuilds.append(a) or real(*a))
    out = {s: [int(engine.prefill(s, ids[s]).argmax())] for s in (0, 1)}

    def step(running: list[int]) -> None:
        logits = engine.decode(running, [out[s][-1] for s in running])
        for row, s in enumerate(running):
            out[s].append(int(logits[row].argmax()))

    step([1, 0])
    out[2] = [int(engine.prefill(2, ids[2]).argmax())]
    step([2, 1, 0])  # slot 2 joins
    engine.release(1)  # slot 1 leaves early; the last row moves into its place
    while len(out[0]) < 6:
        step([0, 2])
    while len(out[2]) < 6:
        step([2])  # slot 0 paused: it leaves the view with its tokens
    assert out[0] == expected[0] and out[1] == expected[1][:3] and out[2] == expected[2]
    assert rebuilds == []
    for slot in (0, 2):
        engine.release(slot)
