"""`llmops data ...`: build, validate, add and version datasets (DVC + Great Expectations).

Exit codes: 0 good data, 1 data that breaks its expectations (each failure printed with example rows and
the Data Docs report), 2 input that cannot be read at all or a DVC failure (one-line cause and fix).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from cli._common import JSON_OPTION, console, emit, fail, handle_errors

app = typer.Typer(no_args_is_help=True)

SET_OPTION = typer.Option([], "--set", help="Override a parameter for this command, e.g. data.limits.max_tokens=256.")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _print_result(payload: dict[str, Any]) -> None:
    rows = ", ".join(f"{name}: {n} rows" for name, n in payload["rows"].items())
    if payload["success"]:
        gx_import = payload.get("timings", {}).get("gx_import", 0.0)
        console.print(f"[green]valid[/] {rows} — {payload['expectations_evaluated']} expectations passed "
                      f"in {payload['seconds']:.2f} s" + (f" ({gx_import:.1f} s importing GX)" if gx_import else ""))
    else:
        console.print(f"[bold red]invalid[/] {rows} — {len(payload['failures'])} of "
                      f"{payload['expectations_evaluated']} expectations failed")
        for f in payload["failures"]:
            where = f"{f['dataset']}" + (f" / {f['column']}" if f["column"] else "")
            console.print(f"[red]✗[/] [bold]{where}[/] {f['expectation']}\n    {f['message']}", highlight=False,
                          soft_wrap=True)
            for ex in f["examples"]:
                console.print(f"      {ex}", highlight=False, markup=False, soft_wrap=True)
    if near := payload.get("near_duplicates"):  # inside one dataset: reported, not failing (llmops/data/dedup.py)
        shown = "; ".join(f"{d['a']}:{d['a_id']} ~ {d['b_id']} ({d['similarity']:.2f})" for d in near[:5])
        console.print(f"[yellow]{len(near)} near-duplicate pair(s) inside a dataset[/] (data.dedup): {shown}"
                      + (" ..." if len(near) > 5 else ""), highlight=False, soft_wrap=True)
    if payload.get("report_html"):
        console.print(f"Data Docs: {payload['report_html']}", highlight=False, soft_wrap=True)


def _unique_names(paths: list[Path]) -> dict[str, Path]:
    names: dict[str, Path] = {}
    for p in paths:
        name, n = p.stem, 2
        while name in names:
            name, n = f"{p.stem}-{n}", n + 1
        names[name] = p
    return names


@app.command("validate")
@handle_errors
def validate(
    paths: list[Path] = typer.Argument(..., help="JSONL dataset file(s)."),
    splits: bool = typer.Option(False, "--splits", help="The files are splits of one dataset (named by file "
                                "stem): also check that no id or prompt appears in two of them (leakage)."),
    report_dir: Path | None = typer.Option(None, "--report-dir", help="Where to write the Data Docs HTML "
                                           "(default: <state dir>/reports/data_docs)."),
    summary: Path | None = typer.Option(None, "--summary", help="Also write a small deterministic JSON summary "
                                        "here (the DVC validate stage's metrics file)."),
    no_docs: bool = typer.Option(False, "--no-docs", help="Skip the Data Docs HTML (faster)."),
    overrides: list[str] = SET_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Check datasets against the expectation suites in data/expectations/ (Great Expectations)."""
    import json

    from llmops.data.records import read_jsonl
    from llmops.data.validate import validate_frames
    from llmops.settings import get_settings

    settings = get_settings()
    params = settings.params(overrides)
    named = _unique_names(list(paths))
    if splits and len(named) < 2:
        fail("--splits needs at least two split files", "pass e.g. data/splits/train.jsonl data/splits/test.jsonl")
    frames = {name: read_jsonl(p) for name, p in named.items()}
    with console.status("validating with Great Expectations..."):
        result = validate_frames(frames, settings, params, report_dir=report_dir, leakage=splits,
                                 data_docs=not no_docs)
    if summary is not None:
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(json.dumps(result.summary(), indent=2, sort_keys=True) + "\n")
    emit(result.to_dict(), as_json, _print_result)
    if not result.success:
        raise typer.Exit(1)


