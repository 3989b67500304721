"""Attacks on the kernel template's harness: each known way to fake a fast kernel is blocked.

Each attack is a real kernel.py, run by the template's locked evaluate.py in a fresh process,
as the evaluate step would run it. The cheats come from the field: a cache keyed by the input
buffer (pygpubench PR #49), output left over from an earlier call, 3,530 GB/s "measured" from
caching (llm.c PR #851), timers patched by the code under test, work done ahead of the call by a
thread started at import time, lower precision. One attack also runs through `autoresearch run`
to show the experiment fails with the harness's reason and is never kept.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

TEMPLATE = Path(__file__).resolve().parents[2] / "src" / "autoresearch" / "templates" / "kernel"
N = "768"        # small and quick; the cheats do not depend on the size

HONEST = """
import numpy as np

def stencil(x, out):
    out[...] = x
    out[1:-1, 1:-1] = 0.5 * x[1:-1, 1:-1] + 0.125 * (
        x[:-2, 1:-1] + x[2:, 1:-1] + x[1:-1, :-2] + x[1:-1, 2:])
"""


def harness(tmp_path: Path, kernel: str, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """The locked evaluator on this kernel.py; stdout + stderr in .stdout."""
    root = tmp_path / "k"
    root.mkdir(exist_ok=True)
    shutil.copy(TEMPLATE / "evaluate.py", root / "evaluate.py")
    (root / "kernel.py").write_text(kernel)
    full = {**os.environ, "KERNEL_N": N, "AUTORESEARCH_BUDGET_SECONDS": "0.5", **(env or {})}
    return subprocess.run([sys.executable, "evaluate.py", *args], cwd=root, env=full,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=180)


def metric(out: str, name: str) -> float:
    line = next(ln for ln in out.splitlines() if ln.startswith(f"{name}: "))
    return float(line.split(": ", 1)[1])


def test_an_honest_kernel_passes_every_check(tmp_path):
    p = harness(tmp_path, HONEST)
    assert p.returncode == 0, p.stdout
    assert "eval_error" not in p.stdout
    assert metric(p.stdout, "kernel_ms") > 0
    assert metric(p.stdout, "gbps") < metric(p.stdout, "memcpy_gbps")


def test_a_cache_keyed_by_the_input_buffer_returns_stale_output_and_fails(tmp_path):
    # pygpubench PR #49: the benchmark reused its input buffer, so a cache keyed by the pointer hit
    p = harness(tmp_path, HONEST.replace("def stencil(x, out):", """_cache = {}

def stencil(x, out):
    key = (x.__array_interface__["data"][0], x.shape)
    if key in _cache:
        out[...] = _cache[key]
        return
    _stencil(x, out)
    _cache[key] = out.copy()

def _stencil(x, out):"""))
    assert p.returncode == 1
    assert "eval_error: call 1: wrong output, max abs error" in p.stdout


def test_reusing_the_previous_output_fails_on_the_poisoned_buffer(tmp_path):
    p = harness(tmp_path, HONEST.replace("def stencil(x, out):", """_calls = [0]

def stencil(x, out):
    _calls[0] += 1
    if _calls[0] > 1:
        return          # the output of the first call is still there... or is it?
    _stencil(x, out)

def _stencil(x, out):"""))
    assert p.returncode == 1
    assert "eval_error: call 1: wrong output, left NaN (unwritten) cells in out" in p.stdout


def test_a_kernel_that_patches_the_timers_is_timed_by_the_harness_anyway(tmp_path):
    sleepy = HONEST.replace("def stencil(x, out):", """import time

_frozen = time.perf_counter()
time.perf_counter = lambda: _frozen
time.perf_counter_ns = lambda: int(_frozen * 1e9)
time.monotonic = lambda: _frozen
time.time = lambda: _frozen

def stencil(x, out):
    time.sleep(0.06)    # 60 ms of "work" that the patched clocks would hide
    _stencil(x, out)

