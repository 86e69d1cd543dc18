"""Checks that run before a pipeline's DAG starts, so a run that cannot succeed fails in seconds with its cause
and fix, before any step runs or any MLflow run is opened: params valid, base model resolvable, data dir
complete, tracking server + model registry + audit store reachable. It also says which precision training,
evaluation and generation will run in, and why (`train.precision`, llmops.precision), on which host.

MLflow's own HTTP client retries a dead server for minutes (7 retries, 120 s timeouts by default); the probe
here uses a short timeout, and `bound_mlflow_http` caps MLflow's retries for the steps of the run.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from llmops.errors import LlmopsError
from llmops.params import Params
from llmops.settings import Settings

PROBE_TIMEOUT_S = 3.0
# Per request, for the steps of a run: seconds, not minutes, when the server is gone; users may override.
MLFLOW_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


class PreflightError(LlmopsError):
    """A run that cannot succeed, caught before its DAG starts."""


def bound_mlflow_http() -> None:
    for key, value in MLFLOW_HTTP_ENV.items():
        os.environ.setdefault(key, value)


def preflight_finetune(settings: Settings, overrides: list[str], data_dir: str, *, quiet: bool = False) -> Params:
    """Every check that needs no step to have run; raises PreflightError (cause + fix) at the first failure.
    `quiet` (--json): the precision and host lines are not printed (the JSON summary carries both)."""
    bound_mlflow_http()
    params = settings.params(overrides)  # raises with the bad key/value
    if settings.profile == "cluster":
        # The steps run in pods: the data dir is a path in their image, the base model and the tracking/audit
        # URIs are what the pods resolve and reach, not this machine (often outside the cluster network).
        # Submitting checks the KFP API itself.
        if not quiet:
            _say(f"precision: train.precision={params.train.precision}, chosen by each training worker on its "
                 "own device (recorded as the train.precision tag)")
        return params
    base = check_base_model(settings, params)
    check_data_dir(settings, data_dir)
    check_tracking(settings)
    check_audit_store(settings)
    report_precision(settings, params, base, quiet=quiet)
    return params


def _say(line: str) -> None:
    print(f"preflight: {line}", file=sys.stderr, flush=True)  # stderr: --json keeps stdout for its JSON


def report_precision(settings: Settings, params: Params, base_model_dir: Path | None, *, quiet: bool = False):
    """Choose the precision for this machine's device (the probe runs here once per host, into the state dir's
    cache the train workers and evaluate read) and say it, with the host, before any step starts."""
    from llmops import host
    from llmops.precision import local_device, probe_shape, resolve

    shape = probe_shape(params.train.batch_size, params.train.seq_len, base_model_dir)
    choice = resolve(params.train.precision, local_device(), settings.state_dir, shape)
    if not quiet:
        _say(choice.line())
        _say(host.host_line(host.describe(settings.state_dir)))
    return choice


def check_base_model(settings: Settings, params: Params) -> Path:
    from llmops.modeling.base import base_model_path

    path = base_model_path(settings, params)  # raises ModelError with the fix
    if path.is_dir() and not (path / "config.json").is_file():
        raise PreflightError(f"base model {str(path)!r} has no config.json (not a Hugging Face checkpoint)",
                             "point model.base at a directory written by save_pretrained, or run "
                             "`llmops model pull` for the built-in base")
    if path.is_dir():
        for weights in sorted(path.glob("*.safetensors")):
            if problem := _safetensors_problem(weights):
                raise PreflightError(f"base model weights {str(weights)!r} are corrupt ({problem})",
                                     "copy or pull the checkpoint again (`llmops model pull --force` for the "
                                     "built-in base)")
    return path


def _safetensors_problem(path: Path) -> str | None:
    """Reads only the header: a truncated or garbled file is caught in microseconds, not by a Ray worker
    minutes later (every tensor's byte range must lie inside the file)."""
    import json
    import struct

    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return "shorter than a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"header of {n} bytes in a {size}-byte file"
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            return "unreadable header"
    end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        return f"truncated: tensors need {8 + n + end} bytes, the file has {size}"
    return None


def check_data_dir(settings: Settings, data_dir: str) -> None:
    from components.validate_data.logic import SPLITS

    root = Path(data_dir) if Path(data_dir).is_absolute() else settings.project_dir / data_dir
    if not root.is_dir():
        raise PreflightError(f"data dir {str(root)!r} does not exist",
                             "pass --data-dir with a folder holding train/validation/test.jsonl, or run "
                             "`make data` for the DVC-tracked splits")
    missing = [f"{name}.jsonl" for name in SPLITS if not (root / f"{name}.jsonl").is_file()]
    if missing:
        raise PreflightError(f"data dir {str(root)!r} lacks {', '.join(missing)}",
                             "put train/validation/test.jsonl in it (the validate_data step reads exactly these), "
                             "or run `make data` for the DVC-tracked splits")


def check_tracking(settings: Settings) -> None:
    """The tracking store, which is also the model registry (same URI, see llmops.tracking.configure)."""
    uri = settings.tracking_uri or ""
    if uri.startswith(("http://", "https://")):
        base = uri.rstrip("/")
        _http_probe(f"{base}/health", "MLflow tracking server", "LLMOPS_TRACKING_URI")
        _http_probe(f"{base}/api/2.0/mlflow/registered-models/search?max_results=1", "MLflow model registry",
                    "LLMOPS_TRACKING_URI")
    elif "://" in uri and not uri.startswith("file:"):
        _db_probe(uri, "MLflow tracking store", "LLMOPS_TRACKING_URI")


def check_audit_store(settings: Settings) -> None:
    _db_probe(settings.audit_db_uri or "", "audit store", "LLMOPS_AUDIT_DB_URI")


def _http_probe(url: str, what: str, env: str) -> None:
    headers = {}
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    elif (user := os.environ.get("MLFLOW_TRACKING_USERNAME")) is not None:
        import base64

        pair = f"{user}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=PROBE_TIMEOUT_S):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise PreflightError(f"{what} at {_origin(url)} refused the credentials (HTTP {exc.code})",
                                 "set MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD") from None
        if exc.code >= 500:
            raise PreflightError(f"{what} at {_origin(url)} answered HTTP {exc.code}",
                                 "check the server's log; it is up but failing") from None
        return  # the server answered: reachable (an older server may lack /health)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PreflightError(f"{what} at {_origin(url)} is not reachable within {PROBE_TIMEOUT_S:.0f} s ({reason})",
                             f"start it (e.g. `make ui` for a local one) or point {env} at a running server; "
                             "unset it to use the local sqlite store") from None


