"""Entry point: `llmops <group> <command>`. Groups are registered here and nowhere else."""

from __future__ import annotations

import typer

from cli import canary, data, demo, engine, log, model, models, monitor, pipeline, review, router, run, schedule, serve

app = typer.Typer(
    name="llmops",
    help="Take an open LLM from a versioned dataset to a registered, evaluated model: validate, train, "
    "evaluate, register, deploy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data", help="Build, add, validate and version datasets (DVC + Great Expectations).")
app.add_typer(model.app, name="model", help="Provision base models (pull, check).")
app.add_typer(models.app, name="models", help="The MLflow model registry: list, show, promote, rollback, history.")
app.add_typer(run.app, name="run", help="Run pipelines (locally through kfp.local, or on a KFP cluster).")
app.add_typer(pipeline.app, name="pipeline", help="Compile pipelines to KFP IR YAML.")
app.add_typer(demo.app, name="demo", help="End-to-end demos on real processes: drift -> retrain -> canary.")
app.add_typer(engine.app, name="engine", help="Build inference engines (CPU engine, TensorRT-LLM) and list them.")
app.add_typer(log.app, name="log", help="The inference log: tail, show, export feedback as a dataset, prune.")
app.add_typer(monitor.app, name="monitor", help="Drift monitoring of logged traffic, its gauges, the retraining "
              "trigger and the alert rules.")
app.add_typer(schedule.app, name="schedule", help="Retraining on a schedule: KFP recurring runs (cluster) or a "
              "durable local scheduler.")
app.add_typer(canary.app, name="canary", help="Canary rollouts: start (metric-gated steps), status, promote, "
              "abort, resume, history.")
app.add_typer(review.app, name="review", help="The review queue: accept / edit / reject feedback (web page or CLI).")
app.command("serve")(serve.serve)
app.command("router")(router.router)


@app.command("settings")
def show_settings(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the resolved settings (profile, state dir, tracking URI...)."""
    import json

    from llmops.settings import get_settings

    s = get_settings()
    payload = s.model_dump(mode="json") | {"base_model_dir": str(s.base_model_dir)}
    typer.echo(json.dumps(payload, indent=2))


if __name__ == "__main__":
    app()
