"""Build the sample corpus with no download: instruction records from the Python standard library itself.

Two slices, written as byte-deterministic JSONL:

- `base.jsonl`: questions about stdlib functions and classes answered from their own docstrings and
  signatures ("What does `json.dumps` do?" -> the docstring's first paragraph or sentence). Answers are
  short (a few to ~60 tokens) so exact match and ROUGE-L on generations mean something.
- `shifted.jsonl`: a clearly different domain, Unicode characters (names, code points, categories) and
  HTML entities, all from `unicodedata` / `html.entities`; the drift monitors and the retraining trigger
  use it as "new traffic" the base model was not tuned on.

Determinism: a fixed, sorted module list of platform-independent modules introspected in a pristine
interpreter (`stdlib_api`), names sorted, phrasing and capping drawn from `random.Random` seeded with
strings (sha512-based, immune to PYTHONHASHSEED), ids from content hashes. The same Python (3.11.7)
therefore produces the same bytes on every machine, which is what lets DVC's md5 in dvc.lock double as
a proof that a fresh build reproduces the shipped data.
"""

from __future__ import annotations

import argparse
import html.entities
import json
import random
import re
import subprocess
import sys
import unicodedata
from collections import defaultdict
from pathlib import Path

from llmops.data import stdlib_api
from llmops.data.records import write_jsonl
from llmops.data.stdlib_api import ApiObject, summarise_doc
from llmops.data.text import record_id
from llmops.errors import LlmopsError
from llmops.params import BuildParams

# Platform-independent, non-deprecated modules whose public API and docstrings do not depend on the
# OS, the C library, OpenSSL or the locale (so os, sys, time, socket, hashlib, ssl, asyncio... are out).
# Fixed and sorted: adding a module here changes the dataset (and its DVC hash) on purpose.
STDLIB_MODULES: tuple[str, ...] = (
    "abc", "argparse", "array", "ast", "base64", "bdb", "binascii", "bisect", "bz2", "calendar",
    "cmath", "cmd", "codecs", "collections", "collections.abc", "colorsys", "concurrent.futures",
    "configparser", "contextlib", "contextvars", "copy", "copyreg", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "dis", "doctest", "email.message", "email.utils", "enum", "filecmp",
    "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob",
    "graphlib", "gzip", "heapq", "hmac", "html", "html.parser", "http.client", "http.cookies",
    "http.server", "imaplib", "importlib", "importlib.metadata", "inspect", "io", "ipaddress",
    "itertools", "json", "keyword", "linecache", "logging", "logging.handlers", "lzma", "mailbox",
    "math", "mimetypes", "numbers", "operator", "optparse", "pathlib", "pdb", "pickle",
    "pickletools", "pkgutil", "plistlib", "poplib", "pprint", "profile", "pstats", "py_compile",
    "pyclbr", "queue", "quopri", "random", "re", "reprlib", "sched", "secrets", "selectors",
    "shelve", "shlex", "smtplib", "socketserver", "sqlite3", "statistics", "string", "stringprep",
    "struct", "symtable", "tabnanny", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "token", "tokenize", "tomllib", "trace", "traceback", "tracemalloc", "types", "typing",
    "unittest", "unittest.mock", "urllib.parse", "urllib.request", "uuid", "warnings", "wave",
    "weakref", "wsgiref.simple_server", "wsgiref.util", "xml.dom.minidom", "xml.etree.ElementTree",
    "xml.sax", "xmlrpc.client", "zipfile", "zlib", "zoneinfo",
)
__all__ = ["STDLIB_MODULES", "ApiObject", "build", "build_base", "build_shifted", "collect_api", "summarise_doc"]

BASE_SOURCE = "stdlib:{module}"
SHIFTED_SOURCE = "unicode:{kind}"

DESCRIBE = ("What does `{q}` do?", "Briefly, what is `{q}` for?", "Explain what `{q}` does in one sentence.")
DESCRIBE_CLASS = ("What is `{q}`?", "Briefly, what is the class `{q}` for?", "Describe `{q}` in one sentence.")
SIGNATURE = ("What is the signature of `{q}`?", "How is `{q}` called? Give its signature.",
             "Write the call signature of `{q}`.")
