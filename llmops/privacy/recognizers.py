"""The Presidio recognizers behind `find_pii`: pattern- and checksum-based only, so nothing is downloaded.

Presidio's stock recognizers cover e-mail (TLD-checked against tldextract's bundled suffix snapshot, never
fetched), phone numbers (Google's libphonenumber), credit cards (Luhn), IBAN (mod-97) and IPv4/IPv6. Secrets
(`SECRET`) have no stock recognizer: the patterns below are the vendors' documented key formats (OpenAI,
Anthropic, AWS, GitHub, Slack, Google, Stripe), JWTs, bearer tokens, `key = value` assignments of
secret-looking values and PEM private-key blocks. Custom kinds come from params.yaml `privacy.custom`.
"""

from __future__ import annotations

from typing import Any

import regex

from llmops.errors import LlmopsError
from llmops.params import PrivacyParams

# Our kind -> the entity name Presidio's stock recognizer reports (SECRET and custom kinds report our name).
STOCK_ENTITIES = {"EMAIL": "EMAIL_ADDRESS", "PHONE": "PHONE_NUMBER", "CREDIT_CARD": "CREDIT_CARD",
                  "IBAN": "IBAN_CODE", "IP_ADDRESS": "IP_ADDRESS"}
BUILTIN_KINDS = (*STOCK_ENTITIES, "SECRET")

# (name, regex, score). Case-sensitive unless a pattern says (?i): vendor prefixes are.
SECRET_PATTERNS: tuple[tuple[str, str, float], ...] = (
    ("pem private key", r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
     1.0),
    ("openai/anthropic key", r"\bsk-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_]{20,}(?:[A-Za-z0-9_-]*)", 0.95),
    ("aws access key id", r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b", 0.95),
    ("github token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b", 0.95),
    ("slack token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}", 0.95),
    ("google api key", r"\bAIza[0-9A-Za-z_-]{35}", 0.95),
    ("stripe key", r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}\b", 0.95),
    ("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", 0.9),
    ("bearer token", r"(?i)(?<=\bbearer\s+)[A-Za-z0-9._~+/-]{16,}=*", 0.85),
    # `api_key = "..."`, `password: ...`: the value only, when it has letters and digits and 8+ characters
    ("assigned secret", r"(?i)(?<=\b(?:[a-z0-9_]*(?:api[_-]?key|secret|token|passw(?:or)?d|pwd))[\"']?\s*[:=]\s*"
     r"[\"']?)(?=[A-Za-z0-9_.+/=~-]*\d)(?=[A-Za-z0-9_.+/=~-]*[A-Za-z])[A-Za-z0-9_.+/=~-]{8,}", 0.8),
)


def _offline_email() -> Any:
    """Presidio's e-mail recognizer, with its TLD check on tldextract's bundled list (no network fetch)."""
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return extract(pattern_text).fqdn != ""

    return OfflineEmailRecognizer()


# Presidio's card pattern knows 3/4/5/6-prefixed numbers only; Mastercard's 2-series BINs (2221-2720, issued
# since 2017) were missed in the evaluation set, so they get a pattern too (still Luhn-checked by Presidio).
MASTERCARD_2_SERIES = r"\b2(?:22[1-9]|2[3-9]\d|[3-6]\d{2}|7[01]\d|720)[- ]?\d{4}[- ]?\d{4}[- ]?\d{4}\b"
_PHONE_SEPARATORS = regex.compile(r"\d[\s.-]+(?=\d)")


def _cards() -> Any:
    from presidio_analyzer import Pattern
    from presidio_analyzer.predefined_recognizers import CreditCardRecognizer

    patterns = [*CreditCardRecognizer.PATTERNS, Pattern("Mastercard 2-series (weak)", MASTERCARD_2_SERIES, 0.3)]
    return CreditCardRecognizer(patterns=patterns)


def _phones(regions: tuple[str, ...]) -> Any:
    """libphonenumber's matcher, minus bare digit runs: in the evaluation set every false phone was a decimal
    (0.555187) or a byte count (3854814694). A number written with + or ( or two separated groups is kept."""
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    class WrittenPhoneRecognizer(PhoneRecognizer):
        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            found = super().analyze(text, entities, nlp_artifacts)
            return [r for r in found
                    if text[r.start] in "+(" or len(_PHONE_SEPARATORS.findall(text[r.start:r.end])) >= 2]

    return WrittenPhoneRecognizer(supported_regions=regions)


def _stock(kind: str, params: PrivacyParams) -> Any:
    from presidio_analyzer import predefined_recognizers as pr

    if kind == "EMAIL":
        return _offline_email()
    if kind == "PHONE":
        return _phones(tuple(params.phone_regions))
    if kind == "CREDIT_CARD":
        return _cards()
    return {"IBAN": pr.IbanRecognizer, "IP_ADDRESS": pr.IpRecognizer}[kind]()


def _patterns(kind: str, patterns: list[tuple[str, str, float]]) -> Any:
    from presidio_analyzer import Pattern, PatternRecognizer

    for name, rx, _ in patterns:
        try:
            regex.compile(rx)
        except regex.error as exc:
            raise LlmopsError(f"privacy pattern {name!r} ({kind}) is not a valid regex: {exc}",
                              "fix the regex in params.yaml privacy.custom") from None
    return PatternRecognizer(supported_entity=kind, name=f"llmops_{kind.lower()}",
                             patterns=[Pattern(name, rx, score) for name, rx, score in patterns],
                             global_regex_flags=regex.DOTALL | regex.MULTILINE)


def build_recognizers(params: PrivacyParams) -> tuple[list[Any], dict[str, str]]:
    """The recognizers for `params` and the map from the entity each reports to our kind."""
    unknown = sorted(set(params.kinds) - set(BUILTIN_KINDS))
    if unknown:
        raise LlmopsError(f"unknown privacy kind(s) {unknown}",
                          f"params.yaml privacy.kinds takes {list(BUILTIN_KINDS)}; add others under privacy.custom")
    recognizers, entity_kind = [], {}
    for kind in params.kinds:
        if kind == "SECRET":
            recognizers.append(_patterns("SECRET", list(SECRET_PATTERNS)))
            entity_kind["SECRET"] = "SECRET"
        else:
            recognizers.append(_stock(kind, params))
            entity_kind[STOCK_ENTITIES[kind]] = kind
    custom: dict[str, list[tuple[str, str, float]]] = {}
    for i, pat in enumerate(params.custom):
        if not regex.fullmatch(r"[A-Z][A-Z0-9_]*", pat.kind):
            raise LlmopsError(f"privacy.custom[{i}].kind {pat.kind!r} is not an upper-case name",
                              "name it like EMPLOYEE_ID (it becomes the placeholder <EMPLOYEE_ID>)")
        custom.setdefault(pat.kind, []).append((f"custom {i}", pat.regex, pat.score))
    for kind, pats in custom.items():
        if kind in entity_kind.values():
            raise LlmopsError(f"privacy.custom kind {kind!r} clashes with a built-in kind",
                              "give the custom pattern its own kind name")
        recognizers.append(_patterns(kind, pats))
        entity_kind[kind] = kind
    return recognizers, entity_kind
