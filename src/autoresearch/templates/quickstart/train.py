"""Quickstart target: the training script (EDITABLE: the agent changes this file).

A small ReLU network trained with SGD + momentum on the spirals of prepare.py, from a fixed
seed, for a fixed compute budget (prepare.TRAIN_MACS multiply-adds: a larger network or batch
gets fewer steps, the trade-off a time budget makes), so its metric is a deterministic function
of this file: the same code scores the same on a quiet or a loaded machine, and a change is
judged on one run. Nothing here stops on the clock (that would make the score depend on the
machine's load); the harness enforces the time budget, and a run past it is `over-budget`. It
saves its weights to model.npz; evaluate.py measures them.
"""

import os
import time

import numpy as np

from prepare import cross_entropy, train_data, train_steps

# Hyperparameters: deliberately mediocre starting values.
LEARNING_RATE = 0.002     # step size of SGD
HIDDEN_SIZE = 12          # units per hidden layer
BATCH_SIZE = 512          # examples per step
WEIGHT_DECAY = 0.01       # L2 penalty
MOMENTUM = 0.5            # heavy-ball momentum
INIT_SCALE = 0.2          # weight init, times 1/sqrt(fan_in)

# The model's width: the scale's, when the target runs at one ([scales] in autoresearch.toml set
# WIDTH for `run --scale` and `promote --scale`); HIDDEN_SIZE otherwise.
WIDTH = int(os.environ.get("WIDTH", HIDDEN_SIZE))


def init_params(rng: np.random.Generator) -> dict:
    sizes = [2, WIDTH, WIDTH, 3]
    params = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"w{i}"] = rng.normal(0.0, INIT_SCALE / np.sqrt(a), size=(a, b))
        params[f"b{i}"] = np.zeros(b)
    return params


def forward_backward(params: dict, x: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
    acts = [x]
    h = x
    n_layers = len(params) // 2
    for i in range(n_layers):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < n_layers - 1:
            h = np.maximum(h, 0.0)
        acts.append(h)
    z = h - h.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    loss = cross_entropy(h, y)
    grad = p
    grad[np.arange(len(y)), y] -= 1.0
    grad /= len(y)
    grads = {}
    for i in reversed(range(n_layers)):
        grads[f"w{i}"] = acts[i].T @ grad + WEIGHT_DECAY * params[f"w{i}"]
        grads[f"b{i}"] = grad.sum(axis=0)
        if i > 0:
            grad = (grad @ params[f"w{i}"].T) * (acts[i] > 0)
    return loss, grads


def main() -> None:
    rng = np.random.default_rng(0)   # fixed, as the original fixes its own seed
    x, y = train_data()
    params = init_params(rng)
    velocity = {k: np.zeros_like(v) for k, v in params.items()}
    start = time.time()
    weights = sum(v.size for k, v in params.items() if k.startswith("w"))
    step, loss, next_report, total = 0, float("nan"), 0.1, train_steps(weights, BATCH_SIZE)
    while step < total:
        idx = rng.integers(0, len(x), size=BATCH_SIZE)
        loss, grads = forward_backward(params, x[idx], y[idx])
        for k in params:
            velocity[k] = MOMENTUM * velocity[k] - LEARNING_RATE * grads[k]
            params[k] += velocity[k]
        step += 1
        if step / total >= next_report:
            print(f"progress: {step / total:.2f} train_loss: {loss:.4f}")
            next_report += 0.1
    np.savez("model.npz", **params)
    print(f"train_loss: {loss:.6f}")
    print(f"num_steps: {step}")
    print(f"training_seconds: {time.time() - start:.2f}")


if __name__ == "__main__":
    main()
