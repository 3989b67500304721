"""The noise-aware policy: each decision rule on small synthetic cases with fixed random streams."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autoresearch.config import PolicySettings
from autoresearch.policies import PolicyContext, Sample, Verdict, make_policy
from autoresearch.policies.noise_aware import NoiseAwarePolicy, pooled_noise

SIGMA = 0.01
EVIDENCE = {"runs", "best_runs", "mean", "best_mean", "sd", "best_sd", "sigma", "sigma_df",
            "effect", "statistic", "z", "p_value", "threshold", "llr", "rule"}


def noise_groups(seed: int = 0, groups: int = 10, n: int = 3) -> list[list[float]]:
    """Replicate groups of earlier commits: plenty of df for the pooled noise."""
    rng = np.random.default_rng(seed)
    return [list(5.0 + SIGMA * rng.standard_normal(n)) for _ in range(groups)]


def ctx(direction: str = "minimize", groups: list[list[float]] | None = None,
        **settings: float) -> PolicyContext:
    return PolicyContext(direction, PolicySettings(**settings),
                         noise_groups() if groups is None else groups)


BEST = Sample([1.0 + SIGMA * x for x in (0.3, -0.2, -0.1)], lines=100)


def test_registered_under_its_name_and_measures_the_baseline_several_times():
    policy = make_policy("noise-aware-v1")
    assert isinstance(policy, NoiseAwarePolicy)
    assert policy.baseline_runs(PolicySettings()) == 3
    assert policy.baseline_runs(PolicySettings(baseline_runs=5)) == 5


def test_pooled_noise_pools_within_group_spread():
    sigma, df = pooled_noise([[1.0, 3.0], [10.0, 12.0, 14.0], [7.0]])
    assert df == 3
    assert sigma == pytest.approx(math.sqrt((2 + 8) / 3))
    assert pooled_noise([[1.0]]) == (0.0, 0.0)
    assert pooled_noise([[1.0]], floor=0.5) == (0.5, math.inf)


def test_a_clearly_worse_candidate_is_discarded_after_one_run():
    d = NoiseAwarePolicy().decide(Sample([1.0 + 2 * SIGMA], 100), BEST, ctx())
    assert d.verdict is Verdict.DISCARD
    assert d.evidence["rule"] == "screen"


def test_a_candidate_that_looks_better_is_measured_again():
    d = NoiseAwarePolicy().decide(Sample([1.0 - 2 * SIGMA], 100), BEST, ctx())
    assert d.verdict is Verdict.MORE and d.rerun == "candidate"
    assert d.evidence["rule"] == "continue"


def test_a_confirmed_improvement_is_kept():
    rng = np.random.default_rng(1)
    cand = Sample([], 100)
    policy = NoiseAwarePolicy()
    for _ in range(6):   # true improvement of 4 sd
        cand.values.append(1.0 - 4 * SIGMA + SIGMA * float(rng.standard_normal()))
        d = policy.decide(cand, BEST, ctx())
        if d.verdict is not Verdict.MORE:
            break
    assert d.verdict is Verdict.KEEP and d.evidence["rule"] == "sprt-keep"
    assert cand.n >= 2   # never kept on one run
    assert d.evidence["p_value"] <= d.evidence["threshold"]


def test_one_lucky_run_is_not_enough():
    d = NoiseAwarePolicy().decide(Sample([1.0 - 10 * SIGMA], 100), BEST, ctx())
    assert d.verdict is Verdict.MORE


def test_the_cap_on_runs_forces_a_decision():
    # a middling candidate: better by about 1 sd in every run, never decided by the SPRT
    cand = Sample([1.0 - 1.2 * SIGMA, 1.0 - 0.5 * SIGMA, 1.0 - 1.5 * SIGMA], 100)
    d = NoiseAwarePolicy().decide(cand, BEST, ctx(max_runs=3))
    assert d.verdict is Verdict.DISCARD and d.evidence["rule"] == "cap"
    strong = Sample([1.0 - 3.5 * SIGMA, 1.0 - 2.0 * SIGMA, 1.0 - 3.0 * SIGMA], 100)
    d = NoiseAwarePolicy().decide(strong, BEST, ctx(max_runs=3, power_beta=0.4))
    assert d.verdict is Verdict.KEEP and d.evidence["rule"] in ("cap-keep", "sprt-keep")


def test_every_candidate_terminates_within_the_cap():
    rng = np.random.default_rng(2)
    policy = NoiseAwarePolicy()
    for effect in (0.0, 1.0, 2.0):
        for _ in range(20):
            cand = Sample([], 100)
            while True:
                cand.values.append(1.0 - effect * SIGMA + SIGMA * float(rng.standard_normal()))
                d = policy.decide(cand, BEST, ctx(max_runs=4))
                if d.verdict is not Verdict.MORE:
                    break
                assert cand.n < 4
            assert cand.n <= 4


def test_min_effect_in_units_and_in_sigmas():
    cand = Sample([1.0 - 3 * SIGMA, 1.0 - 3.2 * SIGMA, 1.0 - 2.8 * SIGMA, 1.0 - 3.1 * SIGMA], 100)
    assert NoiseAwarePolicy().decide(cand, BEST, ctx()).verdict is Verdict.KEEP
    d = NoiseAwarePolicy().decide(cand, BEST, ctx(min_effect=5 * SIGMA))
    assert d.verdict is Verdict.DISCARD and d.evidence["min_effect"] == pytest.approx(5 * SIGMA)
    d = NoiseAwarePolicy().decide(cand, BEST, ctx(min_effect_sigmas=5.0))
    assert d.verdict is Verdict.DISCARD
    assert d.evidence["min_effect"] == pytest.approx(5 * d.evidence["sigma"])


def test_simpler_and_no_worse_is_kept_but_simpler_and_worse_is_not():
    same = Sample([BEST.mean - 0.1 * SIGMA], 80)
    d = NoiseAwarePolicy().decide(same, BEST, ctx())
    assert d.verdict is Verdict.KEEP and d.evidence["rule"] == "simpler"
    assert NoiseAwarePolicy().decide(Sample([BEST.mean - 0.1 * SIGMA], 120), BEST,
                                     ctx()).verdict is Verdict.DISCARD
    worse = Sample([BEST.mean + 0.5 * SIGMA], 80)
    assert NoiseAwarePolicy().decide(worse, BEST, ctx()).verdict is Verdict.DISCARD
    # worse by less than the declared minimum effect counts as "no worse"
    d = NoiseAwarePolicy().decide(worse, BEST, ctx(min_effect=SIGMA))
    assert d.verdict is Verdict.KEEP and d.evidence["rule"] == "simpler"


def test_maximize_direction_mirrors_minimize():
    best = Sample([2.0 - v + 2.0 for v in BEST.values], 100)   # mirrored around 2
    up = Sample([best.mean + 2 * SIGMA], 100)
    down = Sample([best.mean - 2 * SIGMA], 100)
    assert NoiseAwarePolicy().decide(up, best, ctx("maximize")).verdict is Verdict.MORE
    assert NoiseAwarePolicy().decide(down, best, ctx("maximize")).verdict is Verdict.DISCARD
    assert NoiseAwarePolicy().decide(down, best, ctx("minimize")).verdict is Verdict.MORE


def test_evidence_holds_everything_show_prints():
    d = NoiseAwarePolicy().decide(Sample([1.0 - 2 * SIGMA, 1.0 - 1.5 * SIGMA], 100), BEST, ctx())
    assert EVIDENCE <= set(d.evidence)
    assert d.evidence["runs"] == 2 and d.evidence["best_runs"] == 3
    assert d.evidence["sigma_df"] == 20 + 2 + 1   # 10 groups of 3, the incumbent, the candidate


def test_the_noise_is_pooled_from_the_replicate_groups():
    cand = Sample([1.0 - 2.5 * SIGMA], 100)
    quiet = NoiseAwarePolicy().decide(cand, BEST, ctx())
    loud = NoiseAwarePolicy().decide(cand, BEST, ctx(groups=[[5.0, 5.1], [6.0, 5.8, 6.1]]))
    assert quiet.verdict is Verdict.MORE and loud.verdict is Verdict.DISCARD
    assert loud.evidence["sigma"] > 5 * quiet.evidence["sigma"]
    floored = NoiseAwarePolicy().decide(cand, BEST, ctx(noise_floor=1.0))
    assert floored.evidence["sigma"] == 1.0 and floored.verdict is Verdict.DISCARD


def test_a_metric_that_repeats_exactly_is_compared_exactly():
    best = Sample([1.0, 1.0, 1.0], 100)
    groups = [[1.0, 1.0, 1.0]]
    assert NoiseAwarePolicy().decide(Sample([0.999], 100), best,
                                     ctx(groups=groups)).verdict is Verdict.KEEP
    assert NoiseAwarePolicy().decide(Sample([1.001], 100), best,
                                     ctx(groups=groups)).verdict is Verdict.DISCARD


def test_without_any_noise_estimate_a_promising_candidate_is_measured_again():
    best = Sample([1.0], 100)
    d = NoiseAwarePolicy().decide(Sample([0.99], 100), best, ctx(groups=[]))
    assert d.verdict is Verdict.MORE and d.rerun == "candidate"
    assert NoiseAwarePolicy().decide(Sample([1.01], 100), best,
                                     ctx(groups=[])).verdict is Verdict.DISCARD


def test_a_new_best_is_measured_afresh_and_reported_by_its_fresh_runs():
    policy = NoiseAwarePolicy()
    rng = np.random.default_rng(3)
    cand = Sample([], 100)
    while True:
        cand.values.append(1.0 - 4 * SIGMA + SIGMA * float(rng.standard_normal()))
        if policy.decide(cand, BEST, ctx()).verdict is not Verdict.MORE:
            break
    selection = list(cand.values)
    new_best = Sample(list(cand.values), 100)
    nxt = Sample([1.0], 100)
    for i in range(3):   # refresh_runs, whatever the values
        d = policy.decide(nxt, new_best, ctx())
        assert d.verdict is Verdict.MORE and d.rerun == "incumbent" and d.evidence["rule"] == "refresh"
        new_best.values.append(0.97 + 0.001 * i)
    d = policy.decide(nxt, new_best, ctx())
    assert d.verdict is not Verdict.MORE or d.rerun == "candidate"
    est = policy.estimate(new_best, ctx())
    assert est["n"] == 3 and est["selection_runs"] == len(selection)
    assert est["mean"] == pytest.approx(0.971)
    assert est["sem"] == pytest.approx(est["sigma"] / math.sqrt(3))


def test_false_keeps_stay_rare_on_no_effect_candidates():
    rng = np.random.default_rng(4)
    keeps = 0
    for _ in range(300):
        policy = NoiseAwarePolicy()
        best = Sample(list(1.0 + SIGMA * rng.standard_normal(3)), 100)
        cand = Sample([], 100)
        while True:
            cand.values.append(1.0 + SIGMA * float(rng.standard_normal()))
            d = policy.decide(cand, best, ctx())
            if d.verdict is not Verdict.MORE:
                break
        keeps += d.verdict is Verdict.KEEP
    assert keeps / 300 <= 0.05