MODULE = ("Which standard library module provides `{n}`?", "In which Python module is `{n}` defined?",
          "Which module do I import `{n}` from?")
IDENTIFY = ("Which Python standard library {kind} does this describe?",
            "Name the standard library {kind} described below.",
            "Which stdlib {kind} matches this description?")


def collect_api(modules: tuple[str, ...]) -> tuple[dict[str, list[ApiObject]], set[str]]:
    """Each module's documented API and the builtin names, from a fresh `python -I -S` (see `stdlib_api`)."""
    proc = subprocess.run([sys.executable, "-I", "-S", stdlib_api.__file__, *modules],
                          capture_output=True, text=True, encoding="utf-8", check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise LlmopsError(f"introspecting the standard library failed: {tail}",
                          "check that every module in STDLIB_MODULES imports on this Python")
    payload = json.loads(proc.stdout)
    api: dict[str, list[ApiObject]] = {m: [] for m in modules}
    for obj in payload["objects"]:
        api[obj["module"]].append(ApiObject(**obj))
    return api, set(payload["builtins"])


def _pick(templates: tuple[str, ...], seed: int, *key: str) -> str:
    return random.Random("|".join((str(seed), *key))).choice(templates)


def _record(instruction: str, input_text: str, output: str, source: str) -> dict[str, str]:
    rec = {"instruction": instruction, "input": input_text, "output": output, "source": source}
    return {"id": record_id(rec), **rec}


def _records_for(obj: ApiObject, unique_names: set[str], seed: int) -> list[dict[str, str]]:
    q, source = obj.qualname, BASE_SOURCE.format(module=obj.module)
    out = []
    if obj.summary:
        templates = DESCRIBE_CLASS if obj.kind == "class" else DESCRIBE
        out.append(_record(_pick(templates, seed, "describe", q).format(q=q), "", obj.summary, source))
        instruction = _pick(IDENTIFY, seed, "identify", q).format(kind=obj.kind)
        out.append(_record(instruction, obj.summary, q, source))
    if obj.signature:
        out.append(_record(_pick(SIGNATURE, seed, "signature", q).format(q=q), "", obj.signature, source))
    if obj.name in unique_names:
        out.append(_record(_pick(MODULE, seed, "module", q).format(n=obj.name), "", obj.module, source))
    return out


def _drop_conflicts(records: list[dict[str, str]]) -> list[dict[str, str]]:
    """Drop exact duplicates, and every record whose exact prompt has more than one distinct answer
    (two functions sharing a docstring make "which function is this?" unanswerable)."""
    answers: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in records:
        answers[(r["instruction"], r["input"])].add(r["output"])
    seen: set[str] = set()
    kept = []
    for r in records:
        if r["id"] in seen or len(answers[(r["instruction"], r["input"])]) > 1:
            continue
        seen.add(r["id"])
        kept.append(r)
    return kept


def build_base(params: BuildParams, modules: tuple[str, ...] = STDLIB_MODULES) -> list[dict[str, str]]:
    """Instruction records about the stdlib API, at most `params.max_per_module` per module."""
    api, builtin_names = collect_api(modules)
    owners: dict[str, set[str]] = defaultdict(set)
    for objs in api.values():
        for o in objs:
            owners[o.name].add(o.module)
    unique_names = {n for n, mods in owners.items() if len(mods) == 1 and n not in builtin_names}
    records: list[dict[str, str]] = []
    for module in modules:
        per_module = [r for o in api[module] for r in _records_for(o, unique_names, params.seed)]
        if len(per_module) > params.max_per_module:
            keep = set(random.Random(f"{params.seed}|cap|{module}").sample(range(len(per_module)),
                                                                           params.max_per_module))
            per_module = [r for i, r in enumerate(per_module) if i in keep]
        records.extend(per_module)
    return _drop_conflicts(records)


def _printable(ch: str) -> bool:
    """A character that renders on its own: no controls, format chars, marks, separators or unassigned."""
    return unicodedata.category(ch)[0] not in "CMZ"


_CATEGORY_NAMES = {
    "Lu": "Letter, uppercase", "Ll": "Letter, lowercase", "Lt": "Letter, titlecase",
    "Lm": "Letter, modifier", "Lo": "Letter, other", "Nd": "Number, decimal digit",
    "Nl": "Number, letter", "No": "Number, other", "Pc": "Punctuation, connector",
    "Pd": "Punctuation, dash", "Ps": "Punctuation, open", "Pe": "Punctuation, close",
    "Pi": "Punctuation, initial quote", "Pf": "Punctuation, final quote", "Po": "Punctuation, other",
    "Sm": "Symbol, math", "Sc": "Symbol, currency", "Sk": "Symbol, modifier", "So": "Symbol, other",
}
# Names that are just a prefix plus the code point carry no information worth learning.
_GENERATED_NAME = re.compile(r"^(CJK (UNIFIED|COMPATIBILITY) IDEOGRAPH|HANGUL SYLLABLE|TANGUT|KHITAN|NUSHU|"
                             r"YI SYLLABLE|EGYPTIAN HIEROGLYPH|CUNEIFORM|LINEAR B|ANATOLIAN|BAMUM)")


def _shifted_candidates() -> list[tuple[str, str, str, str]]:
    """Every (kind, instruction, output) Unicode/HTML question, in a fixed order."""
    out: list[tuple[str, str, str, str]] = []
    for cp in range(0xA1, 0x20000):
        ch = chr(cp)
        name = unicodedata.name(ch, "")
        if not name or not _printable(ch) or _GENERATED_NAME.match(name):
            continue
        code = f"U+{cp:04X}"
        category = unicodedata.category(ch)
        out.append(("name", f"What is the Unicode name of the character {ch}?", "", name))
        out.append(("char", "Which character has this Unicode name?", name, ch))
        out.append(("codepoint", f"What is the code point of {ch}?", "", code))
        if category in _CATEGORY_NAMES:
            out.append(("category", f"What is the Unicode general category of {ch}?", "",
                        f"{category} ({_CATEGORY_NAMES[category]})"))
    for entity, text in sorted(html.entities.html5.items()):
        if not entity.endswith(";") or not all(_printable(c) for c in text):
            continue
        codes = " ".join(f"U+{ord(c):04X}" for c in text)
        out.append(("html", f"What does the HTML entity &{entity} stand for?", "", f"{text} ({codes})"))
    return out


def build_shifted(params: BuildParams) -> list[dict[str, str]]:
    """`params.shifted_records` Unicode/HTML-entity records, a seeded sample of every candidate."""
    candidates = _drop_conflicts([
        _record(instr, inp, output, SHIFTED_SOURCE.format(kind=kind))
        for kind, instr, inp, output in _shifted_candidates()
    ])
    n = min(params.shifted_records, len(candidates))
    chosen = sorted(random.Random(f"{params.seed}|shifted").sample(range(len(candidates)), n))
    return [candidates[i] for i in chosen]


def build(out_dir: Path, params: BuildParams) -> dict[str, int]:
    """Write `base.jsonl` and `shifted.jsonl` under `out_dir`; returns rows per slice."""
    base = build_base(params)
    shifted = build_shifted(params)
    return {
        "base": write_jsonl(base, out_dir / "base.jsonl"),
        "shifted": write_jsonl(shifted, out_dir / "shifted.jsonl"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out-dir", type=Path, default=Path("data/sample"))
    parser.add_argument("--params", type=Path, default=None, help="params.yaml (default: the project's)")
    args = parser.parse_args(argv)
    from llmops.params import load_params
    from llmops.settings import get_settings

    try:
        params = load_params(args.params or get_settings().params_path).data.build
    except LlmopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = build(args.out_dir, params)
    for name, count in rows.items():
        path = args.out_dir / f"{name}.jsonl"
        print(f"{path}: {count} records, {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
