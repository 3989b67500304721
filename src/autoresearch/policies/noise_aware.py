"""`noise-aware-v1`: keep a candidate only when repeated measurements show it is really better.

The rule, in order (improvement d = candidate mean - incumbent mean, signed so that d > 0 is
better; sigma = the noise sd pooled from every repeated measurement of the run):

1. Noise. sigma is pooled from `ctx.replicate_groups` (baseline repeats, confirmed candidates,
   incumbents) with df = sum(n - 1), floored at `noise_floor`. A metric that repeats exactly
   (sigma = 0) is compared exactly, as greedy does.
2. Test statistic. t = (d - min_effect) / (sigma * sqrt(1/n_c + 1/n_i)); its one-sided p-value
   comes from Student's t with the pooled df, and z is the normal quantile of that p, so a noise
   estimate from few runs is paid for with a more cautious z.
3. Screen. After the candidate's first run, z < `screen_z` (it does not look better) discards it
   at once: most proposals cost one run, as with greedy.
4. Sequential test. Otherwise Wald's SPRT on the z path, H0: improvement = min_effect against
   H1: improvement = min_effect + `design_sigmas` * sigma, with log-likelihood ratio
   theta * z - theta^2 / 2 (theta = the H1 shift in standard errors) and Wald's bounds
   log((1 - power_beta) / alpha) to keep and log(power_beta / (1 - alpha)) to discard. The z path
   of a two-sample comparison is a Brownian motion in information time, so the bounds hold
   however the runs of the two sides grow.
5. More runs. While the test is undecided the commit with fewer runs is measured again (the
   candidate on a tie): balanced runs shrink the standard error fastest and refresh the
   incumbent, whose own mean is biased upward by having been selected (the winner's curse).
   A keep needs at least `confirm_runs` runs of the candidate.
6. Cap. When the candidate has `max_runs` runs and the test is still undecided, it is discarded
   as "not confirmed", so a proposal costs at most 2 * max_runs runs.
7. Simplicity. A candidate that is not kept as better but has fewer lines is kept when its mean
   is no worse than the incumbent's by more than the minimum effect (greedy's "equal metric
   with fewer lines", widened to the noise the user declared negligible).
"""

from __future__ import annotations

import math
from typing import Any

from scipy import special

from ..config import PolicySettings
from .base import RECENT_GROUPS, Decision, Estimate, Policy, PolicyContext, Sample, Verdict


def pooled_noise(groups: list[list[float]], floor: float = 0.0) -> tuple[float, float]:
    """(sigma, df) pooled from within-group spread. df = inf when only `floor` is known."""
    ss = 0.0
    df = 0
    for g in groups:
        if len(g) < 2:
            continue
        m = sum(g) / len(g)
        ss += sum((x - m) ** 2 for x in g)
        df += len(g) - 1
    if df == 0:
        return (floor, math.inf) if floor > 0 else (0.0, 0.0)
    return max(math.sqrt(ss / df), floor), float(df)


