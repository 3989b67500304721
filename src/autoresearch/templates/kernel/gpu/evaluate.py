"""kernel target, GPU variant: the harness (LOCKED). Times kernel.py's `stencil` on CUDA.

    python evaluate.py           timing; prints `kernel_ms: <median>` and its spread
    python evaluate.py --check   a few checked calls, no timing (the run step)

Anti-cheat, on the harness side (the CPU variant's design, adapted to one CUDA process):
- Every call gets fresh random input (a generator seeded from os.urandom) copied into the SAME
  buffer, so a cache keyed by pointer, shape or call count returns stale output.
- `out` is filled with NaN before every call and checked in full against the harness's own
  reference after every call; the input must come back unchanged.
- The L2 cache is flushed before every call (a buffer of L2_FLUSH_BYTES is written).
- The device is synchronised before the clock starts, so no work launched earlier can overlap;
  timing uses CUDA events of torch's C event type, captured before kernel.py was imported (a
  kernel cannot patch a C type), and is cross-checked against the host clock.
- No Python thread may be started by kernel.py (work ahead of the call).
- The harness ends with os._exit after printing: an exit handler kernel.py registered never
  runs, so a line it would print cannot follow the metrics.
- A physical bound: the effective bandwidth (input + output bytes per call) may not exceed
  BOUND_MARGIN x the device-to-device copy bandwidth measured here.
The kernel runs in the harness's process (CUDA memory is not shared across processes here), so
this variant is best effort against code that deliberately reaches into the harness's frames;
the CPU variant isolates the kernel in its own process.
"""

import os
import statistics
import sys
import threading
import time

import torch

N = int(os.environ.get("KERNEL_N", "8192"))    # rows = columns (float32)
ATOL = 1e-5
WARMUP = 3
MIN_RUNS = 20
MAX_RUNS = 200
BOUND_MARGIN = 1.25
L2_FLUSH_BYTES = 256 * 2**20

_clock = time.perf_counter_ns                  # captured before kernel.py is imported
_Event = _record = _elapsed = _ev_sync = _sync = None


def capture_clocks() -> None:
    """CUDA events of torch's C type (its methods cannot be patched), taken before the import."""
    global _Event, _record, _elapsed, _ev_sync, _sync
    _Event = torch._C._CudaEventBase
    _record, _elapsed, _ev_sync = _Event.record, _Event.elapsed_time, _Event.synchronize
    _sync = torch.cuda.synchronize


def fail(message: str) -> int:
    print(f"eval_error: {message}", flush=True)
    return 1


def reference(x: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    out[1:-1, 1:-1] = 0.5 * x[1:-1, 1:-1] + 0.125 * (
        x[:-2, 1:-1] + x[2:, 1:-1] + x[1:-1, :-2] + x[1:-1, 2:])
    return out


def timed(fn) -> tuple[float, float]:
    """(device ms, host ms) of fn(), device synchronised before and after."""
    start, end = _Event(enable_timing=True), _Event(enable_timing=True)
    stream = torch.cuda.current_stream()
    _sync()
    h0 = _clock()
    _record(start, stream)
    fn()
    _record(end, stream)
    _ev_sync(end)
    h1 = _clock()
    return _elapsed(start, end), (h1 - h0) / 1e6


def copy_gbps(nbytes: int, flush) -> float:
    src = torch.rand(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    best = 0.0
    for _ in range(5):
        flush()
        ms, _ = timed(lambda: dst.copy_(src))
        best = max(best, 2 * src.numel() * 4 / (ms / 1000) / 1e9)
    return best


def main(argv: list[str]) -> int:
    if not torch.cuda.is_available():
        return fail("no CUDA device: use the CPU variant (the template's top-level files)")
    check_only = "--check" in argv
    capture_clocks()
    flush_buf = torch.empty(L2_FLUSH_BYTES // 4, device="cuda")

    def flush() -> None:
        flush_buf.zero_()

    peak = float(os.environ.get("KERNEL_BOUND_GBPS") or copy_gbps(2 * N * N * 4, flush))
    inp = torch.empty((N, N), device="cuda")
    out = torch.empty_like(inp)
    threads_before = threading.active_count()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        from kernel import stencil
    except Exception as e:
        return fail(f"error importing kernel.py: {type(e).__name__}: {e}")
    gen = torch.Generator(device="cuda")
    gen.manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    budget = float(os.environ.get("AUTORESEARCH_BUDGET_SECONDS", "10"))
    calls = 2 if check_only else WARMUP + MAX_RUNS
    times: list[float] = []
    started = time.perf_counter()
    for i in range(calls):
        x = torch.rand((N, N), device="cuda", generator=gen)
        want = reference(x)
        inp.copy_(x)
        out.fill_(float("nan"))
        flush()
        try:
            dev_ms, host_ms = timed(lambda: stencil(inp, out))
        except Exception as e:
            return fail(f"call {i}: error: {type(e).__name__}: {e}")
        if threading.active_count() > threads_before:
            return fail("kernel.py started a Python thread: work outside the call is not allowed")
        if dev_ms > host_ms * 1.05 + 0.05:
            return fail(f"call {i}: the device clock ({dev_ms:.3f} ms) ran longer than the host "
                        f"clock ({host_ms:.3f} ms): timing was tampered with")
        if not torch.equal(inp, x):
            return fail(f"call {i}: the kernel wrote to its input x, which is read-only")
        if torch.isnan(out).any():
            return fail(f"call {i}: wrong output, left NaN (unwritten) cells in out")
        err = (out - want).abs().max().item()
        if not err <= ATOL:
            return fail(f"call {i}: wrong output, max abs error {err:.3g} > {ATOL:g}")
        if i >= WARMUP:
            times.append(dev_ms)
        if not check_only and len(times) >= MIN_RUNS and time.perf_counter() - started > budget:
            break
    if check_only:
        print(f"check: {calls} calls correct")
        return 0
    median_ms = statistics.median(times)
    q = statistics.quantiles(times, n=4)
    gbps = 2 * N * N * 4 / (median_ms / 1000) / 1e9
    if gbps > BOUND_MARGIN * peak:
        return fail(f"physically impossible: {gbps:.1f} GB/s moved, above {BOUND_MARGIN:g} x the "
                    f"measured copy bandwidth of {peak:.1f} GB/s (cached or skipped work?)")
    print(f"kernel_ms: {median_ms:.5f}")
    print(f"kernel_ms_iqr: {q[2] - q[0]:.5f}")
    print(f"gbps: {gbps:.1f}")
    print(f"copy_gbps: {peak:.1f}")
    print(f"runs: {len(times)}")
    print(f"device: {torch.cuda.get_device_name()}")
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)     # no exit handler of kernel.py runs: nothing it prints follows the metrics
