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

With `best_runs` (`python bench/_speed_bound.py --best-runs 0 4 8 16`) the best is known only
from that many runs, still for free: what an estimated best costs a policy that must judge
against it (see gain_rate_bound). It prints greedy's simulated gain per run beside the bounds.
"""

from __future__ import annotations

import numpy as np

STEP = 0.02           # grid step of S
NODES = 40            # Gauss-Hermite nodes for the next run's value
SHARED_STEP = 0.04    # the same with the best's error (best_runs): 9 x more points, so coarser
SHARED_NODES = 24     #   (on the known-best case it gives 0.264 sd/run against 0.263, mixed)


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


def _value(theta: np.ndarray, obs: np.ndarray, probs: np.ndarray, r: float, lam: float,
           max_runs: int, step: float = STEP, nodes: int = NODES) -> float:
    """V(r, lam): the optimal expected reward per proposal. A proposal is drawn from `probs`
    over points (theta, obs): its runs stray by N(0, 1) around `obs` (what the policy sees),
    and keeping it gains `theta` (obs = theta when the best is known exactly)."""
    gh_x, gh_w = np.polynomial.hermite_e.hermegauss(nodes)
    gh_w = gh_w / gh_w.sum()
    zero = np.isclose(theta, 0.0)
    hi = max_runs * (obs.max() + 6)
    lo = max_runs * (obs.min() - 6)
    grid = np.arange(lo, hi + step, step)
    log_p = np.log(probs)

    def posterior(n: int, s: np.ndarray) -> np.ndarray:
        # log-likelihood of the sum s after n runs, per point: -(s - n obs)^2 / (2n)
        ll = -((s[:, None] - n * obs[None, :]) ** 2) / (2 * n) + log_p[None, :]
        ll -= ll.max(axis=1, keepdims=True)
        w = np.exp(ll)
        return w / w.sum(axis=1, keepdims=True)

    def stop_value(n: int, s: np.ndarray) -> np.ndarray:
        post = posterior(n, s)
        keep = post @ theta - lam * post[:, zero].sum(axis=1)
        return np.maximum(keep, 0.0)

    v = stop_value(max_runs, grid)
    for n in range(max_runs - 1, 0, -1):
        post = posterior(n, grid)
        cont = np.zeros_like(grid)
        for x, w in zip(gh_x, gh_w, strict=True):
            # the next run's value given the point is obs + x; mix over the posterior
            nxt = np.interp((grid[:, None] + obs[None, :] + x).ravel(), grid, v)
            cont += w * (post * nxt.reshape(grid.size, obs.size)).sum(axis=1)
        v = np.maximum(stop_value(n, grid), cont - r)
    # the first run is mandatory: E over S_1 = obs + x of V(1, S_1), minus its cost
    first = sum(w * float(probs @ np.interp(obs + x, grid, v)) for x, w in zip(gh_x, gh_w, strict=True))
    return first - r


def gain_rate_bound(stream: str, alpha: float = 0.01, max_runs: int = 6,
                    lams: tuple[float, ...] = (2, 4, 8, 16, 32, 64),
                    seed_share: float = 0.0, best_runs: int = 0) -> float:
    """Upper bound on the true gain per run (sd) of any policy keeping at most alpha of the
    no-effect proposals (on a stream without no-effect proposals, of those 0.5 sd worse).

    `seed_share`: the share of the noise variance that follows the seed. With the best known
    exactly at every seed (this bound's favour), a candidate's run compared with the best's run
    at its seed strays by the rest alone, sd sqrt(1 - seed_share): the bound is the independent
    one on effects in units of that sd, its gain rate converted back to noise sds.

    `best_runs` > 0: the best is known only from that many runs, for free. Its error e ~ N(0,
    1 / best_runs) is the same for all of a candidate's runs (the policy sees theta - e, with e
    on 9 quadrature points, and gains theta); the grid is then coarser (`SHARED_STEP`,
    `SHARED_NODES`). Still generous to the policy: the best's runs cost nothing and carry no
    winner's curse; e is drawn afresh for each candidate, where a real best's error is shared by
    every candidate judged against it (what the policy could learn of it from them is left out,
    so this is a model of the cost of an estimated best, not a strict bound)."""
    effects, probs = prior(stream)
    unit = float(np.sqrt(1.0 - seed_share))
    effects = effects / unit
    p0 = float(probs[np.isclose(effects, 0.0)].sum())
    theta, obs, step, nodes = effects, effects, STEP, NODES
    if best_runs:
        ex, ew = np.polynomial.hermite_e.hermegauss(9)
        err = ex / np.sqrt(best_runs) / unit
        theta = np.repeat(effects, err.size)
        obs = (effects[:, None] - err[None, :]).ravel()
        probs = (probs[:, None] * (ew / ew.sum())[None, :]).ravel()
        step, nodes = SHARED_STEP, SHARED_NODES
    best = np.inf
    for lam in lams:
        lo, hi = 0.0, 2.0
        for _ in range(15 if not best_runs else 12):
            mid = (lo + hi) / 2
            if _value(theta, obs, probs, mid, lam, max_runs, step, nodes) + lam * alpha * p0 <= 0:
                hi = mid
            else:
                lo = mid
        best = min(best, hi)
    return best * unit


def main(argv: list[str] | None = None) -> None:
    import argparse
    import sys
    from pathlib import Path
    ap = argparse.ArgumentParser(description="The DP bound on a 1%-policy's gain per run, with "
                                 "the best known exactly or from a few runs of it.")
    ap.add_argument("--stream", default="mixed",
                    choices=("mixed", "sparse", "slightly-worse", "simpler-worse"))
    ap.add_argument("--best-runs", type=int, nargs="*", default=[0, 4, 8, 16],
                    help="runs the best is known from (0: exactly)")
    ap.add_argument("--max-runs", type=int, default=4)
    ap.add_argument("--reps", type=int, default=100, help="greedy's simulated runs")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from policies import MILESTONES, simulate
    reach = simulate("greedy", a.stream, a.reps, 0, 1200 if a.stream == "sparse" else 600)
    greedy = MILESTONES[-1] / reach["milestones"][-1]
    print(f"greedy on {a.stream}: {greedy:.3f} sd of true gain per run (to {MILESTONES[-1]} sd, "
          f"median of {a.reps} simulated runs)")
    print("| the best known | true gain per run, any 1%-policy | its runs to a milestone vs greedy's |")
    print("|---|---|---|")
    for n in a.best_runs:
        b = gain_rate_bound(a.stream, max_runs=a.max_runs, best_runs=n)
        known = "exactly" if n == 0 else f"from {n} free runs"
        print(f"| {known} | <= {b:.3f} sd/run | >= {greedy / b:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
