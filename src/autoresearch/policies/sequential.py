"""`noise-aware-v2`: keep what is really better, by a sequential test with a fixed look schedule.

The rule, in order (d = candidate mean - best mean, signed so that d > 0 is better):

1. Deterministic metrics. When every commit measured twice repeated its value to the last
   printed digit, the metric is deterministic: candidates are compared exactly, once each, and
   an equal one with fewer lines is kept (greedy's simplicity rule). No repeats are spent.
2. Comparable conditions. The best's runs are taken in time order; a shift in them beyond their
   noise (a loaded machine, a driver update) starts a new epoch, and only the runs of the
   latest epoch are compared with. A keep needs at least one run of the best made after the
   candidate's first run, so every keep is judged against the best as measured now; the loop
   also re-measures the best at intervals and on every resume.
3. Local noise. sigma is pooled from the groups of repeated runs nearest to the best's level
   (policies/noise.py), not from the whole run: noise shrinks as the metric improves.
4. Test. t = (d - margin) / (sigma * sqrt(1/n_c + 1/n_b)), p from Student's t with the local df.
   margin = min_effect (the larger of `min_effect` and `min_effect_sigmas` * sigma) for a
   candidate of the same size or larger, and -min_effect for one with fewer lines: a simpler
   candidate must be shown no worse than the negligible effect the user declared, at the same
   confidence, so no rule ever keeps code that is worse at the policy's confidence.
5. Sequence. After the candidate's first run, t < `screen_z` discards it: most proposals cost
   one run. Later, t < 0 discards it. A candidate still in the race is looked at once per run of
   its own (the first look after the best's run beside it) and kept when p <= alpha / max_runs:
   by the union bound over its looks, a candidate with no effect is kept with probability at
   most alpha (the benchmark measures the realized rate). Between looks the side with fewer runs
   is measured again (the best on a tie: its runs serve every later comparison too). At
   `max_runs` runs of the candidate it is discarded as "not confirmed".
6. Reported best. The mean of the best's runs of the latest epoch, with sem = sigma / sqrt(n)
   from the local noise; the keep's own runs are part of it (their selection bias is small at a
   keep that needs p <= alpha / max_runs, and fresh runs dilute it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from scipy import special

from ..config import PolicySettings
from .base import RECENT_GROUPS, Decision, Estimate, Policy, PolicyContext, Sample, Verdict
from .noise import agree, deterministic, epoch_start, local_noise


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _others(groups: list[list[float]], *exclude: list[float]) -> list[list[float]]:
    """The latest RECENT_GROUPS groups but those of `exclude`, matched as multisets: the run
    state may hold a commit's runs in another order than its sample (a row re-indexed on a
    status change)."""
    drop = [sorted(e) for e in exclude if len(e) >= 2]
    out = []
    for g in groups[-RECENT_GROUPS:]:
        key = sorted(g)
        if key in drop:
            drop.remove(key)
            continue
        out.append(list(g))
    return out


class SequentialPolicy(Policy):
    name = "noise-aware-v2"

    def baseline_runs(self, settings: PolicySettings) -> int:
        return settings.baseline_runs

    def baseline_complete(self, values: list[float], settings: PolicySettings) -> bool:
        # two runs that agree to the printed digit: the metric is deterministic
        return len(values) >= settings.baseline_runs or (len(values) >= 2 and agree(values))

    def remeasure_best(self, incumbent: Sample, now: int, settings: PolicySettings,
                       resumed: bool = False) -> bool:
        if resumed:
            return True
        if not settings.remeasure_every or not incumbent.at:
            return False
        return now - max(incumbent.at) >= settings.remeasure_every

    # -- the best as measured now -----------------------------------------------------------
    def current(self, incumbent: Sample, ctx: PolicyContext) -> tuple[list[float], list[int]]:
        """The best's runs of the latest epoch (values, at), oldest first."""
        return self._latest_epoch(list(incumbent.values), list(incumbent.at), incumbent, ctx)

    def _latest_epoch(self, values: list[float], at: list[int], incumbent: Sample,
                      ctx: PolicyContext) -> tuple[list[float], list[int]]:
        """The runs (values, at) of the latest epoch, the noise beside them taken from every
        group but the incumbent's own (as recorded: `values` may be adjusted)."""
        if len(at) != len(values) or len(values) < 2:
            return values, at
        others = _others(ctx.replicate_groups, incumbent.values)
        noise = local_noise(others, _mean(values), ctx.settings.noise_floor)
        since = epoch_start(values, at, noise, ctx.settings.drift_alpha)
        keep = [i for i in range(len(values)) if at[i] >= since]
        return [values[i] for i in keep], [at[i] for i in keep]

    def _noise(self, cand: list[float], best: list[float], incumbent: Sample,
               ctx: PolicyContext) -> tuple[float, float, bool]:
        """(sigma, df, deterministic) where the comparison is made."""
        groups = _others(ctx.replicate_groups, incumbent.values, cand)
        groups += [g for g in (cand, best) if len(g) >= 2]
        level = _mean(best)
        sigma, df = local_noise(groups, level, ctx.settings.noise_floor)
        return sigma, df, deterministic(groups) and ctx.settings.noise_floor == 0

    def estimate(self, incumbent: Sample, ctx: PolicyContext) -> Estimate:
        values, at = self.current(incumbent, ctx)
        if not values:
            raise ValueError("the best has no measurement to estimate from")
        sigma, df, exact = self._noise([], values, incumbent, ctx)
        n = len(values)
        sem = 0.0 if exact else (sigma / math.sqrt(n) if df > 0 else None)
        mean = _mean(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n >= 2 else None
        return Estimate(mean, n, sem, sd, sigma if df > 0 else None, since=at[0] if at else None)

    # -- the decision -----------------------------------------------------------------------
    def _judgement(self, candidate: Sample, incumbent: Sample, ctx: PolicyContext) -> _Judgement:
        """What every decision of this family starts from: the two sides as measured under
        the conditions of now, the noise there, and the evidence so far."""
        s = ctx.settings
        sign = 1.0 if ctx.direction == "maximize" else -1.0
        best, best_at = self.current(incumbent, ctx)
        cand = list(candidate.values)
        n_c, n_b = len(cand), len(best)
        sigma, df, exact = self._noise(cand, best, incumbent, ctx)
        best_mean = _mean(best)
        d = sign * (_mean(cand) - best_mean)
        fewer_lines = candidate.lines < incumbent.lines
        effect = max(s.min_effect, s.min_effect_sigmas * sigma)
        margin = -effect if fewer_lines else effect
        ev: dict[str, Any] = {
            "runs": n_c, "best_runs": n_b, "best_since": best_at[0] if best_at else None,
            "mean": _mean(cand), "best_mean": best_mean, "effect": d, "sigma": sigma,
            "sigma_df": df, "min_effect": effect, "margin": margin,
            "lines": candidate.lines, "best_lines": incumbent.lines}
        verb = "better" if d > 0 else "worse"
        summary = (f"{_mean(cand):.6g} (n={n_c}) vs best {best_mean:.6g} (n={n_b}): "
                   f"{abs(d):.3g} {verb}")
        fresh = [a for a in best_at if candidate.at and a > min(candidate.at)]
        return _Judgement(candidate, incumbent, s, best_at, n_c, n_b, sigma, df, exact, d,
                          fewer_lines, effect, margin, fresh, ev, summary, best)

    def decide(self, candidate: Sample, incumbent: Sample, ctx: PolicyContext) -> Decision:
        j = self._judgement(candidate, incumbent, ctx)
        if (early := j.without_a_test()) is not None:
            return early
        s, done, keep, ev = j.settings, j.done, j.keep, j.evidence
        n_c, n_b, sigma, df, d, margin, fresh = j.n_c, j.n_b, j.sigma, j.df, j.d, j.margin, j.fresh

        se = sigma * math.sqrt(1.0 / n_c + 1.0 / n_b)
        t = (d - margin) / se
        p = float(special.stdtr(df, -t)) if math.isfinite(df) else float(special.ndtr(-t))
        # Bonferroni over the looks a judgement can take: with times known, one look per run
        # of the candidate (the first after the best's run beside it); otherwise one per call
        timed = bool(candidate.at and incumbent.at)
        level = s.alpha / (s.max_runs if timed else 2 * s.max_runs - 1)
        ev.update(se=se, statistic=t, p_value=p, threshold=level, screen_z=s.screen_z,
                  fresh_best_runs=len(fresh))
        if n_c == 1 and t < s.screen_z:
            return done(Verdict.DISCARD, "screen", f"first run does not look better (t={t:.2f} "
                        f"< {s.screen_z:g})")
        if t < 0:
            return done(Verdict.DISCARD, "futility", f"no longer looks better (t={t:.2f})")
        if candidate.at and incumbent.at and not fresh:
            return done(Verdict.MORE, "conditions", "looks better; measuring the best again "
                        "beside it, under the same conditions", "incumbent")
        look = (not timed or max(candidate.at) > max(fresh)
                or (n_c == 1 and len(fresh) == 1))
        ev["look"] = look
        if look and p <= level:
            return keep("test", f"better (p={p:.3g} <= {level:.3g})")
        if n_c >= s.max_runs:
            return done(Verdict.DISCARD, "cap", f"not confirmed in {n_c} runs (p={p:.3g} > "
                        f"{level:.3g})")
        if n_b <= n_c and len(fresh) < s.max_runs:
            return done(Verdict.MORE, "continue", f"not yet confirmed (p={p:.3g}); measuring "
                        f"the best again", "incumbent")
        return done(Verdict.MORE, "continue", f"not yet confirmed (p={p:.3g}); measuring it "
                    f"again", "candidate")


@dataclass
class _Judgement:
    """One decision's inputs (see `SequentialPolicy._judgement`) and its two ways out."""

    candidate: Sample
    incumbent: Sample
    settings: PolicySettings
    best_at: list[int]
    n_c: int
    n_b: int
    sigma: float
    df: float
    exact: bool
    d: float                  # the candidate's improvement over the best (> 0 better)
    fewer_lines: bool
    effect: float             # the negligible effect
    margin: float             # what d must exceed (-effect for a simpler candidate)
    fresh: list[int]          # the best's runs made after the candidate's first
    evidence: dict[str, Any]
    summary: str
    best: list[float] = field(default_factory=list)   # the best's runs compared with (`best_at`)

    def done(self, verdict: Verdict, rule: str, why: str, rerun: str | None = None) -> Decision:
        self.evidence["rule"] = rule
        return Decision(verdict, f"{why}; {self.summary}", rerun=rerun,  # type: ignore[arg-type]
                        evidence=self.evidence)

    def keep(self, rule: str, why: str) -> Decision:
        if self.d <= self.effect and self.fewer_lines:
            return self.done(Verdict.KEEP, "simpler", f"no worse with fewer lines "
                             f"({self.candidate.lines} < {self.incumbent.lines}); {why}")
        return self.done(Verdict.KEEP, rule, why)

    def without_a_test(self) -> Decision | None:
        """The decision when there is no noise to test against: a metric that repeats exactly,
        or no repeated run yet (then measure again whatever looks better); None otherwise."""
        d, effect, done = self.d, self.effect, self.done
        if self.exact:
            self.evidence.update(statistic=None, p_value=None)
            if d > effect or (self.fewer_lines and d >= -effect):
                return self.keep("exact", "better on a metric that repeats exactly"
                                 if d > effect else "equal on a metric that repeats exactly")
            return done(Verdict.DISCARD, "exact", "not better on a metric that repeats exactly")
        if self.df != 0:
            return None
        self.evidence.update(statistic=None, p_value=None)
        if d <= self.margin:
            return done(Verdict.DISCARD, "screen", "does not look better (noise not yet "
                        "measured)")
        if self.n_b < 2:
            return done(Verdict.MORE, "noise", "looks better; measuring the best again to "
                        "learn the noise", "incumbent")
        if self.n_c >= self.settings.max_runs:
            return done(Verdict.DISCARD, "cap", f"{self.n_c} runs without a noise estimate")
        return done(Verdict.MORE, "noise", "looks better; measuring it again to learn the "
                    "noise", "candidate")