def _sd(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return math.sqrt(sum((x - m) ** 2 for x in values) / (len(values) - 1))


def _groups(candidate: Sample, incumbent: Sample, ctx: PolicyContext) -> list[list[float]]:
    # The loop lists the candidate's and incumbent's runs among the groups; add them if not.
    groups = [list(g) for g in ctx.replicate_groups[-RECENT_GROUPS:]]
    for s in (candidate, incumbent):
        if s.n >= 2 and list(s.values) not in groups:
            groups.append(list(s.values))
    return groups


def _p_one_sided(t: float, df: float) -> float:
    """P(T >= t) under Student's t with df degrees of freedom (normal when df is infinite)."""
    if math.isinf(df):
        return float(special.ndtr(-t))
    return float(special.stdtr(df, -t))


def _z_of_p(p: float) -> float:
    p = min(max(p, 1e-300), 1 - 1e-16)
    return float(-special.ndtri(p))


class NoiseAwarePolicy(Policy):
    name = "noise-aware-v1"

    def __init__(self) -> None:
        # the runs that selected the current best (its values when it was kept); they are
        # evidence for the keep, not an estimate of its value
        self._selection: tuple[float, ...] | None = None

    def baseline_runs(self, settings: PolicySettings) -> int:
        return settings.baseline_runs

    def _fresh(self, incumbent: Sample, settings: PolicySettings) -> tuple[list[float], int]:
        """(the incumbent's runs to judge and report it by, how many selection runs were set aside)."""
        values = list(incumbent.values)
        if not settings.refresh_runs:
            return values, 0
        if incumbent.selection:  # the ledger knows, also after a restart
            return values[incumbent.selection:], incumbent.selection
        sel = self._selection
        if sel and tuple(values[:len(sel)]) == sel:
            return values[len(sel):], len(sel)
        return values, 0

    def _noise(self, candidate: Sample, incumbent: Sample, ctx: PolicyContext) -> tuple[float, float]:
        groups = _groups(candidate, incumbent, ctx)
        fresh, n_sel = self._fresh(incumbent, ctx.settings)
        if n_sel and fresh and list(incumbent.values) in groups:
            # the selection runs sit apart from the fresh ones by the winner's curse, not by
            # noise: pool their spreads separately
            groups.remove(list(incumbent.values))
            groups += [list(incumbent.values[:n_sel]), fresh]
        return pooled_noise(groups, ctx.settings.noise_floor)

    def decide(self, candidate: Sample, incumbent: Sample, ctx: PolicyContext) -> Decision:
        s = ctx.settings
        sign = 1.0 if ctx.direction == "maximize" else -1.0
        best, n_sel = self._fresh(incumbent, s)
        n_c, n_i = candidate.n, len(best)
        sigma, df = self._noise(candidate, incumbent, ctx)
        delta0 = max(s.min_effect, s.min_effect_sigmas * sigma)
        ev: dict[str, Any] = {
            "runs": n_c, "best_runs": n_i, "best_selection_runs": n_sel,
            "mean": candidate.mean, "sd": _sd(candidate.values),
            "sigma": sigma, "sigma_df": df, "min_effect": delta0,
            "lines": candidate.lines, "best_lines": incumbent.lines,
        }
        if n_sel and n_i < s.refresh_runs:
            # a newly kept best is measured afresh before anything is judged against it; the
            # schedule does not depend on any value, so the fresh runs are unbiased
            ev.update(best_mean=None, effect=None, rule="refresh")
            return Decision(Verdict.MORE, f"measuring the new best afresh ({n_i + 1} of "
                            f"{s.refresh_runs}) before judging against it",
                            rerun="incumbent", evidence=ev)
        best_mean = sum(best) / n_i
        d = sign * (candidate.mean - best_mean)
        fewer_lines = candidate.lines < incumbent.lines
        ev.update(best_mean=best_mean, best_sd=_sd(best), effect=d)
        verb = "better" if d > 0 else "worse"
        summary = (f"{candidate.mean:.6g} (n={n_c}) vs best {best_mean:.6g} (n={n_i}): "
                   f"{abs(d):.3g} {verb}")

        def done(verdict: Verdict, rule: str, why: str) -> Decision:
            ev["rule"] = rule
            rerun = "candidate" if verdict is Verdict.MORE else None
            if verdict is Verdict.KEEP:
                self._selection = tuple(candidate.values)
            return Decision(verdict, f"{why}; {summary}", rerun=rerun, evidence=ev)

        def not_better(rule: str, why: str) -> Decision:
            if fewer_lines and d >= -delta0:
                return done(Verdict.KEEP, "simpler", f"no worse with fewer lines "
                            f"({candidate.lines} < {incumbent.lines}); {why}")
            return done(Verdict.DISCARD, rule, why)

        if sigma == 0.0 and df > 0:
            # the metric repeats exactly: no noise to test against
            if d > delta0:
                return done(Verdict.KEEP, "exact", "better on a metric that repeats exactly")
            return not_better("exact", "not better on a metric that repeats exactly")

        if df == 0:
            # no repeated runs yet, so no noise estimate: measure again what looks better
            ev.update(statistic=None, p_value=None)
            if d <= delta0:
                return not_better("screen", "does not look better (noise not yet measured)")
            if n_c >= s.max_runs:
                return not_better("cap", f"{n_c} runs without a noise estimate")
            return done(Verdict.MORE, "continue", "looks better; measuring it again to learn "
                                                  "the noise")

        se = sigma * math.sqrt(1.0 / n_c + 1.0 / n_i)
        t = (d - delta0) / se
        p = _p_one_sided(t, df)
        z = _z_of_p(p)
        theta = s.design_sigmas * sigma / se
        llr = theta * z - theta * theta / 2.0
        # alpha is split between the early stops and the final test at the cap (Bonferroni),
        # so the false-keep rate stays under alpha however the two combine
        a_seq = a_cap = s.alpha / 2.0
        upper = math.log((1.0 - s.power_beta) / a_seq)
        lower = math.log(s.power_beta / (1.0 - a_seq))
        # the p-value that would keep it now: the z at which llr reaches the upper bound
        z_keep = (upper + theta * theta / 2.0) / theta
        ev.update(se=se, statistic=t, z=z, p_value=p, llr=llr, llr_keep=upper, llr_discard=lower,
                  threshold=float(special.ndtr(-z_keep)), screen_z=s.screen_z)

        # the screen gives up on a candidate, so it reads t as z (no small-df caution)
        if n_c == 1 and t < s.screen_z:
            return not_better("screen", f"first run does not look better (t={t:.2f} < "
                                        f"{s.screen_z:g})")
        if llr <= lower:
            return not_better("sprt-discard", f"sequential test: not better (p={p:.3g})")
        if llr >= upper and n_c >= min(s.confirm_runs, s.max_runs):
            return done(Verdict.KEEP, "sprt-keep",
                        f"sequential test: better (p={p:.3g} <= {ev['threshold']:.3g})")
        if n_c >= s.max_runs:
            ev["cap_threshold"] = a_cap
            if p <= a_cap:
                return done(Verdict.KEEP, "cap-keep",
                            f"{s.max_runs} runs: better by the final test (p={p:.3g} <= {a_cap:g})")
            return not_better("cap", f"not confirmed within {s.max_runs} runs (p={p:.3g} > {a_cap:g})")
        return done(Verdict.MORE, "continue", f"undecided (p={p:.3g}); measuring it again")

    def estimate(self, incumbent: Sample, ctx: PolicyContext) -> Estimate:
        """Mean of the best's fresh runs (not those that selected it), with the pooled-noise sem."""
        sigma, df = self._noise(incumbent, incumbent, ctx)
        best, n_sel = self._fresh(incumbent, ctx.settings)
        if not best:   # kept, not yet re-measured: the selection runs are all there is
            best, n_sel = list(incumbent.values), 0
        n = len(best)
        return Estimate(sum(best) / n, n, sigma / math.sqrt(n) if df > 0 else None, _sd(best),
                        sigma if df > 0 else None, n_sel)
