"""Paired comparisons: noise that follows the seed cancels between runs made at the same seed.

The loop gives a commit's k-th run the seed `base + k` (AUTORESEARCH_SEED), so a candidate's
first run and the best's first run share a seed. Where the seed sets the initialisation and the
data order, part of the noise follows it: two commits run at one seed stray from their truths
together. The model, in units of the local noise sd sigma (policies/noise.py):

    y[commit, seed] = mu[commit] + u[seed] + e,    Var(u) = rho,  Var(e) = 1 - rho

Pure functions:

- `seed_share`: rho as the run's own data show it. An additive fit (commit + seed) to the
  commits with two or more runs, each scaled to unit noise by the level power law; what the seeds
  explain is rho. The estimate is a lower confidence bound (`SHARE_CONFIDENCE`): with few shared
  seeds it is 0 (independence), so pairing is never more confident than the data allow. Drift
  between a commit's runs inflates the residual and so only lowers it.
- `paired_difference`: the generalised least-squares difference of two commits' means with
  that covariance, and its variance in sigma^2. With rho = 0, or no seed in common, it is the
  plain difference of means with variance 1/n_c + 1/n_b.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats

from .noise import level_power

SHARE_CONFIDENCE = 0.9     # rho is used at this one-sided lower confidence bound
MAX_SHARE = 0.9            # never treat more than this share of the noise as the seed's


@dataclass(frozen=True)
class SeededGroup:
    """One commit's runs: values, the seed of each (AUTORESEARCH_SEED) and when each was made."""

    values: tuple[float, ...]
    seeds: tuple[int, ...]


def seed_share(groups: Sequence[SeededGroup]) -> tuple[float, float, float]:
    """(rho, rho_hat, df): the share of the noise variance that follows the seed, at its lower
    confidence bound and as estimated, and the residual df behind it (0: nothing to tell)."""
    usable = tuple(g for g in groups if len(g.values) >= 2 and len(g.seeds) == len(g.values)
                   and len(set(g.seeds)) == len(g.seeds))
    return _seed_share(usable)


@lru_cache(maxsize=256)
def _seed_share(groups: tuple[SeededGroup, ...]) -> tuple[float, float, float]:
    if len(groups) < 2:
        return 0.0, 0.0, 0.0
    # a seed tells something only where two commits ran at it
    count: dict[int, int] = {}
    for g in groups:
        for s in g.seeds:
            count[s] = count.get(s, 0) + 1
    shared = sorted(s for s, c in count.items() if c >= 2)
    if len(shared) < 2:
        return 0.0, 0.0, 0.0
    positive = all(v > 0 for g in groups for v in g.values)
    k = level_power([list(g.values) for g in groups]) if positive else 0.0
    rows: list[tuple[int, int | None]] = []
    ys: list[float] = []
    col = {s: i for i, s in enumerate(shared[1:])}       # seed effects relative to the first
    within, n_within = 0.0, 0
    for c, g in enumerate(groups):
        m = sum(g.values) / len(g.values)
        scale = m ** -k if k else 1.0
        z = [v * scale for v in g.values]
        zm = sum(z) / len(z)
        within += sum((x - zm) ** 2 for x in z)
        n_within += len(z) - 1
        for x, s in zip(z, g.seeds, strict=True):
            if count[s] >= 2:
                rows.append((c, col.get(s)))
                ys.append(x)
    n_c, n_s = len(groups), len(shared) - 1
    x = np.zeros((len(ys), n_c + n_s))
    for i, (c, s) in enumerate(rows):
        x[i, c] = 1.0
        if s is not None:
            x[i, n_c + s] = 1.0
    y = np.asarray(ys)
    beta, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    df = len(ys) - int(rank)
    if df < 1 or within <= 0:
        return 0.0, 0.0, 0.0
    rss = float(((y - x @ beta) ** 2).sum())
    total = within / n_within                       # sd^2 of one run, seeds included
    resid = rss / df                                # sd^2 of one run, the seed's share removed
    rho_hat = min(max(1.0 - resid / total, 0.0), MAX_SHARE)
    upper = rss / float(stats.chi2.ppf(1.0 - SHARE_CONFIDENCE, df))   # of the residual variance
    rho = min(max(1.0 - upper / total, 0.0), MAX_SHARE)
    return rho, rho_hat, float(df)


def paired_difference(cand: Sequence[float], cand_seeds: Sequence[int], best: Sequence[float],
                      best_seeds: Sequence[int], rho: float) -> tuple[float, float]:
    """(d, var): mean(candidate) - mean(best) as estimated by GLS under the model above, and
    its variance in units of sigma^2. Seeds unknown (lists of another length) or rho = 0: the
    plain difference of means."""
    n_c, n_b = len(cand), len(best)
    plain = (sum(cand) / n_c - sum(best) / n_b, 1.0 / n_c + 1.0 / n_b)
    if rho <= 0 or len(cand_seeds) != n_c or len(best_seeds) != n_b \
            or not set(cand_seeds) & set(best_seeds):
        return plain
    var = paired_variance(tuple(cand_seeds), tuple(best_seeds), rho)
    w = _weights(tuple(cand_seeds), tuple(best_seeds), rho)
    y = np.asarray([*cand, *best], dtype=float)
    return float(w @ y), var


@lru_cache(maxsize=4096)
def _solve(cand_seeds: tuple[int, ...], best_seeds: tuple[int, ...],
           rho: float) -> tuple[np.ndarray, float]:
    s = np.asarray([*cand_seeds, *best_seeds])
    n_c = len(cand_seeds)
    cov = (1.0 - rho) * np.eye(s.size) + rho * (s[:, None] == s[None, :])
    x = np.zeros((s.size, 2))
    x[:n_c, 0] = 1.0
    x[n_c:, 1] = 1.0
    ci_x = np.linalg.solve(cov, x)
    info_inv = np.linalg.inv(x.T @ ci_x)
    contrast = np.array([1.0, -1.0])
    weights = contrast @ info_inv @ ci_x.T
    return weights, float(contrast @ info_inv @ contrast)


def _weights(cand_seeds: tuple[int, ...], best_seeds: tuple[int, ...], rho: float) -> np.ndarray:
    return _solve(cand_seeds, best_seeds, round(rho, 3))[0]


def paired_variance(cand_seeds: Sequence[int], best_seeds: Sequence[int], rho: float) -> float:
    """The variance (sigma^2 units) of the GLS difference for runs at these seeds."""
    if rho <= 0 or not set(cand_seeds) & set(best_seeds):
        return 1.0 / len(cand_seeds) + 1.0 / len(best_seeds)
    return _solve(tuple(cand_seeds), tuple(best_seeds), round(rho, 3))[1]


def next_seed(seeds: Sequence[int]) -> int:
    """The seed the loop gives a commit's next run (one past its latest)."""
    return max(seeds) + 1 if seeds else 0


def share_text(rho: float, rho_hat: float, df: float) -> str:
    return (f"seed share {rho:.2f} (estimated {rho_hat:.2f}, df {df:g})"
            if df else "seed share 0 (nothing measured at common seeds yet)")
