"""Which files in an export folder the retrain may train on: only what `llmops log export` wrote.

The export is the one path from users' feedback to training data that runs the review gate (accepted feedback
only) and the PII scrubber, and it writes `<file>.manifest.json` beside each dataset with the file's md5. A
file in `data/feedback/` or `inference_log.preference_dir` that no manifest vouches for (put there by hand, or
edited after the export) could carry unreviewed or unscrubbed corrections, so the retrain refuses it.
"""

from __future__ import annotations

import json
from pathlib import Path


def vouched(folder: Path, kind: str) -> tuple[list[Path], list[Path]]:
    """(files an export of `kind` wrote and nobody changed since, the other *.jsonl files in `folder`): a
    manifest of that kind whose md5 (or, for an export without one, its row count) matches the file."""
    from llmops.modeling.hashing import file_md5
    from monitoring.inference_log.privacy import MANIFEST_SUFFIX

    ok: list[Path] = []
    refused: list[Path] = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        manifest = path.with_name(path.name + MANIFEST_SUFFIX)
        doc = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
        if doc.get("md5"):
            same = doc["md5"] == file_md5(path)
        else:
            same = doc.get("rows") == sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        (ok if doc.get("kind") == kind and same else refused).append(path)
    return ok, refused
