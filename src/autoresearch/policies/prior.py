"""A prior over the effects of a run's proposals, learned from the run's own history.

Most proposals do not help. How many do, and by how much, differs from one run to the next; the
run itself says so: every candidate's first run, compared with the best of its time, is one noisy
draw of its effect. Effects are in noise sds (positive = better) on a fixed grid: a point mass
at 0 (no effect) and effects of at least `SMALLEST` sd either way, so that first runs near zero
are explained by "no effect" rather than by many small ones (a prior that spreads mass over tiny
positive effects would make a run of no-effect proposals look promising).

- `fit_prior`: the mixture on the grid that best explains first-run differences
  z_i ~ N(theta_i, v_i), v_i their known variance in sd^2 (EM deconvolution), with
  `PSEUDO_PROPOSALS` pseudo-proposals from a conservative `DEFAULT_PRIOR`, so a run starts
  conservative and trusts its history as it grows;
- `learned_prior`: that fit on the run's latest first runs;
- `posterior`: the posterior over the grid given a comparison's mean difference (a Student-t
  likelihood when the noise is estimated from few runs).

Pure functions over numpy arrays; deterministic for given inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

SMALLEST = 0.5          # sd: the smallest non-zero effect on the grid
STEP = 0.25             # sd between grid points
LARGEST = 8.0           # sd: effects beyond are lumped at the ends
PSEUDO_PROPOSALS = 20   # weight of the default prior, in proposals
REFIT_EVERY = 10        # proposals: the prior is refitted on the first 10k of them
WINDOW = 200            # proposals: the latest this many inform the fit
EM_STEPS = 300

GRID = np.concatenate([-np.arange(LARGEST, SMALLEST - 1e-9, -STEP), [0.0],
                       np.arange(SMALLEST, LARGEST + 1e-9, STEP)])
ZERO = int(np.flatnonzero(GRID == 0.0)[0])


def _default() -> np.ndarray:
    """Before a run has a history: half the proposals have no effect, a third are worse, a
    sixth better, by about 1.5 sd on average with an exponential tail (no effect size is ruled
    out, none near zero is favoured). Conservative: it gives improvements no more weight than most runs see."""
    w = np.zeros(GRID.size)
    w[ZERO] = 0.5
    neg, pos = GRID < 0, GRID > 0
    shape = np.abs(GRID) * np.exp(-np.abs(GRID) / 0.75)     # a gamma(2, 0.75) shape: mean 1.5
    w[neg] = (1 / 3) * shape[neg] / shape[neg].sum()
    w[pos] = (1 / 6) * shape[pos] / shape[pos].sum()
    return w


DEFAULT_PRIOR = _default()


@dataclass(frozen=True)
class Prior:
    """Weights over GRID (summing to 1) and how many first runs informed them."""

    weights: np.ndarray
    proposals: int = 0

    @property
    def null(self) -> float:
        return float(self.weights[ZERO])

    @property
    def better(self) -> float:
        return float(self.weights[GRID > 0].sum())

    def summary(self) -> dict[str, float | int]:
        w = self.weights
        pos = GRID > 0
        return {"proposals": self.proposals, "no_effect": round(self.null, 4),
                "better": round(self.better, 4), "worse": round(float(w[GRID < 0].sum()), 4),
                "mean_better_sd": round(float((w[pos] * GRID[pos]).sum() / max(w[pos].sum(), 1e-12)), 3)}


def fit_prior(z: Sequence[float], v: Sequence[float], pseudo: float = PSEUDO_PROPOSALS,
              steps: int = EM_STEPS) -> np.ndarray:
    """The distribution of effects on GRID that best explains z_i ~ N(theta_i, v_i), by EM.

    The maximum a posteriori mixture under a Dirichlet prior worth `pseudo` proposals drawn
    from DEFAULT_PRIOR (pseudo = 0: the nonparametric maximum likelihood). The likelihood alone
    hardly tells "no effect" from a spread of small effects either way; the pseudo-proposals
    settle that toward the default, and the EM starts there. Each step moves the weights to
    the average posterior of the observations (and pseudo-observations); the objective never
    decreases. Observations beyond the grid count as its end points.
    """
    zs = np.clip(np.asarray(z, float), -LARGEST, LARGEST)   # beyond the grid: at its ends
    vs = np.asarray(v, float)
    w = DEFAULT_PRIOR.copy()
    if zs.size == 0:
        return w
    like = np.exp(-0.5 * (zs[:, None] - GRID[None, :]) ** 2 / vs[:, None]
                  - 0.5 * np.log(vs)[:, None])
    like = np.maximum(like, 1e-300)
    for _ in range(steps):
        joint = like * w[None, :]
        joint /= joint.sum(axis=1, keepdims=True)
        w = (joint.sum(axis=0) + pseudo * DEFAULT_PRIOR) / (zs.size + pseudo)
    return w / w.sum()


def learned_prior(z: Sequence[float], v: Sequence[float]) -> Prior:
    """The prior a run uses after these first runs (oldest first): the fit on the first
    REFIT_EVERY * k of them (the latest WINDOW of those: what the agent proposes changes as
    the run goes on), with PSEUDO_PROPOSALS pseudo-proposals from DEFAULT_PRIOR."""
    end = (len(z) // REFIT_EVERY) * REFIT_EVERY
    start = max(0, end - WINDOW)
    if end == start:
        return Prior(DEFAULT_PRIOR.copy(), 0)
    return Prior(fit_prior(z[start:end], v[start:end]), end - start)


def likelihood(d: float, se: float, df: float) -> np.ndarray:
    """Likelihood over GRID of an observed mean difference d (sd units) with standard error se
    (sd units): Student's t with df degrees of freedom of the noise estimate (normal when df is
    infinite or large). The grid's end points stand for every effect beyond them."""
    x = (d - GRID) / se
    if abs(d) > LARGEST:          # the end point stands for "this far or farther"
        x[0 if d < 0 else -1] = 0.0
    if not math.isfinite(df) or df > 200:
        return np.exp(-0.5 * x * x)
    v = max(df, 1.0)              # Student's t density (scipy.special: scipy.stats weighs 45 MB)
    scale = math.exp(special.gammaln((v + 1) / 2) - special.gammaln(v / 2)) / math.sqrt(v * math.pi)
    return scale * (1.0 + x * x / v) ** (-(v + 1) / 2)


def posterior(prior: np.ndarray, d: float, se: float, df: float = math.inf) -> np.ndarray:
    """Posterior weights over GRID given an observed difference d with standard error se."""
    p = prior * likelihood(d, se, df)
    total = p.sum()
    return p / total if total > 0 else prior.copy()
