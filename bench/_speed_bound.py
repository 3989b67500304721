"""How fast can any policy with 1% false keeps gain true value? An upper bound, by dynamic
programming over the optimal Bayesian sequential procedure.

The setting favours the policy as far as it can: the noise sd is known (1, effects are in sd),
the best is known exactly (no runs of it, no drift), runs of a candidate are independent
N(effect, 1), and the policy knows the stream's distribution of effects (its prior). A policy
sees a candidate's runs one at a time; after each it keeps, discards or runs it again (a run
costs 1). Every proposal is run at least once. Its false-keep rate is P(keep | effect 0).

For a gain rate r and a penalty lam, the DP gives V = max over policies of
E[true gain - r * runs - lam * 1{keep, effect 0}] per proposal. For a policy whose false-keep
rate is at most alpha, E[gain] - r E[runs] <= V + lam * alpha * p0; so whenever
V(r, lam) + lam * alpha * p0 <= 0, no such policy gains more than r per run. The bound is the
smallest such r over lam (found by bisection on r for each lam on a grid).

The state after n runs is the sum S of the observed values (sufficient for the effect); S is
discretized on a fine grid and the next run's value integrated by Gaussian quadrature, with a
cap of `max_runs` runs per candidate (a larger cap can only raise the bound; the caller can
check that it has converged).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

STEP = 0.02           # grid step of S
NODES = 40            # Gauss-Hermite nodes for the next run's value


def prior(stream: str) -> tuple[np.ndarray, np.ndarray]:
    """(effects, probabilities) of a benchmark stream (bench/policies.py), the uniform parts
    discretized at 25 points."""
    worse_u = np.linspace(0.5, 3, 25)
    better = ([1.0, 2.0, 3.0], [1 / 3] * 3)
    if stream == "mixed":
        parts = [(-worse_u, 0.5 / 25), ([0.0], 0.3), (better[0], 0.2 / 3)]
    elif stream == "sparse":
        parts = [(-worse_u, 0.6 / 25), ([0.0], 0.35), (better[0], 0.05 / 3)]
    elif stream == "slightly-worse":
        parts = [(-np.linspace(0.1, 1, 25), 0.6 / 25), ([0.0], 0.2), (better[0], 0.2 / 3)]
    elif stream == "simpler-worse":
        parts = [([-0.5], 0.8), (better[0], 0.2 / 3)]
    else:
        raise ValueError(stream)
    effects = np.concatenate([np.asarray(e, float) for e, _ in parts])
    probs = np.concatenate([np.full(len(np.atleast_1d(e)), p) for e, p in parts])
    return effects, probs / probs.sum()


def _value(effects: np.ndarray, probs: np.ndarray, r: float, lam: float, max_runs: int) -> float:
    """V(r, lam): the optimal expected reward per proposal."""
    gh_x, gh_w = np.polynomial.hermite_e.hermegauss(NODES)
    gh_w = gh_w / gh_w.sum()
    zero = np.isclose(effects, 0.0)
    hi = max_runs * (effects.max() + 6)
    lo = max_runs * (effects.min() - 6)
    grid = np.arange(lo, hi + STEP, STEP)

    def posterior(n: int, s: np.ndarray) -> np.ndarray:
        # log-likelihood of the sum s after n runs, per effect: -(s - n e)^2 / (2n)
        ll = -((s[:, None] - n * effects[None, :]) ** 2) / (2 * n) + np.log(probs)[None, :]
        ll -= ll.max(axis=1, keepdims=True)
        w = np.exp(ll)
        return w / w.sum(axis=1, keepdims=True)

    def stop_value(n: int, s: np.ndarray) -> np.ndarray:
        post = posterior(n, s)
        keep = post @ effects - lam * post[:, zero].sum(axis=1)
        return np.maximum(keep, 0.0)

    v = stop_value(max_runs, grid)
    for n in range(max_runs - 1, 0, -1):
        post = posterior(n, grid)
        cont = np.zeros_like(grid)
        for x, w in zip(gh_x, gh_w, strict=True):
            # the next run's value given the effect e is e + x; mix over the posterior
            nxt = np.stack([np.interp(grid + e + x, grid, v) for e in effects], axis=1)
            cont += w * (post * nxt).sum(axis=1)
        v = np.maximum(stop_value(n, grid), cont - r)
    # the first run is mandatory: E over S_1 = e + x of V(1, S_1), minus its cost
    first = sum(w * float(probs @ np.interp(effects + x, grid, v)) for x, w in zip(gh_x, gh_w, strict=True))
    return first - r


def gain_rate_bound(stream: str, alpha: float = 0.01, max_runs: int = 6,
                    lams: tuple[float, ...] = (2, 4, 8, 16, 32, 64),
                    seed_share: float = 0.0) -> float:
    """Upper bound on the true gain per run (sd) of any policy keeping at most alpha of the
    no-effect proposals (on a stream without no-effect proposals, of those 0.5 sd worse).

    `seed_share`: the share of the noise variance that follows the seed. With the best known
    exactly at every seed (this bound's favour), a candidate's run compared with the best's run
    at its seed strays by the rest alone, sd sqrt(1 - seed_share): the bound is the independent
    one on effects in units of that sd, its gain rate converted back to noise sds."""
    effects, probs = prior(stream)
    unit = float(np.sqrt(1.0 - seed_share))
    effects = effects / unit
    if not np.isclose(effects, 0.0).any():   # the constraint then binds on the worse ones
        effects = effects.copy()
    p0 = float(probs[np.isclose(effects, 0.0)].sum())
    best = np.inf
    for lam in lams:
        lo, hi = 0.0, 2.0
        for _ in range(15):
            mid = (lo + hi) / 2
            if _value(effects, probs, mid, lam, max_runs) + lam * alpha * p0 <= 0:
                hi = mid
            else:
                lo = mid
        best = min(best, hi)
    return best * unit


if __name__ == "__main__":
    for s in ("mixed", "sparse", "slightly-worse"):
        print(s, [round(gain_rate_bound(s, max_runs=m), 4) for m in (2, 4, 6)])
    print("one-run Neyman-Pearson, mixed:",
          sum(p * e * stats.norm.sf(stats.norm.isf(0.01) - e)
              for e, p in zip(*prior("mixed"), strict=True) if e > 0))