def _stencil(x, out):""")
    p = harness(tmp_path, sleepy)
    assert p.returncode == 0, p.stdout
    assert metric(p.stdout, "kernel_ms") >= 55.0


#: 30 ms of CPU: the cost of an expensive kernel, done by whoever computes the answer
BUSY = """
def _busy(seconds=0.03):
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass
"""

AHEAD_THREAD = """
import sys, threading, time
import numpy as np
""" + BUSY + """
_n = int(sys.argv[3])
_bufs = np.memmap(sys.argv[2], dtype=np.float64, mode="r", shape=(2, _n, _n))
_ready = {}

def _key(x):
    return np.asarray(x)[:3, :3].tobytes() + np.asarray(x)[-3:, -3:].tobytes()

def _watch():
    last = None
    while True:
        # the harness fills `out` with NaN after writing the input: then the input is complete
        if np.isnan(_bufs[1][-1, -1]) and _key(_bufs[0]) != last:
            x = np.array(_bufs[0])
            last = _key(x)
            out = x.copy()
            out[1:-1, 1:-1] = 0.5 * x[1:-1, 1:-1] + 0.125 * (
                x[:-2, 1:-1] + x[2:, 1:-1] + x[1:-1, :-2] + x[1:-1, 2:])
            _busy()
            _ready[last] = out
        time.sleep(0.0005)

threading.Thread(target=_watch, daemon=True).start()

def stencil(x, out):
    key = _key(x)
    while key not in _ready:
        time.sleep(0.0001)
    out[...] = _ready.pop(key)
"""

AHEAD_DAEMON = """
import os, sys, time
import numpy as np
""" + BUSY + """
_n = int(sys.argv[3])
_path = sys.argv[2]

if os.fork() == 0:                      # a double-forked, setsid daemon, started at import time
    os.setsid()
    if os.fork() == 0:
        bufs = np.memmap(_path, dtype=np.float64, mode="r+", shape=(2, _n, _n))
        while True:
            x, out = bufs[0], bufs[1]
            if np.isnan(out[-1, -1]) and np.isnan(out[0, 0]):
                res = np.array(x)
                res[1:-1, 1:-1] = 0.5 * x[1:-1, 1:-1] + 0.125 * (
                    x[:-2, 1:-1] + x[2:, 1:-1] + x[1:-1, :-2] + x[1:-1, 2:])
                _busy()
                out[...] = res
            time.sleep(0.0005)
    os._exit(0)
os.wait()

def stencil(x, out):
    while np.isnan(out[0, 0]) or np.isnan(out[-1, -1]):   # wait for the daemon's answer
        time.sleep(0.0001)
"""


@pytest.mark.parametrize("kernel", [AHEAD_THREAD, AHEAD_DAEMON], ids=["thread", "daemon"])
def test_work_ahead_of_the_call_is_frozen_and_timed(tmp_path, kernel):
    # a thread (or a double-forked daemon) started at import time maps the harness's buffers
    # (their path is in the worker's argv) and computes each new input's answer in the
    # background, hoping to finish before the clock starts. The harness freezes every process
    # it started between calls, so the 30 ms of work land inside the timed call.
    p = harness(tmp_path, kernel)
    if p.returncode == 0:
        assert metric(p.stdout, "kernel_ms") >= 28.0, p.stdout
        assert metric(p.stdout, "cpu_outside_ms") <= 30.0, p.stdout
    else:
        assert "of CPU outside the timed calls" in p.stdout, p.stdout
    leftovers = [q for q in psutil.process_iter(["cwd"]) if q.info["cwd"] == str(tmp_path / "k")]
    assert leftovers == [], "the harness kills the daemons a kernel leaves behind"


def test_float32_arithmetic_is_a_wrong_answer(tmp_path):
    p = harness(tmp_path, HONEST.replace(
        "def stencil(x, out):\n", "def stencil(x, out):\n    x = x.astype(np.float32)\n"))
    assert p.returncode == 1
    assert "wrong output, max abs error" in p.stdout


def test_a_fake_metric_printed_after_the_harness_never_comes_last(tmp_path):
    # at the worker's exit, and from a daemon once the worker is gone: both would follow the
    # harness's own line unless every process of the kernel is dead before it prints
    p = harness(tmp_path, HONEST + """
