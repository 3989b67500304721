"""Benchmark: does the driver's cost per experiment stay flat as the run grows?

    python bench/scaling.py              # 10,000 experiments (several minutes)
    python bench/scaling.py --n 2000     # a shorter run; windows scale with --n
    python bench/scaling.py --policy noise-aware   # the default policy instead of greedy

The loop runs in this process on a throwaway git target with an instant in-process agent (every
proposal is a new `train.py`) and a no-op executor (every job is "measured" at once with a
pseudo-random score, no subprocess), so what is left is the driver: proposals turned into
commits and pins, ledger writes, decisions, results.tsv, the reporter. Driver CPU is this
process's CPU time (all its threads; git children excluded), sampled when each experiment
finishes, and reported in ms per experiment over three windows of experiments:
first (100-200), middle (1,000-1,100) and last (n-100 .. n). Peak RSS is sampled every 5 ms.

Targets: last window / first window <= 1.25; peak RSS <= 150 MB.

Then, on the ledger of that run, the read side: `autoresearch log --limit 50` and `status`
(their work, in this process; the time of the whole command, interpreter start-up included,
is printed beside it), and the dashboard served on 127.0.0.1 (each JSON endpoint over HTTP,
and the size of the first HTML response). Targets: each answer in <= 300 ms; the page <= 500 KB.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import PeakRSS, make_target  # noqa: E402

from autoresearch.agents import Agent, AgentContext  # noqa: E402
from autoresearch.cli import build_loop  # noqa: E402
from autoresearch.config import load_target  # noqa: E402
from autoresearch.evaluation import EvalResult, Job, Outcome  # noqa: E402
from autoresearch.executors import Executor  # noqa: E402
from autoresearch.experiment import Proposal  # noqa: E402

RATIO_TARGET = 1.25
RSS_TARGET_MB = 150.0
ANSWER_TARGET_MS = 300.0
PAGE_TARGET_KB = 500.0


class InstantAgent(Agent):
    """Every proposal is a new train.py, made at once."""

    name = "instant"
    concurrent = False

    def __init__(self) -> None:
        self.i = 0

    def propose(self, context: AgentContext) -> Proposal:
        self.i += 1
        # a new name each time: `LR = {i}` would repeat `LR = {i - 1}` within 1% past 100
        # (a near-duplicate, never run); this keeps every proposal a new experiment
        return Proposal(f"proposal {self.i}", files={"train.py": f"score: 0\nLR_{self.i} = 1\n"})


class NoopExecutor(Executor):
    """Measures nothing: every job comes back at once with a score drawn from its id."""

    def __init__(self, slots: int = 1) -> None:
        super().__init__()
        self.slots = slots

    def _start(self, job: Job, slot, should_stop, on_start) -> Future[EvalResult]:
        score = random.Random(job.experiment_id).uniform(0, 100)
        now = time.time()
        fut: Future[EvalResult] = Future()
        fut.set_result(EvalResult(Outcome.MEASURED, "", score, {"score": score}, 0.0, 0.0, 0,
                                  job.log_path, started=now, finished=now))
        return fut


class CpuClock:
    """A reporter that records this process's CPU time when each experiment finishes, and its
    RSS every 1,000 experiments (the growth, apart from what was loaded at the start)."""

    def __init__(self) -> None:
        self.at: list[float] = []
        self.rss: dict[int, int] = {}
        self._proc = psutil.Process()

    def message(self, text: str) -> None:
        pass

    def started(self, e, slot, budget) -> None:
        pass

    def finished(self, e, best, reported=None) -> None:
        self.at.append(time.process_time())
        if len(self.at) % 1000 == 0:
            self.rss[len(self.at)] = self._proc.memory_info().rss

    def tick(self, loop) -> None:
        pass

    def close(self) -> None:
        pass


def window_ms(at: list[float], lo: int, hi: int) -> float:
    return (at[hi - 1] - at[lo - 1]) / (hi - lo) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="experiments (at least 300)")
    ap.add_argument("--policy", default="greedy",
                    choices=("greedy", "noise-aware", "noise-aware-v1", "noise-aware-v2"),
                    help="the acceptance policy (greedy: one run per proposal, the most experiments)")
    a = ap.parse_args()
    n = max(300, a.n)
    with tempfile.TemporaryDirectory(prefix="ar-scale-") as tmp:
        root = Path(tmp) / "target"
        make_target(root, 1, 0)
        target = load_target(root)
        clock = CpuClock()
        args = SimpleNamespace(agent="instant", policy=a.policy, max_experiments=n, seed=0,
                               workers=1, executor="local")
        loop = build_loop(target, args, "scale", agent=InstantAgent(), reporter=clock)
        loop.executor = NoopExecutor()
        t0 = time.perf_counter()
        with PeakRSS() as rss:
            why = loop.run_forever()
        wall = time.perf_counter() - t0
        done = len(clock.at)
        windows = [("first", 100, 200), ("middle", 1000, 1100), ("last", n - 100, n)]
        print(f"experiments: {done} (stopped: {why}) in {wall:.1f} s wall")
        figures = {}
        for name, lo, hi in windows:
            if hi <= done and lo >= 1 and (name != "middle" or hi < n - 100):
                figures[name] = window_ms(clock.at, lo, hi)
                print(f"driver_cpu_ms_per_experiment {name} ({lo}-{hi}): {figures[name]:.2f}")
        ratio = figures["last"] / figures["first"]
        peak = rss.peak / 2**20
        print(f"last/first: {ratio:.2f}  (target <= {RATIO_TARGET})  "
              f"{'PASS' if ratio <= RATIO_TARGET else 'FAIL'}")
        print(f"peak_rss_mb: {peak:.1f}  (target <= {RSS_TARGET_MB:g})  "
              f"{'PASS' if peak <= RSS_TARGET_MB else 'FAIL'}")
        if len(clock.rss) >= 2:
            (lo, rss_lo), *_, (hi, rss_hi) = sorted(clock.rss.items())
            print(f"rss_growth_kb_per_experiment ({lo}-{hi}): "
                  f"{(rss_hi - rss_lo) / (hi - lo) / 1024:.2f}  (rss at {lo}: "
                  f"{rss_lo / 2**20:.1f} MB; bench/rss_breakdown.py shows where)")
        ok = ratio <= RATIO_TARGET and peak <= RSS_TARGET_MB
        loop.ledger.close()
        ok &= read_side(root, done)
        return 0 if ok else 1


def _best_of(fn, runs: int = 5) -> float:
    """The fastest of a few runs, ms (the first one also warms the page cache)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return min(times)


