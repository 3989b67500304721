"""Benchmark: what the harness costs per experiment, apart from the commands themselves.

    python bench/overhead.py                       # 200 experiments, script agent
    python bench/overhead.py --agent optuna        # the same with TPE proposing
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
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil

from autoresearch.cli import build_loop
from autoresearch.config import load_target

MEDIAN_TARGET_MS = 100.0   # harness overhead per experiment
RSS_TARGET_MB = 150.0      # peak resident memory of the harness process
RUN_COMMAND = "cat train.py"


def make_target(root: Path, n: int, seed: int) -> Path:
    """A git repo holding a target whose metric is the content of train.py, and n proposals."""
    root.mkdir(parents=True)
    (root / "autoresearch.toml").write_text(
        'editable = ["train.py"]\n'
        f'run = "{RUN_COMMAND}"\n'
        'metric = "score"\n'
        'direction = "minimize"\n'
        'budget = 10\n')
    (root / "program.md").write_text("Lower the score.\n")
    (root / "train.py").write_text("score: 100.0\nLR = 0.5\n")
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "base"], cwd=root, check=True)
    rng = random.Random(seed)
    lines = [json.dumps({"description": f"proposal {i}",
                         "files": {"train.py": f"score: {rng.uniform(0, 100):.6f}\nLR = {i}\n"}})
             for i in range(n)]
    script = root.parent / "proposals.jsonl"
    script.write_text("\n".join(lines) + "\n")
    return script


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=200)
    ap.add_argument("--agent", choices=["script", "optuna"], default="script")
    ap.add_argument("--bare-runs", type=int, default=100)
    ap.add_argument("--profile", action="store_true", help="cProfile the loop even when it passes")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="ar-bench-") as tmp:
        root = Path(tmp) / "target"
        script = make_target(root, a.experiments + 10, a.seed)
        bare = bare_command_times(root, a.bare_runs)
        bare_s = statistics.median(bare)
        with PeakRSS() as rss:
            loop, why, total, exps = run_loop(root, script, a.agent, a.experiments, "bench")
        done = sorted((e for e in exps if e.finished), key=lambda e: e.finished)
        pairs = list(zip(done, done[1:], strict=False))   # (previous, this) by finish time
        spans = [b.finished - x.finished for x, b in pairs]
        overhead_ms = [(s - bare_s) * 1000 for s in spans]
        outside_eval_ms = [(b.finished - x.finished - (b.wall_time or 0)) * 1000 for x, b in pairs]
        counts: dict[str, int] = {}
        for e in exps:
            counts[e.status.value] = counts.get(e.status.value, 0) + 1
        med, p90 = statistics.median(overhead_ms), pct(overhead_ms, 0.9)
        peak_mb = rss.peak / 2**20
        maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

        print(f"agent: {a.agent}")
        print(f"experiments: {len(exps)}")
        print(f"statuses: {', '.join(f'{k}={v}' for k, v in sorted(counts.items()))}")
        print(f"stopped: {why}")
        print(f"total_wall_s: {total:.2f}")
        print(f"wall_per_experiment_ms: {total / len(exps) * 1000:.1f}")
        print(f"bare_command_median_ms: {bare_s * 1000:.1f}")
        print(f"bare_command_p90_ms: {pct(bare, 0.9) * 1000:.1f}")
        print(f"overhead_median_ms: {med:.1f}")
        print(f"overhead_p90_ms: {p90:.1f}")
        print(f"outside_evaluation_median_ms: {statistics.median(outside_eval_ms):.1f}")
        print(f"peak_rss_mb: {peak_mb:.1f}")
        print(f"ru_maxrss_mb: {maxrss_mb:.1f}")
        ok_med, ok_rss = med < MEDIAN_TARGET_MS, peak_mb < RSS_TARGET_MB
        print(f"overhead_median < {MEDIAN_TARGET_MS:g} ms: {'PASS' if ok_med else 'FAIL'}")
        print(f"peak_rss < {RSS_TARGET_MB:g} MB: {'PASS' if ok_rss else 'FAIL'}")
        loop.ledger.close()

        if a.profile or not ok_med:
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
    return 0 if ok_med and ok_rss else 1


if __name__ == "__main__":
    sys.exit(main())
