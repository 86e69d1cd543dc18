"""The drift report as one self-contained HTML page: verdict, detector table, plots as embedded PNGs."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from monitoring.drift.report import DetectorResult, DriftReport

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}.fired{background:#fde2e2}.watch{background:#fff3d6}.ok{background:#e6f6e6}.skip{color:#888}
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


def _effects(report: DriftReport) -> str:
    """Each detector's effect as a multiple of its drift threshold: which moved, how much."""
    import matplotlib.pyplot as plt

    rows = [d for d in report.detectors if d.effect is not None and d.effect_threshold and not d.skipped]
    if not rows:
        return ""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    y = np.arange(len(rows))
    colour = {"none": "#5cb85c", "watch": "#f0ad4e", "drift": "#d9534f"}
    ax.barh(y, [max(d.effect / d.effect_threshold, 0.0) for d in rows], color=[colour[d.severity.value] for d in rows])
    ax.axvline(1.0, color="black", lw=2)
    ax.set_yticks(y, [d.name for d in rows])
    ax.invert_yaxis()
    ax.set_xlabel("effect / its drift threshold (black line = 1); green none, orange watch, red drift")
    return _png(fig)


def separation_png(result: dict, marks: dict[str, float] | None = None) -> str:
    """Calibration: each prompt detector's effect distribution per kind (no-shift vs shifts), the threshold
    dashed, and (`marks`) the current window's effect as a red line."""
    import matplotlib.pyplot as plt

    dets = [d for d in ("prompt_embedding_mmd", "prompt_novel_share")
            if any(d in k["effects"] for k in result["kinds"].values())]
    if not dets:
        return ""
    thresholds = {"prompt_embedding_mmd": result["effect_thresholds"]["prompt_mmd2"],
                  "prompt_novel_share": result["effect_thresholds"]["prompt_novel_share"]}
    fig, axes = plt.subplots(1, len(dets), figsize=(5.5 * len(dets), 3.4), squeeze=False)
    kinds = list(result["kinds"])
    for ax, det in zip(axes[0], dets, strict=True):
        data = [result["kinds"][k]["effects"].get(det, []) for k in kinds]
        ax.boxplot(data, vert=False, showfliers=True)
        ax.set_yticks(range(1, len(kinds) + 1), [f"{k} (n={len(v)})" for k, v in zip(kinds, data, strict=True)])
        ax.axvline(thresholds[det], color="black", ls="--", lw=1.5, label="drift threshold")
        if marks and det in marks:
            ax.axvline(marks[det], color="#d9534f", lw=2, label="this window")
        ax.set_title(det)
        ax.legend(fontsize=8)
    fig.suptitle(f"effect sizes per window ({result['window_size']} requests each)", y=1.03)
    return _png(fig)


def _clusters(report: DriftReport) -> str:
    if not report.clusters:
        return "<p>No cluster of new prompts (every prompt has a near reference prompt, or too few are new).</p>"
    items = []
    for i, c in enumerate(report.clusters, 1):
        examples = "".join(f"<li><code>{html.escape(e[:300])}</code></li>" for e in c["examples"])
        items.append(f"<h3>cluster {i}: {c['share']:.0%} of the window ({c['prompts']} prompts), nearest reference "
                     f"similarity {c['nearest_reference_similarity']:.2f}</h3><ul>{examples}</ul>")
    return "".join(items)


def _what_changed(report: DriftReport, calibration: dict | None) -> str:
    moved = "".join(
        f"<tr><td><code>{html.escape(m['detector'])}</code></td><td>{html.escape(m['severity'])}</td>"
        f"<td>{_num(m['effect'])} {html.escape(m['effect_name'])}</td><td>{_num(m['effect_threshold'])}</td>"
        f"<td>{_num(m['x_threshold'], '{:.2f}x')}</td></tr>" for m in report.moved)
    table = ("<table><tr><th>detector</th><th>severity</th><th>effect</th><th>drift threshold</th>"
             f"<th>effect / threshold</th></tr>{moved}</table>") if moved else "<p>No detector moved.</p>"
    marks = {d.name: d.effect for d in report.detectors if d.effect is not None}
    calib = separation_png(calibration, marks) if calibration else ""
    n = report.window.get("novel_prompts")
    return (f"<h2>What changed</h2><p>{n if n is not None else '-'} of {report.window.get('distinct_prompts', '-')} "
            "distinct prompts have no near prompt in the training reference.</p>"
            f"<h3>Detectors that moved</h3>{table}<h3>New prompt clusters</h3>{_clusters(report)}"
            + (f"<h3>This window against the calibration</h3>{calib}" if calib else ""))


