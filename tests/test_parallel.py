"""Parallel local slots: N experiments at once, one GPU each, a shared ratchet that rebases.

Every test runs the real loop on a tiny target (tests/conftest.py) whose train.py sleeps, and
reads what happened back from the ledger: each experiment's [started, finished] interval, slot,
GPU and pid.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import time
from pathlib import Path

import psutil
from conftest import ar, ar_popen, ledger_experiments, proposal, write_script

from autoresearch.agents import Agent, AgentContext, ProposalsExhausted
from autoresearch.cli import build_loop
from autoresearch.config import load_target
from autoresearch.experiment import Proposal, Status
from autoresearch.ledger import Experiment
from autoresearch.ratchet import Ratchet

GPU_SEEN = "import os; print('gpu_seen: ' + os.environ.get('CUDA_VISIBLE_DEVICES', '-1'))\n"


def overlapping(a: Experiment, b: Experiment) -> bool:
    assert a.started and a.finished and b.started and b.finished
    return a.started < b.finished and b.started < a.finished


def max_concurrency(exps: list[Experiment]) -> int:
    """The largest number of experiments whose [started, finished] intervals share an instant."""
    events = sorted([(e.started, 1) for e in exps] + [(e.finished, -1) for e in exps])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def run_in_process(root: Path, tag: str, agent: Agent, workers: int, **flags) -> str:
    args = argparse.Namespace(workers=workers, policy="greedy", executor="local", **flags)
    loop = build_loop(load_target(root), args, tag, agent=agent)
    try:
        return loop.run_forever()
    finally:
        loop.ledger.close()


class ListAgent(Agent):
    """Hands out fixed proposals, then stops; remembers the feedback each call carried."""

    name = "list"
    concurrent = True

    def __init__(self, proposals: list[dict]):
        self.items = list(proposals)
        self.feedback: list[str] = []

    def propose(self, context: AgentContext) -> Proposal:
        if context.feedback:
            self.feedback.append(context.feedback)
        if not self.items:
            raise ProposalsExhausted("no more")
        item = self.items.pop(0)
        return Proposal(description=item["description"], files=item["files"])


# == concurrency and GPUs ======================================================================
def test_n_slots_run_n_experiments_at_once_never_two_on_one_gpu(make_target, tmp_path):
    root = make_target(tmp_path, value=10.0)
    script = write_script(tmp_path / "p.jsonl", [
        proposal(9.0 - i, sleep=1.0, extra=GPU_SEEN) for i in range(6)])
    ar(root, "run", "--tag", "par", "--agent", f"script:{script}", "--policy", "greedy",
       "--workers", "3", "--gpus", "4,5,6", "-q", check=True)
    exps = [e for e in ledger_experiments(root, "par") if e.kind == "candidate"]
    assert len(exps) == 6 and all(e.status in (Status.KEEP, Status.DISCARD) for e in exps)
    assert max_concurrency(exps) == 3
    for e in exps:
        assert e.gpu in ("4", "5", "6")
        assert e.metrics["gpu_seen"] == float(e.gpu)   # CUDA_VISIBLE_DEVICES is the slot's GPU
    for i, a in enumerate(exps):
        for b in exps[i + 1:]:
            if overlapping(a, b):
                assert a.gpu != b.gpu and a.slot != b.slot, (a.seq, b.seq)


def test_more_workers_than_gpus_is_refused(make_target, tmp_path):
    root = make_target(tmp_path)
    p = ar(root, "run", "--tag", "x", "--workers", "3", "--gpus", "0,1")
    assert p.returncode == 1
    assert "needs at least 3 GPUs" in p.stdout + p.stderr


# == the shared ratchet ========================================================================
# P1 changes the VALUE line; P2 adds lines after `time.sleep(SLEEP)`: untouched lines lie between, so git replays P2 onto P1 cleanly. P2 is slower, so it finishes after P1 was kept.
SLOW_MINUS_3 = "time.sleep(1.2)\nVALUE -= 3\n"


def test_a_winner_against_an_older_best_is_rebased_and_measured_again(make_target, tmp_path):
    root = make_target(tmp_path, value=10.0)
    agent = ListAgent([proposal(9.0, description="p1: value 9"),
                       proposal(10.0, extra=SLOW_MINUS_3, description="p2: minus 3")])
    run_in_process(root, "rb", agent, workers=2)
    by_desc = {e.description: e for e in ledger_experiments(root, "rb")}
    p1, p2 = by_desc["p1: value 9"], by_desc["p2: minus 3"]
    assert overlapping(p1, p2) and p1.finished < p2.finished
    assert p1.status == Status.KEEP and p1.metric == 9.0
    assert p2.status == Status.REBASED and p2.metric == 7.0
    rebased = [e for e in ledger_experiments(root, "rb") if e.kind == "rebase"]
    assert len(rebased) == 1
    r = rebased[0]
    assert r.candidate_of == p2.id and r.metric == 6.0 and r.status == Status.KEEP
    assert r.started >= p2.finished   # measured again, on the new best
    # the rebased commit holds both changes, on top of the kept P1
    rt = Ratchet(root)
    text = rt.read_files(r.commit_sha, ["train.py"])["train.py"]
    assert "VALUE = 9.0" in text and "VALUE -= 3" in text
    assert rt.parent_of(rt.branch_commit("rb")) == p1.commit_sha


def test_a_winner_that_conflicts_with_the_new_best_is_discarded_and_the_agent_told(
        make_target, tmp_path):
    root = make_target(tmp_path, value=10.0)
    agent = ListAgent([
        proposal(9.0, description="p1: value 9"),
        proposal(7.0, extra="time.sleep(1.2)\n", description="p2: value 7, slow"),
        proposal(9.5, sleep=2.0, description="p3: keeps a slot busy"),
        # a proposal may be asked ahead, before the verdict: the news reaches the next ask
        proposal(9.8, sleep=0.3, description="p4: asked ahead"),
        proposal(9.9, sleep=0.3, description="p5: asked after the verdict")])
    run_in_process(root, "cf", agent, workers=2)
    exps = ledger_experiments(root, "cf")
    by_desc = {e.description: e for e in exps}
    p1, p2 = by_desc["p1: value 9"], by_desc["p2: value 7, slow"]
    assert p1.status == Status.KEEP and p2.metric == 7.0
    assert p2.status == Status.DISCARD and "conflicts with the new best" in p2.reason
    assert not [e for e in exps if e.kind == "rebase"]
    assert any(f"#{p2.seq}" in f and "Re-propose" in f for f in agent.feedback), agent.feedback


# == a dead experiment process =================================================================
def test_killing_an_experiment_mid_run_is_recorded_and_the_loop_goes_on(make_target, tmp_path):
    root = make_target(tmp_path, value=10.0)
    script = write_script(tmp_path / "p.jsonl", [
        proposal(9.0, sleep=4.0, description="victim"),
        proposal(8.0, sleep=0.5, description="after 1"),
        proposal(7.0, sleep=0.5, description="after 2")])
    proc = ar_popen(root, "run", "--tag", "kill", "--agent", f"script:{script}", "--policy",
                    "greedy", "--workers", "2", "-q")
    try:
        deadline = time.time() + 60
        victim = None
        while time.time() < deadline and victim is None:
            time.sleep(0.2)
            if not (root / ".autoresearch" / "ledger.db").exists():
                continue
            try:
                rows = ledger_experiments(root, "kill")
            except sqlite3.OperationalError:   # the file exists, its tables not yet
                continue
            victim = next((e for e in rows if e.description == "victim"
                           and e.status == Status.RUNNING and e.pid), None)
        assert victim is not None, "the victim never started"
        assert psutil.pid_exists(victim.pid)
        os.killpg(victim.pid, signal.SIGKILL)   # the command's whole process group, as an OOM kill
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    by_desc = {e.description: e for e in ledger_experiments(root, "kill")}
    assert by_desc["victim"].status == Status.CRASH
    assert "exited with code -9" in by_desc["victim"].reason
    assert by_desc["after 1"].status.finished and by_desc["after 1"].metric == 8.0
    assert by_desc["after 2"].metric == 7.0
    assert all(e.status.finished for e in by_desc.values())

