"""Near-duplicate records by MinHash (datasketch): reported inside a split, leakage across splits, and dropped
from a feedback export when they repeat training data.

Exact repeats are caught elsewhere (the splits suite compares ids and normalised prompts); this catches the
rest: the same record with a word changed, re-cased or re-punctuated. A record's text is its instruction,
input and output together, lower-cased and cut into word shingles (`data.dedup.shingle_words` words each); two
records are near-duplicates when the MinHash estimate of their shingle sets' Jaccard similarity reaches
`data.dedup.threshold`. Candidates come from an LSH index (sub-quadratic) built for a threshold 0.2 lower, so
that pairs just above the threshold are not lost to the banding's false negatives (at the threshold itself an
LSH misses a good share of them); every candidate pair is then checked with its own estimate.

What the shipped corpus says (3,856 stdlib records, data/splits, 3-word shingles): the most similar pair across
splits is at 0.75, so at the default 0.8 none fails (11 pairs inside a split are reported, e.g. `Field`/`field`
of dataclasses, `operator.iand`/`imul` descriptions). From 0.75 down (1 pair at 0.75, 5 at 0.7, 26 at 0.6) the
pairs across splits are one API's docstring in two inverse tasks ("describe X" <-> "name the function described
below") -- a real, milder leak the prompt-hash split does not group; with single-word shingles, 143 pairs across
splits reach 0.8 but are different facts in one template (logging.info / logging.critical): too coarse.
One changed word in a 45-word record leaves about 0.87; two about 0.76.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from llmops.params import DedupParams

_WORD = re.compile(r"\w+")
_LSH_MARGIN = 0.2  # candidates from an index this much below the threshold (recall of the banding)


@dataclass(frozen=True)
class NearDuplicate:
    a: str  # dataset (split) name
    a_id: str
    b: str
    b_id: str
    similarity: float  # estimated Jaccard similarity of the two records' shingle sets

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.a}:{self.a_id} ~ {self.b}:{self.b_id} ({self.similarity:.2f})"


def record_text(rec: Mapping[str, Any]) -> str:
    return "\n".join(str(rec.get(c) or "") for c in ("instruction", "input", "output"))


def shingles(text: str, k: int) -> set[bytes]:
    """Lower-cased word k-grams; a text shorter than k words is one shingle (so it still has a signature)."""
    words = _WORD.findall(text.lower())
    if len(words) <= k:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + k]).encode() for i in range(len(words) - k + 1)}


def signatures(texts: Sequence[str], params: DedupParams) -> list[Any]:
    from datasketch import LeanMinHash, MinHash

    sets = [list(shingles(t, params.shingle_words)) for t in texts]
    return [LeanMinHash(m) for m in MinHash.bulk(sets, num_perm=params.num_perm, seed=params.seed)]


def _index(sigs: Sequence[Any], params: DedupParams) -> Any:
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=max(0.3, params.threshold - _LSH_MARGIN), num_perm=params.num_perm)
    for i, sig in enumerate(sigs):
        lsh.insert(i, sig)
    return lsh


def _rows(data: Any) -> list[Mapping[str, Any]]:
    """Records from a DataFrame or any iterable of mappings."""
    return data.to_dict("records") if hasattr(data, "to_dict") else list(data)


def near_duplicates(datasets: Mapping[str, Any], params: DedupParams) -> list[NearDuplicate]:
    """Every pair of records (within and across `datasets`) at or above the threshold, most similar first."""
    keys: list[tuple[str, str]] = []
    texts: list[str] = []
    for name, data in datasets.items():
        for rec in _rows(data):
            keys.append((name, str(rec.get("id", len(keys)))))
            texts.append(record_text(rec))
    sigs = signatures(texts, params)
    lsh = _index(sigs, params)
    pairs: list[NearDuplicate] = []
    for i, sig in enumerate(sigs):
        for j in lsh.query(sig):
            if j <= i:
                continue
            sim = float(sig.jaccard(sigs[j]))
            if sim >= params.threshold:
                (a, a_id), (b, b_id) = keys[i], keys[j]
                pairs.append(NearDuplicate(a, a_id, b, b_id, round(sim, 3)))
    return sorted(pairs, key=lambda p: (-p.similarity, p.a, p.a_id, p.b, p.b_id))


def repeats(records: Iterable[Mapping[str, Any]], reference: Iterable[Mapping[str, Any]],
            params: DedupParams) -> list[tuple[int, str, float]]:
    """(index in `records`, reference id, similarity) for each record that near-duplicates a reference record
    (the most similar one): feedback that only repeats what training already holds."""
    recs, refs = list(records), _rows(reference)
    if not recs or not refs:
        return []
    ref_sigs = signatures([record_text(r) for r in refs], params)
    lsh = _index(ref_sigs, params)
    found = []
    for i, sig in enumerate(signatures([record_text(r) for r in recs], params)):
        best = max(((float(sig.jaccard(ref_sigs[j])), j) for j in lsh.query(sig)), default=(0.0, -1))
        if best[0] >= params.threshold:
            found.append((i, str(refs[best[1]].get("id", best[1])), round(best[0], 3)))
    return found


def leakage_message(pairs: Sequence[NearDuplicate], params: DedupParams, show: int = 5) -> tuple[str, str]:
    """(cause, fix) for near-duplicates across splits, naming the pairs."""
    listed = "; ".join(str(p) for p in pairs[:show]) + (f"; and {len(pairs) - show} more" if len(pairs) > show else "")
    cause = (f"{len(pairs)} near-duplicate record pair(s) across splits (estimated Jaccard >= {params.threshold} of "
             f"{params.shingle_words}-word shingles): {listed}")
    fix = ("remove or rewrite one record of each pair (a near-copy in another split leaks the answer into "
           "evaluation); raise data.dedup.threshold only if these are truly different tasks")
    return cause, fix
