"""The quality probe: a fixed golden set sent to stable and canary directly, scored with the evaluation scorers.

The golden set belongs to the rollout, not to the candidate: by default it is drawn from the current
champion's held-out test split, found through the champion's lineage tags (`data.test.md5`, `data.test.dvc`)
and verified by md5, so a candidate trained on bad data cannot grade itself. When the working tree's split
has changed since, the exact bytes are read from DVC's cache or the local DVC remote by their md5. The chosen
records are frozen into the rollout state at start, so a resumed rollout probes with the same prompts.

Both sides answer greedily (temperature 0) and are scored against the references with ROUGE-L and embedding
similarity (llmops.modeling.text_metrics, the same functions the evaluation gate uses), optionally by an LLM
judge behind any OpenAI-compatible URL. The judge is asked for a JSON-schema-constrained score, so any judge
returns something parseable; a tiny test model as judge is noise, only a capable model's score means anything.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx

from llmops.modeling.hashing import file_md5
from llmops.params import CanaryQualityParams
from llmops.settings import Settings
from serving.rollout.analysis import QualityScores
from serving.rollout.errors import RolloutError

JUDGE_PROMPT = ("You grade answers. Question:\n{question}\n\nReference answer:\n{reference}\n\nAnswer to grade:\n"
                "{answer}\n\nHow well does the answer match the reference in meaning and correctness? Reply with a "
                "JSON object {{\"score\": N}} where N is an integer from 1 (wrong) to 10 (equivalent).")
JUDGE_SCHEMA = {"type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}},
                "required": ["score"], "additionalProperties": False}


def _dvc_cached(settings: Settings, md5: str) -> list[Path]:
    """Where DVC 3 keeps a file of this md5: the repo cache and a local-directory remote."""
    rel = Path("files") / "md5" / md5[:2] / md5[2:]
    places = [settings.project_dir / ".dvc" / "cache" / rel]
    if "://" not in (settings.dvc_remote_url or ""):
        places.append(Path(settings.dvc_remote_url) / rel)
    return places


def champion_test_split(settings: Settings, tags: dict[str, str], champion: str) -> Path:
    """The exact test split the champion was evaluated on, from its lineage tags, verified by md5."""
    md5 = tags.get("data.test.md5")
    if not md5:
        raise RolloutError(f"{champion} has no lineage tag data.test.md5, so its held-out data is unknown",
                           "set canary.quality.golden_source to a JSONL file of golden records "
                           "(--set canary.quality.golden_source=PATH)")
    candidates = [settings.project_dir / p.rpartition("@")[0]
                  for p in (tags.get("data.test.dvc") or "").split(",") if "@" in p]
    candidates += _dvc_cached(settings, md5)
    for path in candidates:
        if path.is_file() and file_md5(path) == md5:
            return path
    raise RolloutError(f"the test split {champion} was evaluated on (md5 {md5}) is neither in the working tree "
                       "nor in the DVC cache or local remote",
                       "`dvc pull` the data version the champion was trained with, or set "
                       "canary.quality.golden_source to a JSONL file")


def read_records(path: Path) -> list[dict[str, str]]:
    """Records with a prompt (instruction [+ input]) and a reference output, via the project's strict reader."""
    from llmops.data.records import read_jsonl
    from llmops.modeling.prompts import user_message

    rows = read_jsonl(Path(path)).to_dict("records")
    out = []
    for i, row in enumerate(rows):
        if not str(row.get("instruction") or "").strip() or not str(row.get("output") or "").strip():
            continue
        out.append({"id": str(row.get("id") or i), "prompt": user_message(row), "reference": str(row["output"])})
    if not out:
        raise RolloutError(f"{path} has no record with an instruction and an output", "point the golden source "
                           "at a JSONL split (id, instruction, input, output)")
    return out


def golden_source(settings: Settings, q: CanaryQualityParams, champion_tags: dict[str, str] | None,
                  champion: str | None) -> Path:
    """The file the golden set (and the held-out load) is drawn from."""
    if q.golden_source != "champion":
        path = Path(q.golden_source)
        path = path if path.is_absolute() else settings.project_dir / path
        if not path.is_file():
            raise RolloutError(f"golden source {path} does not exist", "fix canary.quality.golden_source")
        return path
    if champion is None:
        raise RolloutError("there is no champion to draw the golden set from",
                           "the first version becomes champion without a rollout; or set canary.quality.golden_source")
    return champion_test_split(settings, champion_tags or {}, champion)


def pick_golden(records: list[dict[str, str]], q: CanaryQualityParams) -> list[dict[str, str]]:
    """A seeded sample of `golden_size` records (all when fewer), in a stable order."""
    ordered = sorted(records, key=lambda r: r["id"])
    if len(ordered) <= q.golden_size:
        return ordered
    return sorted(random.Random(q.seed).sample(ordered, q.golden_size), key=lambda r: r["id"])


def _base(url: str) -> str:
    return url.rstrip("/").removesuffix("/v1")


def auth_headers() -> dict[str, str]:
    """The servers' API key as a bearer header (LLMOPS_API_KEY_FILE or LLMOPS_API_KEY, read as `llmops serve`
    reads it): the probe and the load generator are clients like any other, and a keyed server answers 401."""
    from serving.http.auth import read_api_key

    key = read_api_key()
    return {"Authorization": f"Bearer {key}"} if key else {}


