"""PII scrubbing with a measured recall (Presidio pattern recognizers: no model download).

    find_pii(text, params=None) -> list[Finding]          # kind, start, end, score; non-overlapping
    scrub_text(text, params=None) -> (text, {kind: n})    # each finding -> <KIND>
    scrub_record(record, params=None) -> (record, {kind: n})  # over the text fields (TEXT_FIELDS)

Kinds: EMAIL, PHONE, CREDIT_CARD, IBAN, IP_ADDRESS, SECRET, plus params.yaml `privacy.custom`. Used at
`llmops log export` (always), at log time with `monitoring.log.redact`, and by the gate's leaked-PII check.
Precision and recall per kind: `python benchmarks/pii_recall.py` on data/privacy/pii_eval.jsonl.
"""

from llmops.privacy.scrub import TEXT_FIELDS, Finding, find_pii, scrub_record, scrub_text

__all__ = ["TEXT_FIELDS", "Finding", "find_pii", "scrub_record", "scrub_text"]
