"""Find and scrub PII: one cached Presidio AnalyzerEngine per privacy config, with no NLP model.

Presidio's AnalyzerEngine loads a spaCy model by default; ours gets Presidio's `NoOpNlpEngine` (no tokens,
no model) and a registry holding only the recognizers of `recognizers.py`, so it starts offline. Presidio is
imported on the first scrub only (a process that never scrubs never imports it), without torch and transformers
(presidio_import.py), and the analyzer and anonymizer are built once per process. The cost:
context words cannot raise a score (e.g. "call me at" before a bare number), which is why the phone
recognizer's 0.4 clears `privacy.min_score` on its own. Overlapping findings keep the higher score (then the
longer span), so a placeholder never lands inside another.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from llmops.params import Params, PrivacyParams

# Record fields that carry people's words (training records, logged requests, preference pairs).
TEXT_FIELDS = ("instruction", "input", "output", "prompt", "response", "correction", "comment", "chosen", "rejected")
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Finding:
    kind: str  # EMAIL | PHONE | CREDIT_CARD | IBAN | IP_ADDRESS | SECRET | a privacy.custom kind
    start: int
    end: int
    score: float


def _privacy(params: Params | PrivacyParams | None) -> PrivacyParams:
    if isinstance(params, PrivacyParams):
        return params
    if isinstance(params, Params):
        return params.privacy
    from llmops.settings import get_settings

    return get_settings().params().privacy


@functools.lru_cache(maxsize=4)
def _engine(config: str) -> tuple[Any, dict[str, str]]:
    from llmops.privacy.presidio_import import import_presidio

    import_presidio()
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine.no_op_nlp_engine import NoOpNlpEngine

    from llmops.privacy.recognizers import build_recognizers

    recognizers, entity_kind = build_recognizers(PrivacyParams.model_validate_json(config))
    registry = RecognizerRegistry(supported_languages=["en"])
    for rec in recognizers:
        registry.add_recognizer(rec)
    nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    nlp.load()
    return AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"]), entity_kind


def find_pii(text: str, params: Params | PrivacyParams | None = None) -> list[Finding]:
    """Non-overlapping PII findings in `text`, in text order (params: params.yaml `privacy:` when None)."""
    if not text:
        return []
    privacy = _privacy(params)
    with _LOCK:  # one engine build per config, even with several threads asking at once
        engine, entity_kind = _engine(privacy.model_dump_json())
    raw = engine.analyze(text=text, language="en", entities=list(entity_kind), score_threshold=privacy.min_score)
    ranked = sorted(raw, key=lambda r: (-r.score, -(r.end - r.start), r.start))
    kept: list[Finding] = []
    for r in ranked:
        if all(r.end <= k.start or r.start >= k.end for k in kept):
            kept.append(Finding(entity_kind[r.entity_type], r.start, r.end, round(float(r.score), 4)))
    return sorted(kept, key=lambda f: f.start)


def scrub_text(text: str, params: Params | PrivacyParams | None = None) -> tuple[str, dict[str, int]]:
    """`text` with each finding replaced by `<KIND>` (Presidio's anonymizer), and the count per kind."""
    findings = find_pii(text, params)
    if not findings:
        return text, {}
    from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

    results = [RecognizerResult(f.kind, f.start, f.end, f.score) for f in findings]
    operators = {k: OperatorConfig("replace", {"new_value": f"<{k}>"}) for k in {f.kind for f in findings}}
    out = _anonymizer().anonymize(text=text, analyzer_results=results, operators=operators)
    return out.text, dict(Counter(f.kind for f in findings))


@functools.cache
def _anonymizer() -> Any:
    """One AnonymizerEngine per process (it holds no per-call state)."""
    from presidio_anonymizer import AnonymizerEngine

    return AnonymizerEngine()


def _scrub_value(value: Any, params: PrivacyParams, counts: Counter[str]) -> Any:
    """Strings scrubbed; chat messages (lists of {role, content}) scrubbed in their text content."""
    if isinstance(value, str):
        text, found = scrub_text(value, params)
        counts.update(found)
        return text
    if isinstance(value, list):
        return [_scrub_value(v, params, counts) for v in value]
    if isinstance(value, Mapping):
        return {k: (_scrub_value(v, params, counts) if k in ("content", "text") else v) for k, v in value.items()}
    return value


def scrub_record(record: Mapping[str, Any], params: Params | PrivacyParams | None = None,
                 fields: Iterable[str] = TEXT_FIELDS) -> tuple[dict[str, Any], dict[str, int]]:
    """A copy of `record` with its text fields scrubbed, and the count per kind. Ids and metadata are left as
    they are: a caller whose ids hash the content (training records) recomputes them."""
    privacy = _privacy(params)
    counts: Counter[str] = Counter()
    out = dict(record)
    for name in fields:
        if name in out and out[name] is not None:
            out[name] = _scrub_value(out[name], privacy, counts)
    return out, dict(counts)
