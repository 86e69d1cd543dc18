"""The evaluate step as a plain function: base vs candidate (vs champion) on the same data, then the gate.

Every model sees exactly the same inputs: the first `eval.max_examples` test records for answer
perplexity, the first `eval.gen_examples` for greedy generations of at most `eval.max_new_tokens`, the
same GENERAL_TEXT for forgetting, the same references embedded once. Prompts come from
`llmops.modeling.prompts`, as in training and serving. Results go to `out_dir` (table, chart, HTML
report, JSON, generations) and to an MLflow child run `evaluate` (metrics `<model>.<metric>`, the gate
verdict as tags, the files as artifacts). The function returns the verdict; it does not raise on a
failed gate, so the pipeline can branch on it (the KFP wrapper lives in component.py).
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.evaluate.gate import GateVerdict, decide
from llmops.errors import DataError, LlmopsError, ModelError
from llmops.params import Params
from llmops.settings import Settings

TEXT_FIELDS = ("id", "instruction", "input", "output", "source")


@dataclass
class EvalResult:
    """Metrics per model ("base", "candidate", optionally "champion"), the gate verdict and the outputs."""

    models: dict[str, dict[str, float]]
    verdict: GateVerdict
    table_md: str
    chart_png: Path
    report_html: Path
    results_json: Path | None = None
    generations_jsonl: Path | None = None
    run_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, str] = field(default_factory=dict)  # data.test.* of the exact file read

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.verdict.passed,
            "models": self.models,
            "verdict": self.verdict.to_dict(),
            "table_md": self.table_md,
            "chart_png": str(self.chart_png),
            "report_html": str(self.report_html),
            "results_json": str(self.results_json) if self.results_json else None,
            "generations_jsonl": str(self.generations_jsonl) if self.generations_jsonl else None,
            "run_id": self.run_id,
            "data": self.data,
            "lineage": self.lineage,
        }


def _say(message: str) -> None:
    """A progress line on stderr (the KFP/CLI log), flushed so it shows while the step runs."""
    print(f"[evaluate] {message}", file=sys.stderr, flush=True)


def load_test_records(path: Path) -> list[dict[str, str]]:
    """Test records (all text fields strings) via the project's strict reader; DataError for anything
    unusable (missing or empty file, bad JSON, wrong columns, an empty instruction or output)."""
    from llmops.data.records import read_jsonl

    rows = read_jsonl(Path(path)).to_dict("records")
    records = []
    for i, row in enumerate(rows):
        rec = {k: str(row.get(k) or "") for k in TEXT_FIELDS}
        rec["id"] = rec["id"] or str(i)
        if not rec["instruction"].strip() or not rec["output"].strip():
            raise DataError(f"{path}: test record {rec['id']!r} has an empty instruction or output",
                            "validate the data (`llmops data validate`) and rebuild the splits")
        records.append(rec)
    return records


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _take(records: list[dict[str, str]], n: int) -> list[dict[str, str]]:
    """First `n` records (0 or less = all): the same slice for every model."""
    return records if n <= 0 else records[:n]


def _evaluate_model(name: str, base_model_dir: Path, adapter_dir: Path | None, params: Params,
                    ppl_records: list[dict[str, str]], gen_records: list[dict[str, str]],
                    embedder, reference_vectors, precision: str = "fp32",
                    safety_records: list[dict] | None = None) -> tuple[dict[str, float], list[str], int, list[dict]]:
    """(metrics, generated texts, answer tokens scored, safety rows) for one model, its forwards under the run's
    `precision` (llmops.precision: the same choice as training); the model is freed afterwards."""
    from components.evaluate import metrics as m
    from llmops.modeling.generation import generate, load_model
    from llmops.modeling.prompts import format_prompt
    from llmops.precision import autocast

    ev = params.eval
    t0 = time.perf_counter()
    model, tokenizer = load_model(base_model_dir, adapter_dir)
    _say(f"{name}: loaded {'base + adapter (merged)' if adapter_dir else 'base'} "
         f"in {time.perf_counter() - t0:.1f} s")
    t1 = time.perf_counter()
    with autocast(model.device.type, precision):
        ppl, answer_tokens = m.answer_perplexity(model, tokenizer, ppl_records, batch_size=ev.batch_size)
        general = m.general_perplexity(model, tokenizer)
    _say(f"{name}: answer perplexity {ppl:.3f} on {len(ppl_records)} examples ({answer_tokens} answer tokens), "
         f"general-text perplexity {general:.3f} ({time.perf_counter() - t1:.1f} s)")
    t2 = time.perf_counter()
    prompts = [format_prompt(tokenizer, r) for r in gen_records]
    with autocast(model.device.type, precision):
        gen = generate(model, tokenizer, prompts, ev.max_new_tokens, batch_size=ev.batch_size)
    refs = [r["output"] for r in gen_records]
    sims = m.embedding_similarity(embedder, gen.texts, refs, reference_vectors=reference_vectors)
    result = {
        "perplexity": ppl,
        "general_perplexity": general,
        "exact_match": m.mean([m.exact_match(p, r) for p, r in zip(gen.texts, refs, strict=True)]),
        "rouge_l": m.mean([m.rouge_l_f1(p, r) for p, r in zip(gen.texts, refs, strict=True)]),
        "embed_similarity": m.mean(sims),
        **m.latency_summary(gen.latencies_ms, gen.new_tokens, gen.seconds),
    }
    _say(f"{name}: {len(prompts)} generations in {time.perf_counter() - t2:.1f} s, "
         f"ROUGE-L {result['rouge_l']:.3f}, EM {result['exact_match']:.3f}, "
         f"p50 {result['latency_p50_ms']:.0f} ms, {result['tokens_per_s']:.1f} tokens/s")
    safety_rows = _safety(name, model, tokenizer, params, safety_records or [], precision, result)
    result["seconds"] = time.perf_counter() - t0
    del model
    gc.collect()
    return result, gen.texts, answer_tokens, safety_rows


def _safety(name: str, model, tokenizer, params: Params, records: list[dict], precision: str,
            result: dict[str, float]) -> list[dict]:
    """Answer the safety set with the loaded model; its rates and leak counts go into `result`."""
    if not records:
        return []
    from components.evaluate import safety
    from llmops.precision import autocast

    t0 = time.perf_counter()
    with autocast(model.device.type, precision):
        answers = safety.answer_safety_set(model, tokenizer, records, params.eval.safety.max_new_tokens,
                                           params.eval.batch_size)
    metrics, rows = safety.score(records, answers, params)
    result.update(metrics)
    _say(f"{name}: safety set ({len(records)} prompts) refused {metrics['safety_refusal_rate']:.0%} of must-refuse, "
         f"{metrics['safety_benign_refusal_rate']:.0%} of benign; secret leaks {metrics['safety_secret_leaks']:.0f}, "
         f"PII leaks {metrics['safety_pii_leaks']:.0f} ({time.perf_counter() - t0:.1f} s)")
    return rows


def _safety_gate_and_judges(params: Params, models: dict[str, dict[str, float]], verdict: GateVerdict,
                            gen_records: list[dict[str, str]], generations: dict[str, list[str]],
                            safety_rows: list[dict], safety_path: Path):
    """Add the safety checks (candidate vs champion, or vs base without one) to the verdict, write the
    safety answers, and run the judges (if configured) on the candidate and that reference.
    Returns (verdict, JudgeSummary)."""
    from components.evaluate import judges, safety
    from llmops.modeling.prompts import user_message

    reference = "champion" if "champion" in models else "base"
    checks = verdict.checks + safety.gate_checks(models["candidate"], models[reference], reference,
                                                 params.eval.safety, safety_rows)
    reasons = [c["message"] for c in checks if not c["passed"]]
    verdict = GateVerdict(passed=not reasons, reasons=reasons, checks=checks)
    with safety_path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in safety_rows)
    gen_rows = [{"prompt": user_message(rec), "reference": rec["output"],
                 "predictions": {n: generations[n][i] for n in generations}} for i, rec in enumerate(gen_records)]
    judged = judges.run_judges(params.eval.judge, {
        name: judges.examples(gen_rows, safety_rows, name, params.eval.judge.max_examples)
        for name in ("candidate", reference)})
    for name, scores in judged.scores.items():
        models[name].update({f"judge_{j}": v for j, v in scores.items()})
    _say(judged.note)
    return verdict, judged


def _log_to_active_run(params: Params, result: EvalResult, files: list[Path]) -> None:
    """Params, `<model>.<metric>` metrics, the verdict as tags and the output files, into the active run."""
    import mlflow

    verdict, ev = result.verdict, params.eval
    mlflow.log_params({
        "eval.max_examples": ev.max_examples, "eval.gen_examples": ev.gen_examples,
        "eval.max_new_tokens": ev.max_new_tokens, "eval.batch_size": ev.batch_size,
        "eval.gate.min_ppl_improvement": ev.gate.min_ppl_improvement,
        "eval.gate.max_regression": ev.gate.max_regression,
        "eval.gate.max_general_ppl_increase": ev.gate.max_general_ppl_increase,
        "eval.gate.task_metric": ev.gate.task_metric,
        "eval.test_sha256": result.data.get("test_sha256", ""),
    })
    mlflow.log_metrics({
        f"{model}.{key}": float(value)
        for model, values in result.models.items() for key, value in values.items()
        if value is not None and math.isfinite(float(value))
    })
    mlflow.set_tags({
        "gate.passed": str(verdict.passed).lower(),
        "gate.reasons": "; ".join(verdict.reasons)[:5000] or "all checks passed",
        "gate.summary": verdict.summary()[:5000],
        "gate.failed_checks": ",".join(c["name"] for c in verdict.checks if not c["passed"]),
        "eval.models": ",".join(result.models),
        "eval.judge": str(result.data.get("judge", ""))[:5000],
        "eval.precision": str(result.data.get("precision", "fp32")),
        **result.lineage,
    })
    for path in files:
        mlflow.log_artifact(str(path), artifact_path="evaluate")


def evaluate_candidate(
    settings: Settings,
    params: Params,
    *,
    test_path: Path,
    base_model_dir: Path,
    adapter_dir: Path,
    champion_adapter_dir: Path | None,
    out_dir: Path,
    parent_run_id: str | None = None,
) -> EvalResult:
    """Evaluate base, candidate (and champion) on the same data, apply the gate, write and log the results.

    Returns an EvalResult; `verdict.passed` says whether the candidate may be registered. Raises
    DataError / ModelError (cause + fix) for an unusable test split, model or adapter directory.
    """
    from components.evaluate import preference, safety
    from llmops import tracking
    from llmops.lineage import data_lineage
    from llmops.modeling.embedder import ensure_embedder, load_embedder
    from llmops.precision import local_device, probe_shape, resolve

    started = time.perf_counter()
    base_model_dir, adapter_dir = Path(base_model_dir), Path(adapter_dir)
    adapters = _checked_inputs(params, base_model_dir, adapter_dir, champion_adapter_dir)
    ev = params.eval
    records = load_test_records(Path(test_path))
    preference.load_split(settings, params)  # a configured preference split that is missing fails now, not later
    safety_records = safety.load_safety_set(settings.project_dir / ev.safety.path)

    lineage = data_lineage(settings.project_dir, {"test": Path(test_path)})
    ppl_records, gen_records = _take(records, ev.max_examples), _take(records, ev.gen_examples)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _say(f"{len(records)} test records: perplexity on {len(ppl_records)}, generations on {len(gen_records)} "
         f"(max {ev.max_new_tokens} new tokens); models: {', '.join(n for n, _ in adapters)}")
    embedder = load_embedder(ensure_embedder(settings, params))
    precision = resolve(params.train.precision, local_device(), settings.state_dir,
                        probe_shape(params.train.batch_size, params.train.seq_len, base_model_dir))
    _say(precision.line())

    with tracking.step_run(settings, parent_run_id, "evaluate") as run_id:
        reference_vectors = embedder.encode([r["output"] for r in gen_records])
        models: dict[str, dict[str, float]] = {}
        generations: dict[str, list[str]] = {}
        answer_tokens = 0
        safety_rows: dict[str, list[dict]] = {}
        for name, path in adapters:
            models[name], generations[name], answer_tokens, safety_rows[name] = _evaluate_model(
                name, base_model_dir, path, params, ppl_records, gen_records, embedder, reference_vectors,
                precision.precision, safety_records)

        preference.score_models(settings, params, adapters, base_model_dir, models, precision.precision)
        verdict = decide(models["base"], models["candidate"], models.get("champion"), ev.gate)
        safety_path = out_dir / "safety.jsonl"
        verdict, judged = _safety_gate_and_judges(params, models, verdict, gen_records, generations,
                                                  safety.combined_rows(safety_records, safety_rows), safety_path)
        _say(f"gate {'PASSED' if verdict.passed else 'FAILED'}\n{verdict.summary()}")
        data = {
            "test_path": str(test_path), "test_sha256": _sha256(Path(test_path)), "test_records": len(records),
            "ppl_examples": len(ppl_records), "gen_examples": len(gen_records), "answer_tokens": answer_tokens,
            "max_new_tokens": ev.max_new_tokens, "base_model_dir": str(base_model_dir),
            "adapter_dir": str(adapter_dir),
            "champion_adapter_dir": str(champion_adapter_dir) if champion_adapter_dir else None,
            "precision": precision.precision, "precision_reason": precision.reason,
            "safety_set": f"{ev.safety.path} ({len(safety_records)} prompts)", "judge": judged.note,
        }
        result = _write_results(params, out_dir, models, verdict, gen_records, generations, data, run_id,
                                lineage, started, judges=judged.to_dict())
        _log_to_active_run(params, result, [out_dir / "comparison.md", result.chart_png, result.report_html,
                                            result.generations_jsonl, safety_path, result.results_json])
    _say(f"done in {time.perf_counter() - started:.1f} s; MLflow run {run_id}; report {result.report_html}")
    return result


def _checked_inputs(params: Params, base_model_dir: Path, adapter_dir: Path,
                    champion_adapter_dir: Path | None) -> list[tuple[str, Path | None]]:
    """The models to compare, after the checks that fail before any model loads (cause + fix)."""
    if not (base_model_dir / "config.json").is_file():
        raise ModelError(f"no base model checkpoint at {base_model_dir}", "run `llmops model pull`")
    adapters: list[tuple[str, Path | None]] = [("base", None), ("candidate", adapter_dir)]
    if champion_adapter_dir is not None:
        adapters.append(("champion", Path(champion_adapter_dir)))
    for name, path in adapters:
        if path is not None and not (path / "adapter_config.json").is_file():
            raise ModelError(f"{name} adapter not found at {path} (no adapter_config.json)",
                             "pass the adapter directory written by the train step or the registry")
    ev = params.eval
    if ev.batch_size < 1 or ev.max_new_tokens < 1:
        raise LlmopsError(f"eval.batch_size ({ev.batch_size}) and eval.max_new_tokens ({ev.max_new_tokens}) "
                          "must be at least 1", "fix them in params.yaml or --set")
    return adapters


def _write_results(params: Params, out_dir: Path, models: dict[str, dict[str, float]], verdict, gen_records: list,
                   generations: dict[str, list[str]], data: dict, run_id: str, lineage, started: float, *,
                   judges: dict) -> EvalResult:
    """The comparison table, chart, generations, HTML report and eval.json, for people and the next steps."""
    from components.evaluate import report
    from llmops.modeling.prompts import user_message

    table_md = report.comparison_table(models)
    (out_dir / "comparison.md").write_text(table_md, encoding="utf-8")
    chart_png = report.bar_chart(models, out_dir / "comparison.png",
                                 title=f"gate {'passed' if verdict.passed else 'failed'}")
    gen_path = out_dir / "generations.jsonl"
    with gen_path.open("w", encoding="utf-8") as f:
        for i, rec in enumerate(gen_records):
            row = {"id": rec["id"], "instruction": rec["instruction"], "input": rec["input"],
                   "reference": rec["output"], **{n: generations[n][i] for n in generations}}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    examples = [
        {"prompt": user_message(rec),
         "reference": rec["output"], "predictions": {n: generations[n][i] for n in generations}}
        for i, rec in enumerate(gen_records[: max(params.eval.report_examples, 0)])
    ]
    report_html = report.html_report(
        out_dir / "report.html", models=models, verdict=verdict.to_dict(), chart_png=chart_png,
        examples=examples, context={"mlflow_run_id": run_id, **{k: v for k, v in data.items() if v}},
    )
    data["seconds"] = round(time.perf_counter() - started, 2)
    data["judges"] = judges
    result = EvalResult(models=models, verdict=verdict, table_md=table_md, chart_png=chart_png,
                        report_html=report_html, results_json=out_dir / "eval.json",
                        generations_jsonl=gen_path, run_id=run_id, data=data, lineage=lineage)
    result.results_json.write_text(json.dumps(result.to_dict(), indent=2, default=str), encoding="utf-8")
    return result
