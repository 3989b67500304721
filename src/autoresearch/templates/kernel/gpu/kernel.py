"""kernel target, GPU variant: the kernel (EDITABLE). Make `stencil` fast on a CUDA GPU.

`stencil(x, out)` writes into `out` the 5-point stencil of the 2-D float32 CUDA tensor `x`:

    out[i, j] = 0.5 * x[i, j] + 0.125 * (x[i-1, j] + x[i+1, j] + x[i, j-1] + x[i, j+1])

for interior points, and `out = x` on the border. `x` is read-only. Results must match the
harness's reference to 1e-5 (float32; reordering a sum is fine). Triton is used when USE_TRITON.
"""

import torch
import triton
import triton.language as tl

USE_TRITON = 0        # 1: one fused Triton kernel; 0: torch slicing (several passes over memory)
BLOCK_N = 256         # columns per Triton program
ROWS = 1              # rows per Triton program
NUM_WARPS = 4         # warps per Triton program


@triton.jit
def _stencil_kernel(x_ptr, out_ptr, n_rows, n_cols, ROWS_PER: tl.constexpr, BLOCK: tl.constexpr):
    row0 = tl.program_id(0) * ROWS_PER
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    for r in tl.static_range(ROWS_PER):
        row = row0 + r
        ok = (cols < n_cols) & (row < n_rows)
        base = row * n_cols
        c = tl.load(x_ptr + base + cols, mask=ok, other=0.0)
        interior = ok & (cols > 0) & (cols < n_cols - 1) & (row > 0) & (row < n_rows - 1)
        up = tl.load(x_ptr + base - n_cols + cols, mask=interior, other=0.0)
        down = tl.load(x_ptr + base + n_cols + cols, mask=interior, other=0.0)
        left = tl.load(x_ptr + base + cols - 1, mask=interior, other=0.0)
        right = tl.load(x_ptr + base + cols + 1, mask=interior, other=0.0)
        val = tl.where(interior, 0.5 * c + 0.125 * (up + down + left + right), c)
        tl.store(out_ptr + base + cols, val, mask=ok)


def stencil(x: torch.Tensor, out: torch.Tensor) -> None:
    n, m = x.shape
    if USE_TRITON:
        grid = (triton.cdiv(n, ROWS), triton.cdiv(m, BLOCK_N))
        _stencil_kernel[grid](x, out, n, m, ROWS_PER=ROWS, BLOCK=BLOCK_N, num_warps=NUM_WARPS)
        return
    out.copy_(x)
    out[1:-1, 1:-1] = 0.5 * x[1:-1, 1:-1] + 0.125 * (
        x[:-2, 1:-1] + x[2:, 1:-1] + x[1:-1, :-2] + x[1:-1, 2:])
