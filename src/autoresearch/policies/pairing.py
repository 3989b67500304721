"""Paired comparisons: noise that follows the seed cancels between runs made at the same seed.

The loop gives a commit's k-th run the seed `base + k` (AUTORESEARCH_SEED), so a candidate's
first run and the best's first run share a seed. Where the seed sets the initialisation and the
data order, part of the noise follows it: two commits run at one seed stray from their truths
together. The model, in units of the local noise sd sigma (policies/noise.py):

    y[commit, seed] = mu[commit] + u[seed] + e,    Var(u) = rho,  Var(e) = 1 - rho

Pure functions:

- `seed_share`: what the run's own data show (a `SeedFit`). An additive fit (commit + seed) to
  the latest `FIT_GROUPS` commits with two or more runs, each scaled to unit noise by the level
  power law, the commits' means taken out first. What the seeds explain is rho, used at a lower
  confidence bound (`SHARE_CONFIDENCE`): with few shared seeds it is 0 (independence), so
  pairing is never more confident than the data allow. The fitted seed effects, with their
  errors, are taken out of later comparisons. Only commits measured within `FIT_SPAN`
  experiments enter it: a commit's later runs have higher seeds, so a change of conditions
  between them would read as seed effects.
- `paired_difference`: the generalised least-squares difference of two commits' means, each run
  first moved back by its seed's fitted effect, under the covariance that remains (the rest of
  the noise, 1 - rho, on every run; the fit's error, or rho where a seed is not fitted, shared
  by the runs at one seed), and its variance in sigma^2. With rho = 0 it is the plain difference
  of means with variance 1/n_c + 1/n_b.
- `paired_variance`: that variance for runs at given seeds (the look-ahead's runs to come).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import special

from .base import FIT_SPAN, RECENT_GROUPS, SeededGroup
from .noise import level_power

SHARE_CONFIDENCE = 0.9     # rho is used at this one-sided lower confidence bound
MAX_SHARE = 0.9            # never treat more than this share of the noise as the seed's
#: (only commits whose runs were all made within FIT_SPAN experiments enter the fit: a commit
#: measured over a longer span, the best re-measured for drift, may straddle a change of
#: conditions, which its later (higher) seeds would otherwise take for seed effects)
#: the fit uses the latest this many commits: a seed's effect belongs to the code it was run
#: on (real runs: 0.99 between two commits a tweak apart, about 0.1 between the template and a
#: much better commit), so it is learned from the commits nearest the best, not the whole run
FIT_GROUPS = 40


@dataclass(frozen=True)
class SeedFit:
    """What the run's commits show of the seed: the share of the noise that follows it, and the
    effect of each seed run by two or more commits (relative to the lowest such seed)."""

    rho: float = 0.0             # the share, at its lower confidence bound (what is used)
    rho_hat: float = 0.0         # the share as estimated
    df: float = 0.0              # residual degrees of freedom behind it (0: nothing to tell)
    power: float = 0.0           # seed effects scale with the level as level**power
    #: seed -> its effect per unit of level**power (metric units at level 1)
    effects: dict[int, float] = field(default_factory=dict)
    #: seed -> the variance of that estimate, as a share of one run's noise variance
    errors: dict[int, float] = field(default_factory=dict)

    def offset(self, seed: int, level: float) -> float:
        """How far a run at `seed` strays because of the seed (0 when unknown or not used)."""
        if self.rho <= 0 or seed not in self.effects:
            return 0.0
        return self.effects[seed] * (level ** self.power if self.power else 1.0)

    def shared(self, seed: int) -> float:
        """The noise variance (share of one run's) that runs at `seed` still share once the
        seed's estimated effect is removed: the estimate's error, or all of the seed's part
        where it is not estimated."""
        if self.rho > 0 and seed in self.errors:
            return self.errors[seed]
        return self.rho


def seed_share(groups: Sequence[SeededGroup]) -> SeedFit:
    """The seed fit of the run's commits with two or more runs (see the module docstring), of
    the latest RECENT_GROUPS of them."""
    usable = [g for g in groups[-RECENT_GROUPS:]
              if len(g.values) >= 2 and len(g.seeds) == len(g.values)
              and len(set(g.seeds)) == len(g.seeds)
              and not (len(g.at) == len(g.values) and max(g.at) - min(g.at) > FIT_SPAN)]
    if all(len(g.at) == len(g.values) for g in usable):
        usable.sort(key=lambda g: max(g.at))
    return _seed_share(tuple(SeededGroup(g.values, g.seeds) for g in usable[-FIT_GROUPS:]))


@lru_cache(maxsize=256)
def _seed_share(groups: tuple[SeededGroup, ...]) -> SeedFit:
    if len(groups) < 2:
        return SeedFit()
    # a seed tells something only where two commits ran at it
    count: dict[int, int] = {}
    for g in groups:
        for s in g.seeds:
            count[s] = count.get(s, 0) + 1
    shared = sorted(s for s, c in count.items() if c >= 2)
    if len(shared) < 2:
        return SeedFit()
    positive = all(v > 0 for g in groups for v in g.values)
    k = level_power([list(g.values) for g in groups]) if positive else 0.0
    col = {s: i for i, s in enumerate(shared[1:])}       # effects relative to the first
    within, n_within = 0.0, 0
    ys: list[np.ndarray] = []
    ds: list[np.ndarray] = []
    n_groups = 0
    for g in groups:
        m = sum(g.values) / len(g.values)
        scale = m ** -k if k else 1.0
        z = np.asarray(g.values) * scale
        within += float(((z - z.mean()) ** 2).sum())
        n_within += z.size - 1
        keep = [i for i, s in enumerate(g.seeds) if count[s] >= 2]
        if len(keep) < 2:
            continue
        # the commit's own mean is taken out (Frisch-Waugh): only seed effects remain to fit
        d = np.zeros((len(keep), len(col)))
        for r, i in enumerate(keep):
            if g.seeds[i] in col:
                d[r, col[g.seeds[i]]] = 1.0
        y = z[keep]
        ys.append(y - y.mean())
        ds.append(d - d.mean(axis=0))
        n_groups += 1
    if not ys or within <= 0:
        return SeedFit()
    y, d = np.concatenate(ys), np.vstack(ds)
    beta, _, rank, _ = np.linalg.lstsq(d, y, rcond=None)
    df = y.size - n_groups - int(rank)        # the commits' means were taken out too
    if df < 1:
        return SeedFit()
    rss = float(((y - d @ beta) ** 2).sum())
    total = within / n_within                       # variance of one run, seeds included
    resid = rss / df                                # the same, the seed's share removed
    rho_hat = min(max(1.0 - resid / total, 0.0), MAX_SHARE)
    upper = rss / float(special.chdtri(df, SHARE_CONFIDENCE))   # of the residual variance (chi2's lower point)
    rho = min(max(1.0 - upper / total, 0.0), MAX_SHARE)
    cov = np.linalg.pinv(d.T @ d) * upper / total   # of the effects, in shares of one run's
    effects = {shared[0]: 0.0, **{s: float(beta[i]) for s, i in col.items()}}
    errors = {shared[0]: 0.0, **{s: float(cov[i, i]) for s, i in col.items()}}
    return SeedFit(rho, rho_hat, float(df), k, effects, errors)


def paired_difference(cand: Sequence[float], cand_seeds: Sequence[int], best: Sequence[float],
                      best_seeds: Sequence[int], fit: SeedFit,
                      level: float) -> tuple[float, float]:
    """(d, var): mean(candidate) - mean(best) as estimated by GLS under the model above (each
    run first moved back by its seed's estimated effect at `level`), and its variance in units
    of one run's noise variance. Seeds unknown (lists of another length) or no seed share: the
    plain difference of means, variance 1/n_c + 1/n_b."""
    n_c, n_b = len(cand), len(best)
    if fit.rho <= 0 or len(cand_seeds) != n_c or len(best_seeds) != n_b:
        return sum(cand) / n_c - sum(best) / n_b, 1.0 / n_c + 1.0 / n_b
    y = np.asarray([v - fit.offset(s, level) for v, s in
                    [*zip(cand, cand_seeds, strict=True), *zip(best, best_seeds, strict=True)]])
    weights, var = _solve(tuple(cand_seeds), tuple(best_seeds), fit)
    return float(weights @ y), var


def paired_variance(cand_seeds: Sequence[int], best_seeds: Sequence[int], fit: SeedFit) -> float:
    """The variance (in one run's noise variance) of the GLS difference for runs at these
    seeds."""
    if fit.rho <= 0:
        return 1.0 / len(cand_seeds) + 1.0 / len(best_seeds)
    return _solve(tuple(cand_seeds), tuple(best_seeds), fit)[1]


def _solve(cand_seeds: tuple[int, ...], best_seeds: tuple[int, ...],
           fit: SeedFit) -> tuple[np.ndarray, float]:
    shared = tuple(round(fit.shared(s), 4) for s in (*cand_seeds, *best_seeds))
    return _gls(cand_seeds, best_seeds, round(fit.rho, 4), shared)


@lru_cache(maxsize=8192)
def _gls(cand_seeds: tuple[int, ...], best_seeds: tuple[int, ...], rho: float,
         shared: tuple[float, ...]) -> tuple[np.ndarray, float]:
    s = np.asarray([*cand_seeds, *best_seeds])
    c = np.sqrt(np.asarray(shared))
    cov = (1.0 - rho) * np.eye(s.size) + (s[:, None] == s[None, :]) * np.outer(c, c)
    x = np.zeros((s.size, 2))
    x[:len(cand_seeds), 0] = 1.0
    x[len(cand_seeds):, 1] = 1.0
    ci_x = np.linalg.solve(cov, x)
    info_inv = np.linalg.inv(x.T @ ci_x)
    contrast = np.array([1.0, -1.0])
    return contrast @ info_inv @ ci_x.T, float(contrast @ info_inv @ contrast)


def next_seed(seeds: Sequence[int]) -> int:
    """The seed the loop gives a commit's next run (one past its latest)."""
    return max(seeds) + 1 if seeds else 0
