"""The postgres-setup job (infra/k8s/base/postgres.yaml) against a real PostgreSQL with password auth: its
script, run with the environment its Job gives it, creates one user and one database per store, each user
reaches only its own database with its own password, a second run re-applies rotated passwords, and the
inference log's own store creates its tables as its user."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.infra.manifests import K8S, kustomize
from tests.postgres_stack import _free_port, postgres_bin_dir

ADMIN, ADMIN_PW = "pgadmin", "admin-pw"
STORES = {"mlflow": ("mlflow-db", "mlflow"), "llmops_audit": ("llmops-audit-db", "llmops_audit"),
          "llmops_inference_log": ("llmops-inference-log-db", "llmops_inference_log")}


@contextlib.contextmanager
def password_postgres() -> Iterator[int]:
    """A fresh cluster that checks passwords over TCP (scram-sha-256); yields its port."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed: `apt-get install -y postgresql` (make sysdeps; CI installs it)")
    prefix: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="llmops-pgsetup-"))
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    (base / "pw").write_text(ADMIN_PW)
    if prefix:
        os.chown(base / "pw", pw.pw_uid, pw.pw_gid)
    port, data = _free_port(), base / "data"

    def run(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True, timeout=120)
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", ADMIN, "--auth-local=trust",
            "--auth-host=scram-sha-256", f"--pwfile={base / 'pw'}", "-E", "UTF8", "--no-sync")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60", "start", "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off")
        try:
            yield port
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _job_env(job: dict[str, Any], secrets: dict[tuple[str, str], str], port: int) -> dict[str, str]:
    """The Job container's environment, with each secretKeyRef resolved from `secrets`, pointed at `port`."""
    env = {"PATH": os.environ["PATH"], "PGPORT": str(port)}
    for var in job["spec"]["template"]["spec"]["containers"][0]["env"]:
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        env[var["name"]] = secrets[(ref["name"], ref["key"])] if ref else var["value"]
    env["PGHOST"] = "127.0.0.1"
    return env


def _connect(port: int, user: str, password: str, db: str):
    import psycopg2

    return psycopg2.connect(host="127.0.0.1", port=port, user=user, password=password, dbname=db,
                            connect_timeout=10)


@pytest.fixture(scope="module")
def setup_job(tmp_path_factory) -> tuple[str, dict[str, Any]]:
    docs = kustomize(K8S / "overlays" / "dev")
    script = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "postgres-setup")
    path = tmp_path_factory.mktemp("setup") / "setup.sh"
    path.write_text(script["data"]["setup.sh"])
    job = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "postgres-setup")
    return str(path), job


def _secrets(tag: str) -> dict[tuple[str, str], str]:
    out = {("postgres-credentials", "username"): ADMIN, ("postgres-credentials", "password"): ADMIN_PW}
    out |= {(secret, "password"): f"{user}-{tag}" for user, (secret, _) in STORES.items()}
    return out


def test_setup_job_gives_each_store_its_own_user(setup_job):
    import psycopg2

    script, job = setup_job
    with password_postgres() as port:
        for tag in ("first", "rotated"):  # idempotent; the second run re-applies changed passwords
            out = subprocess.run(["/bin/sh", script], env=_job_env(job, _secrets(tag), port), capture_output=True,
                                 text=True, timeout=120)
            assert out.returncode == 0, out.stderr
        for user, (_, db) in STORES.items():
            _connect(port, user, f"{user}-rotated", db).close()
            with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
                _connect(port, user, f"{user}-first", db)
            for _, other in (v for u, v in STORES.items() if u != user):
                with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
                    _connect(port, user, f"{user}-rotated", other)
        with _connect(port, ADMIN, ADMIN_PW, "postgres") as conn, conn.cursor() as cur:
            cur.execute("SELECT rolname, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = ANY(%s)",
                        (list(STORES),))
            assert sorted(cur.fetchall()) == sorted((u, False, False, False) for u in STORES)
            cur.execute("SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname = ANY(%s)",
                        ([db for _, db in STORES.values()],))
            assert dict(cur.fetchall()) == {db: user for user, (_, db) in STORES.items()}
        _inference_log_opens_as_its_user(port)


def _inference_log_opens_as_its_user(port: int) -> None:
    """What the model server does at start with LLMOPS_INFERENCE_LOG_URI: open the log (creating its tables)."""
    from llmops.settings import Settings
    from monitoring.inference_log.log import open_log

    uri = f"postgresql+psycopg2://llmops_inference_log:llmops_inference_log-rotated@127.0.0.1:{port}/llmops_inference_log"
    open_log(Settings(inference_log_uri=uri), start_writer=False).close()
    with _connect(port, "llmops_inference_log", "llmops_inference_log-rotated", "llmops_inference_log") as conn, \
            conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = current_user")
        assert cur.fetchone()[0] >= 1


def test_setup_job_refuses_an_admin_that_is_a_store_user(setup_job):
    script, job = setup_job
    secrets = _secrets("x") | {("postgres-credentials", "username"): "mlflow"}
    out = subprocess.run(["/bin/sh", script], env=_job_env(job, secrets, 1), capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 1 and "use a separate admin" in out.stderr
