"""Load generator: replays prompts through the router at a set rate while a rollout runs (Flagger's load tester).

A quiet laptop has no live traffic, and a step without requests is inconclusive, so the rollout brings its
own: held-out prompts (the golden source's split) or a file of logged traffic, sent open-loop with Poisson
arrivals at `rate` per second. Arrivals beyond `max_in_flight` open requests are skipped and counted, never
queued, so a slow canary cannot make the generator pile up load. Requests stream by default, so the router
measures time to first token. Every outcome is counted per side (the router's `x-llmops-side` header).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2 as httpx

from llmops.params import LoadgenParams
from serving.rollout.errors import RolloutError


def read_prompts(path: Path) -> list[str]:
    """Prompts from a JSONL file of logged traffic or a split: `prompt` (text, or the chat messages as the
    inference log keeps them: `llmops log tail -n N --json`), `messages` (last user turn), or `instruction`
    (+ `input`), whichever each line has."""
    from llmops.modeling.prompts import (
        prompt_text,  # how the drift monitor reads the same logged prompts
        user_message,
    )

    prompts = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise RolloutError(f"{path}:{n} is not JSON", "give a JSONL file, one object per line") from None
        prompt = row.get("prompt")
        if isinstance(prompt, str) and prompt.strip():
            prompts.append(prompt)
        elif isinstance(prompt, list) and (turn := prompt_text(prompt)).strip():
            prompts.append(turn)
        elif isinstance(row.get("messages"), list):
            if (turn := prompt_text(row["messages"])).strip():
                prompts.append(turn)
        elif str(row.get("instruction") or "").strip():
            prompts.append(user_message(row))
    if not prompts:
        raise RolloutError(f"{path} holds no prompt (prompt, messages or instruction fields)",
                           "point canary.loadgen.source at logged traffic or a data split")
    return prompts


class LoadGenerator:
    """Runs in a background thread; `start()`, `stop()`, `counts()`."""

    def __init__(self, url: str, model: str, prompts: list[str], params: LoadgenParams, *,
                 timeout_s: float = 120) -> None:
        if not prompts:
            raise RolloutError("the load generator has no prompts", "check canary.loadgen.source")
        self.url, self.model, self.prompts, self.params, self.timeout_s = url.rstrip("/"), model, prompts, params, \
            timeout_s
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def counts(self) -> dict[str, int]:
        """sent, skipped, ok/failed per side (`stable.ok`, `canary.failed`, `none.failed` when no side answered)."""
        with self._lock:
            return dict(self._counts)

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def start(self) -> LoadGenerator:
        if self.params.rate > 0:
            self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="loadgen", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 30) -> dict[str, int]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self.counts()

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def _one(self, client: httpx.AsyncClient, prompt: str) -> None:
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": self.params.max_tokens, "stream": self.params.stream}
        side, ok = "none", False
        try:
            async with client.stream("POST", f"{self.url}/v1/chat/completions", json=body) as resp:
                side = resp.headers.get("x-llmops-side") or "none"
                text = "".join([chunk async for chunk in resp.aiter_text()])
                ok = resp.status_code == 200 and (not self.params.stream or "[DONE]" in text)
        except httpx.HTTPError:
            ok = False
        self._count(f"{side}.{'ok' if ok else 'failed'}")

    async def _run(self) -> None:
        rng = random.Random(self.params.seed)
        in_flight: set[asyncio.Task] = set()
        limits = httpx.Limits(max_connections=self.params.max_in_flight + 4)
        from serving.rollout.quality import auth_headers

        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits, headers=auth_headers()) as client:
            loop = asyncio.get_running_loop()
            next_at = loop.time()
            while not self._stop.is_set():
                next_at += rng.expovariate(self.params.rate)
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                if self._stop.is_set():
                    break
                if len(in_flight) >= self.params.max_in_flight:
                    self._count("skipped")
                    continue
                self._count("sent")
                task = asyncio.create_task(self._one(client, rng.choice(self.prompts)))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:  # let open requests finish, so every one sent is counted
                await asyncio.wait(in_flight, timeout=self.timeout_s)


def measure_capacity(url: str, prompts: list[str], *, max_tokens: int, seconds: float, concurrency: int,
                     timeout_s: float = 120) -> dict[str, Any]:
    """The server's sustainable rate at `url`: `concurrency` closed-loop clients send chat requests of
    `max_tokens` (the load generator's size, not streamed so the usage counts tokens) for `seconds`, after one
    warm-up request. Returns requests/s and completion tokens/s over the whole measurement, with the counts."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from serving.rollout.quality import auth_headers, greedy_chat, served_model

    if not prompts:
        raise RolloutError("calibration has no prompts", "check engine.prompts in params.yaml")
    base = url.rstrip("/").removesuffix("/v1")
    with httpx.Client(timeout=timeout_s, headers=auth_headers()) as client:
        try:
            model = served_model(client, base)
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise RolloutError(f"cannot calibrate on {base}: /v1/models failed ({exc})",
                               "check that the stable server is up, or give canary.loadgen.rate and "
                               "canary.quality.golden_size as numbers") from None

        def one(prompt: str) -> int | None:
            done = greedy_chat(client, base, model, prompt, max_tokens)
            return None if done is None else int((done.get("usage") or {}).get("completion_tokens") or 0)

        one(prompts[0])  # warm-up: first-request costs are not the server's rate
        t0 = time.perf_counter()
        deadline = t0 + seconds

        def worker(i: int) -> list[int | None]:
            out, n = [], i
            while time.perf_counter() < deadline:
                out.append(one(prompts[n % len(prompts)]))
                n += concurrency
            return out

        with ThreadPoolExecutor(concurrency) as pool:
            results = [r for rs in pool.map(worker, range(concurrency)) for r in rs]
        elapsed = time.perf_counter() - t0
    ok = [r for r in results if r is not None]
    if not ok:
        raise RolloutError(f"the server at {base} answered none of {len(results)} calibration requests",
                           "check its log; or give canary.loadgen.rate and canary.quality.golden_size as numbers")
    return {"url": base, "seconds": round(elapsed, 2), "concurrency": concurrency, "requests": len(results),
            "failed": len(results) - len(ok), "requests_per_s": len(ok) / elapsed,
            "tokens_per_s": sum(ok) / elapsed, "max_tokens": max_tokens}
