"""The labelled PII evaluation set (data/privacy/pii_eval.jsonl) and its span-overlap scorer.

`python -m llmops.privacy.evalset` regenerates the set, byte-identical for the same seed and sample corpus:
synthetic prompts with planted PII of every built-in kind in the formats people write (grouped/compact cards
and IBANs, national and international phones, IPv4/IPv6, vendor keys, JWTs, bearer tokens, PEM blocks), and
hard negatives that look like PII but are not (version numbers, dates, times, hex digests, UUIDs, order and
ISBN numbers, prose with "key"/"token", and signatures and docs from our stdlib sample corpus).

Scoring: a finding is a true positive when it overlaps a labelled span of the same kind; each labelled span is
counted found at most once, so recall = found spans / labelled spans and precision = matched findings / findings.
"""

from __future__ import annotations

import json
import random
import string
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

SEED = 20261207
PER_KIND = 60
HARD_NEGATIVES = 150
CORPUS_NEGATIVES = 100
OUT = Path("data/privacy/pii_eval.jsonl")

_FIRST = ["anna", "ben", "chloe", "dev", "elif", "farid", "grace", "hiro", "ines", "jonas", "kemi", "liam", "maria"]
_LAST = ["schmidt", "okafor", "nguyen", "garcia", "patel", "kowalski", "dubois", "tanaka", "smith", "rossi"]
_DOMAINS = ["example.com", "mail.example.org", "uni-bonn.de", "company.co.uk", "startup.io", "posteo.net"]
_TEMPLATES = [
    "Hi, my {what} is {pii}. Can you explain what {api} does?",
    "{api} raises an error for me. Reach me at {pii} if you need details.",
    "Please rewrite this docstring for {api}; contact: {pii}",
    "Store {pii} in a variable and pass it to {api}, how?",
    "Why does {api} behave differently here?\nuser data: {pii}\nthanks",
    "{pii} is what I got back from the service. Is {api} the right call to parse it?",
]


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return body + str((10 - total % 10) % 10)


def _card(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15),
                                 ("6011", 16)])
    num = _luhn_complete(prefix, length, rng)
    sep = rng.choice(["", " ", "-"])
    groups = [num[:4], num[4:10], num[10:]] if length == 15 else [num[i:i + 4] for i in range(0, 16, 4)]
    return sep.join(groups)


def _iban(rng: random.Random) -> str:
    country, bban_len = rng.choice([("DE", 18), ("FR", 23), ("NL", 14), ("ES", 20), ("IT", 23), ("GB", 18)])
    if country == "GB":
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + "".join(
            rng.choice(string.digits) for _ in range(14))
    elif country == "NL":
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + "".join(
            rng.choice(string.digits) for _ in range(10))
    elif country == "IT":
        bban = rng.choice(string.ascii_uppercase) + "".join(rng.choice(string.digits) for _ in range(22))
    else:
        bban = "".join(rng.choice(string.digits) for _ in range(bban_len))
    digits = "".join(str(int(c, 36)) for c in bban + country + "00")
    iban = f"{country}{98 - int(digits) % 97:02d}{bban}"
    return " ".join(iban[i:i + 4] for i in range(0, len(iban), 4)) if rng.random() < 0.6 else iban


def _phone(rng: random.Random) -> str:
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    area = rng.choice(["212", "415", "617", "312", "206", "303"])
    return rng.choice([
        f"({area}) {rng.randint(200, 999)}-{d(4)}", f"{area}-{rng.randint(200, 999)}-{d(4)}",
        f"+1 {area} {rng.randint(200, 999)} {d(4)}", f"+44 20 7{d(3)} {d(4)}", f"020 7{d(3)} {d(4)}",
        f"+44 7700 9{d(5)}", f"+49 30 {d(8)}", f"+49 151 {d(8)}", f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
        f"+33 6 {d(2)} {d(2)} {d(2)} {d(2)}", f"+91 98{d(3)} {d(5)}", f"+61 2 {d(4)} {d(4)}",
    ])


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.65:
        first = rng.choice([10, 172, 192, 8, 34, 52, 81, 203])
        return ".".join(str(x) for x in (first, rng.randint(0, 255), rng.randint(0, 255), rng.randint(1, 254)))
    groups = [f"{rng.randint(0, 0xffff):x}" for _ in range(8)]
    if rng.random() < 0.5:
        return "2001:db8:" + ":".join(groups[:2]) + "::" + groups[7]
    return ":".join(groups)


