"""config target: the evaluator (LOCKED). Builds bench.c with build.json's flags and times it.

    python evaluate.py

It compiles its own binary from the committed bench.c and build.json (build.py's allow-list
applies), in a private temporary directory, so nothing the run step left behind is used. Every
run gets fresh random matrices (seeded from os.urandom) and its output is checked against numpy's
A @ B (relative error <= 1e-9: -ffast-math reordering passes, wrong answers do not). One untimed
warm-up run, then MIN_RUNS..MAX_RUNS timed runs; `runtime_ms` is the median wall time of the
process (the harness's clock), `runtime_ms_iqr` its spread.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from build import BuildError, compile_bench

N = int(os.environ.get("CONFIG_N", "256"))   # matrix size
MIN_RUNS = 5
MAX_RUNS = 15
RTOL = 1e-9
RUN_TIMEOUT = 60.0                            # seconds for one run of the binary


def fail(message: str) -> int:
    print(f"eval_error: {message}", flush=True)
    return 1


def main() -> int:
    budget = float(os.environ.get("AUTORESEARCH_BUDGET_SECONDS", "10"))
    seeds = np.random.SeedSequence(int.from_bytes(os.urandom(16), "little"))
    with tempfile.TemporaryDirectory(prefix="ar-config-") as tmp:
        binary = Path(tmp) / "bench"
        try:
            compile_s, fl = compile_bench(binary)
        except (BuildError, ValueError) as e:
            return fail(str(e))
        inp, outp = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        times: list[float] = []
        started = time.perf_counter()
        for i in range(MAX_RUNS + 1):
            rng = np.random.default_rng(seeds.spawn(1)[0])
            a, b = rng.standard_normal((N, N)), rng.standard_normal((N, N))
            with open(inp, "wb") as f:
                f.write(np.int32(N).tobytes())
                f.write(a.tobytes())
                f.write(b.tobytes())
            outp.unlink(missing_ok=True)
            t0 = time.perf_counter()
            try:
                p = subprocess.run([str(binary), str(inp), str(outp)], capture_output=True,
                                   text=True, timeout=RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                return fail(f"run {i} took over {RUN_TIMEOUT:g} s")
            ms = (time.perf_counter() - t0) * 1000.0
            if p.returncode != 0:
                return fail(f"run {i}: bench exited {p.returncode}: {p.stderr.strip()[-200:]}")
            try:
                c = np.fromfile(outp, dtype=np.float64).reshape(N, N)
            except (OSError, ValueError):
                return fail(f"run {i}: bench wrote no {N}x{N} result")
            want = a @ b
            err = float(np.max(np.abs(c - want)) / np.max(np.abs(want)))
            if not err <= RTOL:
                return fail(f"run {i}: wrong result (relative error {err:.3g} > {RTOL:g})")
            if i > 0:
                times.append(ms)
            if len(times) >= MIN_RUNS and time.perf_counter() - started > budget:
                break
        size_kb = binary.stat().st_size / 1024
    q = statistics.quantiles(times, n=4)
    print(f"runtime_ms: {statistics.median(times):.3f}")
    print(f"runtime_ms_iqr: {q[2] - q[0]:.3f}")
    print(f"runs: {len(times)}")
    print(f"compile_s: {compile_s:.3f}")
    print(f"binary_kb: {size_kb:.1f}")
    print(f"flags: {' '.join(fl)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
