"""Early stopping of runs (--prune): stop a run whose learning curve is clearly worse than the best's.

A run prints `progress: 0.40 train_loss: 3.21` lines. The best's runs left curves of the same
metric; a new run is compared with their median at the same progress by Optuna's
PercentilePruner (percentile 50, its warm-up and minimum-history rules), after its value has
been moved toward "better" by a slack, so that only a clear loser is stopped:

    slack(p) = margin_sigmas * noise(p) + catch_up * (best(p) - best(1))

noise(p) is the sd of one curve point: the largest of the spread of the best's curves at p, the
final metric's run-to-run noise, and the point-to-point roughness of the best's curves. The
second term lets a slow starter through: the run is stopped only if, even learning `catch_up`
times faster than the best from here on, it would still end worse. A non-finite value stops the
run at once (a diverged run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import optuna

from .config import PruneSettings

GRID = 100  # progress steps the curves are compared on (Optuna wants integer steps)


def _grid_curve(points: list[tuple[float, float]]) -> dict[int, float]:
    """A curve sampled on the progress grid, inside the range it covers (no extrapolation)."""
    pts = sorted((float(p), float(v)) for p, v in points if math.isfinite(v) and math.isfinite(p))
    if not pts:
        return {}
    p = np.array([q for q, _ in pts])
    v = np.array([w for _, w in pts])
    lo, hi = math.ceil(p[0] * GRID - 1e-9), math.floor(p[-1] * GRID + 1e-9)
    steps = np.arange(max(lo, 0), min(hi, GRID) + 1)
    return dict(zip(steps.tolist(), np.interp(steps / GRID, p, v).tolist(), strict=True))


def _roughness(points: list[tuple[float, float]]) -> float:
    """sd of one point about the local trend, from second differences (0 when too short)."""
    v = np.array([w for _, w in sorted(points) if math.isfinite(w)])
    if v.size < 4:
        return 0.0
    return float(np.std(np.diff(v, 2)) / math.sqrt(6.0))


@dataclass
class Watch:
    """Watches one run: feed it the run's progress lines in order."""

    trial: optuna.trial.Trial
    best: dict[int, float]          # median of the best's curves on the grid
    final: float                    # the best's value at the end of its curves
    spread: dict[int, float]        # sd of one curve point at each step
    settings: PruneSettings
    sign: float                     # +1 minimize, -1 maximize
    last_step: int = -1

    def report(self, progress: float, value: float) -> str | None:
        """A reason to stop the run now, or None to let it go on."""
        if not math.isfinite(value):
            return f"progress {progress:.2f}: value is {value} (diverged)"
        step = min(max(int(round(progress * GRID)), 0), GRID)
        if step <= self.last_step or step not in self.best:
            return None
        self.last_step = step
        still_to_learn = max(self.sign * (self.best[step] - self.final), 0.0)
        slack = self.settings.margin_sigmas * self.spread[step] + self.settings.catch_up * still_to_learn
        self.trial.report(value - self.sign * slack, step)
        if not self.trial.should_prune():
            return None
        return (f"progress {progress:.2f}: {value:.6g} is worse than the best's {self.best[step]:.6g} "
                f"at the same progress by more than {slack:.3g} "
                f"({self.settings.margin_sigmas:g} sd of noise + catch-up {self.settings.catch_up:g})")


class _Never:
    """A watch that never stops a run (no usable reference yet)."""

    def report(self, progress: float, value: float) -> str | None:
        if not math.isfinite(value):
            return f"progress {progress:.2f}: value is {value} (diverged)"
        return None


class Pruner:
    def __init__(self, settings: PruneSettings, direction: str) -> None:
        self.settings = settings
        self.direction = direction

    def watch(self, reference: list[list[tuple[float, float]]],
              noise: float | None) -> Watch | _Never:
        """A watch for a new run, against `reference`: the curves of the best's runs.

        `noise` is the run-to-run sd of the final metric, when known (the policy's pooled sigma).
        """
        s = self.settings
        curves = [c for c in (_grid_curve(r) for r in reference) if c]
        if len(curves) < s.min_history:
            return _Never()
        steps = sorted(set().union(*curves))
        best, spread = {}, {}
        rough = float(np.median([_roughness(r) for r in reference]))
        for k in steps:
            vals = [c[k] for c in curves if k in c]
            best[k] = float(np.median(vals))
            between = float(np.std(vals, ddof=1)) if len(vals) >= 2 else 0.0
            spread[k] = max(between, noise or 0.0, rough)
        final = best[steps[-1]]
        quiet = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)   # no "new study created" line
        try:
            study = optuna.create_study(
                direction=self.direction,
                pruner=optuna.pruners.PercentilePruner(
                    50.0, n_startup_trials=s.min_history, n_warmup_steps=math.ceil(s.warmup * GRID),
                    interval_steps=1, n_min_trials=1))
        finally:
            optuna.logging.set_verbosity(quiet)
        for c in curves:
            study.add_trial(optuna.trial.create_trial(
                value=c[max(c)], intermediate_values=c, state=optuna.trial.TrialState.COMPLETE))
        sign = 1.0 if self.direction == "minimize" else -1.0
        return Watch(study.ask(), best, final, spread, s, sign)


def make_pruner(settings: PruneSettings, direction: str) -> Pruner:
    return Pruner(settings, direction)
