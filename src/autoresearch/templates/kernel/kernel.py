"""kernel target: the kernel (EDITABLE). Make `stencil` fast; the harness checks every output.

`stencil(x, out)` writes into `out` the 5-point stencil of the 2-D float64 array `x`:

    out[i, j] = 0.5 * x[i, j] + 0.125 * (x[i-1, j] + x[i+1, j] + x[i, j-1] + x[i, j+1])

for interior points, and `out = x` on the border. `x` is read-only. Results must match the
harness's reference to 1e-12 (float64; reordering a sum is fine, float32 is not).
"""

import numpy as np

USE_ROLL = 1          # 1: neighbours as shifted copies (np.roll); 0: as slices (views, no copies)
BLOCK_ROWS = 4096     # rows per block: blocks that fit in cache reuse the rows they share
INPLACE = 0           # 1: accumulate into `out` with in-place ufuncs (no full-size temporaries)


def stencil(x: np.ndarray, out: np.ndarray) -> None:
    n = x.shape[0]
    if USE_ROLL:
        up, down = np.roll(x, 1, axis=0), np.roll(x, -1, axis=0)
        left, right = np.roll(x, 1, axis=1), np.roll(x, -1, axis=1)
        out[...] = 0.5 * x + 0.125 * (up + down + left + right)
        out[0, :], out[-1, :], out[:, 0], out[:, -1] = x[0, :], x[-1, :], x[:, 0], x[:, -1]
        return
    out[0, :] = x[0, :]
    out[-1, :] = x[-1, :]
    out[:, 0] = x[:, 0]
    out[:, -1] = x[:, -1]
    for r0 in range(1, n - 1, BLOCK_ROWS):
        r1 = min(r0 + BLOCK_ROWS, n - 1)
        if INPLACE:
            o = out[r0:r1, 1:-1]
            np.add(x[r0 - 1:r1 - 1, 1:-1], x[r0 + 1:r1 + 1, 1:-1], out=o)
            o += x[r0:r1, :-2]
            o += x[r0:r1, 2:]
            o *= 0.125
            o += 0.5 * x[r0:r1, 1:-1]
        else:
            out[r0:r1, 1:-1] = 0.5 * x[r0:r1, 1:-1] + 0.125 * (
                x[r0 - 1:r1 - 1, 1:-1] + x[r0 + 1:r1 + 1, 1:-1] + x[r0:r1, :-2] + x[r0:r1, 2:])
