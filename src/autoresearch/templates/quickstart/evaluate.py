"""Quickstart target: the evaluator (LOCKED). Prints the validation metric.

It loads the weights that train.py saved and runs the forward pass itself, so train.py cannot
report its own score. `--holdout` measures the same loss on the holdout split instead (the
run's hidden second metric: the agent never sees it).
"""

import sys

import numpy as np

from prepare import cross_entropy, holdout_data, val_data


def forward(params: dict, x: np.ndarray) -> np.ndarray:
    h = x
    layers = sorted(k for k in params if k.startswith("w"))
    for i, name in enumerate(layers):
        h = h @ params[name] + params["b" + name[1:]]
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def main() -> int:
    try:
        params = dict(np.load("model.npz"))
    except OSError as e:
        print(f"cannot load model.npz: {e}", file=sys.stderr)
        return 1
    x, y = holdout_data() if "--holdout" in sys.argv[1:] else val_data()
    logits = forward(params, x)
    if logits.shape != (len(y), 3):
        print(f"model output has shape {logits.shape}, expected {(len(y), 3)}", file=sys.stderr)
        return 1
    print(f"val_loss: {cross_entropy(logits, y):.6f}")
    print(f"val_accuracy: {float((logits.argmax(axis=1) == y).mean()):.4f}")
    print(f"width: {params['w0'].shape[1]}")   # hidden units of the model measured ([scales])
    return 0


if __name__ == "__main__":
    sys.exit(main())
