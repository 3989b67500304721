"""What the noise of a run looks like where a comparison is made.

Pure functions over the run's measurements, shared by the policies and the run summary:

- `printed_resolution` / `deterministic`: a metric whose repeated runs agree to the last digit
  it prints is deterministic; repeats of it measure nothing.
- `local_noise`: the noise sd where the comparison is made. Noise changes with the metric's
  level (a model at loss 0.66 is far noisier than one at 0.085): groups of repeated runs are
  pooled nearest in level first, each scaled to the level of the comparison by the power law
  sd ~ level**k fitted to the run's own groups.
- `epoch_start`: where the latest change of measuring conditions (machine load, a driver update)
  shows in one commit's runs, taken in time order; runs before it are not comparable with runs
  after it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy import special

from .base import RECENT_GROUPS

EPOCH_RUNS = 128     # epoch_start scans a commit's latest runs only (flat cost on a long plateau)
GROUP_RUNS = 32      # the noise estimate counts each group's latest runs only (the same)
LOCAL_DF = 30         # pool groups nearest in level until this many degrees of freedom


def printed_resolution(x: float) -> float:
    """One unit in the last digit of x as printed (shortest repr): 0.6613 -> 1e-4, 12.0 -> 1."""
    if not math.isfinite(x):
        return 0.0
    text = repr(float(x)).lower()
    mantissa, _, exp = text.partition("e")
    decimals = len(mantissa.partition(".")[2].rstrip("0")) if "." in mantissa else 0
    return 10.0 ** (-decimals + (int(exp) if exp else 0))


def agree(values: Sequence[float]) -> bool:
    """True when the values are equal as printed: exactly, or apart by one unit of a last digit
    that is at least the fourth significant one (a rounding flip, not noise)."""
    if len(values) < 2:
        return False
    spread = max(values) - min(values)
    if spread <= 1e-12 * max(1.0, max(abs(v) for v in values)):
        return True
    unit = min(printed_resolution(v) for v in values)
    return spread <= unit * (1 + 1e-9) and unit <= 1e-3 * max(abs(v) for v in values)


def recent(groups: Sequence[Sequence[float]]) -> list[Sequence[float]]:
    """The latest RECENT_GROUPS groups (policies/base.py), each (a commit's runs, oldest first)
    as its latest `GROUP_RUNS` runs: a former best measured again every `remeasure_every`
    experiments for thousands of them costs no more to judge with, and its runs of long ago
    (other conditions, perhaps) do not count."""
    return [g[-GROUP_RUNS:] if len(g) > GROUP_RUNS else g for g in groups[-RECENT_GROUPS:]]


def deterministic(groups: Sequence[Sequence[float]]) -> bool:
    """Every commit measured twice or more repeated its value (to the printed precision), in
    `recent(groups)`."""
    real = [g for g in recent(groups) if len(g) >= 2]
    return bool(real) and all(agree(g) for g in real)


def _group_stats(groups: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(runs, mean, sum of squared deviations) per group, as arrays, and the smallest value:
    the sums the noise model needs, without a Python loop over the runs."""
    lens = np.fromiter(map(len, groups), dtype=np.intp, count=len(groups))
    flat = np.fromiter(itertools.chain.from_iterable(groups), dtype=float, count=int(lens.sum()))
    starts = np.zeros(len(groups), dtype=np.intp)
    np.cumsum(lens[:-1], out=starts[1:])
    means = np.add.reduceat(flat, starts) / lens
    dev = flat - np.repeat(means, lens)
    ss = np.add.reduceat(dev * dev, starts)
    # runs that repeat exactly have no spread, whatever their mean rounds to
    ss[np.maximum.reduceat(flat, starts) == np.minimum.reduceat(flat, starts)] = 0.0
    return lens, means, ss, float(flat.min())


def level_power(groups: Sequence[Sequence[float]]) -> float:
    """k in sd ~ level**k, fitted to the groups' log variances (weighted by df), within [0, 3].

    0 when the levels are not all positive or do not spread enough to tell, or when a group
    repeats its value exactly. The groups are `recent(groups)`; one of one run counts for nothing.
    """
    real = [g for g in recent(groups) if len(g) >= 2]
    if len(real) < 3:
        return 0.0
    return _power(*_group_stats(real)[:3])


def _power(n: np.ndarray, m: np.ndarray, ss: np.ndarray) -> float:
    df = n - 1
    var = ss / df
    if (m <= 0).any() or (var <= 0).any():
        return 0.0
    w = float(df.sum())
    lx, ly = np.log(m), np.log(var)
    mx, my = float(lx @ df) / w, float(ly @ df) / w
    sxx = float(df @ (lx - mx) ** 2)
    if sxx < 0.05 * w:          # levels within ~20% of each other: nothing to fit
        return 0.0
    slope = float(df @ ((lx - mx) * (ly - my))) / sxx
    return min(max(slope / 2, 0.0), 3.0)


def local_noise(groups: Sequence[Sequence[float]], level: float, floor: float = 0.0,
                min_df: int = LOCAL_DF) -> tuple[float, float]:
    """(sigma, df): the noise sd at `level`.

    Groups are taken nearest in level first until `min_df` degrees of freedom; each group's
    spread is scaled to `level` by the power law sd ~ level**k fitted to all groups
    (`level_power`), so far-away groups inform the estimate without biasing it. Distance in level
    is relative when every value is positive, absolute otherwise. df = 0 when there is nothing
    to pool (sigma is then `floor`). The groups are `recent(groups)`.
    """
    real = [g for g in recent(groups) if len(g) >= 2]
    if not real:
        return floor, (math.inf if floor > 0 else 0.0)
    n, m, ss, smallest = _group_stats(real)
    positive = level > 0 and smallest > 0
    k = _power(n, m, ss) if positive and len(real) >= 3 else 0.0
    distance = np.abs(np.log(m / level)) if positive else np.abs(m - level)
    order = np.argsort(distance, kind="stable")
    pooled = np.cumsum(n[order] - 1)
    j = min(int(np.searchsorted(pooled, min_df)), len(real) - 1)   # the first to reach min_df
    chosen = order[: j + 1]
    scaled = ss[chosen] * ((level / m[chosen]) ** (2 * k) if k else 1.0)
    df = float(pooled[j])
    return max(math.sqrt(sum(scaled.tolist()) / df), floor), df   # summed as the groups are taken


def epoch_start(values: Sequence[float], at: Sequence[int], other: tuple[float, float] = (0.0, 0.0),
                alpha: float = 1e-3) -> int:
    """The `at` of the first run measured under the latest conditions (min(at) when none changed).

    Scans every split of one commit's runs in time order with a two-sample t-test whose noise
    pools the spread within both sides and `other` = (sigma, df) from other commits (so a shift
    does not hide itself by inflating the noise). A split beyond what the noise explains
    (two-sided, Bonferroni over the splits, at `alpha`) marks a change; the latest such split
    wins: the runs after it are the ones comparable with what is measured now.

    Only the latest `EPOCH_RUNS` runs are scanned, so a best that stays the best for thousands
    of experiments (measured again every `remeasure_every`) costs the same per decision as a new
    one: without a change among them, the epoch starts at the first of those runs. Each split
    is judged from running sums (one pass, not one per split).
    """
    n = len(values)
    if n < 2 or len(at) != n:
        return min(at) if at else 0
    order = sorted(range(n), key=at.__getitem__)[-EPOCH_RUNS:]
    n = len(order)
    raw = [values[i] for i in order]
    xs = [x - raw[-1] for x in raw]   # sums of differences from one run: less rounding
    ts = [at[i] for i in order]
    level = (alpha / 2) / (n - 1)
    o_sigma, o_df = other
    o_df = 0.0 if math.isinf(o_df) else o_df
    df = o_df + n - 2
    if df <= 0:
        return ts[0]
    crit = float(-special.stdtrit(df, level))   # Student's t, upper `level` point
    o_ss = o_sigma ** 2 * o_df
    # runs that repeat exactly: raw[:same_head] all equal raw[0], raw[same_tail:] all equal raw[-1]
    same_head = next((i for i, x in enumerate(raw) if x != raw[0]), n)
    same_tail = next((i + 1 for i in range(n - 1, -1, -1) if raw[i] != raw[-1]), 0)
    resolution = None   # of the printed values, needed only when runs repeat exactly
    total, total_sq = math.fsum(xs), math.fsum(x * x for x in xs)
    s_after = sq_after = 0.0
    for k in range(n - 1, 0, -1):   # before = raw[:k], after = raw[k:]
        s_after += xs[k]
        sq_after += xs[k] * xs[k]
        na, nb = n - k, k
        s_before, sq_before = total - s_after, total_sq - sq_after
        ma, mb = s_after / na, s_before / nb
        ss = o_ss + max(sq_before - s_before * mb, 0.0) + max(sq_after - s_after * ma, 0.0)
        exact = o_ss == 0.0 and same_tail <= k <= same_head   # no noise at all: exact values
        if exact or ss <= 0.0:   # (or a spread below the sums' rounding): judged as printed
            if resolution is None:
                resolution = max(printed_resolution(x) for x in raw)
            if (abs(raw[k] - raw[0]) if exact else abs(ma - mb)) > resolution:
                return ts[k]
            continue
        se = math.sqrt(ss / df) * math.sqrt(1 / nb + 1 / na)
        if abs(ma - mb) / se > crit:
            return ts[k]
    return ts[0]
