"""Import Presidio without the model stacks it probes for and we never use.

Importing `presidio_analyzer` imports every NLP engine and recognizer it ships: its device detector imports torch
(and, on a GPU host, opens a CUDA context) to choose a device, and its Hugging Face token pipe and NER recognizer
import transformers' pipelines, each inside `try: ... except ImportError`, since Presidio runs without them. Ours
are pattern/checksum recognizers over a NoOpNlpEngine (scrub.py), so none of that is used: Presidio is imported
here with torch and transformers hidden from it, as if they were not installed, and with PRESIDIO_DEVICE=cpu
unless set. That is most of the import's cost (benchmarks/README.md, "Presidio import"); spaCy, which Presidio's
NlpArtifacts needs, is still imported.

Hidden only from the importing thread, only while Presidio is first imported, and only modules not imported yet:
other threads import normally, and a process that already holds torch or transformers keeps them (Presidio's
`from transformers import pipeline` still finds the pipelines module hidden). Side effect: thinc, imported with
spaCy, records torch as missing for this process (`thinc.compat.has_torch`); nothing here runs spaCy on torch.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
import threading
from typing import Any

HIDDEN = ("torch", "transformers")


class _HideFromThisThread(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.thread = threading.get_ident()

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if threading.get_ident() == self.thread and name.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"{name} is hidden while Presidio is imported (llmops.privacy)", name=name)


def import_presidio() -> None:
    """Import presidio_analyzer (once; a no-op after) with torch and transformers hidden from it."""
    if "presidio_analyzer.predefined_recognizers" in sys.modules:
        return
    os.environ.setdefault("PRESIDIO_DEVICE", "cpu")
    hide = _HideFromThisThread()
    sys.meta_path.insert(0, hide)
    try:
        import presidio_analyzer
        import presidio_analyzer.predefined_recognizers  # noqa: F401
    finally:
        sys.meta_path.remove(hide)
