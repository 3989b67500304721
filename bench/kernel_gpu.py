"""The kernel template's GPU variant on a CUDA device: baseline vs tuned, and the cheats.

    python bench/kernel_gpu.py [--n 8192]

Part 1 times the template's kernel.py (torch slicing, the baseline) and a grid of Triton
configurations through the locked harness (templates/kernel/gpu/evaluate.py), and prints the
baseline against the best (target: at least 2x faster). Part 2 runs the cheats of
tests/attacks/test_kernel_cheats.py that apply to one CUDA process against the same harness and
prints PASS when each is blocked. Exits 0 only when everything passes; skips without CUDA.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

GPU = Path(__file__).resolve().parents[1] / "src/autoresearch/templates/kernel/gpu"


def harness(kernel: str, n: int, *args: str, env: dict | None = None) -> str:
    d = Path(tempfile.mkdtemp(prefix="ar-gpu-"))
    shutil.copy(GPU / "evaluate.py", d / "evaluate.py")
    (d / "kernel.py").write_text(kernel)
    p = subprocess.run([sys.executable, "evaluate.py", *args], cwd=d, capture_output=True,
                       text=True, env={**os.environ, "KERNEL_N": str(n),
                                       "AUTORESEARCH_BUDGET_SECONDS": "2", **(env or {})},
                       timeout=300)
    return p.stdout + p.stderr[-600:]


def configured(**values) -> str:
    text = (GPU / "kernel.py").read_text()
    for k, v in values.items():
        text = re.sub(rf"^{k} = \S+", f"{k} = {v}", text, count=1, flags=re.M)
    return text


def ms(out: str) -> float | None:
    m = re.search(r"^kernel_ms: ([\d.]+)", out, re.M)
    return float(m.group(1)) if m else None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8192)
    args = ap.parse_args()
    import torch
    if not torch.cuda.is_available():
        print("SKIP: no CUDA device")
        return 0
    ok = True
    base_out = harness(configured(), args.n)
    base = ms(base_out)
    print(f"baseline (torch slicing): {base} ms  {base_out.splitlines()[2:4]}")
    best, best_cfg, best_out = None, None, ""
    for block in (256, 1024, 2048):
        for rows in (1, 4):
            for warps in (4, 8):
                out = harness(configured(USE_TRITON=1, BLOCK_N=block, ROWS=rows,
                                         NUM_WARPS=warps), args.n)
                t = ms(out)
                print(f"triton BLOCK_N={block} ROWS={rows} NUM_WARPS={warps}: "
                      f"{t if t is not None else out.strip()[-200:]}")
                if t is not None and (best is None or t < best):
                    best, best_cfg, best_out = t, (block, rows, warps), out
    good = base is not None and best is not None and base / best >= 2
    ok &= good
    ratio = base / best if base and best else 0.0
    print(f"best {best} ms (BLOCK_N, ROWS, NUM_WARPS = {best_cfg}) vs baseline {base} ms: "
          f"{ratio:.2f}x  target >=2x  {'PASS' if good else 'FAIL'}")
    print(best_out)

    honest = configured(USE_TRITON=1, BLOCK_N=1024, ROWS=1, NUM_WARPS=4)
    body = honest.replace("def stencil(x: torch.Tensor, out: torch.Tensor) -> None:", "def _real(x, out):")
    attacks = {
        "cache keyed by the input pointer": (body + """
_cache = {}
def stencil(x, out):
    key = x.data_ptr()
    if key in _cache:
        out.copy_(_cache[key]); return
    _real(x, out); _cache[key] = out.clone()
""", "wrong output, max abs error"),
        "output reused from the first call": (body + """
_calls = [0]
def stencil(x, out):
    _calls[0] += 1
    if _calls[0] == 1:
        _real(x, out)
""", "left NaN"),
        "patched timers (python-level Event, perf_counter)": (body + """
import time
torch.cuda.Event.elapsed_time = lambda self, other: 0.000001
time.perf_counter_ns = lambda: 0
def stencil(x, out):
    torch.cuda._sleep(20_000_000)      # ~10 ms of device time the patches would hide
    _real(x, out)
""", None),
        "a thread started at import time": (body + """
import threading, time
threading.Thread(target=lambda: time.sleep(60), daemon=True).start()
def stencil(x, out):
    _real(x, out)
""", "started a Python thread"),
        "float16 arithmetic": (body + """
def stencil(x, out):
    out.copy_(x.half().float())
    _real(x.half().float(), out)
""", "wrong output"),
    }
    for name, (kernel, expect) in attacks.items():
        out = harness(kernel, 4096)
        if expect is None:
            t = ms(out)
            blocked = t is not None and t >= 5.0
            detail = f"kernel_ms {t}"
        else:
            blocked = "eval_error" in out and expect in out
            detail = out.strip().splitlines()[-1] if out.strip() else "(no output)"
        ok &= blocked
        print(f"attack {name}: {'PASS' if blocked else 'FAIL'}  ({detail[:160]})")
    # a fake line printed at the kernel's exit must not come after the harness's own
    out = harness(body + """
import atexit
atexit.register(lambda: print("kernel_ms: 0.0001", flush=True))
def stencil(x, out):
    _real(x, out)
""", 4096)
    lines = re.findall(r"^kernel_ms: ([\d.]+)", out, re.M)
    blocked = bool(lines) and float(lines[-1]) > 0.0001
    ok &= blocked
    print(f"attack a fake kernel_ms printed at exit: {'PASS' if blocked else 'FAIL'}  "
          f"(kernel_ms lines {lines})")
    out = harness(honest, 4096, env={"KERNEL_BOUND_GBPS": "1"})
    blocked = "physically impossible" in out
    ok &= blocked
    print(f"bound (pretend 1 GB/s): {'PASS' if blocked else 'FAIL'}  ({out.strip()[-120:]})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
