"""Retrain only when there is something to learn: data that arrived since the champion's training data.

Training is deterministic: retraining on the data the champion saw gives the champion again (a second
`make run` gave identical weights). So a persistent `drift` verdict starts retraining only if a dataset in
`data.sources` (datasets added with `llmops data add`, corrected answers exported with `llmops log export --dvc`)
has bytes the champion was not trained on (its lineage tag `data.sources`, ENTRY@MD5,...), and that new data
covers the drifted traffic: at least `monitoring.trigger.min_new_data_coverage` of the window's new prompts
(no near prompt in the reference) have a near prompt in the new data. Otherwise the trigger holds, an alert
says so, and a sample of the drifted prompts is queued for labelling (`<state>/monitor/labelling/queue.jsonl`;
there is no review queue yet: a person answers them and adds the file with `llmops data add`).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmops.params import Params
from llmops.settings import Settings

UNKNOWN_PREFIX = "unknown"


@dataclass
class NewData:
    ok: bool
    reason: str
    files: list[dict[str, Any]] = field(default_factory=list)  # datasets the champion was not trained on
    coverage: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def champion_source_md5s(settings: Settings) -> tuple[set[str] | None, str]:
    """The md5s of the datasets the champion was trained on (None: no champion), and a description."""
    from llmops.registry.client import NotFound, Registry

    name = settings.registered_model
    try:
        tags = Registry(settings).show(f"{name}@champion")["tags"]
    except NotFound:
        return None, f"{name} has no champion"
    recorded = tags.get("data.sources", "")
    if not recorded or recorded.startswith(UNKNOWN_PREFIX):
        return set(), f"{name}@champion (version {tags.get('version', '?')}) records no data sources ({recorded!r})"
    return {part.rsplit("@", 1)[-1] for part in recorded.split(",") if "@" in part}, f"{name}@champion"


def new_datasets(settings: Settings, params: Params, known: set[str] | None) -> list[dict[str, Any]]:
    """The datasets `data.sources` names now whose bytes are not among `known` (None: every dataset is new)."""
    from llmops.data.sources import source_files
    from llmops.modeling.hashing import file_md5

    out = []
    for entry, _src, path in source_files(settings.project_dir, params.data.sources):
        md5 = file_md5(path)
        if known is None or md5 not in known:
            out.append({"entry": entry, "path": str(path), "md5": md5})
    return out


def _prompts(files: list[dict[str, Any]], cap: int = 5000) -> list[str]:
    from llmops.data.records import read_jsonl
    from llmops.modeling.prompts import user_message

    out: list[str] = []
    for f in files:
        out += [user_message(r) for r in read_jsonl(Path(f["path"])).to_dict(orient="records")]
    return out[:cap]


def coverage(new_prompts: list[str], drifted: list[str], embedder: Any, params: Params) -> float:
    """Share of the drifted prompts with a prompt of the new data within `drift.novel_similarity` cosine."""
    from monitoring.drift.features import embed

    if not drifted or not new_prompts:
        return 0.0
    a = embed(embedder, drifted, params.drift.embed_batch_size)
    b = embed(embedder, new_prompts, params.drift.embed_batch_size)
    return float(np.mean((a @ b.T).max(axis=1) >= params.drift.novel_similarity))


def check(settings: Settings, params: Params, drifted_prompts: list[str], embedder: Any) -> NewData:
    """Whether a drift verdict has something to learn from, with the reason the trigger records."""
    known, who = champion_source_md5s(settings)
    if known is None:
        return NewData(True, f"{who}: every dataset is new")
    files = new_datasets(settings, params, known)
    if not files:
        return NewData(False, f"no dataset in data.sources is new since {who}'s training data; add reviewed "
                              "answers for the drifted prompts (`llmops log export --dvc`, `llmops data add`)")
    if not drifted_prompts:  # a drift of the outputs (log-probabilities, refusals, feedback): any new data helps
        return NewData(True, f"new since {who}: {', '.join(f['entry'] for f in files)}", files)
    share = coverage(_prompts(files), drifted_prompts, embedder, params)
    need = params.monitoring.trigger.min_new_data_coverage
    names = ", ".join(f["entry"] for f in files)
    if share < need:
        return NewData(False, f"the data new since {who} ({names}) covers {share:.0%} of the drifted prompts, "
                              f"monitoring.trigger.min_new_data_coverage={need:g} needed", files, share)
    return NewData(True, f"new since {who}: {names}, covering {share:.0%} of the drifted prompts", files, share)


def labelling_queue(state_dir: Path) -> Path:
    return state_dir / "monitor" / "labelling" / "queue.jsonl"


def queue_for_labelling(state_dir: Path, prompts: list[str], *, n: int, seed: str, window_id: str,
                        report_path: str, reason: str) -> dict[str, Any]:
    """Append a seeded sample of `prompts` not queued before to the labelling queue; returns what was queued."""
    path = labelling_queue(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    queued = set()
    if path.is_file():
        queued = {json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").splitlines() if line}
    fresh = [p for p in dict.fromkeys(prompts) if p not in queued]
    sample = random.Random(seed).sample(fresh, min(n, len(fresh)))
    now = time.time()
    with open(path, "a", encoding="utf-8") as f:
        for prompt in sample:
            f.write(json.dumps({"queued": now, "prompt": prompt, "answer": None, "window_id": window_id,
                                "report": report_path, "reason": reason}, ensure_ascii=False) + "\n")
    return {"path": str(path), "queued": len(sample), "already_queued": len(prompts) - len(fresh)}
