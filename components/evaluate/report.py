"""What a reviewer reads after evaluation: a comparison table (markdown), a bar chart, an HTML report.

All three show the same numbers from the same run. The HTML report is self-contained (the chart is
embedded as base64) so it opens from a KFP HTML artifact, an MLflow artifact view or a plain file.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# (key, label, direction) in display order; direction says which way is better.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("perplexity", "answer perplexity", "lower"),
    ("general_perplexity", "general-text perplexity", "lower"),
    ("exact_match", "exact match", "higher"),
    ("rouge_l", "ROUGE-L F1", "higher"),
    ("embed_similarity", "embedding cosine", "higher"),
    ("latency_p50_ms", "latency p50 (ms)", "lower"),
    ("latency_p95_ms", "latency p95 (ms)", "lower"),
    ("tokens_per_s", "answer tokens/s (to EOS, batched)", "higher"),
    ("safety_refusal_rate", "safety: must-refuse refused", "higher"),
    ("safety_benign_refusal_rate", "safety: benign refused", "lower"),
    ("safety_secret_leaks", "safety: secret leaks", "lower"),
    ("safety_pii_leaks", "safety: PII leaks", "lower"),
    ("judge_answer_correct", "judge: answer correct", "higher"),
    ("judge_response_safe", "judge: response safe", "higher"),
)

_COLORS = {"base": "#8c8c8c", "candidate": "#1f77b4", "champion": "#ff7f0e"}


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return "n/a"
    if abs(v) >= 100:
        return f"{v:,.1f}"
    return f"{v:.4f}" if abs(v) < 1 else f"{v:.3f}"


def comparison_table(models: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown table: one row per metric (with which way is better), one column per model."""
    names = list(models)
    lines = ["| metric | better | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for key, label, direction in METRICS:
        if not any(key in models[n] for n in names):
            continue
        cells = " | ".join(fmt(models[n].get(key)) for n in names)
        lines.append(f"| {label} | {direction} | {cells} |")
    return "\n".join(lines) + "\n"


def bar_chart(models: Mapping[str, Mapping[str, float]], path: Path, title: str = "") -> Path:
    """One small bar panel per metric (scales differ too much for one axis), bars coloured per model."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    keys = [(k, label) for k, label, _ in METRICS if any(k in m for m in models.values())]
    names = list(models)
    cols = 4
    rows = max(1, math.ceil(len(keys) / cols))
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (key, label) in zip(axes, keys, strict=False):
        values = [models[n].get(key, float("nan")) for n in names]
        heights = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
        bars = ax.bar(names, heights, color=[_COLORS.get(n, "#2ca02c") for n in names])
        for bar, value in zip(bars, values, strict=True):
            ax.annotate(fmt(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.margins(y=0.2)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _html_table(models: Mapping[str, Mapping[str, float]]) -> str:
    names = list(models)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = []
    for key, label, direction in METRICS:
        if not any(key in models[n] for n in names):
            continue
        cells = "".join(f"<td>{fmt(models[n].get(key))}</td>" for n in names)
        rows.append(f"<tr><td>{html.escape(label)}</td><td>{direction}</td>{cells}</tr>")
    return f"<table><tr><th>metric</th><th>better</th>{head}</tr>{''.join(rows)}</table>"


def html_report(
    path: Path,
    *,
    models: Mapping[str, Mapping[str, float]],
    verdict: Mapping[str, Any],
    chart_png: Path,
    examples: Sequence[Mapping[str, Any]],
    context: Mapping[str, Any],
) -> Path:
    """Write the report: verdict with each check's numbers, the table, the chart, example generations.

    `examples` rows hold `prompt`, `reference` and `predictions` ({model: text}).
    """
    status = "PASSED" if verdict.get("passed") else "FAILED"
    checks = "".join(
        f"<li class='{'ok' if c['passed'] else 'bad'}'>{'pass' if c['passed'] else 'FAIL'}: "
        f"{html.escape(str(c['message']))}</li>" for c in verdict.get("checks", [])
    )
    ctx = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in context.items())
    chart_b64 = base64.b64encode(Path(chart_png).read_bytes()).decode()
    ex_html = []
    for i, ex in enumerate(examples, start=1):
        preds = "".join(
            f"<tr><th>{html.escape(name)}</th><td><pre>{html.escape(str(text))}</pre></td></tr>"
            for name, text in ex["predictions"].items()
        )
        ex_html.append(
            f"<h3>Example {i}</h3><table class='ex'>"
            f"<tr><th>prompt</th><td><pre>{html.escape(str(ex['prompt']))}</pre></td></tr>"
            f"<tr><th>reference</th><td><pre>{html.escape(str(ex['reference']))}</pre></td></tr>"
            f"{preds}</table>"
        )
    doc = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>llmops evaluation: {status}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 70em; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
pre {{ white-space: pre-wrap; margin: 0; font-size: 0.9em; }}
.ok {{ color: #1a7f37; }} .bad {{ color: #c62828; font-weight: bold; }}
.verdict {{ font-size: 1.3em; }}
</style></head><body>
<h1>Evaluation report</h1>
<p class="verdict {'ok' if verdict.get('passed') else 'bad'}">Gate: {status}</p>
<ul>{checks}</ul>
<h2>Run</h2><ul>{ctx}</ul>
<h2>Comparison</h2>
{_html_table(models)}
<img alt="comparison chart" src="data:image/png;base64,{chart_b64}">
<h2>Example generations</h2>
{''.join(ex_html) or '<p>none</p>'}
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")
    return path
