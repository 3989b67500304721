"""The progress chart of the original: every experiment a dot, kept ones highlighted, the
running best as a step line, kept experiments labelled with what they tried."""

from __future__ import annotations

import math
from pathlib import Path

from .experiment import Status
from .ledger import Experiment
from .summary import kept_order


def plot_progress(exps: list[Experiment], metric: str, direction: str, path: Path,
                  title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [e for e in exps if e.metric is not None and math.isfinite(e.metric)]
    fig, ax = plt.subplots(figsize=(12, 6), dpi=110)
    other = [e for e in measured if e.status != Status.KEEP]
    kept = [e for e in measured if e.status == Status.KEEP]
    ax.scatter([e.seq for e in other], [e.metric for e in other], s=18, color="#b0b0b0",
               label="discarded / repeat", zorder=2)
    ax.scatter([e.seq for e in kept], [e.metric for e in kept], s=46, color="#2ca02c",
               edgecolor="black", linewidth=0.6, label="kept", zorder=4)
    failed = [e for e in exps if e.status in (Status.CRASH, Status.TIMEOUT, Status.OVER_BUDGET,
                                              Status.PRUNED)]
    if failed and measured:
        top = max(e.metric for e in measured) if direction == "minimize" else min(e.metric for e in measured)
        ax.scatter([e.seq for e in failed], [top] * len(failed), marker="x", color="#d62728", s=24,
                   label="crash / timeout / pruned", zorder=3)
    # the running best: only kept experiments move it
    xs, ys = [], []
    best = None
    for e in sorted(kept, key=kept_order):
        best = e.metric
        xs.append(e.seq)
        ys.append(best)
    if xs:
        last = max(e.seq for e in exps)
        ax.step(xs + [last], ys + [ys[-1]], where="post", color="#2ca02c", linewidth=1.8,
                label="best so far", zorder=3)
        for e in kept:
            ax.annotate(e.description[:48], (e.seq, e.metric), textcoords="offset points",
                        xytext=(4, 6), fontsize=7, rotation=18, color="#1a5e1a")
    ax.set_xlabel("experiment")
    ax.set_ylabel(metric + (" (lower is better)" if direction == "minimize" else " (higher is better)"))
    ax.set_title(title or f"autoresearch: {len(exps)} experiments, {len(kept)} kept")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right" if direction == "minimize" else "lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
