"""The cluster profile's tracking stack, for real, on this machine: PostgreSQL + an S3 endpoint + `mlflow server`.

- PostgreSQL: Debian's package (`infra/apt-packages.txt`; binaries in /usr/lib/postgresql/<ver>/bin),
  a fresh cluster (`initdb`) in its own data dir on 127.0.0.1 and a free port, run as a non-root user
  (PostgreSQL refuses root: as root we run it as the `postgres` user the package creates). Two
  databases: MLflow's backend store and the llmops audit trail.
- S3: moto's server (`moto[s3]` from PyPI), a real S3-compatible HTTP endpoint. MinIO has no PyPI/apt
  package here; moto speaks the same S3 API boto3 (and so MLflow) talks to a cluster's MinIO/S3.
- `mlflow server --backend-store-uri postgresql+psycopg2://... --artifacts-destination s3://...` with
  `MLFLOW_S3_ENDPOINT_URL` pointing at that endpoint: artifacts go through the tracking server's proxy.

Everything is stopped and deleted when the context exits. Missing PostgreSQL is a skip with the fix.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BUCKET = "llmops-artifacts"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(frozen=True)
class TrackingStack:
    tracking_uri: str  # http://127.0.0.1:<port> (mlflow server)
    audit_db_uri: str  # postgresql+psycopg2://... (the audit trail's own database)
    backend_store_uri: str  # MLflow's database
    s3_endpoint: str
    artifacts_destination: str


def postgres_bin_dir() -> Path | None:
    """Newest /usr/lib/postgresql/<ver>/bin holding initdb and pg_ctl, or None."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if
                        p.parent.name.isdigit() else 0)
    for path in reversed(candidates):
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, what: str, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
            if resp.status < 500:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer {url} in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def postgres_server() -> Iterator[tuple[int, str]]:
    """A fresh PostgreSQL cluster on 127.0.0.1; yields (port, superuser). Stopped and deleted after."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed: `apt-get install -y postgresql` (make sysdeps; CI installs it)")
    as_root = os.geteuid() == 0
    if as_root:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as "
                        "(Debian's postgresql package creates it)")
        prefix = ["runuser", "-u", "postgres", "--"]
    else:
        prefix = []
    # Its own dir outside pytest's (root-only) temp tree, owned by the user PostgreSQL runs as.
    base = Path(tempfile.mkdtemp(prefix="llmops-pg-"))
    data, sockets, log = base / "data", base / "sock", base / "postgres.log"
    sockets.mkdir()
    if as_root:
        for path in (base, sockets):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    user, port = "llmops", _free_port()
    run = lambda *cmd: subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True,  # noqa: E731
                                      timeout=120)
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start", "-o",
            f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200")
        try:
            yield port, user
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    except subprocess.CalledProcessError as exc:
        detail = log.read_text()[-2000:] if log.is_file() else ""
        raise RuntimeError(f"{exc.cmd[len(prefix)]} failed: {exc.stderr[-2000:]}\n{detail}") from None
    finally:
        shutil.rmtree(base, ignore_errors=True)


def create_database(port: int, user: str, name: str) -> str:
    """CREATE DATABASE over TCP (psycopg2); returns its SQLAlchemy URL."""
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=port, user=user, dbname="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return f"postgresql+psycopg2://{user}@127.0.0.1:{port}/{name}"


@contextlib.contextmanager
def s3_server(log: Path) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 with bucket `BUCKET`; yields its endpoint URL (credentials: S3_ENV)."""
    port = _free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, **S3_ENV}, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _wait_http(endpoint, moto, "moto S3 server", log)
        s3_client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        _stop(moto)


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=S3_ENV["AWS_DEFAULT_REGION"],
                        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])


@contextlib.contextmanager
def tracking_stack(root: Path) -> Iterator[TrackingStack]:
    """PostgreSQL + moto S3 + mlflow server, as the cluster profile runs them (see the module doc)."""
    with postgres_server() as (port, user), s3_server(root / "moto.log") as s3_endpoint:
        backend = create_database(port, user, "mlflow")
        audit = create_database(port, user, "llmops_audit")
        mlflow_port, mlflow_log = _free_port(), root / "mlflow-server.log"
        destination = f"s3://{BUCKET}/mlflow"
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        server = subprocess.Popen(
            [str(mlflow_bin), "server", "--backend-store-uri", backend, "--artifacts-destination", destination,
             "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
            # No background job runner (GenAI jobs): it starts a dozen huey workers the registry never uses.
            env={**os.environ, **S3_ENV, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
                 "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=mlflow_log.open("w"), stderr=subprocess.STDOUT, cwd=root,
        )
        try:
            uri = f"http://127.0.0.1:{mlflow_port}"
            _wait_http(f"{uri}/health", server, "mlflow server", mlflow_log, timeout=180)
            yield TrackingStack(uri, audit, backend, s3_endpoint, destination)
        finally:
            _stop(server)
