"""Introspect standard-library modules for documented public functions and classes; stdlib only.

This file runs as a script in a pristine interpreter (`python -I -S stdlib_api.py MODULE...`, see
`build.collect_api`): no site-packages, no user environment, nothing imported before it. That matters
because libraries monkeypatch the stdlib (pytest and logging replace `warnings.showwarning`, for one),
and an introspection done inside an arbitrary process would then describe that process, not Python,
and the dataset's bytes (and its DVC hash) would depend on who built it.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass

MAX_ANSWER_CHARS = 240  # ~50-60 tokens: long enough to say something, short enough to score
MAX_SIGNATURE_CHARS = 160

_SIGNATURE_LINE = re.compile(r"^[\w.]+\(.*\)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`'\"(])")
# Reprs that embed an address or depend on hashing order make bytes differ between runs.
_UNSTABLE_REPR = re.compile(r" at 0x[0-9a-f]+|<(?:object|function|built-in|bound|module|class) |\{[^}:]*,[^}:]*\}")


@dataclass(frozen=True)
class ApiObject:
    """One documented public function or class of a module."""

    module: str
    name: str
    kind: str  # "function" | "class"
    summary: str | None  # first paragraph/sentence of its own docstring, if short enough
    signature: str | None

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


def summarise_doc(doc: str | None) -> str | None:
    """The first real paragraph of a docstring (or its first sentence if the paragraph is long).

    Leading signature lines that C functions and generated classes put in their docstrings are
    skipped; doctest examples and over-long sentences give None rather than a truncated answer.
    """
    if not doc:
        return None
    paragraphs = [p for p in re.split(r"\n\s*\n", inspect.cleandoc(doc)) if p.strip()]
    while paragraphs and _SIGNATURE_LINE.match(paragraphs[0].strip()):
        rest = paragraphs[0].strip().partition("\n")[2]
        paragraphs[0] = rest
        if not rest.strip():
            paragraphs.pop(0)
    if not paragraphs:
        return None
    text = " ".join(paragraphs[0].split())
    if ">>>" in text or len(text) < 12:
        return None
    if len(text) > MAX_ANSWER_CHARS:
        text = _SENTENCE_END.split(text, maxsplit=1)[0]
    if len(text) > MAX_ANSWER_CHARS or not re.search(r"[A-Za-z]{3}", text):
        return None
    return text


def _signature(module: str, name: str, obj: object) -> str | None:
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return None
    text = f"{module}.{name}{sig}"
    if len(text) > MAX_SIGNATURE_CHARS or _UNSTABLE_REPR.search(sig):
        return None
    return text


def _defined_here(obj: object, module: str) -> bool:
    """True when `obj` belongs to `module`, one of its submodules (a package re-exporting its parts, like
    `json.JSONDecoder` from `json.decoder`) or its C accelerator (`_heapq`); False for imports from
    elsewhere, which are documented under their own module."""
    owner = getattr(obj, "__module__", None) or ""
    leaf = module.rsplit(".", 1)[-1]
    return owner in (module, f"_{leaf}", f"_py{leaf}") or owner.startswith(module + ".")


def iter_api(module_name: str) -> Iterator[ApiObject]:
    """Documented public functions and classes of one module, sorted by name."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = importlib.import_module(module_name)
    public = getattr(module, "__all__", None)
    names = sorted(set(public)) if public is not None else sorted(n for n in vars(module) if not n.startswith("_"))
    for name in names:
        if name.startswith("_"):
            continue
        obj = getattr(module, name, None)
        if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
            continue
        if not _defined_here(obj, module_name):
            continue
        kind = "class" if inspect.isclass(obj) else "function"
        summary = summarise_doc(obj.__doc__ if isinstance(obj.__doc__, str) else None)
        signature = _signature(module_name, name, obj)
        if summary is None and signature is None:
            continue
        yield ApiObject(module_name, name, kind, summary, signature)


def main(argv: list[str]) -> int:
    """Print JSON: every module's API objects (in the order of the modules given) and the builtin names."""
    import builtins

    objects = [asdict(o) for module in argv for o in iter_api(module)]
    payload = {"objects": objects, "builtins": sorted(n for n in dir(builtins) if not n.startswith("_"))}
    sys.stdout.write(json.dumps(payload, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
