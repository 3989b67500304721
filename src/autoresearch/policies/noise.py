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

import math
from collections.abc import Sequence

from scipy import special

EPOCH_RUNS = 128     # epoch_start scans a commit's latest runs only (flat cost on a long plateau)
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
    """Each group (a commit's runs, oldest first) as its latest `EPOCH_RUNS` runs: a best measured
    again every `remeasure_every` experiments for thousands of them costs no more to judge."""
    return [g[-EPOCH_RUNS:] if len(g) > EPOCH_RUNS else g for g in groups]


def deterministic(groups: Sequence[Sequence[float]]) -> bool:
    """Every commit measured twice or more repeated its value (to the printed precision), in
    its latest `EPOCH_RUNS` runs."""
    real = [g for g in recent(groups) if len(g) >= 2]
    return bool(real) and all(agree(g) for g in real)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def level_power(groups: Sequence[Sequence[float]]) -> float:
    """k in sd ~ level**k, fitted to the groups' log variances (weighted by df), within [0, 3].

    0 when the levels are not all positive or do not spread enough to tell. Each group counts
    with its latest `EPOCH_RUNS` runs.
    """
    pts = []
    for g in recent(groups):
        m = _mean(g)
        var = sum((x - m) ** 2 for x in g) / (len(g) - 1)
        if m <= 0 or var <= 0:
            return 0.0
        pts.append((math.log(m), math.log(var), len(g) - 1))
    if len(pts) < 3:
        return 0.0
    w = sum(p[2] for p in pts)
    mx = sum(p[0] * p[2] for p in pts) / w
    my = sum(p[1] * p[2] for p in pts) / w
    sxx = sum(p[2] * (p[0] - mx) ** 2 for p in pts)
    if sxx < 0.05 * w:          # levels within ~20% of each other: nothing to fit
        return 0.0
    slope = sum(p[2] * (p[0] - mx) * (p[1] - my) for p in pts) / sxx
    return min(max(slope / 2, 0.0), 3.0)


def local_noise(groups: Sequence[Sequence[float]], level: float, floor: float = 0.0,
                min_df: int = LOCAL_DF) -> tuple[float, float]:
    """(sigma, df): the noise sd at `level`.

    Groups are taken nearest in level first until `min_df` degrees of freedom; each group's
    spread is scaled to `level` by the power law sd ~ level**k fitted to all groups
    (`level_power`), so far-away groups inform the estimate without biasing it. Distance in level
    is relative when every value is positive, absolute otherwise. df = 0 when there is nothing
    to pool (sigma is then `floor`). Each group counts with its latest `EPOCH_RUNS` runs.
    """
    real = [list(g) for g in recent(groups) if len(g) >= 2]
    if not real:
        return floor, (math.inf if floor > 0 else 0.0)
    positive = level > 0 and all(v > 0 for g in real for v in g)
    k = level_power(real) if positive else 0.0

    def distance(g: list[float]) -> float:
        m = _mean(g)
        return abs(math.log(m / level)) if positive else abs(m - level)

    ss, df = 0.0, 0
    for g in sorted(real, key=distance):
        m = _mean(g)
        scale = (level / m) ** (2 * k) if k else 1.0
        ss += scale * sum((x - m) ** 2 for x in g)
        df += len(g) - 1
        if df >= min_df:
            break
    return max(math.sqrt(ss / df), floor), float(df)


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
    order = sorted(range(n), key=lambda i: at[i])[-EPOCH_RUNS:]
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
        if o_ss == 0.0 and k <= same_head and k >= same_tail:   # no noise at all: exact values
            if resolution is None:
                resolution = max(printed_resolution(x) for x in raw)
            if abs(raw[k] - raw[0]) > resolution:
                return ts[k]
            continue
        na, nb = n - k, k
        s_before, sq_before = total - s_after, total_sq - sq_after
        ma, mb = s_after / na, s_before / nb
        ss = o_ss + max(sq_before - s_before * mb, 0.0) + max(sq_after - s_after * ma, 0.0)
        if ss <= 0.0:
            continue
        se = math.sqrt(ss / df) * math.sqrt(1 / nb + 1 / na)
        if abs(ma - mb) / se > crit:
            return ts[k]
    return ts[0]
