"""The experiment loop: propose, commit, evaluate, judge, keep or discard, record. Forever.

One driver thread owns the ledger and the branch. Around it:
- the executor's slots evaluate commits (local worktrees, or Ray workers);
- an agent thread makes proposals, ahead of time when the agent is slow, always against the best
  known at the moment of asking;
- the policy turns measurements into keep / discard / "measure again" (repeats are experiments of
  their own, linked to their candidate).

Crash safety is a matter of order: a proposal is committed and pinned under refs/autoresearch
before its row is written; a verdict is written to the ledger before the branch moves; on start
the branch is set to the ledger's best and every experiment left running is evaluated again in
its own row. Nothing is recorded twice and nothing tried is lost.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .agents import Agent, AgentContext, AgentError, ProposalsExhausted
from .config import Target
from .errors import AutoresearchError, GitError
from .evaluation import EvalResult, Job, pin_cache
from .evaluation import Outcome as EvalOutcome
from .executors import Executor
from .experiment import Outcome, Proposal, Status, Usage
from .globs import matches
from .ledger import MEASURED, Experiment, Ledger, Run
from .metrics import tail_lines
from .policies import Policy, PolicyContext, Sample, Verdict
from .ratchet import CommitResult, Ratchet
from .runner import kill_tree, run_command
from .summary import best_of, format_best, replicate_groups, reported_best, sample_of

MAX_DUPLICATES = 12          # duplicate proposals in a row before it counts as an agent error

# the one place an evaluation's outcome becomes a status (MEASURED: the policy decides)
_STATUS_OF = {EvalOutcome.CRASH: Status.CRASH, EvalOutcome.TIMEOUT: Status.TIMEOUT,
              EvalOutcome.OVER_BUDGET: Status.OVER_BUDGET, EvalOutcome.INVALID: Status.INVALID,
              EvalOutcome.PRUNED: Status.PRUNED, EvalOutcome.INTERRUPTED: Status.INTERRUPTED}


class RunStopped(AutoresearchError):
    """The run ended for a reason the user must hear about (baseline failed, agent keeps failing)."""


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
    results_format: str = "native"      # results.tsv: "native" or "original" (export.results_tsv)


@dataclass
class _Prepared:
    """A proposal turned into a commit on top of the best it was asked against."""

    proposal: Proposal
    commit: CommitResult | None = None
    error: str | None = None
    added: int = 0
    removed: int = 0
    lines: int = 0


@dataclass
class _Pending:
    """A proposal on its way: asked of the agent against `base`."""

    base: Experiment
    future: Future
    asked: float = field(default_factory=time.time)


class Loop:
    def __init__(self, target: Target, ledger: Ledger, ratchet: Ratchet, agent: Agent,
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
        self.budget = options.budget if options.budget is not None else self.spec.budget
        self.timeout = (self.spec.timeout if self.spec.timeout is not None
                        else 2 * self.budget + 60)
        self.log_dir = target.state_dir / "logs" / self.tag
        self.cache_dir = target.state_dir / "cache"
        self.run: Run | None = None
        self.incumbent: Experiment | None = None
        self.queue: deque[int] = deque()                  # experiment ids to measure
        self.in_flight: dict[Future, tuple[int, int]] = {}  # future -> (slot, experiment id)
        self.free_slots = list(range(executor.slots))
        self.pending_proposals: deque[_Pending] = deque()
        self.feedback: list[str] = []
        self.trees: dict[str, int] = {}                   # tree -> first experiment id with it
        self.proposals: dict[int, Proposal] = {}          # experiment id -> proposal (for observe)
        self.consecutive_errors = 0
        self.exhausted = False
        self.stopping: str | None = None
        self.started = time.time()
        self.pruner = None
        if options.prune:
            from .pruning import make_pruner
            self.pruner = make_pruner(self.spec.prune, self.spec.direction)
        self._agent_lock = threading.Lock()
        self._pid_updates: list[tuple[int, int]] = []   # (experiment id, pid) from slot threads
        self._lines_by_blob: dict[str, int] = {}          # blob id -> non-blank lines
        self.cache_pin: dict[str, list] | None = None
        self._ledger_version: int | None = None
        self._holdout: dict[int, float] = {}              # experiment id -> holdout metric (until judged)
        self.hub: Any = None   # contributor mode: a hub.contributor.HubContributor (set by the CLI)

    # == setup and resume ===================================================================
    def editable(self, rel: str) -> bool:
        return matches(rel, self.spec.editable) and not matches(rel, self.spec.locked_globs)

    def _take_lock(self) -> None:
        """One driver per target: two would write the same ledger, worktrees and branch."""
        import fcntl
        import os

        path = self.target.state_dir / "driver.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunStopped(f"{self.target.root} is already driven by {holder} — stop that "
                             f"'autoresearch run' first (the lock is {path})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"autoresearch pid {os.getpid()} (tag {self.tag})\n")
        fh.flush()
        self._lock_file = fh   # held until this process ends; the OS releases it on kill -9

    def open(self) -> Run:
        """Create the run for this tag, or resume it; bring branch and ledger into agreement."""
        self._take_lock()
        self.ratchet.ensure_ignored()
        run = self.ledger.get_run(self.tag)
        if run is None:
            base = self.ratchet.branch_commit(self.tag) or (
                self.hub.open() if self.hub else self.ratchet.head())
            files = self.ratchet.list_files(base)
            locked = {p: oid for p, oid in files.items() if matches(p, self.spec.locked_globs)}
            run = self.ledger.create_run(self.tag, base, self.spec.metric, self.spec.direction,
                                         self.opt.agent_name, self.policy.name, locked)
            if self.ratchet.branch_commit(self.tag) is None:
                self.ratchet.set_branch(self.tag, base)
        self.run = run
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        from .sandbox import remove_tree
        if (self.target.state_dir / "scratch").exists():   # temp dirs a kill -9 left behind
            remove_tree(self.target.state_dir / "scratch")
        self._check_sandbox()
        self._check_locked_unchanged()
        exps = self.ledger.experiments(self.tag)
        for e in exps:
            if e.tree_sha and e.tree_sha not in self.trees and e.status != Status.INVALID:
                self.trees[e.tree_sha] = e.id
            if e.status in (Status.RUNNING, Status.INTERRUPTED) or (
                    e.kind == "baseline" and e.status in (Status.CRASH, Status.TIMEOUT)):
                # leftovers of a kill -9: the recorded tree, and anything carrying its token
                kill_tree(e.pid or 0, create_time=e.pid_started, run_token=self._token(e.id))
                self.ledger.update(e.id, status=Status.RUNNING, reason="", pid=None, metric=None)
                self.queue.append(e.id)
        self._repin(exps)
        self._check_not_tampered()
        self.incumbent = self._find_incumbent()
        best = self.incumbent.commit_sha if self.incumbent else run.base_commit
        if self.ratchet.branch_commit(self.tag) != best:
            self.ratchet.set_branch(self.tag, best)
        if not exps:
            self._add_baseline()
        self._ledger_version = self._data_version()
        # every row, running and pending ones included: a replayed script must not repeat them
        self.agent.resume([e.history_entry() for e in self.ledger.experiments(self.tag)])
        return run

    # -- the ledger is written by this process alone -----------------------------------------
    def _data_version(self) -> int:
        return self.ledger.db.execute("PRAGMA data_version").fetchone()[0]

    def _tamper_mark(self) -> Path:
        return self.target.state_dir / f"TAMPERED-{self.tag}"

    def _check_not_tampered(self) -> None:
        if self._tamper_mark().exists():
            why = self._tamper_mark().read_text().strip()
            raise RunStopped(f"run '{self.tag}' is not resumed: {why} — check "
                             f"{self.ledger.path} (its results may be forged), then delete "
                             f"{self._tamper_mark()} to resume, or start a new --tag")

    def _check_ledger_untouched(self, e: Experiment) -> None:
        """A write to the ledger by another process while e ran came from its code (possible
        with sandbox = false): stop, and refuse to resume until the user has looked."""
        now = self._data_version()
        if self._ledger_version is not None and now != self._ledger_version:
            self._tamper_mark().write_text(f"the ledger was written by another process while "
                                           f"experiment #{e.seq} ran\n")
            self._check_not_tampered()
        self._ledger_version = now

    def _repin(self, exps: list[Experiment]) -> None:
        """A kill between a ledger write and its pin leaves the ref behind: the ledger wins."""
        pins = self.ratchet.pins(self.tag)
        for e in exps:
            if e.commit_sha and pins.get(e.seq) != e.commit_sha:
                self.ratchet.pin(self.tag, e.seq, e.commit_sha)

    def _check_sandbox(self) -> None:
        from .sandbox import SandboxUnavailable, check

        if not self.spec.sandbox:
            warning = ("warning: sandbox = false — the agent's code runs with your user's rights: "
                       "it can reach the network, other processes and every file you can write")
            if self.reporter:
                self.reporter.message(warning)
            else:
                import sys
                print(warning, file=sys.stderr)
            return
        try:
            check()
        except SandboxUnavailable as e:
            raise RunStopped(f"autoresearch.toml: {e}") from None

    def _check_locked_unchanged(self) -> None:
        """The locked files at the branch must be the ones hashed when the run began, and the
        toml this process read must be that locked one (a run step or an agent may have
        rewritten the checkout's copy)."""
        assert self.run is not None
        from .config import CONFIG_NAME
        from .ratchet import git_blob_hash

        recorded = self.run.locked.get(CONFIG_NAME)
        current = git_blob_hash(self.target.config_path.read_bytes())
        if recorded is None:
            raise RunStopped(f"{self.target.config_path} is not committed — commit it first: it is "
                             f"locked, and the run must use exactly the committed version")
        if current != recorded:
            raise RunStopped(
                f"{self.target.config_path} differs from the version run '{self.tag}' started with — "
                f"restore it (git checkout -- {CONFIG_NAME}), or commit the change and start a new "
                f"run with another --tag")
        head = self.ratchet.branch_commit(self.tag) or self.run.base_commit
        now = self.ratchet.list_files(head)
        changed = [p for p, oid in self.run.locked.items() if now.get(p) != oid]
        if changed:
            raise RunStopped(f"locked file(s) {', '.join(changed)} differ from when run '{self.tag}' "
                             f"started — restore them, or start a new run with another --tag")

    def _find_incumbent(self) -> Experiment | None:
        return best_of(self.ledger.experiments(self.tag))

    def _add_baseline(self) -> None:
        assert self.run is not None
        base = self.run.base_commit
        e = self.ledger.add_experiment(
            self.tag, kind="baseline", parent=None, commit_sha=base,
            tree_sha=self.ratchet.tree_of(base), agent=self.opt.agent_name,
            description="baseline", status=Status.RUNNING, seed=self.opt.seed,
            code_lines=self._code_lines(base), params=self._baseline_params())
        self.ratchet.pin(self.tag, e.seq, base)
        self.trees[e.tree_sha] = e.id
        self.queue.append(e.id)

    def _baseline_params(self) -> dict | None:
        fn = getattr(self.agent, "baseline_params", None)
        return fn() if fn else None

    def _code_lines(self, commit: str) -> int:
        """Non-blank lines of the editable files: the size the simplicity criterion compares."""
        oids = [oid for p, oid in self.ratchet.list_files(commit).items() if self.editable(p)]
        unknown = [o for o in oids if o not in self._lines_by_blob]
        for oid, blob in self.ratchet.read_blobs(unknown).items():
            self._lines_by_blob[oid] = sum(1 for ln in blob.splitlines() if ln.strip())
        return sum(self._lines_by_blob[o] for o in oids)

    def setup(self) -> None:
        """Run the toml's setup command once per run, before the baseline."""
        assert self.run is not None
        if not self.spec.setup or self.run.setup_done:
            return
        wt = self.ratchet.worktree("slot-0")
        target_dir = self.ratchet.checkout(wt, self.run.base_commit)
        log = self.log_dir / "setup.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        job = self._job_stub()
        from .evaluation import command_env
        if self.reporter:
            self.reporter.message(f"setup: {self.spec.setup}  (log: {log})")
        r = run_command(self.spec.setup, cwd=target_dir, env=command_env(job), log_path=log,
                        timeout=self.spec.setup_timeout, stop_event=self.executor.stop_event,
                        header=f"$ {self.spec.setup}   # setup")
        if r.interrupted:
            raise KeyboardInterrupt
        if not r.ok:
            why = "timed out" if r.timed_out else f"exited with code {r.exit_code}"
            tail = "\n".join(tail_lines(log, 20))
            raise RunStopped(f"setup command {self.spec.setup!r} {why} — see {log}\n{tail}")
        self.ledger.update_run(self.tag, setup_done=1)
        self.run.setup_done = True

    # == the main loop ======================================================================
    def run_forever(self) -> str:
        """Run until a stop condition; returns why it stopped."""
        try:
            self.open()
            self.executor.prepare()
            self.setup()
            self.cache_pin = pin_cache(self.cache_dir)   # setup outputs, checked after each run
            old_term = signal.getsignal(signal.SIGTERM)
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, _raise_interrupt)
            try:
                self._resume_pending_decisions()
                while True:
                    self._dispatch()
                    if not self.in_flight and not self.queue and not self._want_new():
                        if self._waiting_on_agent():
                            self._wait(0.1)
                            continue
                        break
                    self._wait(0.1)
            except BaseException:
                # Ctrl-C, or a stop (baseline failed, agent keeps failing): experiments still
                # running are killed and recorded as interrupted; the next run measures them
                self.stopping = self.stopping or "interrupted"
                self._drain_after_interrupt()
                raise
            finally:
                if threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGTERM, old_term)
                self._record_dropped_proposals()
                self.ledger.clear_slots(self.tag)
        finally:
            self.executor.shutdown()
            if self.hub is not None:
                self.hub.close()
            lock = getattr(self, "_lock_file", None)
            if lock is not None:
                lock.close()
                self._lock_file = None
        return self.stopping or "done"

    def _waiting_on_agent(self) -> bool:
        return any(not p.future.done() for p in self.pending_proposals) and not self.stopping

    def _drain_after_interrupt(self) -> None:
        self.executor.interrupt()
        for fut, (_slot, exp_id) in list(self.in_flight.items()):
            try:
                res = fut.result(timeout=30)
            except Exception:
                res = None
            reason = (res.reason if res is not None and res.outcome == EvalOutcome.INTERRUPTED
                      else "the run stopped before this experiment was judged")
            self.ledger.update(exp_id, status=Status.INTERRUPTED, reason=reason,
                               finished=time.time(), pid=None)
            if self.reporter:
                self.reporter.finished(self.ledger.get(exp_id), self.incumbent)
        self.in_flight.clear()
        self.agent.close()
        self._write_results()

    # -- stop conditions -------------------------------------------------------------------
    def _baseline_counts(self) -> tuple[int, int, int]:
        """(valid measurements, runs queued or running, failed runs) of the baseline's code."""
        base = self.incumbent
        assert base is not None
        rows = self.ledger.db.execute(
            "SELECT status, metric FROM experiments WHERE tag = ? AND tree_sha = ?",
            (self.tag, base.tree_sha)).fetchall()
        valid = sum(1 for st, m in rows if m is not None and Status(st) in MEASURED)
        pending = sum(1 for st, _ in rows if st == Status.RUNNING.value)
        failed = sum(1 for st, _ in rows if st in (Status.CRASH.value, Status.TIMEOUT.value))
        return valid, pending, failed

    def _baseline_ready(self) -> bool:
        if self.incumbent is None:
            return False
        if self.incumbent.kind != "baseline":
            return True
        needed = self.policy.baseline_runs(self.spec.policy)
        valid, pending, failed = self._baseline_counts()
        if valid >= needed or self._baseline_complete():
            return True
        # flaky re-measurements get one more try each; past that, go on with what there is
        return pending == 0 and (valid + failed >= 2 * needed or not self._room())

    def _top_up_baseline(self) -> None:
        """Schedule the baseline measurements still missing (also after a restart)."""
        base = self.incumbent
        if base is None or base.kind != "baseline":
            return
        if self._baseline_complete():
            return
        needed = self.policy.baseline_runs(self.spec.policy)
        valid, pending, failed = self._baseline_counts()
        # one run per slot at a time: a deterministic metric stops after two that agree
        for _ in range(min(needed - valid, self.executor.slots) - pending):
            if valid + pending + failed >= 2 * needed or not self._room():
                break
            self._add_repeat(base, base, "re-measure the baseline (noise estimate)")
            pending += 1

    def _baseline_complete(self) -> bool:
        assert self.incumbent is not None
        return self.policy.baseline_complete(self._sample(self.incumbent).values, self.spec.policy)

    def _remeasure_best(self, resumed: bool = False) -> None:
        """Measure the best again when the policy asks (drift watch: at intervals, on resume)."""
        inc = self.incumbent
        if inc is None or not self._room() or (inc.kind == "baseline" and not self._baseline_ready()):
            return
        ids = {exp_id for _, exp_id in self.in_flight.values()} | set(self.queue)
        if any(self.ledger.get(i).tree_sha == inc.tree_sha for i in ids):
            return
        if self.policy.remeasure_best(self._sample(inc), self.ledger.count(self.tag) + 1,
                                      self.spec.policy, resumed=resumed):
            why = "on resume" if resumed else "at its interval"
            self._add_repeat(inc, inc, f"re-measure best #{inc.seq} {why} (drift watch)")

    def _room(self) -> bool:
        return self.opt.max_experiments is None or self.ledger.count(self.tag) < self.opt.max_experiments

    def _check_limits(self) -> None:
        if self.stopping:
            return
        if not self._room():
            self.stopping = f"reached --max-experiments {self.opt.max_experiments}"
        elif self.opt.max_time is not None and time.time() - self.started >= self.opt.max_time:
            self.stopping = f"reached --max-time {self.opt.max_time:g}s"
        elif self.opt.max_cost is not None and self.total_cost() >= self.opt.max_cost:
            self.stopping = f"reached --max-cost ${self.opt.max_cost:g}"
        elif self.exhausted and not self.pending_proposals:
            self.stopping = "the agent has no more proposals"

    def _want_new(self) -> bool:
        self._check_limits()
        return not self.stopping and self._baseline_ready()

    def total_cost(self) -> float:
        """What the agent has cost: every recorded row, and proposals made ahead of time that
        are ready but not taken yet (paid for all the same)."""
        r = self.ledger.db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM experiments WHERE tag = ?",
                                   (self.tag,)).fetchone()
        return float(r[0]) + sum(_usage_of(p).cost_usd for p in self.pending_proposals
                                 if p.future.done())

    def _record_dropped_proposals(self) -> None:
        """Every paid proposal is counted: those made ahead of time and dropped when the run
        stops become rows with their usage. A ready proposal with a commit is an `interrupted`
        candidate (pinned; a resumed run measures it); one still being made is stopped (close)
        and, when it cost something, recorded as an `agent-error` row."""
        if not self.pending_proposals:
            return
        pending, self.pending_proposals = list(self.pending_proposals), deque()
        if any(not p.future.done() for p in pending):
            self.agent.close()           # a CLI agent's running call is killed, not orphaned
            wait([p.future for p in pending], timeout=8)   # a killed CLI answers within its grace
        for p in pending:
            usage = _usage_of(p)
            if not (usage.cost_usd or usage.input_tokens or usage.output_tokens):
                continue                 # an offline agent's proposal cost nothing
            prepared = p.future.result() if p.future.done() and not p.future.exception() else None
            cr = prepared.commit if prepared else None
            why = "proposed ahead of time; the run stopped before it was measured"
            try:
                if (prepared is not None and cr is not None and cr.changed
                        and cr.tree not in self.trees and all(self.editable(f) for f in cr.changed)):
                    e = self.ledger.add_experiment(
                        self.tag, kind="candidate", parent=p.base.commit_sha, commit_sha=cr.sha,
                        tree_sha=cr.tree, agent=self.opt.agent_name,
                        description=prepared.proposal.description, status=Status.INTERRUPTED,
                        reason=why + " (a resumed run measures it)", params=prepared.proposal.params,
                        seed=self.opt.seed, diff_added=prepared.added, diff_removed=prepared.removed,
                        code_lines=prepared.lines, input_tokens=usage.input_tokens,
                        output_tokens=usage.output_tokens, cost_usd=usage.cost_usd,
                        notes="; ".join(prepared.proposal.notes), log_path=prepared.proposal.agent_log,
                        finished=time.time())
                    self.ratchet.pin(self.tag, e.seq, cr.sha)
                else:
                    error = p.future.exception() if p.future.done() else None
                    detail = (error.reason if isinstance(error, AgentError) else
                              "still being made" if not p.future.done() else "not usable")
                    e = self.ledger.add_experiment(
                        self.tag, kind="candidate", parent=p.base.commit_sha,
                        agent=self.opt.agent_name,
                        description=prepared.proposal.description if prepared else "(no proposal)",
                        status=Status.AGENT_ERROR, reason=f"{why}; dropped ({detail})",
                        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                        cost_usd=usage.cost_usd, finished=time.time(),
                        log_path=(error.agent_log if isinstance(error, AgentError) else None) or (
                            prepared.proposal.agent_log if prepared else None))
            except AutoresearchError:
                continue                 # a stopping run must not fail on its bookkeeping
            if self.reporter:
                self.reporter.finished(e, self.incumbent)
        self._write_results()

    # -- dispatching -----------------------------------------------------------------------
    def _dispatch(self) -> None:
        while self.free_slots and self.queue:
            self._submit(self.queue.popleft())
        if self._want_new():
            self._remeasure_best()
            while self.free_slots and self.queue:
                self._submit(self.queue.popleft())
            self._keep_proposals_coming()
            while self.free_slots and not self.queue and self.pending_proposals \
                    and self.pending_proposals[0].future.done() and self._want_new():
                self._take_proposal(self.pending_proposals.popleft())
                while self.free_slots and self.queue:
                    self._submit(self.queue.popleft())
                self._keep_proposals_coming()

    def _ahead(self) -> int:
        """Proposals to keep in the making beyond what free slots need right now."""
        if self.opt.ahead is not None:
            return max(0, self.opt.ahead)
        if getattr(self.agent, "ahead", False):
            return self.executor.slots
        # an instant agent sees every result first on one slot; with several slots one proposal
        # kept ready takes its commit off the path of the slot that frees next
        return 1 if self.executor.slots > 1 else 0

    def _keep_proposals_coming(self) -> None:
        if self.exhausted or self.stopping or self.incumbent is None:
            return
        # instant agents (ahead 0) are asked only when a slot is free, so they see every result
        needed = max(0, len(self.free_slots) - len(self.queue))
        want = max(needed, self._ahead())
        if not self.agent.concurrent:
            want = min(want, 1)
        while len(self.pending_proposals) < want:
            self.pending_proposals.append(self._ask_agent())

    def _ask_agent(self) -> _Pending:
        base = self.incumbent
        assert base is not None
        ctx = self._context(base)
        fut: Future = Future()

        def work() -> None:
            try:
                with self._agent_lock if not self.agent.concurrent else contextlib.nullcontext():
                    proposal = self.agent.propose(ctx)
                # committing here keeps git off the driver thread (a temporary index is private)
                fut.set_result(self._prepare(proposal, base))
            except BaseException as e:  # noqa: BLE001 - delivered to the driver thread
                fut.set_exception(e)

        threading.Thread(target=work, name="agent", daemon=True).start()
        return _Pending(base, fut)

    def _context(self, base: Experiment) -> AgentContext:
        assert base.commit_sha is not None
        files = self.ratchet.list_files(base.commit_sha)
        editable = [p for p in files if self.editable(p)]
        exps = self.ledger.experiments(self.tag)
        history = [e.history_entry() for e in exps if e.status.finished or e.status == Status.PENDING]
        crash = next((e for e in reversed(exps) if e.status in (Status.CRASH, Status.TIMEOUT)
                      and e.log_path), None)
        crash_log = None
        if crash:
            crash_log = f"experiment #{crash.seq} ({crash.description}): {crash.reason}\n" + \
                "\n".join(tail_lines(Path(crash.log_path), 50))
        feedback = "\n".join(self.feedback) or None
        self.feedback.clear()
        texts = self.ratchet.read_files(base.commit_sha, [*editable, "program.md"])
        program = texts.get("program.md", "") if "program.md" not in editable else ""
        seq = self.ledger.count(self.tag) + 1 + len(self.pending_proposals)
        counter = {"n": 0}

        def workspace() -> Path:
            counter["n"] += 1
            wt = self.ratchet.worktree(f"propose-{threading.get_ident() % 1000}-{counter['n'] % 4}")
            return self.ratchet.checkout(wt, base.commit_sha)

        return AgentContext(
            program=program, files={p: texts[p] for p in editable if p in texts},
            history=history, best=base.history_entry(), spec=self.spec,
            base_commit=base.commit_sha, experiment_seq=seq, last_crash_log=crash_log,
            feedback=feedback, workspace=workspace, editable=self.editable,
            log_dir=self.log_dir / "agent")

    def _take_proposal(self, pending: _Pending, duplicates: int = 0) -> None:
        try:
            prepared = pending.future.result()
        except ProposalsExhausted:
            self.exhausted = True
            self.pending_proposals.clear()
            return
        except AgentError as e:
            self._record_agent_error(pending.base, e.reason, e.usage, e.agent_log)
            return
        except AutoresearchError:
            raise
        except Exception as e:  # an agent bug must not end an overnight run
            self._record_agent_error(pending.base, f"{type(e).__name__}: {e}", Usage(), None)
            return
        self._accept(prepared, pending.base, duplicates)

    def _record_agent_error(self, base: Experiment, reason: str, usage: Usage,
                            agent_log: str | None) -> None:
        self.consecutive_errors += 1
        e = self.ledger.add_experiment(
            self.tag, kind="candidate", parent=base.commit_sha, agent=self.opt.agent_name,
            description="(no proposal)", status=Status.AGENT_ERROR, reason=reason,
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cost_usd=usage.cost_usd, finished=time.time(), log_path=agent_log)
        self._finished(e)
        self._check_error_streak(reason)

    def _check_error_streak(self, reason: str) -> None:
        limit = self.spec.agent.max_consecutive_errors
        if self.consecutive_errors >= limit:
            raise RunStopped(f"the agent failed {limit} times in a row; last error: {reason} — "
                             f"check the agent's setup ([agent] max_consecutive_errors = {limit})")

    def _prepare(self, proposal: Proposal, base: Experiment) -> _Prepared:
        """Commit a proposal on top of base (any thread): the commit, or why there is none."""
        assert base.commit_sha is not None
        bad_paths = [p for p in (proposal.files or {}) if p.startswith("/") or ".." in Path(p).parts]
        if bad_paths:
            return _Prepared(proposal, error=f"paths outside the target: {', '.join(bad_paths)}")
        message = f"{proposal.description}\n\nautoresearch {self.tag}: proposed by {self.opt.agent_name}"
        try:
            cr = self.ratchet.make_commit(base.commit_sha, message, files=proposal.files,
                                          patch=proposal.patch)
        except GitError as e:
            return _Prepared(proposal, error=str(e))
        return _Prepared(proposal, cr, None, cr.added, cr.removed, self._code_lines(cr.sha))

    def _accept(self, prepared: _Prepared, base: Experiment, duplicates: int) -> None:
        """Record a committed proposal as an experiment and queue it (or refuse it)."""
        assert base.commit_sha is not None
        proposal, cr = prepared.proposal, prepared.commit
        if cr is None:
            self._record_agent_error(base, prepared.error or "no commit", proposal.usage,
                                     proposal.agent_log)
            return
        dup_of = self.trees.get(cr.tree)
        if dup_of is not None or not cr.changed:
            earlier = self.ledger.get(dup_of) if dup_of else base
            if proposal.refused:
                self._refused_duplicate(proposal, base, earlier)
                return
            self.agent.observe(proposal, Outcome(None, earlier.status, earlier.metric,
                                                 reason="duplicate", duplicate_of=earlier.seq,
                                                 metrics=earlier.metrics or {}))
            if duplicates + 1 >= MAX_DUPLICATES:
                self._record_agent_error(base, f"{MAX_DUPLICATES} proposals in a row repeated earlier "
                                         f"experiments", proposal.usage, proposal.agent_log)
                return
            self.feedback.append(
                f"Your proposal ({proposal.description!r}) gives exactly the files of experiment "
                f"#{earlier.seq} ({earlier.status}, {self.spec.metric} = {earlier.metric}). "
                f"It was not run again: propose something different.")
            retry = self._ask_agent()
            retry.future.exception()  # wait: a duplicate must not take a slot's turn
            self._take_proposal(retry, duplicates + 1)
            return
        outside = [p for p in cr.changed if not self.editable(p)]
        if outside:
            self.consecutive_errors += 1   # an agent that only ever breaks the rules must stop
        else:
            self.consecutive_errors = 0
        added, removed = prepared.added, prepared.removed
        status = Status.INVALID if outside else Status.RUNNING
        reason = (f"changes file(s) outside the editable globs: {', '.join(outside)}" if outside else "")
        # log_path becomes the run's log once it runs: the notes keep where the transcript is
        notes = "; ".join(proposal.notes + ([f"agent transcript: {proposal.agent_log}"]
                                            if proposal.agent_log else []))
        e = self.ledger.add_experiment(
            self.tag, kind="candidate", parent=base.commit_sha, commit_sha=cr.sha, tree_sha=cr.tree,
            agent=self.opt.agent_name, description=proposal.description, status=status,
            reason=reason, params=proposal.params, seed=self.opt.seed, diff_added=added,
            diff_removed=removed, code_lines=prepared.lines,
            input_tokens=proposal.usage.input_tokens, output_tokens=proposal.usage.output_tokens,
            cost_usd=proposal.usage.cost_usd, notes=notes, log_path=proposal.agent_log,
            finished=time.time() if outside else None)
        self.ratchet.pin(self.tag, e.seq, cr.sha)
        if outside:
            self.agent.observe(proposal, Outcome(e.id, Status.INVALID, None, reason))
            self._finished(e)
            self._check_error_streak(reason)
            return
        self.trees[cr.tree] = e.id
        self.proposals[e.id] = proposal
        self.queue.append(e.id)

    def _refused_duplicate(self, proposal: Proposal, base: Experiment, earlier: Experiment) -> None:
        """A proposal whose edits to locked files were dropped and whose rest repeats an earlier
        experiment: refused, so it is an `invalid` row (not a silent duplicate)."""
        reason = (f"edited file(s) that are not editable (dropped): {', '.join(proposal.refused)}; "
                  f"the rest repeats experiment #{earlier.seq}")
        self.consecutive_errors += 1
        e = record_refused(self.ledger, self.tag, parent=base.commit_sha, agent=self.opt.agent_name,
                           description=proposal.description, reason=reason, usage=proposal.usage,
                           notes="; ".join(proposal.notes), log_path=proposal.agent_log)
        self.agent.observe(proposal, Outcome(e.id, Status.INVALID, None, reason))
        self._finished(e)
        self._check_error_streak(reason)

    def _job_stub(self, e: Experiment | None = None, seed: int = 0) -> Job:
        assert self.run is not None
        env = dict(self.spec.env)
        env["AUTORESEARCH_CACHE"] = str(self.cache_dir)
        env["AUTORESEARCH_TAG"] = self.tag
        return Job(
            experiment_id=e.id if e else 0, seq=e.seq if e else 0,
            commit=(e.commit_sha if e else self.run.base_commit) or "", run=self.spec.run,
            evaluate=self.spec.evaluate, metric=self.spec.metric, budget=self.budget,
            timeout=self.timeout, seed=seed, env=env, locked=self.run.locked,
            log_path=str(self.log_dir / (f"{e.seq:05d}.log" if e else "setup.log")),
            log_cap_bytes=int(self.spec.log_cap_mb * 2**20), prune_metric=self.spec.prune.metric,
            token=self._token(e.id) if e else None,
            tracked=self.ratchet.list_files(e.commit_sha) if e and e.commit_sha else {},
            sandbox=self.spec.sandbox, sandbox_writable=list(self.spec.sandbox_writable),
            sandbox_cache=str(self.target.state_dir / "sandbox-cache"), network=self.spec.network,
            hidden=[str(self.target.state_dir)], artifacts=list(self.spec.artifacts),
            artifacts_max_bytes=int(self.spec.artifacts_max_mb * 2**20),
            budget_allowance=self.spec.budget_allowance,
            training_seconds_metric=self.spec.training_seconds_metric, cache_pin=self.cache_pin,
            protected=[str(self.ratchet.common_dir / n) for n in ("config", "hooks", "info")],
            scratch=str(self.target.state_dir / "scratch"))

    def _token(self, exp_id: int) -> str:
        """Stable per experiment, so a resumed run can find processes that escaped with setsid."""
        import hashlib
        where = hashlib.sha1(str(self.target.root).encode()).hexdigest()[:10]
        return f"autoresearch-{where}-{self.tag}-{exp_id}"

    def _submit(self, exp_id: int) -> None:
        e = self.ledger.get(exp_id)
        slot = self.free_slots.pop(0)
        seed = self.opt.seed + self._n_measurements(e.tree_sha, before=e.id)
        job = self._job_stub(e, seed)
        if self.spec.holdout and (e.kind == "baseline" or (
                e.kind in ("candidate", "rebase") and e.seq % self.spec.holdout_every == 0)):
            job.holdout, job.holdout_metric = self.spec.holdout, self.spec.holdout_metric
        Path(job.log_path).unlink(missing_ok=True)   # a re-evaluation starts a fresh log
        info = self.executor.slot_info(slot)
        self.ledger.update(exp_id, status=Status.RUNNING, started=time.time(), slot=slot,
                           gpu=info.gpu, seed=seed, log_path=job.log_path)
        self.ledger.set_slot(self.tag, slot, exp_id, info.gpu, info.host)
        should_stop = self._pruning_hook(e)

        def on_start(pid: int) -> None:
            self._pid_updates.append((exp_id, pid))

        fut = self.executor.submit(job, slot=slot, should_stop=should_stop, on_start=on_start)
        self.in_flight[fut] = (slot, exp_id)
        if self.reporter:
            self.reporter.started(self.ledger.get(exp_id), slot, self.budget)

    def _pruning_hook(self, e: Experiment) -> Callable[[float, float], str | None] | None:
        if self.pruner is None or e.kind not in ("candidate", "rebase") or self.incumbent is None:
            return None
        refs = [m.curve for m in self._measurements(self.incumbent.tree_sha) if m.curve]
        if not refs:
            return None
        noise = self.policy.estimate(self._sample(self.incumbent), self._policy_context()).get("sigma")
        watch = self.pruner.watch([[(p, v) for p, v in c] for c in refs], noise)
        return watch.report

    # -- waiting and results ---------------------------------------------------------------
    def _wait(self, timeout: float) -> None:
        # proposals already made wait for a slot: waiting on them again would spin
        waitables = list(self.in_flight) + [p.future for p in self.pending_proposals
                                            if not p.future.done()]
        if waitables:
            wait(waitables, timeout=timeout, return_when=FIRST_COMPLETED)
        else:
            time.sleep(timeout)
        self._flush_pids()
        for fut in [f for f in self.in_flight if f.done()]:
            slot, exp_id = self.in_flight.pop(fut)
            self.free_slots.append(slot)
            self.free_slots.sort()
            self.ledger.set_slot(self.tag, slot, None, self.executor.slot_info(slot).gpu)
            try:
                res = fut.result()
            except Exception as e:  # an executor fault: the worker died, the node vanished
                res = EvalResult(EvalOutcome.CRASH, f"executor error: {type(e).__name__}: {e}", None, {},
                                 0.0, 0.0, None, self._job_stub(self.ledger.get(exp_id)).log_path)
            self._on_result(self.ledger.get(exp_id), res)
        if self.hub is not None:
            self._hub_sync()
        if self.reporter:
            self.reporter.tick(self)

    def _hub_sync(self) -> None:
        """Contributor mode: the hub's verdicts reach the agent; a new hub best is adopted."""
        if self.run is None:
            return
        news = self.hub.sync(self.incumbent.commit_sha if self.incumbent else None)
        self.feedback.extend(news.feedback)
        if news.best is None:
            return
        tree = self.ratchet.tree_of(news.best)
        if tree in self.trees:
            return
        # measured here like a baseline; when measured it is the best, and candidates proposed
        # against the old best are rebased onto it (see _decide)
        e = self.ledger.add_experiment(
            self.tag, kind="baseline", parent=None, commit_sha=news.best, tree_sha=tree,
            agent="hub", description=news.description, status=Status.RUNNING,
            seed=self.opt.seed, code_lines=self._code_lines(news.best))
        self.ratchet.pin(self.tag, e.seq, news.best)
        self.trees[tree] = e.id
        self.queue.append(e.id)

    def _flush_pids(self) -> None:
        import psutil
        while self._pid_updates:
            exp_id, pid = self._pid_updates.pop()
            try:
                created = psutil.Process(pid).create_time()
            except psutil.Error:
                created = None
            self.ledger.update(exp_id, pid=pid, pid_started=created)

    def _on_result(self, e: Experiment, res: EvalResult) -> None:
        self._check_ledger_untouched(e)
        if res.holdout is not None:
            self._holdout[e.id] = res.holdout
        fields: dict[str, Any] = dict(
            wall_time=res.wall_time, peak_memory_mb=res.peak_memory_mb, exit_code=res.exit_code,
            log_path=res.log_path, metrics=res.metrics, curve=res.curve or None,
            started=res.started or e.started, finished=res.finished or time.time(), pid=None)
        if res.outcome == EvalOutcome.INTERRUPTED:
            self.ledger.update(e.id, status=Status.INTERRUPTED, reason=res.reason, **fields)
            return
        if res.outcome != EvalOutcome.MEASURED:
            self.ledger.update(e.id, status=_STATUS_OF[res.outcome], reason=res.reason, **fields)
            self._failed(self.ledger.get(e.id), res)
            return
        violation = next((r for c in self.spec.parsed_constraints if (r := c.check(res.metrics))), None)
        if violation:
            self.ledger.update(e.id, status=Status.DISCARD if e.kind != "repeat" else Status.CRASH,
                               reason=violation, metric=res.metric, **fields)
            e = self.ledger.get(e.id)
            if e.kind == "baseline":
                raise RunStopped(f"the baseline breaks {violation} — relax the constraint in "
                                 f"autoresearch.toml or fix the target")
            if e.kind == "repeat":
                self._failed(e, res)
            else:
                self._tell(e)
                self._finished(e)
            return
        # measured, not yet judged: pending until the policy says otherwise
        self.ledger.update(e.id, metric=res.metric, status=Status.PENDING, reason="measured", **fields)
        e = self.ledger.get(e.id)
        if e.kind == "baseline":
            self._baseline_measured(e)
        elif e.kind == "repeat":
            self.ledger.update(e.id, status=Status.REPEAT, reason="measured")
            self._finished(self.ledger.get(e.id))
            self._after_repeat(e)
        else:
            self._decide(e)

    def _failed(self, e: Experiment, res: EvalResult) -> None:
        if e.kind == "baseline":
            self._finished(e)
            tail = "\n".join(tail_lines(Path(res.log_path), 15)) if res.log_path else ""
            raise RunStopped(f"the baseline (the unmodified code) failed: {res.reason} — fix the target "
                             f"so that it runs; log: {res.log_path}\n{tail}")
        if e.kind == "repeat" and e.candidate_of:
            cand = self.ledger.get(e.candidate_of)
            self._finished(e)
            if cand.kind == "baseline":
                self._top_up_baseline()
                return
            if cand.status == Status.KEEP:
                return  # a flaky re-measurement of the incumbent; the policy may ask again
            if cand.status == Status.PENDING:
                self._conclude(cand, Status.DISCARD, f"repeat #{e.seq} failed: {e.reason}", None)
            return
        self._tell(e)
        self._finished(e)

    # -- decisions -------------------------------------------------------------------------
    def _measurements(self, tree: str | None, before: int | None = None) -> list[Experiment]:
        return self.ledger.measurements(self.tag, tree, before)

    def _n_measurements(self, tree: str | None, before: int | None = None) -> int:
        if tree is None:
            return 0
        q = ("SELECT COUNT(*) FROM experiments WHERE tag = ? AND tree_sha = ? AND status NOT IN "
             "('invalid','agent-error')")
        args: list[Any] = [self.tag, tree]
        if before is not None:
            q += " AND id < ?"
            args.append(before)
        return self.ledger.db.execute(q, args).fetchone()[0]

    def _sample(self, e: Experiment) -> Sample:
        return sample_of(self.ledger, self.tag, e)

    def _policy_context(self) -> PolicyContext:
        return PolicyContext(self.spec.direction, self.spec.policy,
                             replicate_groups(self.ledger, self.tag))

    def _baseline_measured(self, e: Experiment) -> None:
        if e.status != Status.KEEP:
            decision = {"verdict": "keep", "reason": "baseline", "at": time.time()}
            if e.id in self._holdout:
                decision["holdout"] = self._holdout.pop(e.id)
            self.ledger.update(e.id, status=Status.KEEP, reason="baseline", decision=decision)
            e = self.ledger.get(e.id)
            self.incumbent = e
            if e.commit_sha and self.ratchet.branch_commit(self.tag) != e.commit_sha:
                self.ratchet.set_branch(self.tag, e.commit_sha)   # a hub best, adopted
            self._finished(e)
        self._top_up_baseline()

    def _add_repeat(self, of: Experiment, cand: Experiment, description: str) -> Experiment:
        r = self.ledger.add_experiment(
            self.tag, kind="repeat", parent=of.parent, commit_sha=of.commit_sha, tree_sha=of.tree_sha,
            agent=of.agent, description=description, status=Status.RUNNING, candidate_of=cand.id,
            code_lines=of.code_lines, params=None)
        self.ratchet.pin(self.tag, r.seq, of.commit_sha or "")
        self.queue.append(r.id)
        return r

    def _after_repeat(self, r: Experiment) -> None:
        if r.candidate_of is None:
            return
        cand = self.ledger.get(r.candidate_of)
        if cand.kind == "baseline":
            if self.incumbent and self.incumbent.id == cand.id:
                self.incumbent = self.ledger.get(cand.id)
                self._top_up_baseline()
            return
        if cand.status == Status.PENDING and not self._repeats_in_flight(cand):
            self._decide(cand)

    def _repeats_in_flight(self, cand: Experiment) -> bool:
        ids = {exp_id for _, exp_id in self.in_flight.values()} | set(self.queue)
        return any(self.ledger.get(i).candidate_of == cand.id for i in ids)

    def _resume_pending_decisions(self) -> None:
        self._top_up_baseline()
        if self.ledger.count(self.tag) > 1:
            self._remeasure_best(resumed=True)
        for e in self.ledger.experiments(self.tag):
            if e.status == Status.PENDING and not self._repeats_in_flight(e):
                self._decide(e)

    def _decide(self, cand: Experiment) -> None:
        inc = self.incumbent
        assert inc is not None
        decision = self.policy.decide(self._sample(cand), self._sample(inc), self._policy_context())
        record = {"verdict": decision.verdict.value, "reason": decision.reason,
                  "evidence": decision.evidence, "at": time.time(), "against": inc.seq}
        if cand.id in self._holdout:
            record["holdout"] = self._holdout[cand.id]
        elif (cand.decision or {}).get("holdout") is not None:
            record["holdout"] = cand.decision["holdout"]
        if decision.verdict == Verdict.MORE:
            who = inc if decision.rerun == "incumbent" else cand
            n_repeats = self.ledger.db.execute(
                "SELECT COUNT(*) FROM experiments WHERE candidate_of = ?", (cand.id,)).fetchone()[0]
            if n_repeats >= 2 * max(1, self.spec.policy.max_runs):
                self._conclude(cand, Status.DISCARD, "no verdict within the run cap", record)
                return
            self.ledger.update(cand.id, status=Status.PENDING, reason=decision.reason, decision=record)
            if not self._room():
                return  # stays pending; a resumed run goes on measuring it
            what = (f"re-measure best #{inc.seq} against #{cand.seq}" if who is inc
                    else f"repeat of #{cand.seq}")
            self._add_repeat(who, cand, what)
            return
        if decision.verdict == Verdict.KEEP:
            if cand.parent != inc.commit_sha:
                self._rebase(cand, inc, record)
                return
            self._keep(cand, record)
            return
        self._conclude(cand, Status.DISCARD, decision.reason, record)

    def _keep(self, cand: Experiment, record: dict) -> None:
        inc = self.incumbent
        assert inc is not None and cand.commit_sha and inc.commit_sha
        est = self.policy.estimate(self._sample(cand), self._policy_context())
        record["estimate"] = est
        value = est.get("mean", cand.metric)
        delta = value - (self.policy.estimate(self._sample(inc), self._policy_context()).get("mean")
                         or 0.0)
        shown = format_best(value, est.get("sem"), est.get("n"))
        message = (f"{self.spec.metric} {shown} ({delta:+.6f}): {cand.description}\n\n"
                   f"autoresearch {self.tag} experiment #{cand.seq}, proposed by {cand.agent}")
        # the kept commit says what was tried and what it scored; same tree and parent
        kept = self.ratchet.git("commit-tree", self.ratchet.tree_of(cand.commit_sha), "-p",
                                inc.commit_sha, "-F", "-", input=message)
        self.ratchet.pin(self.tag, cand.seq, kept)
        self.ledger.update(cand.id, status=Status.KEEP, reason=record["reason"], decision=record,
                           commit_sha=kept)
        self.ratchet.set_branch(self.tag, kept, expect=inc.commit_sha)
        self.incumbent = self.ledger.get(cand.id)
        self._tell(self.incumbent)
        if self.spec.holdout and self._watch_holdout(self.incumbent, inc):
            return
        self._finished(self.incumbent)
        if self.hub is not None:
            self.hub.kept(kept, inc.commit_sha, value, self._sample(self.incumbent).values,
                          cand.description)

    def _watch_holdout(self, kept: Experiment, previous: Experiment) -> bool:
        """The Goodhart guard: after a keep, compare the holdout metric along the kept chain.
        Returns True when the keep was reverted (the experiment is then finished)."""
        from .summary import holdout_divergence

        alarm = holdout_divergence(self.ledger, self.tag, self.spec, kept)
        if alarm is None:
            return False
        record = dict(kept.decision or {})
        record["holdout_alarm"] = alarm
        text = (f"holdout divergence at #{kept.seq}: {self.spec.metric} improved by "
                f"{alarm['validation_change']:+.6g} while the holdout worsened by "
                f"{alarm['holdout_change']:+.6g} (beyond its noise, {alarm['threshold']:.3g}) "
                f"against #{alarm['against']}; on_divergence = {self.spec.on_divergence}")
        if self.reporter:
            self.reporter.message(text)
        if self.spec.on_divergence == "revert":
            self.ledger.update(kept.id, status=Status.DISCARD, decision=record,
                               reason=f"reverted: {text}")
            self.ratchet.set_branch(self.tag, previous.commit_sha or "", expect=kept.commit_sha)
            self.incumbent = self.ledger.get(previous.id)
            self._finished(self.ledger.get(kept.id))
            return True
        self.ledger.update(kept.id, decision=record)
        if self.spec.on_divergence == "stop":
            self.stopping = text
        return False

    def _rebase(self, cand: Experiment, inc: Experiment, record: dict) -> None:
        """A winner proposed against an older best: replay it onto the new best and measure again."""
        assert cand.commit_sha and cand.parent and inc.commit_sha
        message = f"{cand.description} (rebased onto #{inc.seq})"
        new = self.ratchet.merge_onto(cand.commit_sha, cand.parent, inc.commit_sha, message)
        if new is None:
            self.feedback.append(
                f"Experiment #{cand.seq} ({cand.description!r}) improved on the best it was proposed "
                f"against, but its change conflicts with the new best #{inc.seq}. Re-propose the "
                f"idea against the current code.")
            self._conclude(cand, Status.DISCARD, f"won against an older best but conflicts with "
                           f"the new best #{inc.seq}; the agent was told", record)
            return
        tree = self.ratchet.tree_of(new)
        earlier = self.ledger.get(self.trees[tree]) if tree in self.trees else None
        if earlier is not None and earlier.candidate_of == cand.id:
            # a restart after the rebase row was written but before this verdict
            self._conclude(cand, Status.REBASED, f"won against an older best; rebased onto "
                           f"#{inc.seq} as #{earlier.seq} and measured again there", record,
                           tell=False)
            return
        if tree in self.trees or not self._room():
            why = "already measured" if tree in self.trees else "no room left for its re-evaluation"
            self._conclude(cand, Status.DISCARD, f"won against an older best; rebased version {why}",
                           record)
            return
        r = self.ledger.add_experiment(
            self.tag, kind="rebase", parent=inc.commit_sha, commit_sha=new, tree_sha=tree,
            agent=cand.agent, description=f"{cand.description} (rebased onto #{inc.seq})",
            status=Status.RUNNING, candidate_of=cand.id, params=cand.params, seed=self.opt.seed,
            code_lines=self._code_lines(new))
        self.ratchet.pin(self.tag, r.seq, new)
        self.trees[tree] = r.id
        if cand.id in self.proposals:
            self.proposals[r.id] = self.proposals[cand.id]
        self.queue.appendleft(r.id)
        self._conclude(cand, Status.REBASED, f"won against an older best; rebased onto #{inc.seq} "
                       f"as #{r.seq} and measured again there", record, tell=False)

    def _conclude(self, cand: Experiment, status: Status, reason: str, record: dict | None,
                  tell: bool = True) -> None:
        self.ledger.update(cand.id, status=status, reason=reason,
                           **({"decision": record} if record else {}))
        cand = self.ledger.get(cand.id)
        if tell:
            self._tell(cand)
        self._finished(cand)

    def _tell(self, e: Experiment) -> None:
        proposal = self.proposals.pop(e.id, None)
        if proposal is None:
            return
        values = self._sample(e).values
        metric = sum(values) / len(values) if values else e.metric
        self.agent.observe(proposal, Outcome(e.id, e.status, metric, e.reason,
                                             metrics=e.metrics or {}))

    def _finished(self, e: Experiment) -> None:
        self._write_results()
        if self.reporter:
            self.reporter.finished(e, self.incumbent,
                                   reported=reported_best(self.ledger, self.tag, self.spec.policy))

    def _write_results(self) -> None:
        from .export import write_results_tsv
        write_results_tsv(self.ledger, self.tag, self.spec, self.target.results_path,
                          original=self.opt.results_format == "original")


def _usage_of(pending: _Pending) -> Usage:
    """What a proposal on its way has cost so far: its proposal's usage, or its error's."""
    if not pending.future.done():
        return Usage()
    error = pending.future.exception()
    if error is None:
        return pending.future.result().proposal.usage
    return error.usage if isinstance(error, AgentError) else Usage()


def record_refused(ledger: Ledger, tag: str, *, parent: str | None, agent: str, description: str,
                   reason: str, usage: Usage | None = None, notes: str = "",
                   log_path: str | None = None) -> Experiment:
    """Every refused attempt is a ledger row: an `invalid` candidate that was never run."""
    usage = usage or Usage()
    return ledger.add_experiment(
        tag, kind="candidate", parent=parent, agent=agent, description=description,
        status=Status.INVALID, reason=reason, input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens, cost_usd=usage.cost_usd, notes=notes,
        finished=time.time(), log_path=log_path)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
