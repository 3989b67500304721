"""Early stopping: a clearly worse curve is stopped, a run that ends better never is."""

from __future__ import annotations

import numpy as np

from autoresearch.config import PruneSettings
from autoresearch.pruning import make_pruner

P = np.linspace(0.05, 1.0, 20)
SIGMA = 0.01


def curve(final: float, height: float = 0.2, seed: int = 0) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    v = final + height * (1 - P) ** 2 + 0.5 * SIGMA * rng.standard_normal(P.size)
    return list(zip(P.tolist(), v.tolist(), strict=True))


REFERENCE = [curve(1.0, seed=s) for s in (1, 2, 3)]


def first_stop(watch, run):
    for p, v in run:
        reason = watch.report(p, v)
        if reason:
            return p, reason
    return None, None


def test_a_clearly_worse_curve_is_stopped_early():
    watch = make_pruner(PruneSettings(), "minimize").watch(REFERENCE, SIGMA)
    p, reason = first_stop(watch, curve(1.3, seed=4))
    assert p is not None and p <= 0.5
    assert "worse than the best's" in reason


def test_a_run_that_ends_better_is_never_stopped_even_if_it_starts_slower():
    for seed in range(20):
        watch = make_pruner(PruneSettings(), "minimize").watch(REFERENCE, SIGMA)
        slow = curve(1.0 - 2 * SIGMA, height=0.29, seed=100 + seed)   # worse early, better late
        assert first_stop(watch, slow) == (None, None)


def test_no_stop_before_warmup():
    watch = make_pruner(PruneSettings(warmup=0.6), "minimize").watch(REFERENCE, SIGMA)
    p, _ = first_stop(watch, curve(2.0, seed=5))
    assert p is not None and p >= 0.6


def test_maximize_direction():
    flip = [[(p, -v) for p, v in c] for c in REFERENCE]
    watch = make_pruner(PruneSettings(), "maximize").watch(flip, SIGMA)
    assert first_stop(watch, [(p, -v) for p, v in curve(1.3, seed=6)])[0] is not None
    watch = make_pruner(PruneSettings(), "maximize").watch(flip, SIGMA)
    assert first_stop(watch, [(p, -v) for p, v in curve(0.98, seed=7)]) == (None, None)


def test_too_little_history_never_stops_but_a_diverged_run_always_does():
    watch = make_pruner(PruneSettings(min_history=4), "minimize").watch(REFERENCE, SIGMA)
    assert first_stop(watch, curve(2.0, seed=8)) == (None, None)
    assert "diverged" in watch.report(0.5, float("nan"))
    watch = make_pruner(PruneSettings(), "minimize").watch(REFERENCE, SIGMA)
    assert "diverged" in watch.report(0.1, float("inf"))


def test_margin_protects_a_run_that_is_only_a_little_worse():
    watch = make_pruner(PruneSettings(), "minimize").watch(REFERENCE, SIGMA)
    assert first_stop(watch, curve(1.0 + SIGMA, seed=9)) == (None, None)
    watch = make_pruner(PruneSettings(margin_sigmas=0.0, catch_up=0.0), "minimize").watch(
        REFERENCE, SIGMA)
    assert first_stop(watch, curve(1.0 + 3 * SIGMA, seed=9))[0] is not None