def _db_probe(uri: str, what: str, env: str) -> None:
    import sqlalchemy as sa

    try:
        url = sa.engine.make_url(uri)
    except Exception:  # any parse failure is the same user error
        raise PreflightError(f"{what} URI {uri!r} is not a database URL", f"set {env} to a sqlite:/// or "
                             "postgresql:// URL") from None
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            parent = Path(url.database).parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise PreflightError(f"{what} {shown} cannot be created ({exc.strerror})",
                                     f"make {parent} writable or set {env}") from None
            if not os.access(parent, os.W_OK):
                raise PreflightError(f"{what} {shown} is not writable", f"make {parent} writable or set {env}")
        return
    connect_args = {"connect_timeout": int(PROBE_TIMEOUT_S)} if url.get_backend_name() == "postgresql" else {}
    try:
        engine = sa.create_engine(url, connect_args=connect_args)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        finally:
            engine.dispose()
    except ImportError as exc:
        raise PreflightError(f"{what} {shown} needs a database driver that is not installed ({exc.name})",
                             f"name an installed driver in {env}, e.g. postgresql+psycopg2://...") from None
    except Exception as exc:  # driver errors differ per backend; all mean "not reachable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PreflightError(f"{what} {shown} is not reachable ({first[:200]})",
                             f"start the database or point {env} at a reachable one") from None


def _origin(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
