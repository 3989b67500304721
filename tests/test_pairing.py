"""Paired comparisons at shared seeds (policies/pairing.py) and the default policy's use of them.

The share of the noise that follows the seed must be learned from the run's own commits, and
never be more than the data show: independent noise must read as (about) no share, and few data
as none. Noise that follows the seed must cancel between a candidate and the best run at one
seed, so a real improvement hidden under a large seed effect is seen; and pairing must not make
the policy keep more than 1% of no-effect proposals, whatever the seed explains.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from autoresearch.config import PolicySettings
from autoresearch.policies import FirstRun, PolicyContext, Sample, Verdict
from autoresearch.policies.pairing import (
    SeededGroup,
    SeedFit,
    paired_difference,
    paired_variance,
    seed_share,
)
from autoresearch.policies.posterior import PosteriorPolicy


def seeded_history(rng: np.random.Generator, rho: float, commits: int, runs: int,
                   sigma: float = 0.01) -> tuple[list[SeededGroup], np.ndarray]:
    """`commits` commits at levels near 1.0, each run at seeds 0..runs-1, a share rho of the
    noise variance following the seed (the same seed effects for every commit)."""
    u = rng.standard_normal(runs)
    groups = []
    for _ in range(commits):
        mu = 1.0 + 0.02 * rng.standard_normal()
        e = rng.standard_normal(runs)
        values = mu + sigma * (math.sqrt(rho) * u + math.sqrt(1 - rho) * e)
        groups.append(SeededGroup(tuple(values.tolist()), tuple(range(runs))))
    return groups, u


@pytest.mark.parametrize("rho, low, high", [(0.0, 0.0, 0.15), (0.5, 0.25, 0.6), (0.8, 0.6, 0.9)])
def test_the_seed_share_is_learned_from_the_run_and_never_above_what_the_data_show(rho, low, high):
    fits = [seed_share(seeded_history(np.random.default_rng(s), rho, 30, 5)[0])
            for s in range(8)]
    bound = np.mean([f.rho for f in fits])
    assert low <= bound <= high, fits
    # the share used is a lower confidence bound: at or under the estimate, every time
    assert all(f.rho <= f.rho_hat + 1e-12 for f in fits)


def test_few_commits_at_common_seeds_give_no_seed_share():
    groups, _ = seeded_history(np.random.default_rng(0), 0.9, 2, 2)
    assert seed_share(groups).rho == 0.0
    assert seed_share([]) == SeedFit()
    # runs at seeds no other commit ran at tell nothing about the seed
    lone = [SeededGroup((1.0, 1.01, 0.99), (0, 1, 2)), SeededGroup((0.5, 0.52), (7, 8))]
    assert seed_share(lone) == SeedFit()


def test_the_seed_effects_are_learned_and_their_error_shrinks_with_the_commits():
    small, u = seeded_history(np.random.default_rng(4), 0.8, 6, 4)
    large, _ = seeded_history(np.random.default_rng(4), 0.8, 60, 4)
    for groups in (small, large):
        fit = seed_share(groups)
        est = [fit.offset(s, 1.0) for s in range(4)]
        true = [0.01 * math.sqrt(0.8) * (u[s] - u[0]) for s in range(4)]
        assert np.corrcoef(est, true)[0, 1] > 0.9
    assert seed_share(large).errors[3] < 0.2 * seed_share(small).errors[3]


@pytest.mark.parametrize("cand_seeds, best_seeds, rho, expected", [
    ((0,), (0, 1, 2, 3), 0.0, 1 + 1 / 4),                 # independent: the plain variance
    # seeds not estimated (u random): GLS leans on the pair at seed 5, below the plain
    # mean's 1 + 1/4 - 0.7/2 = 0.9
    ((5,), (5, 6, 7, 8), 0.7, 0.5325),
    ((0,), (0,), 0.7, 2 * (1 - 0.7)),                     # one pair: the seed's part cancels
    ((0, 1), (0, 1), 0.5, 2 * (1 - 0.5) / 2),             # two pairs
    ((0,), (0, 1, 2, 3), 0.5, 0.5 * (1 + 1 / 4)),         # seed effects known: the rest alone
])
def test_the_paired_variance_keeps_only_the_noise_the_seed_does_not_share(
        cand_seeds, best_seeds, rho, expected):
    fit = SeedFit(rho, rho, 10.0, 0.0, {s: 0.0 for s in range(4)}, {s: 0.0 for s in range(4)})
    assert paired_variance(cand_seeds, best_seeds, fit) == pytest.approx(expected)


def test_a_seed_offset_learned_from_other_commits_is_taken_out_of_the_comparison():
    offsets = {0: 0.0, 1: -0.5, 2: 0.1, 3: 0.05}          # relative to seed 0
    fit = SeedFit(0.8, 0.8, 50.0, 0.0, offsets, {s: 0.0 for s in offsets})
    best = [1.0 + offsets[s] for s in range(4)]
    cand = [0.97 + offsets[1]]                            # 0.03 better, at seed 1
    d, var = paired_difference(cand, [1], best, [0, 1, 2, 3], fit, 1.0)
    plain, plain_var = paired_difference(cand, [1], best, [0, 1, 2, 3], SeedFit(), 1.0)
    assert d == pytest.approx(-0.03)
    assert abs(plain - (-0.03)) > 0.3
    assert var < plain_var == pytest.approx(1.25)


def decide_history(rho_hist: float, seeds: bool) -> tuple[Sample, Sample, PolicyContext]:
    """A run with a large seed effect at seed 0; the candidate is 2 sd better at that seed."""
    rng = np.random.default_rng(11)
    groups, u = seeded_history(rng, rho_hist, 40, 4)
    sigma = 0.01
    u0 = sigma * math.sqrt(0.8) * u                      # seed effects in metric units
    best = Sample([1.0 + u0[k] + 0.002 * (-1) ** k for k in range(4)], 100, at=[1, 2, 3, 4],
                  seeds=[0, 1, 2, 3] if seeds else [])
    cand = Sample([1.0 - 2 * sigma + u0[0]], 100, at=[10], seeds=[0] if seeds else [])
    c = PolicyContext("minimize", PolicySettings(), [list(g.values) for g in groups], [],
                      groups if seeds else [])
    return cand, best, c


def test_a_real_improvement_under_a_large_seed_effect_is_pursued_only_when_paired():
    policy = PosteriorPolicy()
    paired = policy.decide(*decide_history(0.8, seeds=True))
    blind = policy.decide(*decide_history(0.8, seeds=False))
    assert paired.evidence["paired"] is True and paired.evidence["seed_share"] > 0.5
    assert blind.evidence["paired"] is False and blind.evidence["seed_share"] == 0.0
    assert paired.evidence["se"] < 0.7 * blind.evidence["se"]
    assert paired.evidence["posterior_mean"] > blind.evidence["posterior_mean"]
    assert paired.verdict is Verdict.MORE and paired.rerun == "incumbent"


def test_the_best_is_paired_only_with_its_runs_of_the_current_conditions():
    """Drift: a run of the best at the candidate's seed but before a shift of the machine is
    not compared with; the comparison uses the current epoch alone."""
    policy = PosteriorPolicy()
    cand, best, c = decide_history(0.8, seeds=True)
    # the best's runs at seeds 0-3 were made before the machine got 30% slower; seeds 4-7 after
    best.values = [*best.values, *[1.3 + 0.001 * k for k in range(4)]]
    best.at = [*best.at, 5, 6, 7, 8]
    best.seeds = list(range(8))
    d = policy.decide(cand, best, c)
    assert d.evidence["best_since"] >= 5            # no run from before the shift
    assert d.evidence["best_mean"] > 1.29 and d.evidence["best_runs"] <= 4
    # the seed's estimated effects still apply, but no pair spans the shift
    assert d.evidence["effect"] == pytest.approx(1.3015 - cand.values[0], abs=0.02)


def seeded_noise_stream(rho: float, proposals: int, seed: int, sigma: float = 0.01,
                        better: float = 0.0) -> tuple[int, int]:
    """A driver as the loop runs the policy (bench/_synthetic.py in small): a share `better` of
    the proposals is 2 sd better, the rest has no effect; a commit's k-th run uses seed k, and a
    share rho of the noise follows the seed. Returns (no-effect proposals kept, of how many)."""
    rng = random.Random(seed)
    u = [rng.gauss(0, 1) for _ in range(64)]
    commits: list[Sample] = []
    clock = 0
    policy = PosteriorPolicy()

    truth: dict[int, float] = {}

    def run(s: Sample) -> None:
        nonlocal clock
        k = s.n
        z = math.sqrt(rho) * u[k] + math.sqrt(1 - rho) * rng.gauss(0, 1)
        s.values.append(truth[id(s)] + sigma * z)
        s.at.append(clock)
        s.seeds.append(k)
        clock += 1

    def context(firsts: list[FirstRun]) -> PolicyContext:
        return PolicyContext("minimize", PolicySettings(),
                             [list(s.values) for s in commits if s.n >= 2], list(firsts),
                             [SeededGroup(tuple(s.values), tuple(s.seeds), tuple(s.at))
                              for s in commits if s.n >= 2])

    best = Sample([], 100)
    truth[id(best)] = 1.0
    commits.append(best)
    for _ in range(3):
        run(best)
    firsts: list[FirstRun] = []
    keeps = nulls = 0
    for _ in range(proposals):
        if clock - max(best.at) >= 20:
            run(best)
        cand = Sample([], 100)
        null = rng.random() >= better
        nulls += null
        truth[id(cand)] = truth[id(best)] - (0.0 if null else 2 * sigma)
        commits.append(cand)
        run(cand)
        first = True
        while True:
            d = policy.decide(cand, best, context(firsts))
            if first and "first_run" in d.evidence:
                firsts.append(FirstRun(**d.evidence["first_run"]))
                first = False
            if d.verdict is not Verdict.MORE:
                break
            run(best if d.rerun == "incumbent" else cand)
        if d.verdict is Verdict.KEEP:
            keeps += null
            cand.selection = cand.n
            cand.shrink = float(d.evidence.get("shrink", 0.0))
            best = cand
    return keeps, nulls


@pytest.mark.parametrize("rho", [0.0, 0.7])
def test_pairing_keeps_no_more_than_one_percent_of_no_effect_proposals(rho):
    runs = [seeded_noise_stream(rho, 250, seed=s, better=0.2) for s in range(4)]
    keeps, nulls = sum(k for k, _ in runs), sum(n for _, n in runs)
    assert keeps <= 0.01 * nulls, f"{keeps} of {nulls} no-effect proposals kept at seed share {rho}"


def test_the_run_state_hands_the_policy_each_runs_seed(tmp_path):
    """The loop records each run's AUTORESEARCH_SEED; the samples and the replicate groups the
    policy sees carry it, so runs at one seed can be paired."""
    from autoresearch.experiment import Kind, Status
    from autoresearch.ledger import Ledger
    from autoresearch.state import RunState

    ledger = Ledger(tmp_path / "ledger.db")
    s = RunState(ledger, ledger.create_run("t", "c0", "score", "minimize", "a", "p", {}))
    base = s.add(kind=Kind.BASELINE, status=Status.RUNNING, tree_sha="t0", commit_sha="c0")
    s.update(base, status=Status.KEEP, metric=2.0, seed=0)
    rep = s.add(kind=Kind.REPEAT, status=Status.RUNNING, tree_sha="t0", candidate_of=base.id)
    s.update(rep, status=Status.REPEAT, metric=2.2, seed=1)
    cand = s.add(kind=Kind.CANDIDATE, status=Status.RUNNING, tree_sha="t1")
    s.update(cand, status=Status.PENDING, metric=1.9, seed=0)
    assert s.sample(base).seeds == [0, 1] and s.sample(cand).seeds == [0]
    (group,) = s.seeded_groups()
    assert group == SeededGroup((2.0, 2.2), (0, 1), (base.seq, rep.seq))
    again = RunState.load(ledger, s.run)
    assert again.seeded_groups() == s.seeded_groups()


SEEDED_EVALUATE = '''"""The evaluator (LOCKED): most of its noise follows AUTORESEARCH_SEED, as a seeded
training run's does; a little follows the experiment (the machine)."""
import os, random
seed = random.Random(1000 + int(os.environ["AUTORESEARCH_SEED"])).gauss(0.0, 0.3)
machine = random.Random(int(os.environ["AUTORESEARCH_EXPERIMENT"])).gauss(0.0, 0.05)
print(f"score: {float(open('out.txt').read()) + seed + machine:.6f}")
'''


def test_the_loop_runs_a_commits_kth_run_at_seed_k_and_the_policy_pairs_them(tmp_path):
    from conftest import ar, build_target, ledger_experiments, proposal, write_script

    root = build_target(tmp_path, value=10.0, files={"evaluate.py": SEEDED_EVALUATE})
    steps = [proposal(10.0, description=f"no effect {k}", extra=f"IDEA_{k} = 'none'\n")
             for k in range(6)]
    steps.insert(3, proposal(9.0, description="a real improvement (3 seed sds)"))
    script = write_script(tmp_path / "steps.jsonl", steps)
    p = ar(root, "run", "--tag", "t", "--agent", f"script:{script}", "--max-experiments", "16")
    assert p.returncode == 0, p.stdout + p.stderr
    rows = ledger_experiments(root, "t")
    by_tree: dict[str, list] = {}
    for e in sorted(rows, key=lambda e: e.seq):
        if e.metric is not None:
            by_tree.setdefault(e.tree_sha, []).append(e.seed)
    # a commit's k-th run gets seed k: candidates and the best share seeds 0, 1, ...
    assert all(seeds == list(range(len(seeds))) for seeds in by_tree.values()), by_tree
    decided = [e for e in rows if (e.decision or {}).get("evidence", {}).get("seed_share")
               is not None]
    assert decided, "no decision went through the posterior rule"
    # the seeds explain most of this target's noise: once the run has seen it, it pairs
    assert any(e.decision["evidence"]["paired"] for e in decided)
    kept = [e.description for e in rows if e.status.value == "keep"]
    assert "a real improvement (3 seed sds)" in kept and not any(
        k.startswith("no effect") for k in kept), kept
