"""kernel target: the harness (LOCKED). Times kernel.py's `stencil` and checks every output.

    python evaluate.py           timing; prints `kernel_ms: <median>` and its spread
    python evaluate.py --check   a few checked calls, no timing (the run step)

Anti-cheat, all on the harness side:
- The kernel runs in a separate worker process; the clock and every check live in this one, so
  a kernel that patches `time.perf_counter` (or anything else) only fools itself.
- Every timed call gets fresh random inputs (seeded from os.urandom) written into the SAME
  buffer: a cache keyed by pointer, shape or call count returns stale output, and no input can be
  known (or precomputed at import time) in advance.
- `out` is filled with NaN before every call and checked in full against the harness's own
  reference after every call: output reused from an earlier call, or skipped work, fails.
- The input must come back unchanged (the kernel must not write it).
- CPU caches are flushed before every call (a buffer of twice the last-level cache is written).
- Between calls the worker and every process it started are frozen (SIGSTOP): no thread or
  child can work ahead on an input before the clock starts. The harness is a child subreaper
  (Linux), so even a double-forked daemon stays its descendant and is frozen too. As a second
  line, their CPU time outside the timed calls is measured, and work found there is refused.
- The metrics are printed only once every process of the kernel is dead: a line the kernel
  prints (at exit, from a daemon) can never come after the harness's own.
- A physical bound: the kernel's effective bandwidth (input + output bytes per call) may not
  exceed the machine's measured memcpy bandwidth (all cores) by more than BOUND_MARGIN.
Any breach prints `eval_error: <reason>` and exits 1, so the experiment fails with that reason.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

N = int(os.environ.get("KERNEL_N", "2048"))   # rows = columns of the input
ATOL = 1e-12                                   # max abs error against the reference
WARMUP = 2                                     # untimed calls first
MIN_RUNS = 7                                   # timed calls at least
MAX_RUNS = 30                                  # timed calls at most
BOUND_MARGIN = 1.25                            # tolerance over the measured memcpy bandwidth
OUTSIDE_CPU_S = 0.03                           # CPU seconds allowed outside calls, plus ...
OUTSIDE_CPU_SHARE = 0.10                       # ... this share of the CPU inside calls


def fail(message: str) -> int:
    print(f"eval_error: {message}", flush=True)
    return 1


def reference(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    out[1:-1, 1:-1] = 0.5 * x[1:-1, 1:-1] + 0.125 * (
        x[:-2, 1:-1] + x[2:, 1:-1] + x[1:-1, :-2] + x[1:-1, 2:])
    return out


def llc_bytes() -> int:
    for index in (3, 2):
        p = Path(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size")
        try:
            text = p.read_text().strip()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1], 1)
        return int(text.rstrip("KMG")) * scale
    return 32 * 2**20


def memcpy_gbps(nbytes: int, flush) -> float:
    """Peak copy bandwidth (read + write bytes per second), single and all cores, caches cold."""
    src = np.random.default_rng(0).random(nbytes // 8)
    dst = np.empty_like(src)
    workers = os.cpu_count() or 1
    chunks = np.array_split(np.arange(src.size), workers)
    best = 0.0
    with ThreadPoolExecutor(workers) as pool:
        for threads in (1, workers):
            for _ in range(3):
                flush()
                t0 = time.perf_counter()
                if threads == 1:
                    np.copyto(dst, src)
                else:
                    list(pool.map(lambda c: np.copyto(dst[c[0]:c[-1] + 1], src[c[0]:c[-1] + 1]),
                                  chunks))
                best = max(best, 2 * src.nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def become_subreaper() -> None:
    """Orphans of the worker (double forks, setsid daemons) become our children (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)   # PR_SET_CHILD_SUBREAPER


def descendants() -> list:
    import psutil
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def freeze() -> list:
    """Stop every process the harness started (the worker and all it spawned), and wait.

    Returns them, so that `thaw` only sends signals (no /proc scan inside the timed window).
    """
    import psutil
    frozen: dict[int, object] = {}
    for _ in range(20):            # until no new process appears (one may fork while we stop)
        procs = [p for p in descendants() if p.pid not in frozen]
        if not procs:
            break
        for p in procs:
            try:
                p.suspend()
            except psutil.Error:
                pass
            frozen[p.pid] = p
    deadline = time.monotonic() + 5
    for p in frozen.values():
        while time.monotonic() < deadline:
            try:
                if p.status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE,
                                  psutil.STATUS_DEAD):
                    break
            except psutil.Error:
                break
            time.sleep(0.0002)
    return list(frozen.values())


def thaw(frozen: list) -> None:
    for p in frozen:
        try:
            p.resume()
        except Exception:
            pass


def cpu_seconds() -> float:
    """CPU time of every live process the harness started."""
    import psutil
    total = 0.0
    for q in descendants():
        try:
            t = q.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


