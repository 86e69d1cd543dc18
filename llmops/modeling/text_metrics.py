"""Text similarity scores shared by the evaluate step (candidate vs references) and the canary quality probe
(canary vs stable on a golden set): exact match and ROUGE-L F1 after one normalisation (case, punctuation,
whitespace), and embedding cosine similarity (meaning, not wording). One definition, so a rollout judges
quality with exactly the measure the gate used.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np

_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower case, every punctuation or symbol character replaced by a space, whitespace collapsed."""
    chars = [
        " " if unicodedata.category(ch)[0] in ("P", "S") else ch
        for ch in unicodedata.normalize("NFKC", str(text)).lower()
    ]
    return _WS.sub(" ", "".join(chars)).strip()


def tokens(text: str) -> list[str]:
    """Word tokens of the normalised text (what ROUGE-L compares)."""
    norm = normalize_text(text)
    return norm.split(" ") if norm else []


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised texts are identical, else 0.0."""
    return float(normalize_text(prediction) == normalize_text(reference))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a)*len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1) on normalised word tokens: 2PR/(P+R) with P = LCS/|pred|, R = LCS/|ref|.

    Two empty texts score 1.0 (they agree); one empty text scores 0.0.
    """
    pred, ref = tokens(prediction), tokens(reference)
    if not pred and not ref:
        return 1.0
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def embedding_similarity(embedder, predictions: Sequence[str], references: Sequence[str],
                         reference_vectors: np.ndarray | None = None) -> list[float]:
    """Cosine similarity of each prediction with its reference (rows are L2-normalised embeddings).

    `reference_vectors` lets the caller embed the references once and compare several models with them.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return []
    refs = reference_vectors if reference_vectors is not None else embedder.encode(references)
    preds = embedder.encode(predictions)
    return [float(x) for x in np.sum(preds * refs, axis=1)]
