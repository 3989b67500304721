"""Where the driver's memory goes: bench/scaling.py's loop, with its RSS taken apart as it runs.

    python bench/rss_breakdown.py                      # 3,000 experiments
    python bench/rss_breakdown.py --n 10000 --python   # + the Python allocation sites that grew
    python bench/rss_breakdown.py --policy noise-aware # under the default policy

At each mark (every n/5 experiments) it prints this process's RSS split into anonymous memory
(heaps: Python objects, malloc) and file-backed pages (mapped libraries; pack files when libgit2
reads packs), the largest mappings, glibc malloc's bytes in use (libgit2 and SQLite allocate
there; so do Python objects over 512 bytes) and libgit2's object cache. With --python,
tracemalloc (slower, and it inflates RSS) lists the source lines whose live allocations grew
most between the first and the last mark, in bytes per experiment.

A diagnostic, not a benchmark: no target, no PASS/FAIL (the figure is scaling.py's).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import re
import sys
import tempfile
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import make_target  # noqa: E402
from scaling import CpuClock, InstantAgent, NoopExecutor  # noqa: E402

from autoresearch.cli import build_loop  # noqa: E402
from autoresearch.config import load_target  # noqa: E402
from autoresearch.ratchet import pygit2  # noqa: E402

MB = 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def malloc_in_use() -> float | None:
    """glibc malloc's bytes in use, all arenas and mmapped chunks (None without glibc 2.33+)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    m = libc.mallinfo2()
    return m.uordblks + m.hblkhd


def mappings(top: int) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """(/proc/self/smaps_rollup in kB, the largest mappings by resident kB, same-named summed)."""
    rollup = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if m := re.match(r"(\w+):\s+(\d+) kB", line):
            rollup[m.group(1)] = int(m.group(2))
    by_name: collections.Counter[str] = collections.Counter()
    name = "[anon]"
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split(None, 5)
            name = parts[5].strip() if len(parts) > 5 else "[anon]"
            if "/objects/pack/" in name:
                name = "git pack " + name.rsplit(".", 1)[-1]
        elif line.startswith("Rss:"):
            by_name[name] += int(line.split()[1])
    return rollup, by_name.most_common(top)


class Marks(CpuClock):
    def __init__(self, marks: set[int], python: bool) -> None:
        super().__init__()
        self.marks, self.python = marks, python
        self.snapshots: dict[int, tracemalloc.Snapshot] = {}

    def finished(self, e, best, reported=None) -> None:
        super().finished(e, best, reported)
        if (n := len(self.at)) in self.marks:
            report(n)
            if self.python:
                self.snapshots[n] = tracemalloc.take_snapshot()


def report(n: int) -> None:
    rollup, top = mappings(6)
    anon = rollup.get("Anonymous", 0)
    used = malloc_in_use()
    cache = pygit2.settings.cached_memory if pygit2 is not None else None
    print(f"@{n}: rss {rollup['Rss'] / 1024:.1f} MB = anonymous {anon / 1024:.1f} + file-backed "
          f"{(rollup['Rss'] - anon) / 1024:.1f}; malloc in use "
          f"{used / MB if used is not None else float('nan'):.1f} MB; libgit2 cache "
          f"{f'{cache[0] / MB:.1f} of {cache[1] / MB:.0f} MB' if cache else 'n/a'}")
    for name, kb in top:
        print(f"    {kb / 1024:7.1f} MB  {name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="experiments (at least 500)")
    ap.add_argument("--python", action="store_true", help="also trace Python allocations")
    ap.add_argument("--policy", default="greedy",
                    choices=("greedy", "noise-aware", "noise-aware-v1", "noise-aware-v2"),
                    help="the policy (greedy; noise-aware, the default)")
    a = ap.parse_args()
    n = max(500, a.n)
    marks = {n * k // 5 for k in range(1, 6)}
    if a.python:
        tracemalloc.start()
    with tempfile.TemporaryDirectory(prefix="ar-rss-") as tmp:
        root = Path(tmp) / "target"
        make_target(root, 1, 0)
        clock = Marks(marks, a.python)
        args = SimpleNamespace(agent="instant", policy=a.policy, max_experiments=n, seed=0,
                               workers=1, executor="local")
        loop = build_loop(load_target(root), args, "rss", agent=InstantAgent(), reporter=clock)
        loop.executor = NoopExecutor()
        report(0)
        loop.run_forever()
        loop.ledger.close()
    if a.python and len(clock.snapshots) >= 2:
        (lo, first), *_, (hi, last) = sorted(clock.snapshots.items())
        stats = last.compare_to(first, "lineno")
        print(f"python allocations that grew, experiments {lo}-{hi} "
              f"({sum(s.size_diff for s in stats) / (hi - lo):.0f} B per experiment in all):")
        for s in stats[:25]:
            print(f"  {s.size_diff / (hi - lo):7.0f} B/exp  {s.count_diff / (hi - lo):5.1f} "
                  f"blocks/exp  {s.traceback.format()[0].strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