def read_side(root: Path, n: int) -> bool:
    import contextlib
    import io
    import subprocess
    import urllib.request

    import uvicorn

    from autoresearch.cli import main as cli_main
    from autoresearch.dashboard import create_app

    ok = True
    print(f"read side at {n} experiments:")
    for argv in (["log", "--limit", "50"], ["status"], ["log", "--limit", "50", "--json"]):
        def command(argv=argv):
            with contextlib.redirect_stdout(io.StringIO()):
                assert cli_main(["-C", str(root), *argv]) == 0
        ms = _best_of(command)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "autoresearch.cli", "-C", str(root), *argv],
                       capture_output=True, check=True)
        whole = (time.perf_counter() - t0) * 1000
        good = ms <= ANSWER_TARGET_MS
        ok &= good
        print(f"  autoresearch {' '.join(argv)}: {ms:.0f} ms (whole command {whole:.0f} ms)  "
              f"{'PASS' if good else 'FAIL'}")
    config = uvicorn.Config(create_app(load_target(root), None), host="127.0.0.1", port=0,
                            log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    import threading
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    try:
        for path in ("/api/status", "/api/runs", f"/api/experiments?since={n - 50}",
                     f"/api/experiments?before={n // 2}", "/api/experiments?seqs=1,2,3",
                     "/api/experiments?since=0", f"/api/experiments/{n}"):
            def get(path=path):
                with urllib.request.urlopen(base + path, timeout=30) as r:
                    r.read()
            ms = _best_of(get)
            good = ms <= ANSWER_TARGET_MS
            ok &= good
            print(f"  GET {path}: {ms:.0f} ms  {'PASS' if good else 'FAIL'}")
        t0 = time.perf_counter()
        with urllib.request.urlopen(base + "/", timeout=30) as r:
            size = len(r.read()) / 1024
        ms = (time.perf_counter() - t0) * 1000
        good = size <= PAGE_TARGET_KB and ms <= ANSWER_TARGET_MS
        ok &= good
        print(f"  GET /: {size:.0f} KB in {ms:.0f} ms  (target <= {PAGE_TARGET_KB:g} KB)  "
              f"{'PASS' if good else 'FAIL'}")
    finally:
        server.should_exit = True
        thread.join(10)
    return ok


if __name__ == "__main__":
    sys.exit(main())
