"""Benchmark: greedy against noise-aware on synthetic targets whose truth is known.

    python bench/policies.py                 # the table in docs/policies.md
    python bench/policies.py --reps 100      # quicker, noisier

Streams (a measurement = true value + Gaussian noise of sd SIGMA; 200 evaluation runs each):
- pure noise: every proposal has no true effect;
- mixed: 50% worse by U(0.5, 3) sd, 30% no effect, 20% better by 1, 2 or 3 sd (equal shares).
Pruning: the best's 3 runs leave curves; candidates that end worse by log-U(1, 30) sd, and
better ones (1 to 3 sd) that start slower, are watched against them.
Every policy call goes through the same driver as the loop's (bench/_synthetic.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _synthetic import PROGRESS, SIGMA, curve, run_stream  # noqa: E402

from autoresearch.config import PolicySettings, PruneSettings  # noqa: E402
from autoresearch.policies import make_policy  # noqa: E402
from autoresearch.pruning import make_pruner  # noqa: E402

EXPERIMENTS = 200  # evaluation runs per simulated research run


def mixed_effects(rng: np.random.Generator):
    def draw() -> float:
        u = rng.random()
        if u < 0.5:
            return -float(rng.uniform(0.5, 3.0))
        if u < 0.8:
            return 0.0
        return float(rng.choice([1.0, 2.0, 3.0]))
    return draw


def bench_policy(name: str, reps: int, seed: int) -> dict[str, float]:
    settings = PolicySettings()
    rng = np.random.default_rng(seed)
    null_keeps, drift, cost_noise = [], [], []
    for _ in range(reps):
        res = run_stream(make_policy(name), settings, lambda: 0.0, rng, EXPERIMENTS)
        null_keeps += [p.kept for p in res.proposals if p.decided]
        drift.append(res.drift)
        cost_noise.append(res.experiments / len(res.proposals))
    by_effect: dict[float, list[bool]] = {}
    cost_mixed, worse_keeps, gain = [], [], []
    for _ in range(reps):
        res = run_stream(make_policy(name), settings, mixed_effects(rng), rng, EXPERIMENTS)
        for p in res.proposals:
            if not p.decided:
                continue
            if p.effect < 0:
                worse_keeps.append(p.kept)
            else:
                by_effect.setdefault(p.effect, []).append(p.kept)
        cost_mixed.append(res.experiments / len(res.proposals))
        gain.append(res.truth_gain)
    return {
        "false_keep_noise": float(np.mean(null_keeps)),
        "false_keep_mixed": float(np.mean(by_effect[0.0])),
        "worse_kept": float(np.mean(worse_keeps)),
        "drift": float(np.mean(drift)),
        "drift_se": float(np.std(drift, ddof=1) / np.sqrt(reps)),
        "kept_1": float(np.mean(by_effect[1.0])),
        "kept_2": float(np.mean(by_effect[2.0])),
        "kept_3": float(np.mean(by_effect[3.0])),
        "cost_noise": float(np.mean(cost_noise)),
        "cost_mixed": float(np.mean(cost_mixed)),
        "gain": float(np.mean(gain)),
    }


def bench_prune(reps: int, seed: int, direction: str = "minimize") -> dict[str, float]:
    """Share of run time saved on bad candidates, and share of real improvements stopped."""
    rng = np.random.default_rng(seed)
    pruner = make_pruner(PruneSettings(), direction)
    height, point = 20 * SIGMA, 0.5 * SIGMA     # learning-curve drop; point noise of a curve

    def run_curve(final: float, h: float) -> list[tuple[float, float]]:
        offset = SIGMA * rng.standard_normal()   # the seed moves a whole run
        return list(zip(PROGRESS.tolist(), (curve(final, h, rng, point) + offset).tolist(), strict=True))

    sign = 1.0 if direction == "minimize" else -1.0
    saved, good_stopped, good_lost = [], [], []
    for _ in range(reps):
        reference = [run_curve(1.0, height) for _ in range(3)]
        bad = rng.random() < 0.5
        if bad:
            final = 1.0 + SIGMA * float(np.exp(rng.uniform(np.log(1), np.log(30))))
            h = height * rng.uniform(0.8, 1.2)
        else:
            final = 1.0 - SIGMA * float(rng.choice([1.0, 2.0, 3.0]))
            h = height * rng.uniform(1.0, 1.5)   # slow starters: worse early, better at the end
        watch = pruner.watch(reference, SIGMA)
        run = run_curve(final, h)
        stopped = 1.0
        for p, v in run:
            if watch.report(p, v):
                stopped = p
                break
        if bad:
            saved.append(1.0 - stopped)
        else:
            good_stopped.append(stopped < 1.0)
            # lost: stopped although its full run would have ended better than the best's runs
            best_final = float(np.median([r[-1][1] for r in reference]))
            good_lost.append(stopped < 1.0 and sign * (run[-1][1] - best_final) < 0)
    return {"saved_bad": float(np.mean(saved)), "stopped_good": float(np.mean(good_stopped)),
            "lost_good": float(np.mean(good_lost)), "n_bad": len(saved), "n_good": len(good_lost)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=400, help="simulated research runs per stream")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.time()
    g = bench_policy("greedy", args.reps, args.seed)
    n = bench_policy("noise-aware", args.reps, args.seed)
    pr = bench_prune(args.reps * 5, args.seed)

    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    def sd(x: float, se: float) -> str:
        return f"{x:+.2f} ± {se:.2f} sd"

    ok = {True: "yes", False: "NO"}
    rows = [
        ("false keeps, pure noise (per no-effect proposal)", pct(g["false_keep_noise"]),
         pct(n["false_keep_noise"]), "<= 5%", ok[n["false_keep_noise"] <= 0.05]),
        ("false keeps, no-effect proposals in mixed stream", pct(g["false_keep_mixed"]),
         pct(n["false_keep_mixed"]), "<= 5%", ok[n["false_keep_mixed"] <= 0.05]),
        ("worse proposals kept, mixed stream", pct(g["worse_kept"]), pct(n["worse_kept"]), "", ""),
        (f"drift of reported best below truth, pure noise, {EXPERIMENTS} runs",
         sd(g["drift"], g["drift_se"]), sd(n["drift"], n["drift_se"]), "<= 0.58 (sem of 3 runs)",
         ok[n["drift"] <= 1 / np.sqrt(3)]),
        ("real improvements kept: 1 sd", pct(g["kept_1"]), pct(n["kept_1"]), "", ""),
        ("real improvements kept: 2 sd", pct(g["kept_2"]), pct(n["kept_2"]), "", ""),
        ("real improvements kept: 3 sd", pct(g["kept_3"]), pct(n["kept_3"]), ">= 90%",
         ok[n["kept_3"] >= 0.90]),
        ("true gain of the final best, mixed stream", f"{g['gain']:.1f} sd", f"{n['gain']:.1f} sd",
         "", ""),
        ("evaluation runs per proposal, pure noise", f"{g['cost_noise']:.2f}",
         f"{n['cost_noise']:.2f}", "<= 2x greedy", ok[n["cost_noise"] <= 2 * g["cost_noise"]]),
        ("evaluation runs per proposal, mixed stream", f"{g['cost_mixed']:.2f}",
         f"{n['cost_mixed']:.2f}", "<= 2x greedy", ok[n["cost_mixed"] <= 2 * g["cost_mixed"]]),
        ("--prune: run time saved on bad candidates", pct(pr["saved_bad"]), pct(pr["saved_bad"]),
         ">= 30%", ok[pr["saved_bad"] >= 0.30]),
        ("--prune: real improvements stopped", pct(pr["stopped_good"]), pct(pr["stopped_good"]),
         "", ""),
        ("--prune: ... of which would have ended better (lost)", pct(pr["lost_good"]),
         pct(pr["lost_good"]), "0%", ok[pr["lost_good"] == 0.0]),
    ]
    head = ("figure", "greedy", "noise-aware", "target", "met")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(5)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"
    print(f"python bench/policies.py --reps {args.reps} --seed {args.seed}   "
          f"({args.reps} runs of {EXPERIMENTS} experiments per stream and policy; "
          f"{pr['n_bad']} bad and {pr['n_good']} good pruning cases)\n")
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
