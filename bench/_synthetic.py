"""Synthetic targets whose truth is known, and a driver that runs a policy as the loop does.

A commit's measurement is its true value plus Gaussian noise of a chosen sd. A proposal changes
the incumbent's true value by a chosen effect (in noise sds, positive = better). The driver
follows the loop's contract: the baseline is measured `policy.baseline_runs()` times; each
candidate is measured once and `decide` is asked after every measurement; MORE schedules one
more run of the candidate or the incumbent (counted as an experiment); KEEP makes the candidate
the incumbent, carrying its runs; every commit with two or more runs is a replicate group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from autoresearch.config import PolicySettings
from autoresearch.policies import Policy, PolicyContext, Sample, Verdict

TRUTH = 1.0    # true metric value of the baseline (minimised)
SIGMA = 0.01   # noise sd of one measurement, metric units


@dataclass
class Proposal:
    effect: float      # true improvement, in noise sds
    kept: bool
    runs: int          # evaluation runs spent on it (its own and the incumbent's reruns)
    decided: bool      # False when the experiment budget ran out mid-decision
    rule: str = ""     # the rule that decided (evidence["rule"]), for diagnosis


@dataclass
class StreamResult:
    proposals: list[Proposal] = field(default_factory=list)
    experiments: int = 0
    drift: float = 0.0         # (true value of the best - reported best) / SIGMA; > 0 = optimistic
    truth_gain: float = 0.0    # (TRUTH - true value of the best) / SIGMA


def run_stream(policy: Policy, settings: PolicySettings, effects: Callable[[], float],
               rng: np.random.Generator, max_experiments: int = 200,
               sigma: float = SIGMA) -> StreamResult:
    """Run proposals drawn from `effects()` until `max_experiments` evaluation runs are spent."""
    ctx = PolicyContext(direction="minimize", settings=settings)
    commits: list[list[float]] = []          # runs of every commit, for the replicate groups

    def measure(truth: float) -> float:
        return truth + sigma * float(rng.standard_normal())

    def groups() -> list[list[float]]:
        return [v for v in commits if len(v) >= 2]

    res = StreamResult()
    inc_truth = TRUTH
    inc = Sample([measure(inc_truth) for _ in range(policy.baseline_runs(settings))], lines=100)
    commits.append(inc.values)
    res.experiments = inc.n
    while res.experiments < max_experiments:
        effect = effects()
        truth = inc_truth - effect * sigma
        cand = Sample([measure(truth)], lines=100)
        commits.append(cand.values)
        res.experiments += 1
        runs, decided, kept, rule = 1, False, False, ""
        while True:
            ctx.replicate_groups = groups()
            dec = policy.decide(cand, inc, ctx)
            if dec.verdict is not Verdict.MORE:
                decided, kept = True, dec.verdict is Verdict.KEEP
                rule = str(dec.evidence.get("rule", ""))
                break
            if res.experiments >= max_experiments:
                break
            if dec.rerun == "incumbent":
                inc.values.append(measure(inc_truth))
            else:
                cand.values.append(measure(truth))
            res.experiments += 1
            runs += 1
        res.proposals.append(Proposal(effect, kept, runs, decided, rule))
        if kept:
            inc, inc_truth = cand, truth
    ctx.replicate_groups = groups()
    reported = policy.estimate(inc, ctx).mean
    res.drift = (inc_truth - reported) / sigma
    res.truth_gain = (TRUTH - inc_truth) / sigma
    return res


# ---- training curves for pruning ---------------------------------------------------------------

PROGRESS = np.linspace(0.05, 1.0, 20)   # where a run prints `progress:` lines


def curve(final: float, height: float, rng: np.random.Generator, point_noise: float,
          shape: float = 2.0) -> np.ndarray:
    """loss(p) = final + height * (1 - p)^shape + noise: a run that learns toward `final`."""
    return (final + height * (1 - PROGRESS) ** shape
            + point_noise * rng.standard_normal(PROGRESS.size))