def _email(rng: random.Random) -> str:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    local = rng.choice([f"{first}.{last}", f"{first}_{last}{rng.randint(1, 99)}", f"{first[0]}{last}",
                        f"{first}+{rng.choice(['news', 'dev', 'shop'])}"])
    addr = f"{local}@{rng.choice(_DOMAINS)}"
    return addr.upper() if rng.random() < 0.1 else addr


def _secret(rng: random.Random) -> str:
    an = string.ascii_letters + string.digits
    s = lambda n, chars=an: "".join(rng.choice(chars) for _ in range(n))  # noqa: E731
    kind = rng.randrange(9)
    return [
        lambda: "sk-" + s(48), lambda: "sk-proj-" + s(40) + "_" + s(20), lambda: "sk-ant-api03-" + s(80),
        lambda: "AKIA" + s(16, string.ascii_uppercase + string.digits), lambda: "ghp_" + s(36),
        lambda: "xoxb-" + s(11, string.digits) + "-" + s(12, string.digits) + "-" + s(24),
        lambda: "AIza" + s(35, an + "_-"),
        lambda: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOi" + s(20) + "." + s(43, an + "_-"),
        lambda: "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(s(64, an + "+/") for _ in range(4))
        + "\n-----END RSA PRIVATE KEY-----",
    ][kind]()


_SECRET_FRAMES = ["{pii}", "Authorization: Bearer {token}", "api_key = \"{token}\"", "PASSWORD={token}"]
GENERATORS: dict[str, tuple[str, Callable[[random.Random], str]]] = {
    "EMAIL": ("email", _email), "PHONE": ("phone number", _phone), "CREDIT_CARD": ("card number", _card),
    "IBAN": ("IBAN", _iban), "IP_ADDRESS": ("server address", _ip), "SECRET": ("API key", _secret),
}


def _plant(rng: random.Random, kind: str, api: str) -> dict[str, Any]:
    what, gen = GENERATORS[kind]
    pii = gen(rng)
    frame = "{pii}"
    if kind == "SECRET" and rng.random() < 0.35:  # tokens carried by their context (bearer, assignments)
        frame = rng.choice(_SECRET_FRAMES[1:])
        pii = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randint(20, 40)))
    template = rng.choice(_TEMPLATES)
    filled = frame.replace("{token}", pii).replace("{pii}", pii)
    head = template.split("{pii}")[0].format(what=what, api=api)
    text = template.format(what=what, api=api, pii=filled)
    start = len(head) + filled.index(pii)
    return {"text": text, "spans": [{"kind": kind, "start": start, "end": start + len(pii)}]}


