"""Preference pairs from what users said (reviewed feedback): the records `llmops log export --kind preference`
writes, for DPO.

Which pairs (the rule, over ACCEPTED feedback only -- the export's review gate runs first):
1. a correction gives (prompt, chosen = the correction, rejected = the served answer), source "correction";
   a correction equal to the served answer (ignoring whitespace) says nothing and is skipped;
2. opposite ratings on answers to the same prompt (normalised as the source merge keys prompts) give pairs,
   source "ratings": answers rated 1 are chosen, answers rated -1 rejected. Every answer is used at least once
   and the count stays linear (max(good, bad) pairs per prompt, not good x bad): the i-th bad answer (oldest
   first) is paired with the i-th good one, round-robin over the shorter list;
3. the same usable prompts as the SFT export (ONE user turn or a completion string, status 200, no tool call);
4. the same (prompt, chosen, rejected) twice is kept once.

Record (agreed with the DPO trainer): JSONL objects with `instruction`, `input` (""), `chosen`, `rejected`,
`request_ids` (the requests the pair came from: [request] for a correction, [chosen, rejected] for ratings),
`source` ("correction" | "ratings") and `model_version` (the version that served the rejected answer).
Validated with data/expectations/preferences.json before anything is written.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from monitoring.inference_log.store import LoggedRequest

SUITE = "preferences.json"
COLUMNS = ("instruction", "input", "chosen", "rejected", "request_ids", "source", "model_version")
SOURCES = ("correction", "ratings")


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def _pair(req: LoggedRequest, instruction: str, chosen: str, rejected: str, source: str,
          request_ids: list[str]) -> dict[str, Any]:
    return {"instruction": instruction, "input": "", "chosen": chosen, "rejected": rejected,
            "request_ids": request_ids, "source": source, "model_version": req.model_version}


def preference_records(requests: list[LoggedRequest]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Pairs by the rule above (corrections first, then ratings, each oldest first) and why others were skipped."""
    from llmops.data.text import group_key
    from monitoring.inference_log.datasets import user_text

    skipped: Counter[str] = Counter()
    pairs: list[dict[str, Any]] = []
    rated: dict[str, dict[int, list[tuple[LoggedRequest, str]]]] = defaultdict(lambda: {1: [], -1: []})
    for req in sorted(requests, key=lambda r: (r.time, r.request_id)):
        if not req.feedback:
            continue
        if req.status != 200:
            skipped["not answered (status != 200)"] += 1
            continue
        instruction, why = user_text(req)
        if instruction is None:
            skipped[why or "unusable prompt"] += 1
            continue
        if req.correction is not None:
            if _same(req.correction, req.response):
                skipped["correction equals the served answer"] += 1
            else:
                pairs.append(_pair(req, instruction, req.correction, req.response, "correction", [req.request_id]))
        if req.rating in (1, -1):
            rated[group_key(instruction, "")][req.rating].append((req, instruction))
        elif req.correction is None:
            skipped["no correction and no good/bad rating"] += 1
    for by_rating in rated.values():
        pairs.extend(_rating_pairs(by_rating[1], by_rating[-1], skipped))
    return _unique(pairs, skipped), dict(skipped)


def _rating_pairs(good: list[tuple[LoggedRequest, str]], bad: list[tuple[LoggedRequest, str]],
                  skipped: Counter[str]) -> list[dict[str, Any]]:
    if not good or not bad:
        alone = sum(1 for r, _ in good + bad if r.correction is None)  # a corrected one gave its pair already
        if alone:
            skipped["rated answers with no opposite rating on the same prompt"] += alone
        return []
    out = []
    for i in range(max(len(good), len(bad))):
        (g, _), (b, instruction) = good[i % len(good)], bad[i % len(bad)]
        if _same(g.response, b.response):
            skipped["the same answer rated both ways"] += 1
            continue
        out.append(_pair(b, instruction, g.response, b.response, "ratings", [g.request_id, b.request_id]))
    return out


def _unique(pairs: list[dict[str, Any]], skipped: Counter[str]) -> list[dict[str, Any]]:
    from llmops.data.text import group_key

    seen: set[tuple[str, str, str]] = set()
    out = []
    for p in pairs:
        key = (group_key(p["instruction"], p["input"]), " ".join(p["chosen"].split()), " ".join(p["rejected"].split()))
        if key in seen:
            skipped["the same pair again"] += 1
            continue
        seen.add(key)
        out.append(p)
    return out


def preference_frame(records: list[dict[str, Any]], tokenizer_path: Path) -> Any:
    """The frame the preferences suite sees: the record columns (request ids joined with ",") plus derived
    `n_tokens_chosen` / `n_tokens_rejected` (prompt + answer, base tokenizer) and `same_answer`."""
    import pandas as pd

    from llmops.data.validate import count_tokens

    frame = pd.DataFrame(records, columns=list(COLUMNS))
    frame["request_ids"] = [",".join(ids) if isinstance(ids, list) else ids for ids in frame["request_ids"]]
    for side in ("chosen", "rejected"):
        texts = frame[["instruction", "input", side]].rename(columns={side: "output"})
        frame[f"n_tokens_{side}"] = count_tokens(texts, tokenizer_path) if len(frame) else []
    frame["same_answer"] = [isinstance(c, str) and isinstance(r, str) and _same(c, r)
                            for c, r in zip(frame["chosen"], frame["rejected"], strict=True)]
    return frame


def write_preferences(records: list[dict[str, Any]], path: Path) -> int:
    """JSONL in COLUMNS order, UTF-8 as is (byte-deterministic, like the SFT export); returns the row count."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for r in records:
            fh.write(json.dumps({c: r[c] for c in COLUMNS}, ensure_ascii=False, separators=(", ", ": ")) + "\n")
    return len(records)
