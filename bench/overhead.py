"""Benchmark: what the harness costs per experiment, apart from the commands themselves.

    python bench/overhead.py                       # 200 experiments, script agent
    python bench/overhead.py --agent optuna        # the same with TPE proposing
    python bench/overhead.py --large               # and on a large repository
    python bench/overhead.py --profile             # and cProfile the loop even when it passes

A throwaway git target whose run command is `cat train.py` (the file is `score: <value>`, so
every proposal is a new tree and some are kept). The loop runs in this process via
cli.build_loop with the greedy policy. The commands' own cost is measured by running the same
command N times with plain subprocess (bash -c, no runner, no subreaper), so everything the
harness adds around a command counts as overhead; per experiment,

    overhead = (finish of this experiment - finish of the previous one) - bare command time

so it holds proposing, committing, pinning, the worktree checkout, the ledger writes, the
decision, results.tsv and the loop's waits. Peak RSS is this process alone (children excluded).
Targets: median overhead < 100 ms, peak RSS < 150 MB.

The load-independent evidence is printed beside it, for our loop and the hand loop alike: CPU
per experiment (getrusage, this process and its children, the subreapers included) and the
programs started per experiment (exec calls, counted by `perf stat` where it is installed and
allowed). Our loop's one-time start-up (imports, the first subreaper) is paid by a short run
before the measured one, and printed apart.

The hand-written loop of the original (a coding agent typing `git commit -am`, the command into
a log, `grep`, `git reset --hard`) runs on a copy of the same repository with the same
proposals in the same run, as one bash script; its overhead is counted the same way. The hand
loop has no sandbox, so the target runs with `sandbox = false` (the sandbox's own cost is the
isolation benchmark's). Target: our median overhead at most 1.5 x the hand loop's.

`--large` repeats our loop on a large repository: 5,000 tracked files, about 200 MB of history
and a 50 MB locked file. Targets: median overhead at most 2 x the small repository's; peak RSS
at most 150 MB. `--no-notice` checks every tracked file after each step and at each checkout,
as where inotify is missing (the figure before treewatch.py).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil

from autoresearch import treewatch
from autoresearch.cli import build_loop
from autoresearch.config import load_target
from autoresearch.ratchet import PLUMBING_ENV, pygit2
from autoresearch.runner import close_reapers

MEDIAN_TARGET_MS = 100.0   # harness overhead per experiment
RSS_TARGET_MB = 150.0      # peak resident memory of the harness process
HAND_TARGET = 1.5          # our overhead / the hand loop's
LARGE_TARGET = 2.0         # our overhead on the large repository / on the small one
RUN_COMMAND = "cat train.py"
GIT = ["git", "-c", "user.name=b", "-c", "user.email=b@b", "-c", "commit.gpgsign=false"]


def make_target(root: Path, n: int, seed: int, large: bool = False) -> Path:
    """A git repo holding a target whose metric is the content of train.py, and n proposals."""
    root.mkdir(parents=True)
    (root / "autoresearch.toml").write_text(
        'editable = ["train.py"]\n'
        + ('locked = ["data/weights.bin"]\n' if large else '')
        + f'run = "{RUN_COMMAND}"\n'
        'metric = "score"\n'
        'direction = "minimize"\n'
        'sandbox = false\n'
        'budget = 10\n')
    (root / "program.md").write_text("Lower the score.\n")
    (root / "train.py").write_text("score: 100.0\nLR = 0.5\n")
    git = GIT
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=root, check=True)
    if large:
        make_large(root, seed)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "base"], cwd=root, check=True)
    rng = random.Random(seed)
    lines = [json.dumps({"description": f"proposal {i}",
                         "files": {"train.py": f"score: {rng.uniform(0, 100):.6f}\nLR = {i}\n"}})
             for i in range(n)]
    script = root.parent / "proposals.jsonl"
    script.write_text("\n".join(lines) + "\n")
    return script


def make_large(root: Path, seed: int) -> None:
    """5,000 small tracked files, ~200 MB of incompressible history, a 50 MB locked file."""
    rng = random.Random(seed)
    for i in range(5000):
        d = root / "src" / f"m{i // 100:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}.py").write_text(f"X_{i} = {rng.random()!r}\n" * 20)
    data = root / "data"
    data.mkdir()
    for k in range(8):   # 8 versions of a 25 MB file: ~200 MB that git cannot compress
        (data / "history.bin").write_bytes(rng.randbytes(25 * 2**20))
        subprocess.run([*GIT, "add", "-A"], cwd=root, check=True)
        subprocess.run([*GIT, "commit", "-q", "-m", f"history {k}"], cwd=root, check=True)
    (data / "history.bin").unlink()
    (data / "weights.bin").write_bytes(rng.randbytes(50 * 2**20))


HAND_LOOP = r"""
set -u
best=100.0
while IFS=$'\t' read -r desc file; do
  t0=$EPOCHREALTIME
  cp "$file" train.py
  git -c user.name=b -c user.email=b@b commit -qam "$desc"
  bash -c "$CMD" > run.log 2>&1
  score=$(grep '^score:' run.log | cut -d' ' -f2)
  if awk -v a="$score" -v b="$best" 'BEGIN{exit !(a < b)}'; then best=$score
  else git reset -q --hard HEAD~1; fi
  echo "$t0 $EPOCHREALTIME"
