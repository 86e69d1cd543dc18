"""The train step on a separate, already running Ray cluster (the cluster profile's `LLMOPS_RAY_ADDRESS`).

Joined with Ray Client (`ray://`, needs `ray[client]`), as a pipeline pod outside the Ray cluster does.

A Ray head node is started here with `ray start --head` as its own process tree (its own ports, its own
temp dir, so another Ray on this machine is neither joined nor touched), the tiny model is trained
through its address with the same `train_adapter` a laptop run uses, and the head is stopped by the
PIDs of its own processes (never a machine-wide `ray stop`). Checkpoints must land in the configured
shared storage (`LLMOPS_RAY_STORAGE`), and the workers must have run in that cluster's raylet.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.train.logic import train_adapter
from llmops.settings import get_settings
from tests.postgres_stack import BUCKET, S3_ENV, s3_client, s3_server
from tests.synthetic import word_reversal_jsonl

pytestmark = pytest.mark.slow

STEPS = 4


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pids_under(temp_dir: Path) -> list[int]:
    """PIDs of the processes of the head node started with `temp_dir` (Ray puts it in every command line)."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(temp_dir) in cmdline and proc.info["pid"] != os.getpid():
            pids.append(proc.info["pid"])
    return pids


def _stop_head(temp_dir: Path) -> None:
    """SIGTERM this head's processes, then SIGKILL what is left after a grace period (as `ray stop` does)."""
    import psutil

    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        pids = _pids_under(temp_dir)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        gone_by = time.monotonic() + wait
        while time.monotonic() < gone_by and any(psutil.pid_exists(p) for p in pids):
            time.sleep(0.2)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3 endpoint (moto's server) for shared storage; its endpoint URL."""
    with s3_server(tmp_path_factory.mktemp("s3") / "moto.log") as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def ray_head(s3: str) -> Iterator[dict]:
    """A 2-CPU Ray head on loopback with every port chosen free; stopped (by its own PIDs) afterwards.
    Its processes (and so the training workers) hold object-store credentials, as a KubeRay cluster's pods do."""
    ray_bin = Path(sys.executable).parent / "ray"
    # Ray's socket paths must stay short: a temp dir directly under the system temp dir.
    temp_dir = Path(tempfile.mkdtemp(prefix="llmops-rh-"))
    gcs, node_mgr, obj_mgr, dash, agent_http, agent_grpc, runtime_env, metrics, client = _free_ports(9)
    # The Ray Client proxy gives each client's server process 30 s to start: too little on a busy 2-core CI box.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "180", **S3_ENV, "AWS_ENDPOINT_URL_S3": s3}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(ray_bin), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard=false", "--dashboard-port", str(dash),
           "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics),
           "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr),
           "--ray-client-server-port", str(client),
           "--object-store-memory", str(256 * 2**20), "--temp-dir", str(temp_dir), "--disable-usage-stats"]
    started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    try:
        if started.returncode != 0:
            pytest.fail(f"`ray start --head` failed:\n{started.stdout[-2000:]}\n{started.stderr[-2000:]}")
        yield {"gcs": f"127.0.0.1:{gcs}", "client": f"ray://127.0.0.1:{client}", "temp_dir": temp_dir}
    finally:
        _stop_head(temp_dir)
        leftover = _pids_under(temp_dir)
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leftover, f"Ray head processes still running: {leftover}"


