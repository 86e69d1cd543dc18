"""What changed: the window's new prompts grouped into topics the training reference does not cover.

A prompt is "new" when no reference prompt lies within `drift.novel_similarity` cosine of it (the same mask
the prompt_novel_share detector counts). New prompts are grouped by average-linkage agglomerative clustering
(scipy) on cosine distance (no number of clusters to guess: a cut at a fixed distance), and each group large enough to
matter (`drift.cluster_min_share` of the window's distinct prompts) is reported with its share, how far it is
from the reference, and the prompts nearest its centre as examples, so a person can read the shift in a minute.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmops.params import DriftParams

CUT = 0.6  # cosine distance at which the dendrogram is cut (MiniLM: same-topic prompts sit within ~0.4-0.5)


def new_prompt_clusters(texts: list[str], emb: np.ndarray, novel: np.ndarray, nearest: np.ndarray,
                        p: DriftParams) -> list[dict[str, Any]]:
    """Clusters of the new prompts, largest first: share of the window, size, examples, similarity to the ref."""
    idx = np.flatnonzero(novel)
    if len(idx) == 0:
        return []
    labels = _cluster(np.asarray(emb, np.float64)[idx])
    total = len(texts)
    out = []
    for label in np.unique(labels):
        members = idx[labels == label]
        if len(members) / total < p.cluster_min_share or len(members) < 2:
            continue
        vecs = np.asarray(emb, np.float64)[members]
        centre = vecs.mean(axis=0)
        order = np.argsort(-(vecs @ centre))[: p.cluster_examples]
        out.append({"share": len(members) / total, "prompts": len(members),
                    "nearest_reference_similarity": float(np.mean(nearest[members])),
                    "examples": [texts[int(members[i])] for i in order]})
    out.sort(key=lambda c: -c["prompts"])
    return out[: p.max_clusters]


def _cluster(vecs: np.ndarray) -> np.ndarray:
    if len(vecs) < 2:
        return np.zeros(len(vecs), dtype=int)
    from scipy.cluster.hierarchy import fcluster, linkage

    return fcluster(linkage(vecs, method="average", metric="cosine"), t=CUT, criterion="distance")
