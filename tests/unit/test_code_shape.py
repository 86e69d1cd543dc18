"""serving/ stays readable (issue 17: `create_app` was one 513-line closure of complexity 120): no function in
serving/ is over MAX_LINES lines (ast, nested functions counted in their parent) or over MAX_COMPLEXITY
cyclomatic complexity (ruff's mccabe rule C901), so a new feature lands as its own function, not a new branch
of an old one."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVING = REPO / "serving"
MAX_LINES = 80
MAX_COMPLEXITY = 15


def _name(path: Path | str) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def long_functions(root: Path, max_lines: int) -> list[str]:
    """`path:line name (N lines)` for every function or method under `root` longer than `max_lines`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > max_lines:
                    found.append(f"{_name(path)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def complex_functions(root: Path, max_complexity: int) -> list[str]:
    """ruff's C901 findings under `root` at `max_complexity`."""
    ruff = subprocess.run([sys.executable, "-m", "ruff", "check", str(root), "--select", "C901", "--config",
                           f"lint.mccabe.max-complexity={max_complexity}", "--output-format", "json", "--no-cache",
                           "--exit-zero"], capture_output=True, text=True, cwd=REPO, check=False)
    if ruff.returncode != 0 or not ruff.stdout.strip().startswith("["):
        pytest.fail(f"ruff did not run (rc {ruff.returncode}): {ruff.stderr.strip()[:500]}; install the dev extras "
                    "(pip install -e '.[dev]')")
    return [f"{_name(f['filename'])}:{f['location']['row']} {f['message']}"
            for f in json.loads(ruff.stdout)]


def test_no_function_in_serving_is_over_80_lines() -> None:
    assert long_functions(SERVING, MAX_LINES) == [], "split these functions (one job each)"


def test_no_function_in_serving_is_over_complexity_15() -> None:
    assert complex_functions(SERVING, MAX_COMPLEXITY) == [], "split these functions (one job each)"


def test_the_checks_catch_what_they_guard_against(tmp_path: Path) -> None:
    """Each check fails on a function that breaks its rule (so neither passes by not looking)."""
    branches = "\n".join(f"    if x == {i}:\n        return {i}" for i in range(MAX_COMPLEXITY + 1))
    steps = "\n".join("    x += 1" for _ in range(MAX_LINES))
    (tmp_path / "bad.py").write_text(f"def branchy(x):\n{branches}\n    return -1\n\n\n"
                                     f"def long_one(x):\n{steps}\n    return x\n")
    assert long_functions(tmp_path, MAX_LINES) == [f"{tmp_path / 'bad.py'}:{2 * MAX_COMPLEXITY + 7} long_one "
                                                   f"({MAX_LINES + 2} lines)"]
    found = complex_functions(tmp_path, MAX_COMPLEXITY)
    assert len(found) == 1 and f"`branchy` is too complex ({MAX_COMPLEXITY + 2} > {MAX_COMPLEXITY})" in found[0]