@pytest.fixture(scope="module")
def cluster_run(ray_head: dict, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One training run through the head's Ray Client address, `ray://host:port`: how a KFP pod outside the
    Ray cluster joins it. (A driver on a Ray node, e.g. a RayJob's, would use host:6379; the same
    `ray.init(address=...)` call — it passed here too, run once by hand, and is left out to keep this short.)"""
    root = tmp_path_factory.mktemp("ray-cluster")
    mp = pytest.MonkeyPatch()
    mp.setenv("LLMOPS_STATE_DIR", str(root / "state"))
    mp.setenv("LLMOPS_RAY_ADDRESS", ray_head["client"])
    mp.setenv("LLMOPS_RAY_STORAGE", str(root / "shared-storage"))
    mp.setenv("LLMOPS_PROJECT_DIR", str(Path(__file__).resolve().parents[2]))
    get_settings.cache_clear()
    try:
        settings = get_settings()
        settings.ensure_state_dir()
        params = settings.params([
            f"train.max_steps={STEPS}", "train.seq_len=128", "train.checkpoint_every=2", "train.warmup_steps=1",
            "train.lr=3e-3", "train.precision=fp32", "lora.dropout=0.0", "lora.r=4",
            "train.num_workers=2", "train.strategy=fsdp", "train.batch_size=1",
        ])
        try:
            result = train_adapter(settings, params,
                                   train_path=word_reversal_jsonl(root / "train.jsonl", 96, 1),
                                   validation_path=word_reversal_jsonl(root / "validation.jsonl", 16, 2),
                                   base_model_dir=tiny_model_dir, out_dir=root / "adapter")
        except Exception:  # the head's Ray Client server logs say why a connection failed: show them
            for err in sorted((ray_head["temp_dir"] / "session_latest" / "logs").glob("ray_client_server*.err")):
                print(f"--- {err.name}\n{err.read_text(errors='replace')[-3000:]}")
            raise
        yield {"settings": settings, "result": result}
    finally:
        mp.undo()
        get_settings.cache_clear()


def test_training_runs_on_the_separate_head_and_checkpoints_to_shared_storage(ray_head, cluster_run):
    import ray

    result, settings = cluster_run["result"], cluster_run["settings"]
    m = result.metrics
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert m["steps"] == STEPS and m["num_workers"] == 2 and m["strategy"] == "fsdp"
    assert m["val_loss"] < m["val_loss_before"]
    # This process joined the cluster and left it: no Ray of its own is left running.
    assert not ray.is_initialized()
    # Checkpoints in the configured shared storage, none in the state dir's default location.
    storage = Path(settings.ray_storage)
    assert list(storage.glob("train-*/checkpoint-*")), "Ray Train checkpoints belong in LLMOPS_RAY_STORAGE"
    assert result.checkpoint_dir and Path(result.checkpoint_dir).is_relative_to(storage)
    assert not (settings.state_dir / "ray-results").exists() and not settings.ray_dir.exists()
    # The workers ran in that head's raylet: their logs are in its session dir, and no other Ray was started.
    logs = ray_head["temp_dir"] / "session_latest" / "logs"
    worker_logs = "".join(p.read_text(errors="replace") for p in logs.glob("worker-*.out"))
    assert "train_loop" in worker_logs or "RayTrainWorker" in worker_logs, sorted(p.name for p in logs.iterdir())


def test_rayjob_entrypoint_joins_the_cluster_and_uses_s3(ray_head, s3: str, tiny_model_dir: Path,
                                                         tmp_path_factory: pytest.TempPathFactory):
    """`python -m components.train.ray_job` as a KubeRay RayJob runs it: RAY_ADDRESS set by Ray Jobs, no
    LLMOPS_RAY_ADDRESS; data in, adapter out and Ray Train checkpoints all on S3 (no disk shared with anything)."""
    root = tmp_path_factory.mktemp("ray-job")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMOPS_", "RAY_ADDRESS"))}
    env |= {"RAY_ADDRESS": ray_head["gcs"], "LLMOPS_STATE_DIR": str(root / "state"),
            "LLMOPS_PROJECT_DIR": str(Path(__file__).resolve().parents[2]),
            "LLMOPS_RAY_STORAGE": f"s3://{BUCKET}/ray-results", "RAY_USAGE_STATS_ENABLED": "0",
            **S3_ENV, "AWS_ENDPOINT_URL_S3": s3}
    client = s3_client(s3)
    for name, n, seed in (("train", 64, 1), ("validation", 16, 2)):
        client.upload_file(str(word_reversal_jsonl(root / f"{name}.jsonl", n, seed)), BUCKET, f"data/{name}.jsonl")
    cmd = [sys.executable, "-m", "components.train.ray_job", "--train", f"s3://{BUCKET}/data/train.jsonl",
           "--validation", f"s3://{BUCKET}/data/validation.jsonl", "--out", f"s3://{BUCKET}/adapters/run1",
           "--base-model", str(tiny_model_dir),
           "--set", "train.max_steps=2", "--set", "train.checkpoint_every=2", "--set", "train.seq_len=128",
           "--set", "train.num_workers=1", "--set", "train.strategy=ddp", "--set", "train.precision=fp32",
           "--set", "lora.r=4", "--set", "train.warmup_steps=1"]
    done = subprocess.run(cmd, env=env, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("llmops.train.result ")][-1]
    result = json.loads(line.removeprefix("llmops.train.result "))
    assert result["metrics"]["steps"] == 2 and result["metrics"]["num_workers"] == 1
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert "adapters/run1/adapter_model.safetensors" in keys, keys
    # Ray Train wrote its checkpoint to the S3 storage path (the result names it without the scheme).
    assert result["checkpoint"].startswith(f"{BUCKET}/ray-results/train-")
    assert any(k.startswith("ray-results/train-") and "/checkpoint-" in k for k in keys), keys
    # The workers did not read the driver's disk: the base checkpoint went through S3 by weights digest.
    from llmops.modeling.hashing import weights_digest

    digest = weights_digest(tiny_model_dir)
    assert {f"ray-results/base-models/{digest}/config.json", f"ray-results/base-models/{digest}/_COMPLETE"} \
        <= set(keys), keys
    # It joined the running head instead of starting its own Ray.
    assert "Connecting to existing Ray cluster" in done.stderr + done.stdout
