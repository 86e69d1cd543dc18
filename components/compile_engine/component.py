"""KFP wrapper of engine compilation: runs after register on the new version; returns the engines it built."""

from kfp import dsl

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def compile_engine(parent_run_id: str, overrides: list, model_version: str) -> str:
    """Build the engines in params.yaml `engine.kinds` for `model_version`, attach them to it; returns
    "kind=name,..." (a skipped kind reads "kind=skipped")."""
    from components.compile_engine.logic import compile_engines
    from llmops.settings import get_settings
    from llmops.steplog import step_report

    with step_report("compile_engine", parent_run_id) as step:
        settings = get_settings()
        params = settings.params(overrides)
        result = compile_engines(settings, params, name=settings.registered_model, version=model_version,
                                 parent_run_id=parent_run_id)
        figures = {}
        for kind, r in result["engines"].items():
            if r.get("skipped"):
                why = "quality" if kind == "cpu-int8" else "equivalence"
                figures[kind] = f"rejected ({why})" if r.get("rejected") else "skipped"
                continue
            bench = r.get("benchmark") or {}
            figures[kind] = r["runtime"] + (" (cache hit)" if r.get("cache_hit") else "")
            if r.get("equivalence"):
                figures[f"{kind} equivalence"] = f"{r['equivalence']['identical_rate']:.0%}"
            if r.get("quality"):
                q = r["quality"]
                figures[f"{kind} ppl/ROUGE-L vs eager"] = f"{q['perplexity_increase']:+.1%}/{-q['rouge_l_drop']:+.3f}"
            for key in ("batch1_tokens_per_s", "batch8_tokens_per_s"):
                if key in bench:
                    figures[f"{kind} {key.replace('_tokens_per_s', '')} tok/s"] = bench[key]
        step.figures(**figures)
    def label(r: dict) -> str:
        return ("rejected" if r.get("rejected") else "skipped") if r.get("skipped") else r["name"]

    return ",".join(f"{k}={label(r)}" for k, r in result["engines"].items())
