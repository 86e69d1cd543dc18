"""What the PII scrubber costs a process: nothing until it scrubs (the CLI, the review app and the inference log
import without Presidio), then Presidio without torch or transformers (presidio_import.py), with the same findings.
Fresh interpreters, since an import is paid once per process."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEXT = "mail anna.schmidt@example.com, call +44 20 7946 0958, key AKIAIOSFODNN7EXAMPLE"
PROBE = r"""
import json, sys
for name in sys.argv[2:]:
    __import__(name)
before = sorted(m for m in ("presidio_analyzer", "torch", "transformers") if m in sys.modules)
from llmops.params import PrivacyParams
from llmops.privacy import scrub_text
text, counts = scrub_text(sys.argv[1], PrivacyParams())
print(json.dumps({"before": before, "text": text, "counts": counts,
                  "after": sorted(m for m in ("torch", "transformers", "transformers.pipelines") if m in sys.modules)}))
"""


def _probe(*first: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, TEXT, *first], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_no_presidio_until_a_scrub_then_no_torch_or_transformers() -> None:
    got = _probe("cli.main", "monitoring.review.web", "monitoring.inference_log.privacy",
                 "monitoring.inference_log.export")
    assert got["before"] == []  # the entry points that do not scrub import none of it
    assert got["after"] == []  # scrubbing imported Presidio without torch and transformers
    assert got["text"] == "mail <EMAIL>, call <PHONE>, key <SECRET>"
    assert got["counts"] == {"EMAIL": 1, "PHONE": 1, "SECRET": 1}


@pytest.mark.slow
def test_a_process_that_holds_transformers_does_not_load_its_pipelines() -> None:
    got = _probe("transformers")
    assert got["after"] == ["transformers"]  # Presidio's `from transformers import pipeline` found it hidden
    assert got["counts"] == {"EMAIL": 1, "PHONE": 1, "SECRET": 1}


def test_hidden_only_from_the_importing_thread() -> None:
    from llmops.privacy.presidio_import import _HideFromThisThread

    hide = _HideFromThisThread()
    with pytest.raises(ModuleNotFoundError):
        hide.find_spec("transformers.pipelines")
    assert hide.find_spec("regex") is None
    other: list[object] = []
    worker = threading.Thread(target=lambda: other.append(hide.find_spec("torch")))
    worker.start()
    worker.join()
    assert other == [None]  # another thread imports normally
