"""What the first PII scrub costs a fresh process: importing Presidio, building the analyzer, the first scrub.

Each run is a new Python process, so every import is paid (the OS file cache is warm after the first). Two ways:
- `plain`: `import presidio_analyzer` as a library user would (what llmops.privacy did before presidio_import.py),
  then our analyzer (same recognizers, NoOpNlpEngine);
- `ours`: `llmops.privacy` as the product runs it: Presidio imported with torch and transformers hidden.
Also printed: whether torch / transformers / spaCy were imported, the load average around each run, the host.

    python benchmarks/pii_import.py [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from llmops.host import for_benchmark

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
if sys.argv[1] == "plain":
    import presidio_analyzer
else:
    from llmops.privacy.presidio_import import import_presidio
    import_presidio()
t1 = time.perf_counter()
from llmops.params import PrivacyParams
from llmops.privacy import find_pii, scrub_text
find_pii("mail anna@example.com", PrivacyParams())
t2 = time.perf_counter()
scrub_text("call +49 30 1234567 or mail anna@example.com", PrivacyParams())
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "analyzer_s": t2 - t1, "first_scrub_s": t3 - t2, "total_s": t3 - t0,
                  "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules,
                  "spacy": "spacy" in sys.modules}))
"""


def run_once(mode: str) -> dict[str, float | bool]:
    load = os.getloadavg()[0]
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "load_before": load, "load_after": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    fp = for_benchmark()
    runs: dict[str, list[dict[str, float | bool]]] = {"plain": [], "ours": []}
    for _ in range(args.runs):  # interleaved, so a change in load hits both ways alike
        for mode in runs:
            runs[mode].append(run_once(mode))
    report = {"runs": runs, "host": fp,
              "median": {m: {k: statistics.median(float(r[k]) for r in rs)
                             for k in ("import_s", "analyzer_s", "first_scrub_s", "total_s", "load_before")}
                         for m, rs in runs.items()}}
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        print()
        return 0
    print(f"{'way':<6} {'import s':>9} {'analyzer s':>11} {'1st scrub s':>12} {'total s':>8} {'load':>5}  imported")
    for mode, med in report["median"].items():
        r = runs[mode][-1]
        mods = ",".join(k for k in ("torch", "transformers", "spacy") if r[k]) or "-"
        print(f"{mode:<6} {med['import_s']:>9.2f} {med['analyzer_s']:>11.2f} {med['first_scrub_s']:>12.2f} "
              f"{med['total_s']:>8.2f} {med['load_before']:>5.1f}  {mods}")
    print(f"medians of {args.runs} fresh processes each; host: {fp['cpu']}, {fp['cores']} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