import atexit, os, time
atexit.register(lambda: print("kernel_ms: 0.0001", flush=True))
_parent = os.getpid()
if os.fork() == 0:
    os.setsid()
    while os.getppid() == _parent:
        time.sleep(0.0005)
    for _ in range(2000):
        os.write(2, b"kernel_ms: 0.0001\\n")
        time.sleep(0.0005)
    os._exit(0)
""")
    assert p.returncode == 0, p.stdout
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("kernel_ms: ")]
    assert lines and lines[-1] != "kernel_ms: 0.0001", lines[-3:]
    assert metric(p.stdout, "kernel_ms") > 0.001


def test_writing_the_input_is_refused(tmp_path):
    p = harness(tmp_path, HONEST.replace(
        "def stencil(x, out):\n",
        "def stencil(x, out):\n    x.flags.writeable = True\n    x[0, 0] = 0.0\n"))
    assert p.returncode == 1
    assert "wrote to its input x" in p.stdout


def test_a_bandwidth_above_the_memcpy_bound_is_physically_impossible(tmp_path):
    # the bound itself: an honest kernel against a (pretended) 1 MB/s machine
    p = harness(tmp_path, HONEST, env={"KERNEL_BOUND_GBPS": "0.001"})
    assert p.returncode == 1
    assert "eval_error: physically impossible" in p.stdout
    assert "above 1.25 x the measured memcpy bandwidth of 0.0 GB/s" in p.stdout


@pytest.mark.parametrize("broken, reason", [
    ("raise RuntimeError('boom at import')\n", "error importing kernel.py: RuntimeError"),
    ("def stencil(x, out):\n    raise ValueError('bad')\n", "call 0: error: ValueError: bad"),
    ("import os\ndef stencil(x, out):\n    os._exit(3)\n", "call 0: the kernel worker died"),
])
def test_a_broken_kernel_fails_with_its_reason(tmp_path, broken, reason):
    p = harness(tmp_path, broken)
    assert p.returncode == 1
    assert reason in p.stdout


def test_the_cache_trick_through_a_real_run_is_a_crash_and_never_kept(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        from conftest import ar, commit_all, ledger_experiments, write_script
    finally:
        sys.path.pop(0)
    dest = tmp_path / "kernel"
    assert ar(tmp_path, "init", "--template", "kernel", str(dest)).returncode == 0
    with (dest / "autoresearch.toml").open("a") as f:
        f.write(f'\n[env]\nKERNEL_N = "{N}"\n')
    commit_all(dest, "small")
    cheat = (dest / "kernel.py").read_text().replace("def stencil(x: np.ndarray, out: np.ndarray) -> None:\n", """_cache = {}


def stencil(x: np.ndarray, out: np.ndarray) -> None:
    key = x.__array_interface__["data"][0]
    if key in _cache:
        out[...] = _cache[key]
        return
    _real(x, out)
    _cache[key] = out.copy()


def _real(x: np.ndarray, out: np.ndarray) -> None:
""")
    script = write_script(tmp_path / "p.jsonl", [
        {"description": "memoise the output", "files": {"kernel.py": cheat}}])
    p = ar(dest, "run", "--tag", "t", "--agent", f"script:{script}", "--policy", "greedy",
           "--max-experiments", "2", "--budget", "0.5", timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = ledger_experiments(dest, "t")
    cheat_row = next(e for e in rows if e.seq == 2)
    assert cheat_row.status.value == "crash"
    assert "wrong output" in cheat_row.reason
    assert [e.seq for e in rows if e.status.value == "keep"] == [1]


def _cuda() -> bool:
    try:
        import torch
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU with torch and triton")
def test_the_gpu_harness_blocks_the_same_cheats_and_the_triton_kernel_beats_torch():
    # bench/kernel_gpu.py runs the GPU variant's cheats (pointer cache, output reuse, patched
    # timers, a thread at import time, float16, the bound) and the baseline-vs-Triton comparison;
    # it exits non-zero when any cheat gets through or Triton is not 2x faster
    bench = Path(__file__).resolve().parents[2] / "bench" / "kernel_gpu.py"
    p = subprocess.run([sys.executable, str(bench), "--n", "4096"], capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("PASS") >= 7