@app.command("merge")
@handle_errors
def merge(
    out_dir: Path = typer.Option(Path("data/splits"), "--out-dir", help="Where the splits and sources.json go."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Check the splits with the GX suites "
                                  "(records + leakage); invalid splits are removed and the exit code is 1."),
    overrides: list[str] = SET_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Merge params.yaml `data.sources` and split by prompt hash (the DVC split stage; `data build` runs it)."""
    from llmops.data.sources import MANIFEST, SPLITS, check_stage_deps, merge_and_split
    from llmops.settings import get_settings

    settings = get_settings()
    params = settings.params(overrides)
    check_stage_deps(settings.project_dir, params.data.sources)
    manifest = merge_and_split(settings.project_dir, params, out_dir)
    if validate:
        from llmops.data.validate import validate_splits

        result = validate_splits({n: out_dir / f"{n}.jsonl" for n in SPLITS}, settings, params, data_docs=False)
        if not result.success:
            for name in (*(f"{n}.jsonl" for n in SPLITS), MANIFEST):  # nothing invalid is left for DVC to cache
                (out_dir / name).unlink(missing_ok=True)
            emit(result.to_dict(), as_json, _print_result)
            raise typer.Exit(1)

    def human(d: dict[str, Any]) -> None:
        for f in d["sources"]:
            console.print(f"{f['entry']}: {f['path']} ({f['kept']} of {f['rows']} records kept)", highlight=False)
        for name, split in d["splits"].items():
            console.print(f"{out_dir / name}.jsonl: {split['rows']} records", highlight=False)

    emit(manifest, as_json, human)


@app.command("build")
@handle_errors
def build(
    out_dir: Path | None = typer.Option(None, "--out-dir", help="Only write base.jsonl and shifted.jsonl here "
                                        "(no DVC, no validation, no split)."),
    force: bool = typer.Option(False, "--force", help="Rerun every stage even if nothing changed."),
    push: bool = typer.Option(False, "--push", help="Push the data to the DVC remote afterwards."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Build the sample corpus from the Python standard library: `dvc repro` of build -> validate -> split."""
    from llmops.data import dvc
    from llmops.settings import get_settings

    settings = get_settings()
    if out_dir is not None:
        from llmops.data.build import build as build_slices

        rows = build_slices(out_dir, settings.params().data.build)
        payload: dict[str, Any] = {
            "rows": rows,
            "files": {n: {"path": str(out_dir / f"{n}.jsonl"), "bytes": (out_dir / f"{n}.jsonl").stat().st_size}
                      for n in rows},
        }
        emit(payload, as_json, lambda d: console.print_json(data=d))
        return
    with console.status("dvc repro (build -> validate -> split)..."):
        log = dvc.repro(force=force, settings=settings)
        pushed = dvc.push(settings=settings) if push else None
    payload = {"hashes": dvc.data_hashes(settings.project_dir), "pushed": push,
               "repro_log": log.strip().splitlines()[-20:]}
    if pushed is not None:
        payload["push_log"] = pushed.strip().splitlines()[-5:]

    def human(d: dict[str, Any]) -> None:
        for line in d["repro_log"]:
            console.print(f"  {line}", highlight=False, markup=False)
        for path, md5 in d["hashes"].items():
            console.print(f"{md5}  {path}", highlight=False)
        if d["pushed"]:
            console.print("[green]pushed[/] to the DVC remote")

    emit(payload, as_json, human)


@app.command("add")
@handle_errors
def add(
    file: Path = typer.Argument(..., help="A JSONL dataset to add."),
    name: str | None = typer.Option(None, "--name", help="Dataset name (default: the file's stem); stored as "
                                    "data/user/NAME.jsonl."),
    force: bool = typer.Option(False, "--force", help="Replace an existing dataset of that name."),
    no_push: bool = typer.Option(False, "--no-push", help="Track it with DVC but do not push to the remote."),
    report_dir: Path | None = typer.Option(None, "--report-dir", help="Where to write the Data Docs HTML."),
    overrides: list[str] = SET_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Validate a dataset, copy it to data/user/, track it with DVC and push it (bad data: nothing added)."""
    import shutil

    from llmops.data import dvc
    from llmops.data.validate import validate_file
    from llmops.errors import LlmopsError
    from llmops.settings import get_settings

    settings = get_settings()
    name = name or file.stem
    if not _NAME.match(name):
        fail(f"invalid dataset name {name!r}", "use letters, digits, '.', '_' or '-' (at most 64 characters)")
    dest = settings.project_dir / "data" / "user" / f"{name}.jsonl"
    dvc_file = dest.with_name(dest.name + ".dvc")
    if (dest.exists() or dvc_file.exists()) and not force:
        fail(f"a dataset named {name!r} already exists ({dest.relative_to(settings.project_dir)})",
             "choose another --name or pass --force to replace it")
    with console.status("validating with Great Expectations..."):
        result = validate_file(file, settings, settings.params(overrides), report_dir=report_dir)
    if not result.success:
        emit(result.to_dict() | {"added": False}, as_json, _print_result)
        console.print("[red]refused:[/] nothing was added")
        raise typer.Exit(1)

    gitignore = dest.parent / ".gitignore"
    existed = {p: p.read_bytes() for p in (dest, dvc_file, gitignore) if p.is_file()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    shutil.copyfile(file, tmp)
    tmp.replace(dest)
    try:
        with console.status("dvc add..."):
            dvc.add(dest, settings=settings)
    except LlmopsError:
        for p in (dest, dvc_file, gitignore):  # put back exactly what was there before
            if p in existed:
                p.write_bytes(existed[p])
            else:
                p.unlink(missing_ok=True)
        raise
    rel = dest.relative_to(settings.project_dir).as_posix()
    if not no_push:
        with console.status("dvc push..."):
            dvc.push([str(dvc_file.relative_to(settings.project_dir))], settings=settings)
    hashes = dvc.data_hashes(settings.project_dir)
    payload = {"added": True, "path": rel, "dvc_file": rel + ".dvc", "md5": hashes.get(rel),
               "pushed": not no_push, "rows": result.rows, "report_html": str(result.report_html)}

    def human(d: dict[str, Any]) -> None:
        console.print(f"[green]added[/] {d['path']} ({sum(d['rows'].values())} rows, md5 {d['md5']})"
                      + (" and pushed" if d["pushed"] else ""), highlight=False)
        console.print(f"commit {d['dvc_file']} to version it", highlight=False)

    emit(payload, as_json, human)


@app.command("status")
@handle_errors
def status(as_json: bool = JSON_OPTION) -> None:
    """Show whether the data matches dvc.lock / .dvc files, and the md5 of every tracked output."""
    from llmops.data import dvc
    from llmops.settings import get_settings

    settings = get_settings()
    changed = dvc.status(settings=settings)
    payload = {"up_to_date": not changed, "changed": changed, "hashes": dvc.data_hashes(settings.project_dir)}

    def human(d: dict[str, Any]) -> None:
        if d["up_to_date"]:
            console.print("[green]data and pipelines are up to date[/]")
        else:
            console.print("[yellow]changed:[/]")
            for stage, what in d["changed"].items():
                console.print(f"  {stage}: {what}", highlight=False, markup=False)
        for path, md5 in d["hashes"].items():
            console.print(f"{md5}  {path}", highlight=False)

    emit(payload, as_json, human)
