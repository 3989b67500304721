"""Terminal output: the live line during a run, and the tables of status, log and demo."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .experiment import Status
from .ledger import Experiment
from .summary import ReportedBest, best_text

STATUS_WIDTH = max(len(s.value) for s in Status) + 1   # the longest status, then one space

STATUS_STYLE = {
    Status.KEEP: "bold green", Status.DISCARD: "dim", Status.CRASH: "red", Status.TIMEOUT: "red",
    Status.OVER_BUDGET: "red",
    Status.INVALID: "magenta", Status.AGENT_ERROR: "magenta", Status.PRUNED: "yellow",
    Status.REPEAT: "cyan", Status.PENDING: "cyan", Status.RUNNING: "blue",
    Status.INTERRUPTED: "yellow", Status.REBASED: "green", Status.DUPLICATE: "dim magenta",
}


def fmt_metric(v: float | None) -> str:
    return "—" if v is None else f"{v:.6f}"


def best_value(best: Experiment) -> float | None:
    """The best as the policy estimated it when keeping it (a mean), else its one measurement."""
    est = (best.decision or {}).get("estimate") or {}
    mean = est.get("mean")
    return mean if isinstance(mean, (int, float)) else best.metric


class Reporter:
    """Prints one line per finished experiment and keeps a live status line on a terminal."""

    def __init__(self, console: Console, metric: str, quiet: bool = False):
        self.console = console
        self.metric = metric
        self.quiet = quiet
        self.running: dict[int, tuple[Experiment, float, float]] = {}   # slot -> (exp, start, budget)
        self.best: Experiment | None = None
        self.reported: ReportedBest | None = None
        self.done = 0
        self.live: Live | None = None
        if console.is_terminal and not quiet:
            self.live = Live(Text(""), console=console, refresh_per_second=4, transient=True)
            self.live.start()

    def close(self) -> None:
        if self.live:
            self.live.stop()
            self.live = None

    def message(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False, highlight=False)

    def started(self, e: Experiment, slot: int, budget: float) -> None:
        self.running[slot] = (e, time.time(), budget)

    def finished(self, e: Experiment, best: Experiment | None,
                 reported: ReportedBest | None = None) -> None:
        """One line for a finished experiment; `reported` is summary.reported_best (the best as
        every view shows it)."""
        self.running = {s: v for s, v in self.running.items() if v[0].id != e.id}
        self.best = best
        self.reported = reported
        self.done += 1
        if self.quiet:
            return
        style = STATUS_STYLE.get(e.status, "")
        line = Text()
        line.append(f"#{e.seq:<4}", style="bold")
        line.append(f"{e.status.value:<{STATUS_WIDTH}}", style=style)
        line.append(f"{self.metric} {fmt_metric(e.metric):>10}  ")
        if reported is not None:
            line.append(f"best {best_text(reported)}  ", style="dim")
        elif best is not None and best.metric is not None:
            line.append(f"best {fmt_metric(best_value(best))} (#{best.seq})  ", style="dim")
        if e.wall_time:
            line.append(f"{e.wall_time:5.1f}s  ", style="dim")
        line.append(e.description[:90])
        if e.reason and e.status not in (Status.KEEP, Status.DISCARD, Status.REPEAT):
            line.append(f"  [{e.reason[:80]}]", style=style)
        self.console.print(line)

    def tick(self, loop: Any) -> None:
        if not self.live:
            return
        parts = []
        now = time.time()
        for slot, (e, t0, budget) in sorted(self.running.items()):
            parts.append(f"slot {slot}: #{e.seq} {now - t0:5.1f}s/{budget:g}s")
        best = self.best
        if self.reported is not None:
            head = f"best {self.metric} {best_text(self.reported)}"
        else:
            head = (f"best {self.metric} {fmt_metric(best_value(best))} (#{best.seq})" if best and
                    best.metric is not None else "measuring the baseline")
        self.live.update(Text(f"⏳ {' | '.join(parts) or 'waiting for the agent'} | {head} | "
                              f"{self.done} finished", style="cyan"))


def experiments_table(exps: list[Experiment], metric: str, title: str | None = None,
                      baseline: float | None = None) -> Table:
    t = Table(title=title, show_lines=False, header_style="bold")
    t.add_column("#", justify="right")
    t.add_column("status")
    t.add_column(metric, justify="right")
    t.add_column("Δ baseline", justify="right")
    t.add_column("time", justify="right")
    t.add_column("commit")
    t.add_column("description", overflow="fold")
    for e in exps:
        delta = "" if e.metric is None or baseline is None else f"{e.metric - baseline:+.6f}"
        desc = e.description + (f"  [{e.reason}]" if e.reason and e.status in (
            Status.CRASH, Status.TIMEOUT, Status.OVER_BUDGET, Status.INVALID, Status.AGENT_ERROR,
            Status.PRUNED) else "")
        t.add_row(str(e.seq), Text(e.status.value, style=STATUS_STYLE.get(e.status, "")),
                  fmt_metric(e.metric), delta, f"{e.wall_time:.1f}s" if e.wall_time else "",
                  (e.commit_sha or "")[:7], Text(desc))     # user text: never read as markup
    return t
