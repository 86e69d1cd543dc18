"""`sources.json` beside the splits: which dataset versions (path, md5, rows) the splits were merged from.

Written by llmops.data.sources; read by lineage, the retrain and the erasure check (which must not import the
merge that calls it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmops.errors import DataError

MANIFEST = "sources.json"


def read_manifest(data_dir: Path) -> dict[str, Any] | None:
    """`<data_dir>/sources.json`, or None when the splits there were not made by llmops.data.sources."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise DataError(f"{path} is not valid JSON", "rebuild the splits with `llmops data build`") from None
