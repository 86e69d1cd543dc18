"""The paraphrase slice `data/drift/paraphrased.jsonl`: in-domain traffic as people write it (no shift).

The training prompts come from a handful of templates ("What does `json.dumps` do?"); real users ask about the
same standard-library functions in their own words ("Give me a short example of itertools.count.", "How do I
use base64.encodebytes in my script?"). A drift monitor calibrated only on held-out windows of the training
generator sees every such window as "different" (the issue measured MMD p=0.002 on 200 rephrased requests):
this slice is the no-shift traffic the severity thresholds are calibrated on (monitoring/drift/calibration.py).

Same facts as the training set (llmops.data.build.collect_api over the same modules), asked in templates and
styles that the training builder never uses: casual, terse, task-oriented, "explain like I'm new", questions
with a little context, lower-case, without backticks. Answers reuse the facts (summary, signature, module).
Deterministic: same Python, same bytes (`python -m monitoring.drift.paraphrase --check`).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from llmops.data.records import write_jsonl
from llmops.data.text import record_id

DEFAULT_OUT = Path("data/drift/paraphrased.jsonl")
DEFAULT_SEED = 20261207
PER_OBJECT = 2  # paraphrased questions per documented function/class
SOURCE = "paraphrase:{style}"

# (style, template); {q} qualified name, {n} bare name, {m} module, {s} summary (lower-cased first letter).
ABOUT = [
    ("casual", "what's {q} good for?"), ("casual", "hey, quick question: what does {n} in {m} do"),
    ("task", "How do I use {q} in my script?"), ("task", "When would I reach for {q}?"),
    ("explain", "Can you explain {q} to me?"), ("explain", "Explain {q} like I'm new to Python."),
    ("context", "I keep seeing {q} in a codebase I inherited. What does it actually do?"),
    ("context", "My colleague used {n} from {m} in a review. What is it for?"),
    ("terse", "{q}?"), ("terse", "purpose of {q}"), ("polite", "Could you tell me what {m}.{n} is used for, please?"),
    ("docs", "In plain words, what is the role of {q} in the {m} module?"),
]
EXAMPLE = [
    ("example", "Give me a short example of {q}."), ("example", "Show me how to call {q}."),
    ("example", "What arguments does {q} take?"), ("example", "how do you call {n} from {m}, which parameters?"),
    ("example", "Quick usage of {q} please"),
]
WHERE = [
    ("where", "Where do I import {n} from?"), ("where", "which module has {n} in it"),
    ("where", "I want to use {n} - what do I need to import?"),
]
FIND = [
    ("find", "Is there something in the standard library that does this: {s}"),
    ("find", "I'm looking for a Python builtin module thing: {s} What is it called?"),
]


def _answer(style: str, obj) -> str:
    if style == "example":
        return f"Call it like `{obj.signature}`." if obj.signature else obj.summary or obj.qualname
    if style == "where":
        return f"from {obj.module} import {obj.name}"
    if style == "find":
        return f"`{obj.qualname}`"
    return obj.summary or f"`{obj.signature}`"


def _choices(obj, unique: bool) -> list[tuple[str, str]]:
    out = list(ABOUT) if obj.summary else []
    out += EXAMPLE if obj.signature else []
    out += WHERE if unique else []
    out += FIND if obj.summary else []
    return out


def build_paraphrased(seed: int = DEFAULT_SEED, per_object: int = PER_OBJECT) -> list[dict[str, str]]:
    """`per_object` paraphrased questions (distinct templates) for every documented stdlib function/class."""
    from collections import defaultdict

    from llmops.data.build import STDLIB_MODULES, collect_api

    api, builtin_names = collect_api(STDLIB_MODULES)
    owners: dict[str, set[str]] = defaultdict(set)
    for objs in api.values():
        for o in objs:
            owners[o.name].add(o.module)
    out: dict[str, dict[str, str]] = {}
    for module in STDLIB_MODULES:
        for obj in api[module]:
            unique = len(owners[obj.name]) == 1 and obj.name not in builtin_names
            options = _choices(obj, unique)
            if not options:
                continue
            r = random.Random(f"{seed}|{obj.qualname}")
            for style, template in r.sample(options, min(per_object, len(options))):
                summary = (obj.summary or "").rstrip(".")
                text = template.format(q=obj.qualname, n=obj.name, m=obj.module,
                                       s=(summary[:1].lower() + summary[1:] + ".") if summary else "")
                rec = {"instruction": text, "input": "", "output": _answer(style, obj),
                       "source": SOURCE.format(style=style)}
                out.setdefault(record_id(rec), {"id": record_id(rec), **rec})
    return list(out.values())


def check_or_write(records: list[dict[str, str]], out: Path, check: bool) -> int:
    """Write `records` to `out`, or (check) compare them with the shipped bytes; shared by the slice builders."""
    if check:
        tmp = out.with_name(out.name + ".check")
        write_jsonl(records, tmp)
        same = out.is_file() and tmp.read_bytes() == out.read_bytes()
        tmp.unlink()
        print(f"{out}: {'up to date' if same else 'DIFFERS from a fresh build'}")
        return 0 if same else 1
    count = write_jsonl(records, out)
    print(f"{out}: {count} records, {out.stat().st_size} bytes")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--check", action="store_true", help="verify --out holds exactly what would be written")
    args = parser.parse_args(argv)
    return check_or_write(build_paraphrased(args.seed), args.out, args.check)


if __name__ == "__main__":
    sys.exit(main())
