"""Real noise of the quickstart target: train + evaluate at two code points, several seeds, twice.

The template as shipped is deterministic (a fixed seed and a fixed compute budget): `shipped`
checks that. The noise model is checked against its wall-clock form (`WALL_CLOCK`: seeded by
AUTORESEARCH_SEED, training until the time budget runs out, as the original's train.py and the
template's first version did), the noise any time-budgeted target shows.

Used by bench/policies.py to check the simulation's noise model against what the loop sees:
- the spread of one commit's runs across seeds (the noise the policy tests against);
- how much of it follows the seed (the correlation of two commits' runs at the same seed);
- how much a repeat at the same seed still moves (machine noise: the budget is wall time);
- how the spread changes with the metric's level (a worse and a better code point).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import stats

from autoresearch.templates import write_template

# two code points: the template's mediocre start, and a much better one found by the demo
CODE_POINTS = {
    "baseline": {},
    "tuned": {"LEARNING_RATE = 0.002": "LEARNING_RATE = 0.05", "HIDDEN_SIZE = 12": "HIDDEN_SIZE = 32",
              "MOMENTUM = 0.5": "MOMENTUM = 0.9"},
}


# pairs of code points one candidate-sized change apart (an agent's typical tweak), at the
# template's level and at the tuned one: what a candidate and the best look like
NEAR = {
    "baseline": ({}, {"LEARNING_RATE = 0.002": "LEARNING_RATE = 0.003"}),
    "tuned": (CODE_POINTS["tuned"],
              {**CODE_POINTS["tuned"], "MOMENTUM = 0.5": "MOMENTUM = 0.85"}),
}

SEEDED = {"np.random.default_rng(0)": "np.random.default_rng(int(os.environ['AUTORESEARCH_SEED']))"}

# the shipped train.py -> its wall-clock form
WALL_CLOCK = {
    **SEEDED,
    "while step < total:": "while time.time() - start < float(os.environ['AUTORESEARCH_BUDGET_SECONDS']):",
}


def _run(target: Path, seed: int, budget: float) -> float:
    env = {**os.environ, "AUTORESEARCH_SEED": str(seed), "AUTORESEARCH_BUDGET_SECONDS": f"{budget:g}"}
    for cmd in (["train.py"], ["evaluate.py"]):
        p = subprocess.run([sys.executable, *cmd], cwd=target, env=env, capture_output=True,
                           text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"quickstart {cmd[0]} failed: {p.stderr[-500:]}")
    m = re.search(r"^val_loss: ([-+0-9.eE]+)$", p.stdout, re.M)
    assert m, p.stdout
    return float(m.group(1))


def _target(root: Path, form: dict[str, str], edits: dict[str, str]) -> Path:
    root.mkdir()
    write_template("quickstart", root)
    src = (root / "train.py").read_text()
    for a, b in {**form, **edits}.items():
        assert a in src, a
        src = src.replace(a, b)
    (root / "train.py").write_text(src)
    return root


def measure(seeds: int = 4, repeats: int = 2, budget: float = 1.5,
            points: dict[str, dict[str, str]] | None = None,
            form: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """{code point: array[seed, repeat] of val_loss}: every seed of one code point, then the
    next (so the machine's load is not shared between two code points at one seed, as it is
    not between a candidate and the best measured apart in time)."""
    out: dict[str, np.ndarray] = {}
    tmp = Path(tempfile.mkdtemp(prefix="ar-qnoise-"))
    try:
        for name, edits in (points or CODE_POINTS).items():
            d = _target(tmp / name, WALL_CLOCK if form is None else form, edits)
            vals = np.empty((seeds, repeats))
            for r in range(repeats):          # repeats apart in time, as the loop's are
                for s in range(seeds):
                    vals[s, r] = _run(d, s, budget)
            out[name] = vals
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def shipped(seeds: int = 2, budget: float = 3.0) -> list[float]:
    """val_loss of the template as shipped, at `seeds` different seeds (one after the other)."""
    tmp = Path(tempfile.mkdtemp(prefix="ar-qnoise-"))
    try:
        write_template("quickstart", tmp)
        return [_run(tmp, s, budget) for s in range(seeds)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def correlation(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(r, low, high): Pearson's correlation of paired values with its Fisher-z interval."""
    r = float(np.corrcoef(a, b)[0, 1])
    if len(a) <= 3:
        return r, -1.0, 1.0
    h = float(stats.norm.isf((1 - level) / 2)) / np.sqrt(len(a) - 3)
    z = np.arctanh(np.clip(r, -0.999999, 0.999999))
    return r, float(np.tanh(z - h)), float(np.tanh(z + h))


def near_pairs(seeds: int, budget: float) -> dict[str, dict[str, tuple[float, float, float]]]:
    """The correlation at one seed between two code points a candidate-sized change apart, per
    level, in the seeded fixed-compute form (the seed is the only noise) and the wall-clock
    form (the seed and the machine): {form: {level: (r, low, high)}}."""
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
    for form_name, form in (("seeded", SEEDED), ("wall-clock", WALL_CLOCK)):
        out[form_name] = {}
        for level, (a, b) in NEAR.items():
            v = measure(seeds, 1, budget, {"a": a, "b": b}, form)
            out[form_name][level] = correlation(v["a"][:, 0], v["b"][:, 0])
    return out


def noise_structure(vals: dict[str, np.ndarray]) -> dict[str, float]:
    """Per code point: level, sd across seeds, sd of a same-seed repeat; and the seed correlation."""
    res: dict[str, float] = {}
    for name, v in vals.items():
        res[f"{name}_level"] = float(v.mean())
        res[f"{name}_sd"] = float(v[:, 0].std(ddof=1))              # first runs, across seeds
        res[f"{name}_repeat_sd"] = float(np.sqrt(np.mean((v[:, 0] - v[:, 1]) ** 2) / 2))
    a, b = (vals[k].mean(axis=1) for k in CODE_POINTS)
    res["seed_corr"] = float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 else float("nan")
    return res


if __name__ == "__main__":
    v = measure()
    for k, x in v.items():
        print(k, np.round(x, 5).tolist())
    print(noise_structure(v))
