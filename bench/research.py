"""Benchmark of the research-organisation tools (issue 13): how often `compare` cries wolf, and
(when bench/_research_tree.py is present) tree search against the ratchet on a two-step problem.

    python bench/research.py [--comparisons 2000] [--repeats 4] [--experiments 40] [--seed 0]
                             [--tree-reps 8] [--only compare|tree]

Compare half: two IDENTICAL organisations are compared many times; each comparison's runs are
simulated with bench/_synthetic.py's driver (the real noise-aware policy deciding every keep,
repeat and re-measurement, as the loop does, on a noisy synthetic target whose proposals have
random true effects), and each comparison is judged by the real statistics of `autoresearch
compare` (compare.analyse: Welch's t test on the per-repeat improvement, Holm-corrected, at
alpha 0.05). The share of comparisons that report a significant difference is the false
difference rate. Target: at most 5 % (alpha). PASS/FAIL is printed with the measured figure.

Tree half: `_research_tree.run(reps, seed) -> dict` (with `--strategy tree`), printed with its
own `report` table and verdict (`pass`). Exit status 0 when every half run passes.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _synthetic import Noise, run_stream  # noqa: E402

from autoresearch.compare import RunResult, analyse  # noqa: E402
from autoresearch.config import PolicySettings  # noqa: E402
from autoresearch.policies import make_policy  # noqa: E402

TARGET_RATE = 0.05          # at most alpha: identical organisations differ 5 % of the time
ALPHA = 0.05
SECONDS_PER_EXPERIMENT = 60.0   # simulated wall time (only the per-hour figure uses it)
EFFECT_MEAN, EFFECT_SD = -0.5, 2.0   # true proposal effects, in noise sds (most do not help)


def one_run(org: str, k: int, rng: np.random.Generator, experiments: int) -> RunResult:
    policy = make_policy("noise-aware")
    res = run_stream(policy, PolicySettings(), lambda: float(rng.normal(EFFECT_MEAN, EFFECT_SD)),
                     rng, max_experiments=experiments, noise=Noise())
    kept = sum(1 for p in res.proposals if p.kept)
    return RunResult(org, k, f"cmp-sim-{org}-r{k}", res.experiments,
                     res.experiments * SECONDS_PER_EXPERIMENT, res.baseline, res.reported, [],
                     len(res.proposals), kept, 0.0)


def false_difference_rate(comparisons: int, repeats: int, experiments: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    significant = mw = 0
    gains = []
    for _ in range(comparisons):
        runs = [one_run(org, k, rng, experiments) for k in range(1, repeats + 1) for org in "ab"]
        a = analyse(runs, ["a", "b"], "minimize", ALPHA)
        (test,) = a["tests"]
        significant += bool(test["significant"])
        mw += test["mannwhitney_p"] is not None and test["mannwhitney_p"] < ALPHA
        gains += [o["improvement"]["mean"] for o in a["organisations"]]
    rate = significant / comparisons
    se = math.sqrt(rate * (1 - rate) / comparisons)
    return {"comparisons": comparisons, "repeats": repeats, "experiments": experiments,
            "rate": rate, "se": se, "mannwhitney_rate": mw / comparisons,
            "mean_improvement": float(np.mean(gains)), "pass": rate <= TARGET_RATE}


def tree_half(reps: int, seed: int) -> tuple[dict, str] | None:
    """The tree half's result and its printed table (its `report`), or None when absent."""
    path = Path(__file__).parent / "_research_tree.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("_research_tree", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    res = module.run(reps, seed)
    if hasattr(module, "report"):
        return res, module.report(res)
    flat = {k: v for k, v in res.items() if isinstance(v, (int, float, str, bool))}
    return res, ", ".join(f"{k} {v}" for k, v in flat.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--comparisons", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=4, help="runs per organisation")
    p.add_argument("--experiments", type=int, default=40, help="experiments per run")
    p.add_argument("--tree-reps", type=int, default=8, help="runs per strategy in the tree half")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["compare", "tree"], help="run one half only")
    args = p.parse_args(argv)

    ok = True
    if args.only != "tree":
        ok = compare_half(args)
    if args.only != "compare":
        ok = tree_report(args) and ok
    return 0 if ok else 1


def compare_half(args: argparse.Namespace) -> bool:
    t0 = time.time()
    r = false_difference_rate(args.comparisons, args.repeats, args.experiments, args.seed)
    print(f"compare, two identical organisations: {r['comparisons']} comparisons of "
          f"{r['repeats']} repeats x {r['experiments']} experiments each (noise-aware policy, "
          f"simulated runs, the real compare statistics)")
    print(f"  significant difference reported (Welch, Holm, alpha {ALPHA}): "
          f"{r['rate']:.1%} ± {r['se']:.1%} (Mann-Whitney alone: {r['mannwhitney_rate']:.1%}); "
          f"mean improvement {r['mean_improvement']:.4g}; {time.time() - t0:.0f} s")
    print(f"  false difference rate <= {TARGET_RATE:.0%}: {'PASS' if r['pass'] else 'FAIL'}")
    return bool(r["pass"])


def tree_report(args: argparse.Namespace) -> bool:
    got = tree_half(args.tree_reps, args.seed)
    if got is None:
        print("tree vs ratchet (two-step problem): bench/_research_tree.py is not on this branch")
        return True
    res, table = got
    print("tree vs ratchet (two-step problem):")
    print(table)
    return bool(res.get("pass", False))


if __name__ == "__main__":
    sys.exit(main())