done
"""


class Cost:
    """CPU seconds of this process and of its waited-for children (the subreapers are ended, so
    waited for, inside the measured block), and the programs started
    (exec calls, counted by `perf stat` attached to this process and inherited by everything it
    starts; None where perf is missing or not allowed), between __enter__ and __exit__."""

    def __init__(self, count_processes: bool) -> None:
        self.count = count_processes and shutil.which("perf") is not None
        self.self_s = self.children_s = 0.0
        self.execs: int | None = None

    def __enter__(self) -> Cost:
        self._perf = None
        if self.count:
            self._out = tempfile.NamedTemporaryFile(prefix="ar-perf-", suffix=".csv")
            self._perf = subprocess.Popen(
                ["perf", "stat", "-x,", "-e", "sched:sched_process_exec", "-p", str(os.getpid()),
                 "-o", self._out.name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)   # perf attaches to every thread before the first experiment
        self._self = resource.getrusage(resource.RUSAGE_SELF)
        self._children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return self

    def __exit__(self, *exc) -> None:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        self.self_s = s.ru_utime + s.ru_stime - self._self.ru_utime - self._self.ru_stime
        self.children_s = (c.ru_utime + c.ru_stime - self._children.ru_utime
                           - self._children.ru_stime)
        if self._perf is not None:
            self._perf.send_signal(2)
            self._perf.wait()
            for line in Path(self._out.name).read_text().splitlines():
                fields = line.split(",")
                if len(fields) > 2 and fields[2] == "sched:sched_process_exec":
                    self.execs = int(fields[0]) if fields[0].isdigit() else None
            self._out.close()

    def line(self, n: int) -> str:
        progs = "" if self.execs is None else f"; programs started {self.execs / n:.1f}"
        return (f"  CPU per experiment: {self.self_s / n * 1000:.1f} ms in this process + "
                f"{self.children_s / n * 1000:.1f} ms in children{progs}")


def hand_loop_times(root: Path, script: Path, n: int, cost: Cost) -> list[float]:
    """Seconds per experiment of the hand-written loop, on a copy of the target's repo."""
    copy = root.parent / "hand"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".autoresearch"))
    files = root.parent / "hand-files"
    files.mkdir()
    lines = []
    for i, line in enumerate(script.read_text().splitlines()[:n]):
        p = json.loads(line)
        (files / f"{i}.py").write_text(p["files"]["train.py"])
        lines.append(f"{p['description']}\t{files / f'{i}.py'}\n")
    with cost:
        out = subprocess.run(["/bin/bash", "-c", HAND_LOOP], cwd=copy, input="".join(lines),
                             capture_output=True, text=True,
                             env={"PATH": "/usr/bin:/bin", "CMD": RUN_COMMAND}, check=True)
    spans = [float(b) - float(a) for a, b in (ln.split() for ln in out.stdout.splitlines())]
    assert len(spans) == n, out.stderr
    return spans


