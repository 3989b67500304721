"""Diagnostic: where a policy's evaluation runs go on one of bench/policies.py's streams, and
which proposals it keeps by their true effect.

    python bench/policy_breakdown.py                          # the default, mixed stream
    python bench/policy_breakdown.py --policy greedy
    python bench/policy_breakdown.py --alpha 0.015            # the default's keep penalty: 2 x 0.01 / alpha

Drives the policy exactly as bench/policies.py does (bench/_synthetic.py) and counts every
run: the baseline's, each proposal's first run, the candidate's further runs, the best's runs
beside a candidate, and the best's scheduled re-measurements; then, per true effect, how many
proposals were kept and how many runs each cost, and the median runs to each milestone.

A diagnostic, not a benchmark: no target, no PASS/FAIL (bench/policies.py has the targets).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _synthetic as syn  # noqa: E402
import policies as pb  # noqa: E402

from autoresearch.policies import Verdict, make_policy  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="noise-aware",
                    choices=("greedy", "noise-aware", "noise-aware-v1", "noise-aware-v2"))
    ap.add_argument("--stream", default="mixed",
                    choices=("mixed", "sparse", "slightly-worse", "simpler-worse"))
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--experiments", type=int, default=600)
    ap.add_argument("--alpha", type=float, default=None, help="the policy's alpha (default its own)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    settings = pb.SETTINGS[a.policy]
    if a.alpha is not None:
        settings = settings.model_copy(update={"alpha": a.alpha})
    shorter = a.stream == "simpler-worse"   # its worse proposals are the shorter ones
    rng = np.random.default_rng(a.seed)
    draw = pb.effects(a.stream, rng)
    runs: collections.Counter[str] = collections.Counter()
    by_effect: dict[float, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    reach = []
    for _ in range(a.reps):
        policy = make_policy(a.policy)
        decide, remeasure = policy.decide, policy.remeasure_best

        def counted_remeasure(inc, n, s, remeasure=remeasure):
            again = remeasure(inc, n, s)
            runs["re-measurements of the best"] += bool(again)
            return again

        def counted_decide(cand, inc, ctx, decide=decide):
            d = decide(cand, inc, ctx)
            if d.verdict is Verdict.MORE:
                runs["runs of the best beside a candidate" if d.rerun == "incumbent"
                     else "further runs of a candidate"] += 1
            return d

        policy.remeasure_best, policy.decide = counted_remeasure, counted_decide
        last = [0.0]

        def effect(last=last):
            last[0] = draw()
            return last[0]

        def size(last=last):
            return (-1 if last[0] < 0 else 1) if shorter else 0

        res = syn.run_stream(policy, settings, effect, rng, a.experiments, pb.NOISE, lines=size)
        runs["evaluation runs"] += res.experiments
        runs["first runs of proposals"] += len(res.proposals)
        for p in res.proposals:
            entry = by_effect[round(p.effect) if p.effect <= 0 else p.effect]
            entry[0] += 1
            entry[1] += p.kept
            entry[2] += p.runs
        path = np.asarray(res.gain_path)
        reach.append([int(np.argmax(path >= m)) + 1 if (path >= m).any() else np.inf
                      for m in pb.MILESTONES])
    alpha = f", alpha {settings.alpha:g}" if a.policy != "greedy" else ""
    print(f"{a.policy}{alpha} on the {a.stream} stream: {a.reps} simulated runs of "
          f"{a.experiments} evaluation runs")
    for what in ("evaluation runs", "first runs of proposals", "further runs of a candidate",
                 "runs of the best beside a candidate", "re-measurements of the best"):
        print(f"  {what:38s} {runs[what]:7d}")
    print("  true effect (sd; worse ones rounded)   proposals   kept   runs each")
    for eff in sorted(by_effect):
        n, kept, spent = by_effect[eff]
        print(f"  {eff:+6.1f}                                 {n:7d}  {kept / n:6.1%}   {spent / n:5.2f}")
    med = np.median(np.asarray(reach, dtype=float), axis=0)
    print("  runs to " + ", ".join(f"{m} sd: {v:.0f}" for m, v in zip(pb.MILESTONES, med,
                                                                     strict=True)) + " (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
