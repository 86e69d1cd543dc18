"""The drift report as one self-contained HTML page: verdict, detector table, plots as embedded PNGs."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from monitoring.drift.report import DriftReport

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}.fired{background:#fde2e2}.ok{background:#e6f6e6}.skip{color:#888}
.verdict{font-size:1.4em;padding:.5em 1em;display:inline-block;border-radius:6px}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}code{background:#f6f6f6;padding:0 3px}"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _hist(ref: np.ndarray, win: np.ndarray, title: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    hi = float(np.quantile(np.concatenate([ref, win]), 0.99)) if len(win) else float(np.max(ref))
    bins = np.linspace(0, max(hi, 1.0), 40)
    ax.hist(np.clip(ref, 0, hi), bins=bins, density=True, alpha=0.5, label=f"reference (n={len(ref)})")
    if len(win):
        ax.hist(np.clip(win, 0, hi), bins=bins, density=True, alpha=0.5, label=f"window (n={len(win)})")
    ax.set_title(title)
    ax.set_xlabel("tokens (embedder tokenizer; top 1% clipped)")
    ax.legend()
    return _png(fig)


def _pvalues(report: DriftReport) -> str:
    import matplotlib.pyplot as plt

    active = [d for d in report.detectors if d.p_value is not None]
    if not active:
        return ""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(active) + 1.2))
    y = np.arange(len(active))
    score = [-np.log10(max(d.p_value, 1e-300)) for d in active]
    ax.barh(y, score, color=["#d9534f" if d.fired else "#5cb85c" for d in active])
    for yi, d in zip(y, active, strict=True):
        ax.plot([-np.log10(d.threshold)] * 2, [yi - 0.4, yi + 0.4], color="black", lw=2)
    ax.set_yticks(y, [d.name for d in active])
    ax.invert_yaxis()
    ax.set_xlabel("-log10 p-value (bar) vs its Holm threshold (black line); red = fired")
    return _png(fig)


def _projection(ref: np.ndarray, win: np.ndarray) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.scatter(ref[:, 0], ref[:, 1], s=5, alpha=0.35, label=f"reference (n={len(ref)})")
    ax.scatter(win[:, 0], win[:, 1], s=5, alpha=0.5, label=f"window (n={len(win)})")
    ax.set_title("prompt embeddings on the reference's first two principal axes")
    ax.legend(markerscale=3)
    return _png(fig)


def _num(value: float | None, fmt: str = "{:.4g}") -> str:
    return "-" if value is None else fmt.format(value)


def render_html(report: DriftReport) -> str:
    import matplotlib

    matplotlib.use("Agg")
    esc = html.escape
    when = dt.datetime.fromtimestamp(report.created, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    verdict = ("DRIFT DETECTED: " + ", ".join(report.fired)) if report.drifted else "no drift detected"
    rows = []
    for d in report.detectors:
        cls = "skip" if d.skipped else ("fired" if d.fired else "ok")
        status = f"skipped: {esc(d.skipped)}" if d.skipped else ("FIRED" if d.fired else "quiet")
        effect = "" if d.min_effect is None else f" (and statistic &ge; {d.min_effect:g})"
        rows.append(f'<tr class="{cls}"><td><code>{esc(d.name)}</code></td><td>{_num(d.statistic)}</td>'
                    f"<td>{_num(d.p_value)}</td><td>{_num(d.threshold)}{effect}</td><td>{status}</td>"
                    f"<td>{esc(d.description)}</td></tr>")
    plots = report.plots
    figures = []
    if "prompt_len_win" in plots:
        figures.append(_hist(plots["prompt_len_ref"], plots["prompt_len_win"], "prompt length"))
    if "response_len_win" in plots:
        figures.append(_hist(plots["response_len_ref"], plots["response_len_win"], "response length"))
    figures.append(_pvalues(report))
    if "proj_win" in plots:
        figures.append(_projection(plots["proj_ref"], plots["proj_win"]))
    window = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(_num(v) if isinstance(v, float) else str(v))}</td></tr>"
                     for k, v in report.window.items())
    ref = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in report.reference.items())
    timings = ", ".join(f"{k} {v:.2f}" for k, v in report.timings.items())
    note = f"<p><b>{esc(report.note)}</b></p>" if report.note else ""
    colour = "fired" if report.drifted else "ok"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>llmops drift report</title>
<style>{_CSS}</style></head><body>
<h1>Drift report</h1><p>{when} &middot; family-wise false-alarm rate &alpha; = {report.alpha:g} (Holm over the
detectors that had data)</p>
<div class="verdict {colour}">{esc(verdict)}</div>{note}
<h2>Detectors</h2><table><tr><th>detector</th><th>statistic</th><th>p-value</th><th>threshold</th><th>status</th>
<th>what</th></tr>{''.join(rows)}</table>
<h2>Plots</h2>{''.join(figures)}
<h2>Window</h2><table>{window}</table>
<h2>Reference</h2><table>{ref}</table>
<p class="skip">timings (s): {esc(timings)}</p>
</body></html>
"""
