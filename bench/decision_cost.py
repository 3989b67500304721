"""Diagnostic: what one decision of the default policy costs as a run grows, and what a decision
record costs to hold.

    python bench/decision_cost.py
    PYTHONPATH=<an older checkout>/src python bench/decision_cost.py   # the same, for that code

Times, per call (best of several), the two pieces of the noise model that a decision runs over
the run's history: the search for a change of conditions in the best's runs
(`policies.noise.epoch_start`) as the best gathers runs (it is measured again every
`remeasure_every` experiments while it stays the best), and the local noise estimate
(`policies.noise.local_noise`) as the run gathers replicate groups. Then it makes a real
decision of the default policy and prints its record's JSON text and what `ledger.PackedJSON`
holds of it in memory.

A diagnostic, not a benchmark: no target, no PASS/FAIL (the figure that has a target is
bench/scaling.py's driver CPU per experiment over 10,000 experiments).
"""

from __future__ import annotations

import random
import sys
import time
from functools import partial

from autoresearch.config import PolicySettings
from autoresearch.ledger import PackedJSON, dumps
from autoresearch.policies import PolicyContext, Sample
from autoresearch.policies.noise import epoch_start, local_noise
from autoresearch.policies.posterior import PosteriorPolicy


def best_ms(fn, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1000


def main() -> int:
    rng = random.Random(0)
    print("epoch_start, the best's runs (one per 20 experiments on a plateau):")
    for n in (30, 128, 600, 2000):
        values = [1.0 + rng.gauss(0, 0.01) for _ in range(n)]
        at = [20 * i for i in range(n)]
        print(f"  {n:5d} runs: {best_ms(partial(epoch_start, values, at, (0.01, 30.0))):8.3f} ms")
    print("local_noise, replicate groups of 2-8 runs:")
    for g in (10, 90, 200, 1000):
        groups = [[1.0 + rng.gauss(0, 0.01) for _ in range(rng.randint(2, 8))] for _ in range(g)]
        print(f"  {g:5d} groups: {best_ms(partial(local_noise, groups, 1.0)):8.3f} ms")
    best = Sample([1.0 + rng.gauss(0, 0.01) for _ in range(5)], lines=100)
    cand = Sample([0.995 + rng.gauss(0, 0.01)], lines=101)
    ctx = PolicyContext(direction="minimize", settings=PolicySettings(),
                        replicate_groups=[best.values])
    d = PosteriorPolicy().decide(cand, best, ctx)
    text = dumps({"verdict": d.verdict.value, "reason": d.reason, "evidence": d.evidence,
                  "at": time.time(), "against": 3})
    packed = PackedJSON(text)
    held = sys.getsizeof(getattr(packed, "_packed", getattr(packed, "_text", text)))
    print(f"a default-policy decision record: {len(text)} bytes of JSON text, "
          f"{held} bytes held by PackedJSON")
    return 0


if __name__ == "__main__":
    sys.exit(main())
