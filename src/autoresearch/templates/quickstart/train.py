"""Quickstart target: the training script (EDITABLE: the agent changes this file).

A small ReLU network trained with SGD + momentum on the spirals of prepare.py, for a fixed time
budget. It saves its weights to model.npz; evaluate.py measures them.
"""

import os
import time

import numpy as np

from prepare import cross_entropy, train_data

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
TIME_BUDGET = float(os.environ.get("AUTORESEARCH_BUDGET_SECONDS", "1.5"))  # seconds of training
SEED = int(os.environ.get("AUTORESEARCH_SEED", "0"))


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
    rng = np.random.default_rng(SEED)
    x, y = train_data()
    params = init_params(rng)
    velocity = {k: np.zeros_like(v) for k, v in params.items()}
    start = time.time()
    step, loss, next_report = 0, float("nan"), 0.1
    while (elapsed := time.time() - start) < TIME_BUDGET:
        idx = rng.integers(0, len(x), size=BATCH_SIZE)
        loss, grads = forward_backward(params, x[idx], y[idx])
        for k in params:
            velocity[k] = MOMENTUM * velocity[k] - LEARNING_RATE * grads[k]
            params[k] += velocity[k]
        step += 1
        if elapsed / TIME_BUDGET >= next_report:
            print(f"progress: {elapsed / TIME_BUDGET:.2f} train_loss: {loss:.4f}")
            next_report += 0.1
    np.savez("model.npz", **params)
    print(f"train_loss: {loss:.6f}")
    print(f"num_steps: {step}")
    print(f"training_seconds: {time.time() - start:.2f}")


if __name__ == "__main__":
    main()