def _bound(d: DetectorResult) -> str:
    """Rates: the lower confidence bound of the rise, which is what must reach the drift threshold."""
    return "" if d.effect_lower is None else f" (lower bound {_num(d.effect_lower)})"


def render_html(report: DriftReport, calibration: dict | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    esc = html.escape
    when = dt.datetime.fromtimestamp(report.created, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    sev = report.severity.value
    verdict = {"drift": "DRIFT (significant and large): " + ", ".join(report.fired),
               "watch": "WATCH (statistically different, below the drift thresholds): "
                        + ", ".join(m["detector"] for m in report.moved),
               "none": "no drift"}[sev]
    rows = []
    for d in report.detectors:
        cls = "skip" if d.skipped else {"drift": "fired", "watch": "watch", "none": "ok"}[d.severity.value]
        status = f"skipped: {esc(d.skipped)}" if d.skipped else d.severity.value.upper()
        floor = "" if d.min_effect is None else f" (counts from {d.min_effect:g})"
        cap = "" if d.cap.value == "drift" else " (watch-only)"
        rows.append(f'<tr class="{cls}"><td><code>{esc(d.name)}</code></td><td>{_num(d.statistic)}</td>'
                    f"<td>{_num(d.p_value)}</td><td>{_num(d.threshold)}</td><td>{_num(d.effect)} "
                    f"{esc(d.effect_name)}{_bound(d)}</td><td>{_num(d.effect_threshold)}{floor}{cap}</td><td>{status}</td>"
                    f"<td>{esc(d.description)}</td></tr>")
    plots = report.plots
    figures = [_effects(report)]
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
    colour = {"drift": "fired", "watch": "watch", "none": "ok"}[sev]
    changed = _what_changed(report, calibration) if sev != "none" else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>llmops drift report</title>
<style>{_CSS}</style></head><body>
<h1>Drift report</h1><p>{when} &middot; family-wise false-alarm rate &alpha; = {report.alpha:g} (Holm over the
detectors that had data); a significant detector is <b>drift</b> only when its effect reaches its threshold,
<b>watch</b> below it; only <b>drift</b> may start retraining</p>
<div class="verdict {colour}">severity: {esc(verdict)}</div>{note}
{changed}
<h2>Detectors</h2><table><tr><th>detector</th><th>statistic</th><th>p-value</th><th>Holm level</th><th>effect</th>
<th>drift threshold</th><th>severity</th><th>what</th></tr>{''.join(rows)}</table>
<h2>Plots</h2>{''.join(f for f in figures if f)}
<h2>Window</h2><table>{window}</table>
<h2>Reference</h2><table>{ref}</table>
<p class="skip">timings (s): {esc(timings)}</p>
</body></html>
"""


def write_calibration(result: dict, out_dir) -> dict:
    """calibration.json (effects included) and calibration.html (the separation plot and the rates)."""
    import json
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(result, indent=1))
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{'shift' if v['shift'] else 'no shift'}</td><td>{v['windows']}</td>"
        f"<td>{v['severity']['none']}</td><td>{v['severity']['watch']}</td><td>{v['severity']['drift']}</td>"
        f"<td>{v['drift_rate']:.1%} [{v['drift_wilson95'][0]:.1%}, {v['drift_wilson95'][1]:.1%}]</td></tr>"
        for k, v in result["kinds"].items())
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>drift calibration</title><style>{_CSS}</style>"
            "</head><body><h1>Drift severity calibration</h1><table><tr><th>kind</th><th></th><th>windows</th>"
            f"<th>none</th><th>watch</th><th>drift</th><th>drift rate [95% Wilson]</th></tr>{rows}</table>"
            f"{separation_png(result)}</body></html>\n")
    (out / "calibration.html").write_text(page, encoding="utf-8")
    return {"json": str(out / "calibration.json"), "html": str(out / "calibration.html")}
