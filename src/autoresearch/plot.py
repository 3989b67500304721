"""The progress chart of the original: every experiment a dot, kept ones highlighted, the
running best as a step line, kept experiments labelled with what they tried.

Each outcome is drawn so that it cannot be mistaken for another:

- kept: green dots on the best-so-far step line, labelled with their description;
- discarded (measured, not better): hollow grey circles at their measured value;
- discarded for breaking a constraint (`constraints` in autoresearch.toml): orange crosses at
  their value, since a fast wrong answer must not look like a near-miss;
- repeats (extra measurements for the noise estimate): small grey dots;
- runs with no valid value (crash, timeout, pruned, invalid, agent-error): a strip of markers
  along the bottom edge, outside the value axis, never at the best's height.

Experiment numbers on the x axis are whole numbers; labels stay inside the plot area.
"""

from __future__ import annotations

import math
from pathlib import Path

from .experiment import Status
from .ledger import Experiment
from .summary import kept_order

LABEL_CHARS = 40          # characters of a description shown next to a kept experiment
MAX_LABELS = 25           # more kept experiments than this: only the latest are labelled
# outcomes without a valid value: (statuses, marker, colour, legend label)
FAILED_MARKS = (
    ((Status.CRASH, Status.TIMEOUT, Status.OVER_BUDGET), "x", "#d62728", "crash / timeout"),
    ((Status.PRUNED,), "|", "#8c564b", "pruned (stopped early)"),
    ((Status.INVALID, Status.AGENT_ERROR), "d", "#9467bd", "invalid / agent error"),
)


def broke_constraint(e: Experiment) -> bool:
    """A discard whose reason is a constraint (config.Constraint.check words it so)."""
    return e.status in (Status.DISCARD, Status.CRASH) and (e.reason or "").startswith("constraint ")


def plot_progress(exps: list[Experiment], metric: str, direction: str, path: Path,
                  title: str | None = None, values: dict[int, float] | None = None) -> Path:
    """Draw the chart into a PNG at path; returns the path."""
    import matplotlib.pyplot as plt

    fig = progress_figure(exps, metric, direction, title, values)
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def progress_figure(exps: list[Experiment], metric: str, direction: str,
                    title: str | None = None, values: dict[int, float] | None = None):
    """The chart as a matplotlib Figure (the caller closes it). `values`
    (summary.reported_values) places kept experiments and the running best at the value every
    other view reports (the mean of their runs), not at their first draw."""
    shown = values or {}

    def y(e: Experiment) -> float:
        return shown.get(e.id, e.metric)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    def finite(e: Experiment) -> bool:
        return e.metric is not None and math.isfinite(e.metric)

    kept = [e for e in exps if e.status == Status.KEEP and finite(e)]
    broken = [e for e in exps if broke_constraint(e) and finite(e)]
    repeats = [e for e in exps if e.status == Status.REPEAT and finite(e)]
    drawn = {e.id for e in kept + broken + repeats}
    discarded = [e for e in exps if finite(e) and e.id not in drawn
                 and e.status in (Status.DISCARD, Status.REBASED, Status.PENDING)]

    fig, ax = plt.subplots(figsize=(12, 6), dpi=110)
    ax.scatter([e.seq for e in repeats], [e.metric for e in repeats], s=10, color="#c8c8c8",
               label="repeat (noise estimate)", zorder=2)
    ax.scatter([e.seq for e in discarded], [e.metric for e in discarded], s=26, facecolors="none",
               edgecolors="#7f7f7f", linewidth=0.9, label="discarded", zorder=3)
    if broken:
        ax.scatter([e.seq for e in broken], [e.metric for e in broken], s=40, marker="X",
                   color="#ff7f0e", edgecolor="#7a3d00", linewidth=0.5,
                   label="constraint violated (discarded)", zorder=3)
    ax.scatter([e.seq for e in kept], [y(e) for e in kept], s=52, color="#2ca02c",
               edgecolor="black", linewidth=0.6, label="kept", zorder=5)

    # the running best: only kept experiments move it
    ordered = sorted(kept, key=kept_order)
    if ordered:
        last = max(e.seq for e in exps)
        xs = [e.seq for e in ordered] + [last]
        ys = [y(e) for e in ordered] + [y(ordered[-1])]
        ax.step(xs, ys, where="post", color="#2ca02c", linewidth=1.8, label="best so far", zorder=4)

    # failures have no value: a strip along the bottom edge (x in data, y in axes fraction)
    strip = ax.get_xaxis_transform()
    any_failed = False
    for statuses, marker, color, label in FAILED_MARKS:
        hit = [e for e in exps if e.status in statuses and not broke_constraint(e)]
        if hit:
            any_failed = True
            ax.scatter([e.seq for e in hit], [0.025] * len(hit), marker=marker, color=color, s=36,
                       transform=strip, clip_on=False, label=label, zorder=6)
    if any_failed:      # the strip is not a value: a rule above it and its name
        ax.plot([0, 1], [0.055, 0.055], transform=ax.transAxes, color="#bbbbbb", linewidth=0.8,
                linestyle="--", zorder=1)
        ax.text(0.003, 0.062, "no value", transform=ax.transAxes, fontsize=7, color="#888888",
                va="bottom")

    ax.margins(x=0.02, y=0.12)
    ymin, ymax = ax.get_ylim()
    span = (ymax - ymin) or 1.0
    ax.set_ylim(ymin - 0.06 * span, ymax)          # room for the strip below the lowest dot
    for i, e in enumerate(ordered[-MAX_LABELS:]):
        # alternate above and below the line so neighbours do not overlap; clipped to the axes
        above = i % 2 == 0
        ax.annotate(_short(e.description), (e.seq, y(e)), textcoords="offset points",
                    xytext=(5, 8 if above else -12), fontsize=7, color="#1a5e1a",
                    annotation_clip=True, clip_on=True,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("experiment #")
    ax.set_ylabel(metric + (" (lower is better)" if direction == "minimize" else " (higher is better)"))
    ax.set_title(title or "autoresearch", loc="left", pad=10)
    counts = (f"{len(exps)} experiments, {sum(e.status == Status.KEEP for e in exps)} kept, "
              f"{len(discarded) + len(broken)} discarded, "
              f"{sum(e.status in (Status.CRASH, Status.TIMEOUT) for e in exps)} crashed")
    ax.set_title(counts, loc="right", fontsize=8, color="#555555", pad=10)
    ax.grid(alpha=0.3)
    # below the axes, so that it never hides a point
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=7, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…"