def served_model(client: httpx.Client, base_url: str) -> str:
    data = client.get(f"{_base(base_url)}/v1/models").raise_for_status().json()
    return data["data"][0]["id"]


def greedy_chat(client: httpx.Client, base_url: str, model: str, content: str, max_tokens: int,
                response_format: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The chat completion (JSON) of one greedy user turn, or None when the request failed (status, transport)."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}],
                            "max_tokens": max_tokens, "temperature": 0}
    if response_format:
        body["response_format"] = response_format
    try:
        resp = client.post(f"{_base(base_url)}/v1/chat/completions", json=body)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    return resp.json()


def _chat(client: httpx.Client, base_url: str, model: str, content: str, max_tokens: int,
          response_format: dict[str, Any] | None = None) -> str | None:
    """Greedy answer text, or None when the request failed (status, transport)."""
    done = greedy_chat(client, base_url, model, content, max_tokens, response_format)
    return None if done is None else done["choices"][0]["message"].get("content") or ""


def parse_score(text: str | None) -> float | None:
    """A 1..10 score from a judge's reply (JSON {"score": N}, or the first integer); None if there is none."""
    if not text:
        return None
    try:
        value = json.loads(text).get("score")
    except (ValueError, AttributeError):
        match = re.search(r"\b(10|[1-9])\b", text)
        value = int(match.group(1)) if match else None
    if isinstance(value, int | float) and 1 <= value <= 10:
        return float(value)
    return None


class Judge:
    """An LLM judge behind any OpenAI-compatible base URL."""

    def __init__(self, url: str, model: str | None, api_key: str | None, timeout_s: float = 120) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers)
        self.url = url
        self.model = model or served_model(self.client, url)

    def score(self, question: str, reference: str, answer: str) -> float | None:
        prompt = JUDGE_PROMPT.format(question=question, reference=reference, answer=answer)
        fmt = {"type": "json_schema", "json_schema": {"name": "score", "schema": JUDGE_SCHEMA, "strict": True}}
        return parse_score(_chat(self.client, self.url, self.model, prompt, 32, fmt))


class ProbeCancelled(Exception):
    """The rollout was decided before the probe finished (its servers may be stopping)."""


def probe(endpoints: tuple[str, str], golden: list[dict[str, str]], q: CanaryQualityParams, settings: Settings,
          *, timeout_s: float = 120, stop: threading.Event | None = None) -> tuple[QualityScores, dict[str, Any]]:
    """Ask both sides every golden prompt, score the answers; returns the scores and a JSON-able detail.

    A canary that fails a probe request scores an empty answer (a broken canary is bad quality); a pair whose
    stable request failed is left out (stable's trouble says nothing about the candidate)."""
    from llmops.modeling.embedder import load_embedder
    from llmops.modeling.text_metrics import embedding_similarity, rouge_l_f1

    stable_url, canary_url = endpoints
    with httpx.Client(timeout=timeout_s, headers=auth_headers()) as client:
        models = (served_model(client, stable_url), served_model(client, canary_url))
        jobs = [(side, url, model, rec) for rec in golden
                for side, url, model in (("stable", stable_url, models[0]), ("canary", canary_url, models[1]))]
        stop = stop or threading.Event()

        def ask(job: tuple[str, str, str, dict[str, str]]) -> str | None:
            if stop.is_set():
                raise ProbeCancelled()
            return _chat(client, job[1], job[2], job[3]["prompt"], q.max_tokens)

        with ThreadPoolExecutor(max(1, q.concurrency)) as pool:
            answers = list(pool.map(ask, jobs))
    if stop.is_set():
        raise ProbeCancelled()
    by_side: dict[str, list[str | None]] = {"stable": answers[0::2], "canary": answers[1::2]}
    keep = [i for i, a in enumerate(by_side["stable"]) if a is not None]
    if not keep:
        raise RolloutError(f"the stable side {stable_url} answered none of the {len(golden)} golden prompts",
                           "check the stable server's log")
    refs = [golden[i]["reference"] for i in keep]
    texts = {side: [by_side[side][i] or "" for i in keep] for side in by_side}
    embedder = load_embedder(settings.embedder_dir)
    ref_vectors = embedder.encode(refs)
    scores: dict[str, dict[str, float]] = {}
    for side, preds in texts.items():
        rouge = [rouge_l_f1(p, r) for p, r in zip(preds, refs, strict=True)]
        sim = embedding_similarity(embedder, preds, refs, reference_vectors=ref_vectors)
        scores[side] = {"rouge_l": sum(rouge) / len(rouge), "embed_similarity": sum(sim) / len(sim)}
    detail: dict[str, Any] = {"examples": len(keep), "canary_failed": sum(a is None for a in by_side["canary"]),
                              "stable_failed": len(golden) - len(keep), "models": list(models)}
    if q.judge_url:
        judge = Judge(q.judge_url, q.judge_model, os.environ.get(q.judge_api_key_env) or None, timeout_s)
        unparsed = 0
        for side, preds in texts.items():
            got = [judge.score(golden[i]["prompt"], golden[i]["reference"], p) for i, p in zip(keep, preds,
                                                                                             strict=True)]
            valid = [g for g in got if g is not None]
            unparsed += len(got) - len(valid)
            if valid:
                scores[side]["judge"] = sum(valid) / len(valid)
        detail["judge"] = {"url": q.judge_url, "model": judge.model, "unparsed": unparsed}
    return QualityScores(stable=scores["stable"], canary=scores["canary"], examples=len(keep)), detail
