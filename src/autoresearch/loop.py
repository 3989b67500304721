"""The experiment loop: propose, commit, evaluate, judge, keep or discard, record. Forever.

One driver thread owns the run. Around it:
- `session.py` holds the driver lock and opens, resumes and repairs the run;
- `state.py` is the run in memory, written through to the ledger and never read back;
- `proposals.py` asks the agent (own thread, ahead of time) and turns proposals into commits,
  each from the node the strategy chooses (`strategies.py`: the best, or a tree's node);
- the executor's slots evaluate commits (local worktrees, or Ray workers);
- `judge.py` turns results and the policy's verdicts into statuses (one table of transitions).

This module is the loop itself, top to bottom: open, then until a stop condition: fill the free
slots (queued measurements first, the best's drift-watch re-measurement, then new proposals),
wait, hand each result to the judge; in contributor mode (`hub`) sync with the hub after each
wait (its verdicts become the agent's feedback, its new best is adopted).

Crash safety is a matter of order: a proposal is committed and pinned under refs/autoresearch
before it is queued; a verdict is written to the ledger before the branch moves; on start the
branch is set to the ledger's best and every experiment left running is evaluated again in its
own row. Nothing is recorded twice and nothing tried is lost.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Target
from .executors import Executor
from .experiment import Status
from .export import append_results_tsv
from .judge import Judge, RunStopped, evaluation_status
from .ledger import Experiment, Ledger
from .policies import Policy
from .portfolio import Portfolio
from .proposals import LineCounter, Proposals, record_refused
from .ratchet import Ratchet
from .session import Session
from .state import RunState
from .strategies import Strategy, make_strategy

if TYPE_CHECKING:
    from .hub.contributor import HubContributor

__all__ = ["Loop", "LoopOptions", "RunStopped", "record_refused"]


@dataclass
class LoopOptions:
    tag: str
    agent_name: str = "optuna"
    max_experiments: int | None = None
    max_time: float | None = None       # seconds; no new experiment starts after it
    budget: float | None = None         # overrides the toml's budget
    prune: bool = False
    max_cost: float | None = None       # USD
    seed: int = 0
    ahead: int | None = None            # proposals kept ready; default: slots for slow agents
    results_format: str = "native"      # results.tsv: "native" or "original" (export.py)
    scale: str | None = None            # the [scales] entry the target's spec is at
    strategy: str = "ratchet"           # where proposals start: "ratchet" or "tree"
    org: str | None = None              # a new run's organisation (compare.py)


class Loop:
    def __init__(self, target: Target, ledger: Ledger, ratchet: Ratchet, agent: Portfolio,
                 policy: Policy, executor: Executor, options: LoopOptions,
                 reporter: Any | None = None):
        self.target = target
        self.spec = target.spec
        self.ledger = ledger
        self.ratchet = ratchet
        self.agent = agent
        self.policy = policy
        self.executor = executor
        self.opt = options
        self.tag = options.tag
        self.reporter = reporter
        self.session = Session(target, ledger, ratchet, self.tag, agent_name=options.agent_name,
                               policy_name=policy.name, budget=options.budget, seed=options.seed,
                               results_format=options.results_format, strategy=options.strategy,
                               say=reporter.message if reporter else None, scale=options.scale,
                               org=options.org)
        self.budget = self.session.budget
        self.log_dir = self.session.log_dir
        self.lines = LineCounter(ratchet, self.session.editable)
        self.state: RunState | None = None
        self.judge: Judge | None = None
        self.strategy: Strategy | None = None
        self.proposals: Proposals | None = None
        self.queue: deque[Experiment] = deque()              # experiments to measure, in order
        self.in_flight: dict[int, tuple[Experiment, Future]] = {}   # slot -> its experiment
        self.stopping: str | None = None
        self.started = time.time()
        self.pruner = None
        if options.prune:
            from .pruning import make_pruner
            self.pruner = make_pruner(self.spec.prune, self.spec.direction)
        self._pid_updates: list[tuple[Experiment, int]] = []   # from the slot threads
        self.hub: HubContributor | None = None   # contributor mode (set by the CLI)

    # == open ===================================================================================
    def open(self) -> RunState:
        """Create or resume the run; the judge and the proposals work on its state."""
        self.session.agent_name = self.opt.agent_name
        state, queue = self.session.open(self.agent.baseline_params, self.lines.count,
                                         self.hub.open if self.hub else None)
        self.state, self.queue = state, deque(queue)
        self.judge = Judge(state, self.policy, self.spec, self.ratchet, self, self.agent.observe,
                           seed=self.opt.seed, slots=self.executor.slots,
                           say=self.reporter.message if self.reporter else None)
        self.judge.hub = self.hub
        self.strategy = make_strategy(self.opt.strategy, state, self.spec, self.judge.noise,
                                      self.opt.seed)
        self.session.write_results(state, self.judge.values(self.session.original))
        self.proposals = Proposals(self.session, state, self.ratchet, self.agent, self.judge,
                                   self.lines, self.executor.slots, self.opt.ahead, self.strategy,
                                   enqueue=self.enqueue, finished=self.finished)
        # every row, running and pending ones included: a replayed script must not repeat them
        self.agent.resume([e.history_entry() for e in state.rows.values()])
        return state

    # == the loop ===============================================================================
    def run_forever(self) -> str:
        """Run until a stop condition; returns why it stopped."""
        try:
            self.open()
            self.executor.prepare()
            self.session.setup(self.executor.stop_event, self.reporter)
            self.session.pin_cache()   # setup outputs, checked after each run step
            old_term = signal.getsignal(signal.SIGTERM)
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, _raise_interrupt)
            try:
                assert self.judge is not None
                self.judge.resume_pending(self.session.resumed)
                while True:
                    self._dispatch()
                    if not self.in_flight and not self.queue and not self._want_new():
                        if not self.proposals or not self.proposals.waiting() or self.stopping:
                            break
                    self._wait(0.1)
            except BaseException:
                # Ctrl-C or a stop: running experiments are killed, recorded as interrupted
                self.stopping = self.stopping or "interrupted"
                self._drain_after_interrupt()
                raise
            finally:
                if threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGTERM, old_term)
                if self.proposals is not None:
                    self.proposals.record_dropped()
                self.ledger.clear_slots(self.tag)
        finally:
            self.executor.shutdown()
            if self.hub is not None:
                self.hub.close()
            self.session.close(self.state, self.judge.values(self.session.original)
                               if self.judge else None)
            self.ratchet.close()
        return self.stopping or "done"

    def _dispatch(self) -> None:
        """Fill free slots: queued measurements first, then proposals as they are ready."""
        assert self.proposals is not None
        self._submit_queued()
        if not self._want_new():
            return
        assert self.judge is not None
        self.judge.remeasure_best()
        self._submit_queued()
        self.proposals.keep_coming(len(self.executor.free_slots()) - len(self.queue))
        while self.executor.free_slots() and not self.queue and self.proposals.ready() \
                and self._want_new():
            self.proposals.take()
            self._submit_queued()
            self.proposals.keep_coming(len(self.executor.free_slots()) - len(self.queue))

    def _submit_queued(self) -> None:
        free = self.executor.free_slots()
        while free and self.queue:
            self._submit(self.queue.popleft(), free.pop(0))

    def _submit(self, e: Experiment, slot: int) -> None:
        assert self.state is not None and self.judge is not None
        seed = self.opt.seed + self.state.runs_before(e.tree_sha, e.id)
        job = self.session.job(e, seed)
        Path(job.log_path).unlink(missing_ok=True)   # a re-evaluation starts a fresh log
        info = self.executor.slot_info(slot)
        self.state.update(e, status=Status.RUNNING, started=time.time(), slot=slot,
                          gpu=info.gpu, seed=seed, log_path=job.log_path)
        self.ledger.set_slot(self.tag, slot, e.id, info.gpu, info.host)
        fut = self.executor.submit(job, slot=slot, should_stop=self.judge.pruning_hook(self.pruner, e),
                                   on_start=lambda pid: self._pid_updates.append((e, pid)))
        self.in_flight[slot] = (e, fut)
        if self.reporter:
            self.reporter.started(e, slot, self.budget)

    def _wait(self, timeout: float) -> None:
        """Wait for a result or a proposal (at most timeout), then judge every finished job."""
        assert self.proposals is not None and self.judge is not None and self.state is not None
        # proposals already made wait for a slot: waiting on them again would spin
        waitables = self.executor.running() + self.proposals.waiting()
        if waitables:
            wait(waitables, timeout=timeout, return_when=FIRST_COMPLETED)
        else:
            time.sleep(timeout)
        self.session.record_pids(self.state, self._pid_updates)
        for slot, fut in self.executor.collect():
            e, _ = self.in_flight.pop(slot)
            self.session.check_ledger_untouched(e)
            self.ledger.set_slot(self.tag, slot, None, self.executor.slot_info(slot).gpu)
            try:
                res = fut.result()
            except Exception as exc:  # an executor fault: the worker died, the node vanished
                self.judge.on_fault(e, f"executor error: {type(exc).__name__}: {exc}")
                continue
            fields = dict(wall_time=res.wall_time, peak_memory_mb=res.peak_memory_mb,
                          exit_code=res.exit_code, log_path=res.log_path, metrics=res.metrics,
                          curve=res.curve or None, started=res.started or e.started,
                          finished=res.finished or time.time(), pid=None)
            self.judge.on_result(e, res, fields)
        if self.hub is not None:
            self.judge.sync_hub(self.hub)
        if self.reporter:
            self.reporter.tick(self)

    def _drain_after_interrupt(self) -> None:
        self.executor.interrupt()
        for e, fut in list(self.in_flight.values()):
            try:
                res = fut.result(timeout=30)
            except Exception:
                res = None
            reason = (res.reason if res is not None and evaluation_status(res) == Status.INTERRUPTED
                      else "the run stopped before this experiment was judged")
            assert self.state is not None
            self.state.update(e, status=Status.INTERRUPTED, reason=reason, finished=time.time(),
                              pid=None)
            if self.reporter:
                self.reporter.finished(e, self.state.incumbent)
        self.in_flight.clear()
        self.agent.close()

    # == stop conditions ========================================================================
    def room(self) -> bool:
        """May another experiment be added under --max-experiments?"""
        assert self.state is not None
        return self.opt.max_experiments is None or self.state.count < self.opt.max_experiments

    def total_cost(self) -> float:
        """What the agent has cost: every row, and proposals ready but not taken yet."""
        ready = self.proposals.ready_cost() if self.proposals is not None else 0.0
        return (self.state.cost if self.state is not None else 0.0) + ready

    def _check_limits(self) -> None:
        assert self.proposals is not None
        if self.stopping:
            return
        if self.judge is not None and self.judge.stop_reason:
            self.stopping = self.judge.stop_reason
        elif not self.room():
            self.stopping = f"reached --max-experiments {self.opt.max_experiments}"
        elif self.opt.max_time is not None and time.time() - self.started >= self.opt.max_time:
            self.stopping = f"reached --max-time {self.opt.max_time:g}s"
        elif self.opt.max_cost is not None and self.total_cost() >= self.opt.max_cost:
            self.stopping = f"reached --max-cost ${self.opt.max_cost:g}"
        elif self.proposals.exhausted and not self.proposals.pending:
            self.stopping = "the agent has no more proposals"

    def _want_new(self) -> bool:
        assert self.judge is not None
        self._check_limits()
        return not self.stopping and self.judge.baseline_ready()

    # == what the judge and the proposals ask of the driver ======================================
    def enqueue(self, e: Experiment, first: bool = False) -> None:
        (self.queue.appendleft if first else self.queue.append)(e)

    def finished(self, e: Experiment) -> None:
        """An experiment reached its final status: the strategy, results.tsv, the reporter."""
        assert self.state is not None and self.judge is not None and self.strategy is not None
        self.strategy.record(e)
        value = self.judge.value_of(e) if self.session.original or e.status == Status.KEEP else None
        append_results_tsv(e, self.spec, self.target.results_path, value, self.session.original)
        if self.reporter:
            self.reporter.finished(e, self.state.incumbent, reported=self.judge.reported())

    def code_lines(self, commit: str) -> int:
        return self.lines.count(commit)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
