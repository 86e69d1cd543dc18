"""The train step as a KubeRay `RayJob` entrypoint: `python -m components.train.ray_job --train URI ...`.

A RayJob runs its entrypoint as a driver on the Ray cluster (Ray Jobs sets `RAY_ADDRESS` for it), so
the same `train_adapter` a laptop runs joins that cluster's GPU workers. Inputs and the output adapter
are paths or URIs pyarrow understands (s3://, gs://, a shared mount): the driver pod shares no disk with
the pipeline. The last stdout line is `llmops.train.result {json}` for whoever reads the job's logs.
(`infra/k8s/base/ray.yaml` holds the RayJob template; a pipeline pod can instead join the cluster
directly with `LLMOPS_RAY_ADDRESS=ray://...`.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from llmops.errors import LlmopsError
from llmops.training.storage import copy as _copy

RESULT_PREFIX = "llmops.train.result "


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m components.train.ray_job", description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True, help="train split (JSONL): path or URI")
    ap.add_argument("--validation", required=True, help="validation split (JSONL): path or URI")
    ap.add_argument("--out", required=True, help="where the PEFT adapter goes: directory or URI")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="params override key=value")
    ap.add_argument("--base-model", help="base checkpoint dir or hub id (default: params model.base)")
    ap.add_argument("--parent-run-id", help="MLflow run to nest the training run under")
    args = ap.parse_args(argv)

    from components.train.logic import train_adapter
    from llmops.modeling.base import base_model_path
    from llmops.settings import get_settings

    settings = get_settings()
    if not settings.ray_address and os.environ.get("RAY_ADDRESS"):
        # The Ray Jobs API sets RAY_ADDRESS for the entrypoint: join that cluster, never start one.
        settings = settings.model_copy(update={"ray_address": os.environ["RAY_ADDRESS"]})
    params = settings.params(args.overrides)
    base = Path(args.base_model) if args.base_model else base_model_path(settings, params)
    with tempfile.TemporaryDirectory(prefix="llmops-rayjob-") as tmp:
        work = Path(tmp)
        _copy(args.train, str(work / "train.jsonl"))
        _copy(args.validation, str(work / "validation.jsonl"))
        result = train_adapter(settings, params, train_path=work / "train.jsonl",
                               validation_path=work / "validation.jsonl", base_model_dir=base,
                               out_dir=work / "adapter", parent_run_id=args.parent_run_id)
        _copy(str(work / "adapter"), args.out)
    summary = {"adapter": args.out, "mlflow_run_id": result.run_id, "checkpoint": result.checkpoint_dir,
               "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, int | float | str)}}
    print(RESULT_PREFIX + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LlmopsError as exc:
        print(f"error: {exc.cause}\nfix: {exc.fix}", file=sys.stderr)
        sys.exit(2)
