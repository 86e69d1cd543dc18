"""Numbers the detectors compare: prompt embeddings and token lengths, computed the same way on both sides.

Lengths are counted with the embedder's own tokenizer (WordPiece), for the reference and the window alike,
so the length tests do not depend on which served model's tokenizer filled a log row's token counts.
Embedding sorts texts by length before batching: padding to each batch's longest text then wastes little,
which measured about 2x faster than file order on 2 cores (short prompts beside long ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmops.modeling.embedder import load_embedder
from llmops.settings import Settings


def embedder_for(settings: Settings) -> Any:
    """The pinned MiniLM embedder, loaded once per process; a clear error names `make setup` if it is missing."""
    return load_embedder(settings.embedder_dir)


def embed(embedder: Any, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit-norm float32 embeddings in input order, computed in length-sorted batches."""
    texts = list(texts)
    if not texts:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    sorted_vecs = embedder.encode([texts[i] for i in order], batch_size=batch_size)
    out = np.empty_like(sorted_vecs)
    out[np.asarray(order)] = sorted_vecs
    return out


def token_lengths(embedder: Any, texts: Sequence[str]) -> np.ndarray:
    """Token count of each text (no truncation, no special tokens), as int32."""
    if not texts:
        return np.zeros(0, dtype=np.int32)
    ids = embedder.tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
    return np.fromiter((len(x) for x in ids), dtype=np.int32, count=len(ids))


def principal_axes(x: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(mean, top-k principal axes as columns) of `x`, from the d x d covariance (cheap for 384 dims).

    LAPACK runs single-threaded here: a multi-threaded eigh measured 3-5 s instead of 0.2 s on a loaded
    2-core machine (threads spinning for cores other processes hold)."""
    from threadpoolctl import threadpool_limits

    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    with threadpool_limits(limits=1, user_api="blas"):
        _, vecs = np.linalg.eigh(centred.T @ centred)
    return mean, vecs[:, ::-1][:, :k]
