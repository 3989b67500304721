"""The default `noise-aware` policy (policies/posterior.py) and its prior (policies/prior.py).

The prior is learned from the run's own first runs: the fit must recover a known mixture. The
posterior rule must keep no more than 1% of no-effect proposals, keep a clear improvement, spend
runs only where they can pay, and explain each decision. The guards it shares with
noise-aware-v2 (deterministic metrics, conditions, local noise) are pinned for both policies in
tests/test_sequential_policy.py.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from autoresearch.config import PolicySettings
from autoresearch.policies import FirstRun, PolicyContext, Sample, Verdict, make_policy
from autoresearch.policies.posterior import PosteriorPolicy, futures, run_prior
from autoresearch.policies.prior import (
    DEFAULT_PRIOR,
    GRID,
    PSEUDO_PROPOSALS,
    ZERO,
    fit_prior,
    learned_prior,
    posterior,
)


def ctx(groups, first_runs=(), direction="minimize", **settings) -> PolicyContext:
    return PolicyContext(direction, PolicySettings(**settings), [list(g) for g in groups],
                         list(first_runs))


def test_the_default_policy_decides_on_a_posterior():
    assert isinstance(make_policy("noise-aware"), PosteriorPolicy)
    assert make_policy("noise-aware-v2").name == "noise-aware-v2"


def test_the_prior_fit_recovers_a_known_mixture_of_effects():
    rng = np.random.default_rng(3)
    n = 3000
    u = rng.random(n)
    theta = np.where(u < 0.6, 0.0, np.where(u < 0.85, -1.5, 2.0))   # 60% none, 25% worse, 15% better
    v = np.full(n, 1.0 + 1.0 / 3)                                      # first run vs 3 runs of the best
    z = theta + np.sqrt(v) * rng.standard_normal(n)
    w = fit_prior(z, v)
    assert w.sum() == pytest.approx(1.0)
    # a first run cannot tell "no effect" from a half-sd effect either way: what is recovered
    # is the mass at or near zero
    assert w[np.abs(GRID) <= 0.75].sum() == pytest.approx(0.6, abs=0.08)
    assert w[ZERO] > 0.35
    better = GRID > 0.75
    assert w[better].sum() == pytest.approx(0.15, abs=0.05)
    assert (w[better] * GRID[better]).sum() / w[better].sum() == pytest.approx(2.0, abs=0.4)
    worse = GRID < -0.75
    assert (w[worse] * GRID[worse]).sum() / w[worse].sum() == pytest.approx(-1.5, abs=0.4)


def test_the_prior_starts_at_the_default_and_trusts_the_history_as_it_grows():
    assert np.allclose(learned_prior([], []).weights, DEFAULT_PRIOR)
    assert np.allclose(learned_prior([3.0] * 9, [1.0] * 9).weights, DEFAULT_PRIOR)  # < 10 seen
    few = learned_prior([0.0] * 10, [1.3] * 10)
    many = learned_prior([0.0] * 200, [1.3] * 200)
    assert DEFAULT_PRIOR[ZERO] < few.null < many.null
    assert many.null > 0.85 and many.proposals == 200
    # the default weighs as much as PSEUDO_PROPOSALS proposals: the better share it gives
    # survives in proportion
    assert many.better >= DEFAULT_PRIOR[GRID > 0].sum() * PSEUDO_PROPOSALS / 220 - 1e-9
    # without the pseudo-proposals (the NPMLE) the same history leaves less to "better"
    assert fit_prior([0.0] * 200, [1.3] * 200, pseudo=0)[GRID > 0].sum() < many.better


def test_the_posterior_moves_toward_what_was_observed():
    prior = DEFAULT_PRIOR
    up = posterior(prior, 3.0, 0.5)
    flat = posterior(prior, 0.0, 0.5)
    assert up @ GRID > 2.0 and up[ZERO] < 0.05
    assert flat[ZERO] > prior[ZERO]
    # a noise estimate from few runs (Student's t) is less sure than a known noise
    assert posterior(prior, 3.0, 0.5, df=2)[ZERO] > up[ZERO]


def test_a_run_learns_its_prior_from_the_first_runs_it_has_seen():
    noise_runs = [FirstRun(effect=0.01 * g, sigma=0.01, best_runs=3)
                  for g in np.random.default_rng(0).standard_normal(100) * math.sqrt(4 / 3)]
    p = run_prior(ctx([], noise_runs))
    assert p.proposals == 100
    assert p.null > DEFAULT_PRIOR[ZERO] + 0.15 and p.better < DEFAULT_PRIOR[GRID > 0].sum()


def simulate_noise_stream(policy, proposals, rng, sigma=0.01, baseline=3, remeasure=20):
    """A small driver as the loop runs a policy: every proposal has no effect. Returns the keeps."""
    groups: list[list[float]] = []
    best = Sample([1.0 + sigma * rng.gauss(0, 1) for _ in range(baseline)], 100,
                  at=list(range(baseline)))
    groups.append(best.values)
    clock = baseline
    firsts: list[FirstRun] = []
    keeps = 0
    for _ in range(proposals):
        if clock - max(best.at) >= remeasure:
            best.values.append(1.0 + sigma * rng.gauss(0, 1))
            best.at.append(clock)
            clock += 1
        cand = Sample([1.0 + sigma * rng.gauss(0, 1)], 100, at=[clock])
        clock += 1
        groups.append(cand.values)
        looks = 0
        while True:
            c = PolicyContext("minimize", PolicySettings(),
                              [g for g in groups if len(g) >= 2], list(firsts))
            d = policy.decide(cand, best, c)
            if looks == 0 and "first_run" in d.evidence:
                firsts.append(FirstRun(**d.evidence["first_run"]))
            looks += 1
            if d.verdict is not Verdict.MORE:
                break
            who = best if d.rerun == "incumbent" else cand
            who.values.append(1.0 + sigma * rng.gauss(0, 1))
            who.at.append(clock)
            clock += 1
        if d.verdict is Verdict.KEEP:
            keeps += 1
            best = Sample(list(cand.values), 100, selection=cand.n, at=list(cand.at))
    return keeps


def test_no_more_than_one_percent_of_no_effect_proposals_are_kept():
    keeps = simulate_noise_stream(PosteriorPolicy(), 400, random.Random(7))
    assert keeps <= 4, f"{keeps} of 400 no-effect proposals kept"


def test_a_clear_improvement_is_kept_after_a_run_of_the_best_beside_it():
    policy = PosteriorPolicy()
    rng = random.Random(2)
    groups = [[1.0 + 0.01 * rng.gauss(0, 1) for _ in range(6)] for _ in range(5)]
    best = Sample([1.0, 1.004, 0.996, 1.0], 100, at=[1, 2, 3, 4])
    cand = Sample([0.95], 100, at=[10])             # 5 sd better
    d = policy.decide(cand, best, ctx(groups))
    assert d.verdict is Verdict.MORE and d.rerun == "incumbent" and d.evidence["rule"] == "conditions"
    best.values.append(1.001)
    best.at.append(11)
    d = policy.decide(cand, best, ctx(groups))
    assert d.verdict is Verdict.KEEP and d.evidence["rule"] == "posterior", d.reason
    assert d.evidence["posterior_bad"] < 0.05


def test_a_bad_first_run_costs_one_run_and_the_evidence_explains_it():
    policy = PosteriorPolicy()
    groups = [[1.0, 1.01, 0.99, 1.0], [0.5, 0.51, 0.49]]
    best = Sample([1.0, 1.01, 0.99, 1.0], 10, at=[1, 2, 3, 4])
    d = policy.decide(Sample([1.02], 10, at=[10]), best, ctx(groups))
    assert d.verdict is Verdict.DISCARD and d.evidence["rule"] == "screen"
    ev = d.evidence
    assert ev["posterior_bad"] > 0.9 and ev["posterior_mean"] < 0
    assert ev["keep_value"] < 0 and ev["go_value"] < 0
    assert set(ev["prior"]) >= {"proposals", "no_effect", "better", "worse"}
    assert ev["first_run"]["best_runs"] == 4 and ev["first_run"]["effect"] < 0
    assert "P(no better)" in d.reason


def test_the_runs_still_to_come_are_balanced_and_a_keep_waits_for_the_best():
    plans = futures(1, 3, 0, 4, need_fresh=True)
    assert plans[0] == ["incumbent"] and plans[1] == ["candidate", "incumbent"]
    assert all("incumbent" in p for p in plans)
    assert all(p.count("candidate") <= 3 and p.count("incumbent") <= 4 for p in plans)
    assert futures(4, 4, 4, 4, need_fresh=False) == []
    assert futures(2, 2, 1, 4, need_fresh=False)[0] == ["incumbent"]   # the best on a tie


@pytest.mark.parametrize("effect, kept_at", [
    (0.020, {0.05}),                      # 2 sd better on 2 runs: only a lax alpha keeps it
    (0.025, {0.01, 0.05}),
    (0.035, {0.001, 0.01, 0.05}),         # clear enough for the strictest
])
def test_alpha_sets_how_sure_a_keep_must_be(effect, kept_at):
    rng = random.Random(2)
    groups = [[1.0 + 0.01 * rng.gauss(0, 1) for _ in range(6)] for _ in range(5)]
    kept = set()
    for alpha in (0.001, 0.01, 0.05):
        best = Sample([1.0, 1.004, 0.996, 1.0, 1.001], 100, at=[1, 2, 3, 4, 11])
        cand = Sample([1 - effect, 1 - effect + 0.002], 100, at=[10, 12])
        d = PosteriorPolicy().decide(cand, best, ctx(groups, alpha=alpha))
        assert d.evidence["keep_penalty"] == pytest.approx(2.0 * 0.01 / alpha)
        if d.verdict is Verdict.KEEP:
            kept.add(alpha)
        else:
            assert d.verdict is Verdict.MORE      # not sure enough yet: measure again
    assert kept == kept_at
