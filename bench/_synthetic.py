"""Synthetic targets whose truth is known, and a driver that runs a policy as the loop does.

The measurement model follows what the loop sees (checked against real runs of the quickstart
target by bench/policies.py):

- noise that changes with the metric's level: sd(L) = SIGMA * (L / TRUTH) ** level_power;
- seeds: a commit's k-th run uses seed k (as the loop sets AUTORESEARCH_SEED), and a share
  `seed_corr` of the noise variance follows the seed, shared by every commit run at that seed
  (runs of one commit at different seeds are independent; runs of two commits at one seed are
  correlated);
- drift: measuring conditions that move every run, as a function of the experiment number;
- line counts: every proposal changes the code size by a chosen number of lines, so the
  simplicity rule is exercised.

A proposal's effect is in noise sds at the incumbent's level (positive = better). The driver
follows the loop's contract: the baseline is measured until `policy.baseline_complete()`; each
candidate is measured once and `decide` is asked after every measurement; MORE schedules one
more run of the candidate or the incumbent (counted as an experiment); KEEP makes the candidate
the incumbent, carrying its runs; the best is re-measured when `policy.remeasure_best()` says
so; every commit with two or more runs is a replicate group; the first run a policy records in
its evidence (`first_run`) joins `PolicyContext.first_runs`, as the judge collects them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from autoresearch.config import PolicySettings
from autoresearch.policies import FirstRun, Policy, PolicyContext, Sample, Verdict
from autoresearch.policies.pairing import SeededGroup

TRUTH = 1.0    # true metric value of the baseline (minimised)
SIGMA = 0.01   # noise sd of one measurement at the baseline's level, metric units
LINES = 100    # code size of the baseline


@dataclass
class Noise:
    """How a measurement strays from the truth."""

    level_power: float = 1.0          # sd grows as (level / TRUTH) ** level_power
    seed_corr: float = 0.0            # share of the noise variance that follows the seed
    drift: Callable[[int], float] = field(default=lambda n: 0.0)   # offset at experiment n, in SIGMAs

    def sd(self, level: float) -> float:
        return SIGMA * (max(level, 1e-12) / TRUTH) ** self.level_power

    def potential(self, level: float) -> float:
        """Integral of dL / sd(L): true gains in noise sds at the level where they are made."""
        k = self.level_power
        if abs(k - 1.0) < 1e-12:
            return TRUTH / SIGMA * math.log(level)
        return TRUTH ** k / SIGMA * level ** (1 - k) / (1 - k)


@dataclass
class Proposal:
    effect: float      # true improvement, in noise sds at the incumbent's level
    kept: bool
    runs: int          # evaluation runs spent on it (its own and the incumbent's reruns)
    decided: bool      # False when the experiment budget ran out mid-decision
    rule: str = ""     # the rule that decided (evidence["rule"]), for diagnosis
    lines: int = 0     # its change of code size


@dataclass
class StreamResult:
    proposals: list[Proposal] = field(default_factory=list)
    experiments: int = 0
    drift: float = 0.0          # (true value of the best - reported best) / its sd; > 0 = optimistic
    truth_gain: float = 0.0     # true gain of the final best, in noise sds (see Noise.potential)
    gain_path: list[float] = field(default_factory=list)   # true gain after each experiment
    baseline: float = math.nan  # the mean of the baseline's measurements, as the run saw it
    reported: float = math.nan  # the best the policy reports at the end (its estimate)


def run_stream(policy: Policy, settings: PolicySettings, effects: Callable[[], float],
               rng: np.random.Generator, max_experiments: int = 200, noise: Noise | None = None,
               lines: Callable[[], int] = lambda: 0) -> StreamResult:
    """Run proposals drawn from `effects()` until `max_experiments` evaluation runs are spent."""
    noise = noise or Noise()
    ctx = PolicyContext(direction="minimize", settings=settings)
    commits: list[Sample] = []               # every commit, for the replicate groups
    seed_effects = rng.standard_normal(64)
    res = StreamResult()
    phi0 = noise.potential(TRUTH)

    def measure(truth: float, sample: Sample) -> None:
        k = sample.n                      # the loop's seed: how often this commit ran before
        sd = noise.sd(truth)
        z = (math.sqrt(noise.seed_corr) * seed_effects[k % seed_effects.size]
             + math.sqrt(1 - noise.seed_corr) * float(rng.standard_normal()))
        sample.values.append(truth + SIGMA * noise.drift(res.experiments) + sd * z)
        sample.at.append(res.experiments)
        sample.seeds.append(k)
        res.experiments += 1
        res.gain_path.append(phi0 - noise.potential(inc_truth))

    def groups() -> list[list[float]]:
        return [c.values for c in commits if c.n >= 2]

    def seeded() -> list[SeededGroup]:
        return [SeededGroup(tuple(c.values), tuple(c.seeds), tuple(c.at)) for c in commits if c.n >= 2]

    inc_truth = TRUTH
    inc = Sample([], lines=LINES)
    commits.append(inc)
    while not policy.baseline_complete(inc.values, settings) and res.experiments < max_experiments:
        measure(inc_truth, inc)
    res.baseline = sum(inc.values) / len(inc.values) if inc.values else math.nan
    while res.experiments < max_experiments:
        ctx.replicate_groups, ctx.seeded_groups = groups(), seeded()
        if policy.remeasure_best(inc, res.experiments, settings):
            measure(inc_truth, inc)
            continue
        effect = effects()
        truth = inc_truth - effect * noise.sd(inc_truth)
        dl = lines()
        cand = Sample([], lines=inc.lines + dl)
        commits.append(cand)
        measure(truth, cand)
        runs, decided, kept, rule = 1, False, False, ""
        while True:
            ctx.replicate_groups, ctx.seeded_groups = groups(), seeded()
            dec = policy.decide(cand, inc, ctx)
            if runs == 1 and (f := dec.evidence.get("first_run")) is not None:
                ctx.first_runs.append(FirstRun(**f))
            if dec.verdict is not Verdict.MORE:
                decided, kept = True, dec.verdict is Verdict.KEEP
                rule = str(dec.evidence.get("rule", ""))
                break
            if res.experiments >= max_experiments:
                break
            if dec.rerun == "incumbent":
                measure(inc_truth, inc)
            else:
                measure(truth, cand)
            runs += 1
        res.proposals.append(Proposal(effect, kept, runs, decided, rule, dl))
        if kept:
            cand.selection = cand.n          # the runs that selected it (the ledger knows them)
            cand.shrink = float(dec.evidence.get("shrink", 0.0))   # as summary.sample_from reads it
            inc, inc_truth = cand, truth
            if res.gain_path:
                res.gain_path[-1] = phi0 - noise.potential(inc_truth)
    ctx.replicate_groups, ctx.seeded_groups = groups(), seeded()
    reported = policy.estimate(inc, ctx).mean
    res.reported = reported if reported is not None else math.nan
    now = inc_truth + SIGMA * noise.drift(res.experiments)
    res.drift = (now - reported) / noise.sd(inc_truth) if reported is not None else math.nan
    res.truth_gain = phi0 - noise.potential(inc_truth)
    return res


# ---- training curves for pruning ---------------------------------------------------------------

PROGRESS = np.linspace(0.05, 1.0, 20)   # where a run prints `progress:` lines


def curve(final: float, height: float, rng: np.random.Generator, point_noise: float,
          shape: float = 2.0) -> np.ndarray:
    """loss(p) = final + height * (1 - p)^shape + noise: a run that learns toward `final`."""
    return (final + height * (1 - PROGRESS) ** shape
            + point_noise * rng.standard_normal(PROGRESS.size))
