"""The run summary says which precision the run trained in and why, and the host it ran on (read back from the
train step's MLflow tags); a run that never trained names this machine."""

from __future__ import annotations

from llmops import host
from llmops.settings import Settings
from llmops.tracking import start_pipeline_run
from pipelines.summary import summarize


def test_summary_reads_precision_and_host_from_the_train_step_else_names_this_machine(settings: Settings) -> None:
    from mlflow.tracking import MlflowClient

    parent = start_pipeline_run(settings, "run-1")
    client = MlflowClient(settings.tracking_uri)
    exp = client.get_run(parent).info.experiment_id
    fp = host.fingerprint() | {"mem_bw_1t_gbs": 12.5, "mem_bw_all_gbs": 20.0}
    tags = {"llmops.step": "train", "mlflow.parentRunId": parent, "train.precision": "fp32",
            "train.precision.requested": "auto", "train.precision.reason": "no native bf16 matmul on this CPU",
            **host.lineage_tags(fp)}
    client.create_run(exp, run_name="train", tags=tags)
    out = summarize(settings, parent)
    assert out["precision"] == {"precision": "fp32", "requested": "auto", "source": "train step",
                                "reason": "no native bf16 matmul on this CPU"}
    assert out["host"]["cpu"] == fp["cpu"] and out["host"]["isa"] == host.isa_tag(fp)
    assert out["host"]["mem_bw_1t_gbs"] == "12.5" and out["host"]["cores"] == str(fp["cores"])

    # a run that never trained (one MLflow store for both cases: its setup is most of this test's time)
    out = summarize(settings, start_pipeline_run(settings, "run-2"))
    assert "precision" not in out
    assert out["host"]["cpu"] == host.cpu_model() and out["host"]["source"].startswith("this machine")
    assert float(out["host"]["mem_bw_all_gbs"]) > 0
