"""Diagnostic: where an experiment's overhead goes on the large repository of bench/overhead.py.

    python bench/large_profile.py                 # 100 experiments
    python bench/large_profile.py --experiments 40

Builds the large target (5,000 tracked files, ~200 MB of history, a 50 MB locked file; about a
minute), runs our loop on it with the script agent and `sandbox = false` exactly as
bench/overhead.py --large does, and times, in every thread, the two passes over the tree: the
locked/tracked check (`evaluation.locked_violations`, by the number of paths it checks) and the
slot's incremental checkout. Then it times a bare loop of `os.stat` over the same 5,000 files,
in one thread and split over two: the least any check that looks at every file can cost here.

A diagnostic, not a benchmark: no target, no PASS/FAIL (the figure with a target is
bench/overhead.py --large's ratio against the small repository).
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import make_target, run_loop  # noqa: E402

from autoresearch import checkout, evaluation  # noqa: E402

spent: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])


def timed(label_of, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            entry = spent[label_of(*args)]
            entry[0] += 1
            entry[1] += time.perf_counter() - t0
    return wrapper


def stat_loop(dirs: list[tuple[str, list[str]]], threads: int) -> float:
    """ms for one lstat of every file, by name in its directory's descriptor."""
    def one(item: tuple[str, list[str]]) -> None:
        fd = os.open(item[0], os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in map(functools.partial(os.stat, dir_fd=fd, follow_symlinks=False), item[1]):
                pass
        finally:
            os.close(fd)

    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(20):
            t0 = time.perf_counter()
            list(pool.map(one, dirs)) if threads > 1 else list(map(one, dirs))
            best = min(best, time.perf_counter() - t0)
    return best * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=100)
    a = ap.parse_args()
    evaluation.locked_violations = timed(lambda _dir, locked, *rest: f"check of {len(locked):,} paths",
                                         evaluation.locked_violations)
    checkout._Sync.incremental = timed(lambda *_: "incremental checkout", checkout._Sync.incremental)
    checkout._Sync.whole = timed(lambda *_: "whole checkout (the first)", checkout._Sync.whole)
    with tempfile.TemporaryDirectory(prefix="ar-large-") as tmp:
        root = Path(tmp) / "target"
        t0 = time.perf_counter()
        script = make_target(root, a.experiments + 10, 0, large=True)
        print(f"large target built in {time.perf_counter() - t0:.0f} s")
        loop, why, total, exps = run_loop(root, script, "script", a.experiments, "profile")
        loop.ledger.close()
        n = len(exps)
        print(f"{n} experiments in {total:.1f} s ({total / n * 1000:.1f} ms each, the command "
              f"included); stopped: {why}")
        for label, (calls, seconds) in sorted(spent.items(), key=lambda kv: -kv[1][1]):
            print(f"  {label:28s} {calls:5d} calls  {seconds / n * 1000:7.2f} ms per experiment")
        src = root / "src"
        dirs = [(str(d), sorted(os.listdir(d))) for d in sorted(src.iterdir())]
        files = sum(len(names) for _, names in dirs)
        one = str(root / "train.py")
        t0 = time.perf_counter()
        for _ in range(20000):
            os.lstat(one)
        lstat_us = (time.perf_counter() - t0) / 20000 * 1e6
        print(f"bare os.stat of the {files:,} files: {stat_loop(dirs, 1):.1f} ms in one thread, "
              f"{stat_loop(dirs, 2):.1f} ms in two; one os.lstat by path: {lstat_us:.2f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
