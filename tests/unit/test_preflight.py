"""`llmops run finetune` fails before its DAG starts, in seconds, with a one-line cause and fix (exit 2), when
the run cannot succeed: unresolvable base model, corrupt weights, incomplete data dir, unreachable tracking
server (including one that accepts connections but never answers), unreachable audit store. Nothing runs and
no MLflow run is opened. The CLI runs as a subprocess: the bound on the time is part of the contract."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmops.settings import Settings

REPO = Path(__file__).resolve().parents[2]
BOUND_S = 15.0  # correctness bound (MLflow alone retries a dead server for minutes), not a speed target


def _llmops(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})
    return proc, time.monotonic() - t0


def _assert_preflight_failure(proc: subprocess.CompletedProcess, seconds: float, settings: Settings,
                              *needles: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert seconds < BOUND_S, f"took {seconds:.1f} s: {out}"
    assert "error:" in out and "fix:" in out, out
    for needle in needles:
        assert needle in " ".join(out.split()), out
    assert "Executing task" not in out and "Inner task failed" not in out
    assert not (settings.state_dir / "kfp").exists()  # no step ran
    assert not (settings.state_dir / "mlflow.db").exists()  # no MLflow run was opened


def test_bad_model_base_fails_before_the_dag(settings: Settings) -> None:
    proc, seconds = _llmops(["run", "finetune", "--set", "model.base=/no/such/model"])
    _assert_preflight_failure(proc, seconds, settings, "'/no/such/model' is not a local directory")


def test_corrupt_base_weights_fail_before_the_dag(settings: Settings, tiny_model_dir: Path,
                                                  tmp_path: Path) -> None:
    bad = tmp_path / "model"
    shutil.copytree(tiny_model_dir, bad)
    weights = next(bad.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated copy
    proc, seconds = _llmops(["run", "finetune", "--set", f"model.base={bad}"])
    _assert_preflight_failure(proc, seconds, settings, "are corrupt", "truncated")


def test_data_dir_without_every_split_fails_before_the_dag(settings: Settings, tmp_path: Path) -> None:
    partial = tmp_path / "splits"
    partial.mkdir()
    for split in ("train", "test"):
        shutil.copyfile(REPO / "data" / "splits" / f"{split}.jsonl", partial / f"{split}.jsonl")
    proc, seconds = _llmops(["run", "finetune", "--data-dir", str(partial)])
    _assert_preflight_failure(proc, seconds, settings, "lacks validation.jsonl")


def test_refused_tracking_server_fails_in_seconds(settings: Settings) -> None:
    proc, seconds = _llmops(["run", "finetune"], env={"LLMOPS_TRACKING_URI": "http://127.0.0.1:9"})
    _assert_preflight_failure(proc, seconds, settings, "tracking server at http://127.0.0.1:9 is not reachable",
                              "LLMOPS_TRACKING_URI")


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) but never answers: the hung-server case."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_tracking_server_that_never_answers_fails_in_seconds(settings: Settings, silent_server: int) -> None:
    proc, seconds = _llmops(["run", "finetune"],
                            env={"LLMOPS_TRACKING_URI": f"http://127.0.0.1:{silent_server}"})
    _assert_preflight_failure(proc, seconds, settings, "is not reachable within 3 s")


def test_unreachable_audit_store_fails_before_the_dag(settings: Settings) -> None:
    uri = "postgresql+psycopg2://llmops:secret@127.0.0.1:9/audit"
    proc, seconds = _llmops(["run", "finetune"], env={"LLMOPS_AUDIT_DB_URI": uri})
    _assert_preflight_failure(proc, seconds, settings, "audit store", "is not reachable", "LLMOPS_AUDIT_DB_URI")
    assert "secret" not in proc.stdout + proc.stderr


def test_preflight_bounds_mlflow_http_retries(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The steps' own MLflow calls give up in seconds too, unless the user chose otherwise."""
    from pipelines.preflight import preflight_finetune

    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(key, "")  # recorded, so the value preflight sets is undone after the test
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "3")
    preflight_finetune(settings, [], "data/splits")
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
    )

    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() <= 3 and MLFLOW_HTTP_REQUEST_TIMEOUT.get() <= 60
    assert MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() == 3  # the user's own setting is kept


def test_preflight_says_the_precision_and_the_host(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """The choice and why, with the host, on stderr (stdout stays --json's); the probe's result is cached per
    host in the state dir for the train workers and evaluate."""
    from llmops import host
    from pipelines.preflight import preflight_finetune

    preflight_finetune(settings, [], "data/splits")
    err = capsys.readouterr().err
    assert "preflight: precision " in err and "(train.precision=auto): " in err
    assert f"preflight: host: {host.cpu_model()}" in err and "GB/s" in err
    cache = host.cache_path(settings.state_dir, host.fingerprint())
    if host.native_bf16(host.cpu_flags()):
        assert "precision_probe:" in cache.read_text()  # native flag: the probe decided
    else:
        assert "precision fp32" in err and "no native bf16" in err
    preflight_finetune(settings, ["train.precision=fp16"], "data/splits")
    assert "precision fp16 + gradient scaler on cpu (train.precision=fp16): set explicitly" in capsys.readouterr().err


def test_auto_precision_on_a_cpu_capped_to_avx2_picks_fp32(tmp_path: Path) -> None:
    """For real: oneDNN/ATen capped to AVX2 emulate bf16 even where the CPU flags say avx512_bf16; the probe
    must see it slow and auto must keep fp32 (the AVX2-only hosts many users have)."""
    code = ("import json, sys; from llmops.precision import resolve; "
            "print(json.dumps(resolve('auto', 'cpu', __import__('pathlib').Path(sys.argv[1])).to_dict()))")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import json

    choice = json.loads(proc.stdout.strip().splitlines()[-1])
    assert choice["precision"] == "fp32", choice
    if choice["probe"]:  # a CPU with the avx512_bf16 flag: the probe measured bf16 slower
        assert choice["probe"]["bf16_gflops"] < choice["probe"]["fp32_gflops"], choice
