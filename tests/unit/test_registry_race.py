"""Two processes promoting the same alias at once must leave one unbroken, truthful audit chain."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

from llmops.settings import Settings
from tests.registry_setup import backend_settings, registry_with_versions  # noqa: F401 - backend_settings: fixture

REPO = Path(__file__).resolve().parents[2]
NAME = "race-test"
PER_PROCESS = 20

WORKER = r"""
import json, random, sys, time
from pathlib import Path
from llmops.registry import Registry
from llmops.settings import get_settings

who, go = sys.argv[1], Path(sys.argv[2])
reg = Registry(get_settings())
reg.alias_version("race-test", "champion")  # warm up imports and connections before the start line
Path(str(go) + "." + who).touch()
while not go.exists():
    time.sleep(0.005)
rng = random.Random(who)
changed, start = 0, time.time()
for i in range(int(sys.argv[3])):
    event = reg.promote("race-test", rng.choice(["1", "2", "3", "4"]), reason=f"{who}-{i}", actor=who)
    changed += bool(event["changed"])
print(json.dumps({"who": who, "changed": changed, "start": start, "end": time.time()}))
"""


def test_racing_promotions_keep_alias_and_chain_consistent(settings: Settings, tmp_path: Path) -> None:
    reg = registry_with_versions(settings, 4, NAME)
    reg.audit.history(NAME)  # create the audit table before the race

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(script), who, str(go), str(PER_PROCESS)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for who in ("p1", "p2")]
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.{w}").exists() for w in ("p1", "p2")):
        assert time.monotonic() < deadline, "workers did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    go.touch()  # both start promoting at the same moment
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))

    events = reg.history(NAME, "champion")
    assert len(events) == sum(r["changed"] for r in results)
    assert {e["actor"] for e in events} == {"p1", "p2"}
    # The two promotion loops really ran at the same time.
    assert max(r["start"] for r in results) < min(r["end"] for r in results)
    assert events[0]["from_version"] is None
    for prev, cur in itertools.pairwise(events):
        assert cur["from_version"] == prev["to_version"], (prev, cur)
        assert cur["from_version"] != cur["to_version"]
    assert reg.alias_version(NAME, "champion") == events[-1]["to_version"]
    # Each process's own promotions appear in the order it made them.
    for who in ("p1", "p2"):
        mine = [int(e["reason"].split("-")[1]) for e in events if e["actor"] == who]
        assert mine == sorted(mine)