# -- the worker: imports the kernel and calls it on command -----------------------------------
def worker(path: str, n: int) -> int:
    proto_in = os.fdopen(os.dup(0), "r")
    proto_out = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)                 # the kernel's prints go to the log, not into the protocol
    sys.path.insert(0, os.getcwd())
    x = np.memmap(path, dtype=np.float64, mode="r+", shape=(2, n, n))
    inp, out = x[0], x[1]
    view = inp.view()
    view.flags.writeable = False
    try:
        from kernel import stencil
    except Exception as e:
        proto_out.write(f"error importing kernel.py: {type(e).__name__}: {e}\n")
        proto_out.flush()
        return 1
    proto_out.write("ready\n")
    proto_out.flush()
    for line in proto_in:
        if line.strip() != "go":
            break
        try:
            stencil(view, out)
        except Exception as e:
            proto_out.write(f"error: {type(e).__name__}: {e}\n")
        else:
            proto_out.write("done\n")
        proto_out.flush()
    return 0


# -- the harness --------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    check_only = "--check" in argv
    become_subreaper()
    flush_buf = np.zeros(2 * llc_bytes() // 8)

    def flush() -> None:
        np.add(flush_buf, 1.0, out=flush_buf)

    shm_dir = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None   # RAM, not disk
    with tempfile.TemporaryDirectory(prefix="ar-kernel-", dir=shm_dir) as tmp:
        path = os.path.join(tmp, "buffers")
        bufs = np.memmap(path, dtype=np.float64, mode="w+", shape=(2, N, N))
        inp, out = bufs[0], bufs[1]
        child = subprocess.Popen([sys.executable, __file__, "--worker", path, str(N)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 bufsize=1)
        report: list[str] = []
        try:
            code = run(child, inp, out, flush, check_only, report)
        finally:
            for _ in range(20):          # the worker and every daemon it left behind, frozen
                procs = freeze()         # first so that none can fork away, then killed
                if not procs:
                    break
                for p in procs:
                    try:
                        p.kill()
                    except Exception:
                        pass
                for p in procs:
                    try:
                        p.wait(timeout=5)
                    except Exception:
                        pass
            child.wait()
    # printed only now, with no process of the kernel left: nothing it prints comes after
    for line in report:
        print(line, flush=True)
    return code


def run(child, inp, out, flush, check_only: bool, report: list[str]) -> int:
    hello = child.stdout.readline().strip()
    if hello != "ready":
        return fail(hello or "the kernel worker died while importing kernel.py (see the log)")
    rng_seed = np.random.SeedSequence(int.from_bytes(os.urandom(16), "little"))
    budget = float(os.environ.get("AUTORESEARCH_BUDGET_SECONDS", "10"))
    calls = 2 if check_only else WARMUP + MAX_RUNS
    times: list[float] = []
    inside = outside = 0.0
    frozen = freeze()
    last_cpu = cpu_seconds()
    started = time.perf_counter()
    for i in range(calls):
        x = np.random.default_rng(rng_seed.spawn(1)[0]).random(inp.shape)
        want = reference(x)
        np.copyto(inp, x)
        out.fill(np.nan)
        flush()
        cpu0 = cpu_seconds()
        t0 = time.perf_counter_ns()
        thaw(frozen)
        child.stdin.write("go\n")
        reply = child.stdout.readline().strip()
        t1 = time.perf_counter_ns()
        frozen = freeze()
        cpu1 = cpu_seconds()
        if reply != "done":
            return fail(f"call {i}: {reply or 'the kernel worker died (see the log)'}")
        outside += cpu0 - last_cpu
        inside += cpu1 - cpu0
        last_cpu = cpu1
        if not np.array_equal(inp, x):
            return fail(f"call {i}: the kernel wrote to its input x, which is read-only")
        err = float(np.nanmax(np.abs(out - want))) if not np.isnan(out).any() else float("nan")
        if not err <= ATOL:
            where = "left NaN (unwritten) cells in out" if np.isnan(out).any() else \
                f"max abs error {err:.3g} > {ATOL:g}"
            return fail(f"call {i}: wrong output, {where}")
        if i >= WARMUP:
            times.append((t1 - t0) / 1e6)
        if not check_only and len(times) >= MIN_RUNS and time.perf_counter() - started > budget:
            break
    if outside > OUTSIDE_CPU_S + OUTSIDE_CPU_SHARE * inside:
        return fail(f"the kernel's process used {outside * 1000:.0f} ms of CPU outside the timed "
                    f"calls ({inside * 1000:.0f} ms inside): work ahead of the call (a background "
                    f"thread or process) is not allowed")
    if check_only:
        report.append(f"check: {calls} calls correct")
        return 0
    median_ms = statistics.median(times)
    q = statistics.quantiles(times, n=4)
    moved = inp.nbytes + out.nbytes
    gbps = moved / (median_ms / 1000) / 1e9
    # KERNEL_BOUND_GBPS replaces the measurement (to test the bound, or pin it on a noisy host)
    peak = float(os.environ.get("KERNEL_BOUND_GBPS") or memcpy_gbps(moved // 2, flush))
    if gbps > BOUND_MARGIN * peak:
        return fail(f"physically impossible: {gbps:.1f} GB/s moved, above {BOUND_MARGIN:g} x the "
                    f"measured memcpy bandwidth of {peak:.1f} GB/s (cached or skipped work?)")
    report += [f"kernel_ms: {median_ms:.4f}", f"kernel_ms_iqr: {q[2] - q[0]:.4f}",
               f"gbps: {gbps:.2f}", f"memcpy_gbps: {peak:.2f}", f"runs: {len(times)}",
               f"cpu_outside_ms: {outside * 1000:.1f}"]
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.exit(worker(sys.argv[2], int(sys.argv[3])))
    sys.exit(main(sys.argv[1:]))