def bare_command_times(cwd: Path, n: int) -> list[float]:
    """Seconds per run of the run command by itself: bash -c through plain subprocess."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        p = subprocess.run(["/bin/bash", "-c", RUN_COMMAND], cwd=cwd, capture_output=True,
                           text=True, env={"PATH": "/usr/bin:/bin"}, timeout=30)
        times.append(time.perf_counter() - t0)
        assert p.returncode == 0 and "score" in p.stdout, p
    return times


class PeakRSS:
    """Samples this process's RSS every 5 ms (psutil; children are other processes)."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_loop(root: Path, script: Path, agent: str, n: int, tag: str):
    target = load_target(root)
    agent_spec = f"script:{script}" if agent == "script" else agent
    args = SimpleNamespace(agent=agent_spec, policy="greedy", max_experiments=n, seed=0,
                           workers=1, executor="local")
    loop = build_loop(target, args, tag)
    t0 = time.perf_counter()
    why = loop.run_forever()
    total = time.perf_counter() - t0
    exps = loop.ledger.experiments(tag)
    return loop, why, total, exps


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def our_overhead(root: Path, script: Path, a: argparse.Namespace, tag: str):
    """(median and p90 overhead ms, peak RSS MB, bare command s, experiments, stop reason)."""
    bare = bare_command_times(root, a.bare_runs)
    bare_s = statistics.median(bare)
    # the process's one-time start-up (imports, pygit2, the first subreaper) is paid by a short
    # run on a throwaway copy first: the figures below are per experiment of a running loop
    warm_root = root.parent / "warm-up" / "target"
    warm_script = make_target(warm_root, 10, a.seed + 1)
    startup = Cost(False)
    with startup:
        warm, *_ = run_loop(warm_root, warm_script, a.agent, 3, tag)
        warm.ledger.close()
        close_reapers()   # the measured run starts its own: its start-up is counted there
    print(f"  start-up (a 3-experiment run first, not counted below): "
          f"{(startup.self_s + startup.children_s) * 1000:.0f} ms of CPU")
    cost = Cost(a.count_processes)
    with PeakRSS() as rss, cost:
        loop, why, total, exps = run_loop(root, script, a.agent, a.experiments, tag)
        loop.ledger.close()
        close_reapers()   # their CPU, and their children's, is counted once they are waited for
    done = sorted((e for e in exps if e.finished), key=lambda e: e.finished)
    pairs = list(zip(done, done[1:], strict=False))   # (previous, this) by finish time
    overhead_ms = [(b.finished - x.finished - bare_s) * 1000 for x, b in pairs]
    counts: dict[str, int] = {}
    for e in exps:
        counts[e.status.value] = counts.get(e.status.value, 0) + 1
    print(f"  experiments: {len(exps)} ({', '.join(f'{k}={v}' for k, v in sorted(counts.items()))})"
          f"; stopped: {why}; {total:.1f} s")
    print(f"  bare command: median {bare_s * 1000:.1f} ms, p90 {pct(bare, 0.9) * 1000:.1f} ms")
    print(cost.line(len(exps)))
    return (statistics.median(overhead_ms), pct(overhead_ms, 0.9), rss.peak / 2**20, bare_s)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=200)
    ap.add_argument("--agent", choices=["script", "optuna"], default="script")
    ap.add_argument("--bare-runs", type=int, default=100)
    ap.add_argument("--large", action="store_true", help="also on a large repository")
    ap.add_argument("--profile", action="store_true", help="cProfile the loop even when it passes")
    ap.add_argument("--plumbing", action="store_true",
                    help="build commits and checkouts with git processes even when pygit2 is "
                         "installed (AUTORESEARCH_GIT_PLUMBING=1): the figure before pygit2")
    ap.add_argument("--no-notice", action="store_true",
                    help="check every tracked file after each step and at each checkout, as "
                         "without inotify (AUTORESEARCH_NO_TREEWATCH=1): the figure before "
                         "treewatch.py")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-count-processes", dest="count_processes", action="store_false",
                    help="do not count the programs started (perf stat, where installed)")
    a = ap.parse_args()
    if a.plumbing:
        os.environ[PLUMBING_ENV] = "1"
    if a.no_notice:
        os.environ[treewatch.DISABLE_ENV] = "1"
    notice = treewatch.available() and not a.no_notice
    print(f"git work: {'plumbing processes' if a.plumbing or pygit2 is None else 'in-process (pygit2)'}"
          f"; files checked: {'those inotify names' if notice else 'every one'}"
          f"; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="ar-bench-") as tmp:
        root = Path(tmp) / "small" / "target"
        script = make_target(root, a.experiments + 10, a.seed)
        print(f"our loop, small repository, agent {a.agent}:")
        med, p90, peak, bare_s = our_overhead(root, script, a, "bench")
        print(f"  overhead: median {med:.1f} ms, p90 {p90:.1f} ms; peak RSS {peak:.1f} MB")
        ok_med, ok_rss = med < MEDIAN_TARGET_MS, peak < RSS_TARGET_MB
        print(f"  overhead_median < {MEDIAN_TARGET_MS:g} ms: {verdict(ok_med)}")
        print(f"  peak_rss < {RSS_TARGET_MB:g} MB: {verdict(ok_rss)}")
        ok &= ok_med and ok_rss
        if a.agent == "script":
            cost = Cost(a.count_processes)
            hand = [(s - bare_s) * 1000
                    for s in hand_loop_times(root, script, a.experiments, cost)]
            hmed = statistics.median(hand)
            ratio = med / hmed
            print(f"hand-written loop (git commit -am; cmd > log; grep; git reset --hard), "
                  f"same repository, same proposals:\n  overhead: median {hmed:.1f} ms, "
                  f"p90 {pct(hand, 0.9):.1f} ms")
            print(cost.line(a.experiments))
            print(f"  ours / hand: {ratio:.2f}  (target <= {HAND_TARGET:g})  "
                  f"{verdict(ratio <= HAND_TARGET)}")
            ok &= ratio <= HAND_TARGET
        if a.large:
            big = Path(tmp) / "large" / "target"
            t0 = time.perf_counter()
            big_script = make_target(big, a.experiments + 10, a.seed, large=True)
            print(f"our loop, large repository (5,000 files, ~200 MB history, 50 MB locked file; "
                  f"built in {time.perf_counter() - t0:.0f} s):")
            lmed, lp90, lpeak, _ = our_overhead(big, big_script, a, "bench")
            ratio = lmed / med
            print(f"  overhead: median {lmed:.1f} ms, p90 {lp90:.1f} ms; peak RSS {lpeak:.1f} MB")
            print(f"  large / small: {ratio:.2f}  (target <= {LARGE_TARGET:g})  "
                  f"{verdict(ratio <= LARGE_TARGET)}")
            print(f"  peak_rss <= {RSS_TARGET_MB:g} MB: {verdict(lpeak <= RSS_TARGET_MB)}")
            ok &= ratio <= LARGE_TARGET and lpeak <= RSS_TARGET_MB

        if a.profile or not ok:
            n = min(60, a.experiments)
            root2 = Path(tmp) / "profiled" / "target"
            script2 = make_target(root2, n + 10, a.seed)
            prof = cProfile.Profile()
            prof.enable()
            loop2, *_ = run_loop(root2, script2, a.agent, n, "prof")
            prof.disable()
            loop2.ledger.close()
            buf = io.StringIO()
            # the driver thread only: agent and slot threads are not profiled by cProfile
            st = pstats.Stats(prof, stream=buf).sort_stats("cumulative")
            st.print_stats(25)
            print(f"\nprofile of the driver thread over {n} experiments (cumulative):")
            print(buf.getvalue())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
