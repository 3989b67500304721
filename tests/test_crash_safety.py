"""Crash safety: `autoresearch run` killed with SIGKILL at random moments, or stopped with Ctrl-C,
then resumed with the same tag, loses nothing, records nothing twice and leaves no process.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from pathlib import Path

import psutil
from conftest import (
    ar,
    ar_popen,
    build_target,
    git,
    ledger_rows,
    processes_with,
    proposal,
    write_script,
)

STEP = 0.4          # seconds each experiment's run step sleeps
MAX_EXPERIMENTS = 12
KILLS = 7


def _db_rows(root: Path, tag: str) -> list[dict]:
    db = root / ".autoresearch" / "ledger.db"
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(
            "SELECT seq, status, pid, metric, commit_sha FROM experiments WHERE tag = ? "
            "ORDER BY seq", (tag,))]
    except sqlite3.OperationalError:   # the schema is not written yet
        return []
    finally:
        con.close()


def _wait_command_running(root: Path, proc, timeout: float = 20) -> None:
    """Until some experiment's command has started (its pid is recorded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if any(r["status"] == "running" and r["pid"] for r in _db_rows(root, "t")):
            return
        time.sleep(0.02)


def _no_processes_left(marker: str, within: float = 3.0) -> list:
    deadline = time.monotonic() + within
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _tiny(tmp_path, marker, sleep, n):
    root = build_target(tmp_path, sleep=sleep, run=f"python train.py {marker}")
    values = [9.0, 12.0, 7.0, 8.5, 6.0, 11.0, 5.0, 5.5, 4.0, 13.0, 3.0, 14.0, 2.5, 2.0][:n]
    script = write_script(tmp_path / "p.jsonl", [proposal(v, sleep) for v in values])
    return root, script


def test_sigkill_at_random_moments_then_resume_loses_and_repeats_nothing(tmp_path, marker):
    root, script = _tiny(tmp_path, marker, STEP, 14)
    args = ("run", "--tag", "t", "--agent", f"script:{script}", "--policy", "greedy",
            "--max-experiments", str(MAX_EXPERIMENTS), "-q")
    rng = random.Random(20240611)
    in_flight_at_kill: set[int] = set()
    for i in range(KILLS):
        proc = ar_popen(root, *args)
        if i % 3 == 2:
            time.sleep(rng.uniform(0.1, 1.0))      # during start-up, open() and resume
        else:
            _wait_command_running(root, proc)      # then anywhere in run, evaluate, verdict, next
            time.sleep(rng.uniform(0.0, STEP + 0.3))
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        in_flight_at_kill |= {r["seq"] for r in _db_rows(root, "t") if r["status"] == "running"}
    assert in_flight_at_kill, "no kill landed during an experiment; the test proves nothing"

    final = ar(root, *args, timeout=120)
    assert final.returncode == 0, final.stdout + final.stderr
    rows = ledger_rows(root, "t")

    seqs = [r["seq"] for r in rows]
    assert seqs == list(range(1, len(rows) + 1))
    assert len(rows) == MAX_EXPERIMENTS
    assert not [r for r in rows if r["status"] in ("running", "pending", "interrupted")]
    # nothing recorded twice: each tried tree (so each script line) has one row
    trees = [git(root, "rev-parse", f"{r['commit']}^{{tree}}") for r in rows]
    assert len(set(trees)) == len(trees)
    descriptions = [r["description"] for r in rows]
    assert len(set(descriptions)) == len(descriptions)
    # every experiment left in flight by a kill was evaluated again to the end
    for seq in in_flight_at_kill:
        r = rows[seq - 1]
        assert r["status"] in ("keep", "discard") and r["metric"] is not None, r
    # every experiment's commit is pinned; the branch holds the ledger's best
    for r in rows:
        ref = f"refs/autoresearch/t/{r['seq']:05d}"
        assert git(root, "rev-parse", "--verify", "-q", ref, check=False) == r["commit"], \
            f"#{r['seq']} is not pinned at {ref} (row written before the pin, and never re-pinned?)"
    kept = [r for r in rows if r["status"] == "keep"]
    best = min(kept, key=lambda r: r["metric"])
    assert git(root, "rev-parse", "autoresearch/t") == best["commit"]
    assert git(root, "show", "autoresearch/t:train.py").count(f"VALUE = {best['metric']!r}") == 1
    assert git(root, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    assert _no_processes_left(marker) == []


def _wait_running(root: Path, seq: int, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _db_rows(root, "t")
        if len(rows) >= seq and rows[seq - 1]["status"] == "running" and rows[seq - 1]["pid"]:
            return rows[seq - 1]
        time.sleep(0.05)
    raise AssertionError(f"#{seq} never started: {_db_rows(root, 't')}")


def test_ctrl_c_records_the_experiment_as_interrupted_and_resume_finishes_it(tmp_path, marker):
    root = build_target(tmp_path, sleep=0.0, run=f"python train.py {marker}")
    hold = tmp_path / "hold"   # the candidate trains for as long as this file exists
    hold.write_text("")
    wait = f"import os\nwhile os.path.exists({str(hold)!r}):\n    time.sleep(0.05)\n"
    script = write_script(tmp_path / "p.jsonl", [proposal(4.0, description="slow", extra=wait)])
    args = ("run", "--tag", "t", "--agent", f"script:{script}", "--policy", "greedy",
            "--max-experiments", "2")
    proc = ar_popen(root, *args)
    row = _wait_running(root, 2)   # its pid is recorded: the driver is in its loop
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    assert "resume with autoresearch run --tag t" in out
    rows = ledger_rows(root, "t")
    assert rows[1]["status"] == "interrupted" and rows[1]["metric"] is None
    assert _no_processes_left(marker) == []
    assert not psutil.pid_exists(row["pid"]) or psutil.Process(row["pid"]).status() == "zombie"

    # resume: the interrupted experiment is evaluated again in its own row, to the end
    hold.unlink()
    p = ar(root, *args, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = ledger_rows(root, "t")
    assert [(r["seq"], r["status"], r["metric"]) for r in rows] == [(1, "keep", 10.0),
                                                                     (2, "keep", 4.0)]
    assert git(root, "rev-parse", "autoresearch/t") == rows[1]["commit"]


def test_a_row_written_before_its_pin_is_pinned_on_resume(tmp_path):
    """The state a kill between `add_experiment` and `pin` in Loop._accept leaves behind."""
    root, script = _tiny(tmp_path, "unused", 0.0, 3)
    args = ("run", "--tag", "t", "--agent", f"script:{script}", "--policy", "greedy")
    ar(root, *args, "--max-experiments", "2", check=True)
    git(root, "update-ref", "-d", "refs/autoresearch/t/00002")
    ar(root, *args, "--max-experiments", "3", check=True)
    row = ledger_rows(root, "t")[1]
    assert git(root, "rev-parse", "--verify", "-q", "refs/autoresearch/t/00002",
               check=False) == row["commit"]
