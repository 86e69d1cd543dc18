"""One PNG per rollout: the canary weight over time, and under it each analysed metric with its threshold.

Input is the controller's analysis events (one per interval, `serving.rollout.controller` progress), each
stamped with the seconds since the step started; step boundaries are drawn on every panel so a breach reads as
"this metric crossed this line during this step".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def metric_series(events: list[dict[str, Any]]) -> dict[str, list[tuple[float, float | None, float | None, str]]]:
    """metric name -> [(t, value, threshold, verdict)] over the analysis events, in order."""
    out: dict[str, list[tuple[float, float | None, float | None, str]]] = {}
    for e in events:
        for m in (e.get("analysis") or {}).get("metrics") or []:
            out.setdefault(m["name"], []).append((e["t"], m.get("value"), m.get("threshold"), m.get("verdict", "")))
    return out


def rollout_chart(events: list[dict[str, Any]], path: Path, *, title: str) -> Path | None:
    """Write the chart; None when there is nothing to draw (no analysis happened)."""
    events = [e for e in events if e.get("kind") == "analysis"]
    if not events:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = metric_series(events)
    names = list(series)
    fig, axes = plt.subplots(len(names) + 1, 1, figsize=(9, 1.9 * (len(names) + 1)), sharex=True, squeeze=False)
    axes = axes[:, 0]
    t = [e["t"] for e in events]
    starts = [e["t"] for i, e in enumerate(events) if i == 0 or e["step"] != events[i - 1]["step"]]
    axes[0].step(t, [e["weight"] for e in events], where="post", color="tab:blue")
    axes[0].set_ylabel("canary %")
    axes[0].set_ylim(-5, 105)
    for ax, name in zip(axes[1:], names, strict=True):
        pts = series[name]
        xs = [p[0] for p in pts if p[1] is not None]
        ys = [p[1] for p in pts if p[1] is not None]
        ax.plot(xs, ys, marker="o", ms=3, color="tab:gray")
        bad = [(p[0], p[1]) for p in pts if p[3] == "fail" and p[1] is not None]
        if bad:
            ax.scatter(*zip(*bad, strict=True), color="tab:red", marker="x", s=40, zorder=3, label="breach")
        thresholds = [p[2] for p in pts if p[2] is not None]
        if thresholds:
            ax.axhline(thresholds[-1], color="tab:red", ls="--", lw=1, label=f"threshold {thresholds[-1]:g}")
            ax.legend(loc="upper left", fontsize=7)
        if not ys:
            ax.text(0.5, 0.5, "no value yet (too few requests / not scored)", transform=ax.transAxes,
                    ha="center", fontsize=8, color="tab:gray")
        ax.set_ylabel(name, fontsize=8)
    for ax in axes:
        for s in starts:
            ax.axvline(s, color="k", lw=0.5, alpha=0.3)
    axes[-1].set_xlabel("seconds since the step started (servers' start-up included)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
