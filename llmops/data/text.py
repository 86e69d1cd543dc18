"""Text normalisation shared by the builder, the splitter and the validator.

`group_key` decides which records are "the same prompt": splitting by it keeps exact duplicates and
near-identical prompts (case, punctuation, spacing, Unicode compatibility forms) on one side of a split,
and the leakage check compares splits by it, so both must use this one definition.
"""

from __future__ import annotations

import hashlib
import json
import string
import unicodedata
from collections.abc import Mapping
from typing import Any

_ASCII_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalise(text: str) -> str:
    """NFKC, case-folded, ASCII punctuation dropped, runs of whitespace collapsed to one space.

    Only ASCII punctuation goes: a prompt about the character "‹" must not collapse into one about "›".
    """
    folded = unicodedata.normalize("NFKC", text).casefold().translate(_ASCII_PUNCT)
    return " ".join(folded.split())


def group_key(instruction: str, input_text: str) -> str:
    """The normalised prompt (instruction + input): equal keys never straddle a split."""
    return normalise(f"{instruction} {input_text}")


def record_id(record: Mapping[str, Any]) -> str:
    """Stable content id: the first 16 hex digits of sha256 over instruction, input, output and source."""
    blob = json.dumps(
        [record["instruction"], record["input"], record["output"], record["source"]], ensure_ascii=False
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
