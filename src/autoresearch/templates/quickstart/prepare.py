"""Quickstart target: fixed data and evaluation (LOCKED: the agent may not change this file).

The task: classify points of three interleaved 2-D spirals. The data is generated from a fixed
seed at run time, so there is nothing to download and every machine sees the same numbers. The
holdout split is the exception: `python prepare.py --holdout` (the toml's holdout_setup) draws
it once from a secret seed into $AUTORESEARCH_HOLDOUT, which only the holdout step can read.
"""

import os
import sys

import numpy as np

DATA_SEED = 1234          # fixed: the same data everywhere
NUM_CLASSES = 3
TRAIN_POINTS = 3000       # per split
VAL_POINTS = 3000
NOISE = 0.6               # label noise of the spirals, in input units
TRAIN_MACS = 2e9          # compute of one training run, in multiply-adds: fixed, so that every
                          # candidate gets the same compute on any machine (see train_steps)
STEP_OVERHEAD = 1e6       # multiply-adds a step costs beyond its matrix products (numpy calls)


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NUM_CLASSES, size=n)
    r = rng.uniform(0.05, 1.0, size=n)
    theta = 4.0 * r + 2.0 * np.pi * y / NUM_CLASSES
    x = np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1) * 3.0
    x += rng.normal(0.0, NOISE * r[:, None], size=x.shape)
    return x.astype(np.float64), y.astype(np.int64)


def train_data() -> tuple[np.ndarray, np.ndarray]:
    return make_split(TRAIN_POINTS, DATA_SEED)


def val_data() -> tuple[np.ndarray, np.ndarray]:
    return make_split(VAL_POINTS, DATA_SEED + 1)


HOLDOUT_FILE = "holdout.npz"   # in $AUTORESEARCH_HOLDOUT, which only the holdout step can read


def write_holdout(folder: str) -> None:
    """The holdout split, drawn once from a secret seed (so no code can regenerate it) into
    folder: only `evaluate.py --holdout` (the run's Goodhart guard) reads it. An existing split
    is kept, so every run of this target is judged on the same holdout."""
    path = os.path.join(folder, HOLDOUT_FILE)
    if os.path.exists(path):
        return
    x, y = make_split(VAL_POINTS, int.from_bytes(os.urandom(8), "little"))
    np.savez(path + ".tmp.npz", x=x, y=y)
    os.replace(path + ".tmp.npz", path)


def holdout_data() -> tuple[np.ndarray, np.ndarray]:
    """The holdout split that `write_holdout` prepared (readable in the holdout step only)."""
    with np.load(os.path.join(os.environ["AUTORESEARCH_HOLDOUT"], HOLDOUT_FILE)) as f:
        return f["x"], f["y"]


def train_steps(weights: int, batch_size: int) -> int:
    """SGD steps that spend TRAIN_MACS: forward and backward cost about 3 multiply-adds per
    weight per example, plus a fixed overhead per step. A larger network or batch gets fewer
    steps: the trade-off a time budget makes, without the clock's noise."""
    return max(1, int(TRAIN_MACS // (3 * weights * batch_size + STEP_OVERHEAD)))


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


if __name__ == "__main__":
    if sys.argv[1:] != ["--holdout"]:
        sys.exit("usage: python prepare.py --holdout   (writes the holdout split into "
                 "$AUTORESEARCH_HOLDOUT)")
    write_holdout(os.environ["AUTORESEARCH_HOLDOUT"])
