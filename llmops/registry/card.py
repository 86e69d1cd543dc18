"""A version's model card in MLflow: the full card as the register run's `model_card/README.md` artifact, its
front page (title, intended use, gate) as the version's description, and a `model_card` tag naming the artifact.

The card lives on the run because a version's description is capped (5,000 characters in MLflow's SQL
store) and the card is not; the tag lets any MLflow client find it, `Registry.card` reads it back.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from llmops.errors import NotFound, RegistryError

CARD_DIR = "model_card"
CARD_FILE = "README.md"  # the Hugging Face name: the folder can be pushed to a hub as it is
CARD_TAG = "model_card"
DESCRIPTION_CHARS = 4000


def summary(card_text: str) -> str:
    """The version description: the card's markdown without front matter, cut at a section boundary."""
    text = card_text
    if text.startswith("---"):
        text = text.split("\n---", 2)[-1].lstrip("-\n")
    if len(text) <= DESCRIPTION_CHARS:
        return text
    cut = text.rfind("\n## ", 0, DESCRIPTION_CHARS)
    return text[: cut if cut > 0 else DESCRIPTION_CHARS] + f"\n\n(full card: artifact {CARD_DIR}/{CARD_FILE})\n"


def attach(client: Any, name: str, version: str, run_id: str, card_text: str) -> str:
    """Log the card to `run_id`, tag version `name/version` with it and set its description; returns the
    artifact path."""
    with tempfile.TemporaryDirectory(prefix="llmops-card-") as tmp:
        path = Path(tmp) / CARD_FILE
        path.write_text(card_text, encoding="utf-8")
        client.log_artifact(run_id, str(path), artifact_path=CARD_DIR)
    artifact = f"{CARD_DIR}/{CARD_FILE}"
    client.set_model_version_tag(name, version, CARD_TAG, artifact)
    client.update_model_version(name, version, description=summary(card_text))
    return artifact


def read(registry: Any, ref: str) -> dict[str, Any]:
    """{name, version, artifact, card} of the version `ref` points at; NotFound when it has no card."""
    import mlflow

    name, version = registry.resolve(ref)
    mv = registry.client.get_model_version(name, version)
    artifact = (mv.tags or {}).get(CARD_TAG)
    if not artifact or not mv.run_id:
        raise NotFound(f"{name}/{version} has no model card",
                       "versions registered before model cards have none; register a new version")
    with tempfile.TemporaryDirectory(prefix="llmops-card-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=artifact, dst_path=tmp,
                                                        tracking_uri=registry.settings.tracking_uri)
        except Exception as exc:  # MlflowException or OSError, depending on the artifact store
            raise RegistryError(f"{name}/{version}'s model card {artifact} cannot be read: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                                f"check the artifact store of run {mv.run_id}") from None
        text = Path(local).read_text(encoding="utf-8")
    return {"name": name, "version": version, "artifact": artifact, "run_id": mv.run_id, "card": text}