def _hard_negative(rng: random.Random, api: str) -> str:
    hexs = lambda n: "".join(rng.choice("0123456789abcdef") for _ in range(n))  # noqa: E731
    uuid = f"{hexs(8)}-{hexs(4)}-4{hexs(3)}-a{hexs(3)}-{hexs(12)}"
    options = [
        f"I upgraded to version {rng.randint(1, 4)}.{rng.randint(0, 20)}.{rng.randint(0, 30)} and {api} broke.",
        f"The release on 2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} at {rng.randint(0, 23):02d}:"
        f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} changed {api}.",
        f"git commit {hexs(40)} touched {api}; sha256 was {hexs(64)}.",
        f"Request {uuid} failed inside {api}.",
        f"Order #{rng.randint(10**7, 10**8)} shipped; ISBN 978-{rng.randint(0, 9)}-{rng.randint(100, 999)}-"
        f"{rng.randint(10000, 99999)}-{rng.randint(0, 9)}. Unrelated: how does {api} work?",
        f"for i in range({rng.randint(100, 99999)}): total += values[i] * {rng.random():.6f}  # uses {api}",
        f"Which token does {api} use as the secret key separator? The password prompt says 'enter password'.",
        f"Set timeout={rng.randint(1, 600)} and port={rng.randint(1024, 65535)} before calling {api}.",
        f"The matrix shape is ({rng.randint(1, 4096)}, {rng.randint(1, 4096)}) and {api} returns "
        f"{rng.randint(10**9, 10**10 - 1)} bytes.",
        f"Use {api}(key=str.lower, token_pattern=r'\\w+') to sort case-insensitively.",
        f"pip install 'package>={rng.randint(1, 9)}.{rng.randint(0, 9)}' then import {api}; see PEP "
        f"{rng.randint(8, 700)}.",
        f"The checksum 0x{hexs(8)} and the color #{hexs(6)} both come from {api}.",
    ]
    return rng.choice(options)


def build(corpus: Path = Path("data/sample/base.jsonl"), seed: int = SEED) -> list[dict[str, Any]]:
    """The evaluation records: PER_KIND planted per kind, then the hard negatives (no spans)."""
    from llmops.data.records import read_jsonl

    rng = random.Random(seed)
    recs = read_jsonl(corpus).to_dict("records")
    apis = sorted({r["output"] for r in recs if r["source"].startswith("stdlib:") and "(" in r["output"]
                   and len(r["output"]) < 80})
    out: list[dict[str, Any]] = []
    for kind in GENERATORS:
        out += [{"id": f"{kind.lower()}-{i:03d}", **_plant(rng, kind, rng.choice(apis))} for i in range(PER_KIND)]
    out += [{"id": f"neg-{i:03d}", "text": _hard_negative(rng, rng.choice(apis)), "spans": []}
            for i in range(HARD_NEGATIVES)]
    docs = sorted({r["output"] for r in recs if r["source"].startswith("stdlib:") and len(r["output"]) > 60})
    out += [{"id": f"corpus-{i:03d}", "text": text, "spans": []}
            for i, text in enumerate(rng.sample(docs, CORPUS_NEGATIVES))]
    return out


def score(records: Iterable[dict[str, Any]], find: Callable[[str], list[Any]]) -> dict[str, dict[str, float]]:
    """Per kind: labelled spans, findings, true positives, precision, recall (span overlap, same kind)."""
    gold, found, tp_spans, tp_findings = Counter(), Counter(), Counter(), Counter()
    for rec in records:
        spans = rec["spans"]
        for s in spans:
            gold[s["kind"]] += 1
        matched: set[int] = set()
        for f in find(rec["text"]):
            found[f.kind] += 1
            hit = [i for i, s in enumerate(spans) if s["kind"] == f.kind and f.start < s["end"] and s["start"] < f.end]
            if hit:
                tp_findings[f.kind] += 1
                matched.update(hit)
        for i in matched:
            tp_spans[spans[i]["kind"]] += 1
    table = {}
    for kind in sorted(set(gold) | set(found)):
        table[kind] = {"labelled": gold[kind], "found": found[kind], "true_positives": tp_spans[kind],
                       "precision": tp_findings[kind] / found[kind] if found[kind] else 1.0,
                       "recall": tp_spans[kind] / gold[kind] if gold[kind] else 1.0}
    return table


def write(records: list[dict[str, Any]], path: Path = OUT) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def load(path: Path = OUT) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


if __name__ == "__main__":
    recs = build()
    write(recs)
    print(f"wrote {len(recs)} records to {OUT}")
