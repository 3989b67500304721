"""Quickstart target: fixed data and evaluation (LOCKED: the agent may not change this file).

The task: classify points of three interleaved 2-D spirals. The data is generated from a fixed
seed at run time, so there is nothing to download and every machine sees the same numbers.
"""

import numpy as np

DATA_SEED = 1234          # fixed: the same data everywhere
NUM_CLASSES = 3
TRAIN_POINTS = 3000       # per split
VAL_POINTS = 3000
NOISE = 0.6               # label noise of the spirals, in input units


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


def holdout_data() -> tuple[np.ndarray, np.ndarray]:
    """The holdout split: only `evaluate.py --holdout` (the run's Goodhart guard) reads it."""
    return make_split(VAL_POINTS, DATA_SEED + 2)


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())
