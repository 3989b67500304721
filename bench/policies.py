"""Benchmark: greedy, noise-aware-v1 and the default noise-aware on synthetic targets whose truth is known.

    python bench/policies.py                 # the table in the README
    python bench/policies.py --reps 20       # quicker, noisier
    python bench/policies.py --real 0        # skip the check against real quickstart runs

Every policy call goes through the same driver as the loop's (bench/_synthetic.py): seeds as the
loop sets them, noise that follows the metric's level, line counts, drift. Effects are in noise
sds at the incumbent's level (positive = better). Streams:
- pure noise: every proposal has no effect;
- mixed: 50% worse by U(0.5, 3) sd, 30% no effect, 20% better by 1, 2 or 3 sd (equal shares);
- sparse: 5% better by 1, 2 or 3 sd, 35% no effect, 60% worse by U(0.5, 3) sd;
- slightly worse: 60% worse by U(0.1, 1) sd, 20% no effect, 20% better by 1, 2 or 3 sd;
- simpler but worse: 80% one line shorter and 0.5 sd worse, 20% better by 1, 2 or 3 sd;
- all simpler but worse: every proposal one line shorter and 0.5 sd worse;
- drift: the mixed stream, and halfway through every run looks 5 sd better (a faster machine).
Milestones: evaluation runs (repeats and re-measurements counted) until the best's true gain
first reaches 5, 10, 20 and 40 sd; the median over the simulated runs.
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _synthetic import PROGRESS, SIGMA, Noise, curve, run_stream  # noqa: E402

from autoresearch.config import PolicySettings, PruneSettings  # noqa: E402
from autoresearch.policies import make_policy  # noqa: E402
from autoresearch.pruning import make_pruner  # noqa: E402

EXPERIMENTS = 200      # evaluation runs per research run (false keeps, drift)
LONG = 600             # evaluation runs per research run for the milestones
MILESTONES = (5, 10, 20, 40)
POLICIES = ("greedy", "noise-aware-v1", "noise-aware")
#: the settings each policy runs with: its defaults (noise-aware-v1 as it shipped)
SETTINGS = {"greedy": PolicySettings(), "noise-aware-v1": PolicySettings(alpha=0.05),
            "noise-aware": PolicySettings()}
NOISE = Noise(level_power=1.0, seed_corr=0.2)   # see the sim-vs-real check for the real values
GOOD = (1.0, 2.0, 3.0)


def _stream(worse: float, null: float, worse_range: tuple[float, float],
            rng: np.random.Generator) -> Callable[[], float]:
    def draw() -> float:
        u = rng.random()
        if u < worse:
            return -float(rng.uniform(*worse_range))
        if u < worse + null:
            return 0.0
        return float(rng.choice(GOOD))
    return draw


def effects(name: str, rng: np.random.Generator) -> Callable[[], float]:
    if name in ("noise",):
        return lambda: 0.0
    if name in ("mixed", "drift"):
        return _stream(0.5, 0.3, (0.5, 3.0), rng)
    if name == "sparse":
        return _stream(0.60, 0.35, (0.5, 3.0), rng)
    if name == "slightly-worse":
        return _stream(0.6, 0.2, (0.1, 1.0), rng)
    if name == "simpler-worse":
        return _stream(0.8, 0.0, (0.5, 0.5), rng)
    if name == "all-simpler-worse":
        return lambda: -0.5
    raise ValueError(name)


def simulate(policy: str, stream: str, reps: int, seed: int, experiments: int) -> dict:
    rng = np.random.default_rng([seed, zlib.crc32(stream.encode())])
    noise = NOISE
    if stream == "drift":
        half = experiments // 2
        noise = Noise(NOISE.level_power, NOISE.seed_corr, lambda n: -5.0 if n >= half else 0.0)
    draw = effects(stream, rng)
    shorter = stream in ("simpler-worse", "all-simpler-worse")
    null_keeps, worse_keeps, errors, gains, reach = [], [], [], [], []
    for _ in range(reps):
        # in the simpler-but-worse streams the worse proposals are the shorter ones
        last: list[float] = [0.0]

        def eff() -> float:
            last[0] = draw()
            return last[0]

        res = run_stream(make_policy(policy), SETTINGS[policy], eff, rng, experiments, noise,
                         lines=(lambda: -1 if last[0] < 0 else 1) if shorter else (lambda: 0))
        for p in res.proposals:
            if not p.decided:
                continue
            if p.effect == 0:
                null_keeps.append(p.kept)
            elif p.effect < 0:
                worse_keeps.append(p.kept)
        errors.append(res.drift)
        gains.append(res.truth_gain)
        path = np.asarray(res.gain_path)
        reach.append([int(np.argmax(path >= m)) + 1 if (path >= m).any() else np.inf
                      for m in MILESTONES])
    r = np.asarray(reach, dtype=float)
    return {"null_kept": float(np.mean(null_keeps)) if null_keeps else float("nan"),
            "worse_kept": float(np.mean(worse_keeps)) if worse_keeps else float("nan"),
            "error": float(np.mean(errors)), "error_se": float(np.std(errors, ddof=1) / np.sqrt(reps)),
            "gain": float(np.mean(gains)),
            "milestones": [float(np.median(r[:, i])) for i in range(len(MILESTONES))]}


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
