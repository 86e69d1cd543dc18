"""Thin, explicit wrapper over the DVC command line: the one way llmops runs DVC.

DVC runs as a subprocess (`python -m dvc ...` with this interpreter) rather than through its Python API,
so a DVC failure can never take the caller down and the same commands a user would type are what run.
Every call gets the same environment:

- `DVC_SITE_CACHE_DIR` in the state dir (DVC otherwise writes under /var/tmp) and `DVC_NO_ANALYTICS=1`;
- this interpreter's bin directory first on PATH, so the stage commands in dvc.yaml (`python -m ...`,
  `llmops ...`) run in this environment;
- `LLMOPS_PROJECT_DIR` set to the repository DVC runs in, so stage commands read that checkout's
  params.yaml and expectation suites, with the caller's state and models directories.

Failures become `DataError` with DVC's own last error line as the cause.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from llmops.errors import DataError
from llmops.settings import Settings, get_settings


def dvc_env(settings: Settings, repo_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["DVC_SITE_CACHE_DIR"] = str(settings.state_dir / "dvc-site-cache")
    env["DVC_NO_ANALYTICS"] = "1"
    env["LLMOPS_PROJECT_DIR"] = str(repo_dir)
    # Stage commands see the caller's state and models even when the repo is another checkout.
    env.setdefault("LLMOPS_STATE_DIR", str(settings.state_dir))
    env.setdefault("LLMOPS_MODELS_DIR", str(settings.models_dir))
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def _error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.upper().startswith("ERROR")]
    return (errors or lines or ["no output"])[-1][:300]


def run_dvc(args: Sequence[str], settings: Settings | None = None, repo_dir: Path | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run `dvc <args>` in `repo_dir` (default: the project); raise DataError when it fails."""
    settings = settings or get_settings()
    repo = Path(repo_dir or settings.project_dir).resolve()
    if not (repo / ".dvc").is_dir():
        raise DataError(f"{repo} is not a DVC repository (no .dvc/)", "run `git init && dvc init` there first")
    (settings.state_dir / "dvc-site-cache").mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "dvc", *args]
    try:
        proc = subprocess.run(cmd, cwd=repo, env=dvc_env(settings, repo), capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise DataError(f"`dvc {' '.join(args)}` did not finish in {timeout} s", "run it by hand to see why") from None
    if proc.returncode != 0:
        raise DataError(f"`dvc {' '.join(args)}` failed: {_error_line(proc.stderr or proc.stdout)}",
                        f"run `dvc {' '.join(args)} -v` in {repo} for details")
    return proc


def repro(targets: Sequence[str] = (), force: bool = False, settings: Settings | None = None,
          repo_dir: Path | None = None) -> str:
    """`dvc repro`: rerun only the stages whose deps or params changed; returns DVC's output."""
    return run_dvc(["repro", *(["--force"] if force else []), *targets], settings, repo_dir).stdout


def push(targets: Sequence[str] = (), remote: str | None = None, settings: Settings | None = None,
         repo_dir: Path | None = None) -> str:
    """`dvc push` of the tracked data (all of it, or `targets`) to the default or the named remote."""
    return run_dvc(["push", *(["-r", remote] if remote else []), *targets], settings, repo_dir).stdout


def pull(targets: Sequence[str] = (), remote: str | None = None, settings: Settings | None = None,
         repo_dir: Path | None = None) -> str:
    """`dvc pull`: fetch the data recorded in dvc.lock / .dvc files and check it out."""
    return run_dvc(["pull", *(["-r", remote] if remote else []), *targets], settings, repo_dir).stdout


def add(path: Path, settings: Settings | None = None, repo_dir: Path | None = None) -> Path:
    """`dvc add PATH`: track a data file; returns its `.dvc` file."""
    path = Path(path)
    run_dvc(["add", str(path)], settings, repo_dir)
    dvc_file = path.with_name(path.name + ".dvc")
    return dvc_file


def status(settings: Settings | None = None, repo_dir: Path | None = None) -> dict[str, Any]:
    """`dvc status --json`: stages or files whose data differs from what dvc.lock/.dvc record ({} = clean)."""
    out = run_dvc(["status", "--json"], settings, repo_dir).stdout.strip()
    try:
        return json.loads(out) if out else {}
    except json.JSONDecodeError:
        raise DataError(f"`dvc status --json` printed something that is not JSON: {out[:200]}") from None


def _outs_of(entries: Any) -> dict[str, str]:
    found = {}
    for out in entries or []:
        if isinstance(out, dict) and out.get("path") and out.get("md5"):
            found[str(out["path"])] = str(out["md5"])
    return found


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}",
                        "regenerate it with `dvc repro` (dvc.lock) or `dvc add` (.dvc files)") from None


def data_hashes(repo_dir: Path | None = None) -> dict[str, str]:
    """{path relative to the repo: md5} of every DVC-tracked output, read from dvc.lock and *.dvc files.

    These md5s are the data's identity in lineage (the registry tags a model with them); reading the
    files needs no DVC process, so this is cheap enough for every pipeline run.
    """
    repo = Path(repo_dir or get_settings().project_dir).resolve()
    hashes: dict[str, str] = {}
    lock = repo / "dvc.lock"
    if lock.is_file():
        data = _read_yaml(lock)
        for stage in ((data.get("stages") if isinstance(data, dict) else None) or {}).values():
            hashes.update(_outs_of((stage or {}).get("outs")))
    skip = {".dvc", ".git", ".llmops", ".venv", "node_modules"}
    for dirpath, dirnames, filenames in os.walk(repo):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for name in sorted(filenames):
            if not name.endswith(".dvc"):
                continue
            dvc_file = Path(dirpath) / name
            data = _read_yaml(dvc_file)
            base = dvc_file.parent.relative_to(repo)
            for path, md5 in _outs_of(data.get("outs")).items():
                hashes[(base / path).as_posix()] = md5
    return dict(sorted(hashes.items()))
