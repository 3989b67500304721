"""Proposals: the agent thread, proposals made ahead of time, commits, duplicates, refusals.

Guarantees:
- The agent is asked on its own thread, against the node the strategy chose at the moment of
  asking (`_Pending.base`: the best under `ratchet`; any node of the population under `tree`,
  strategies.py); the proposal is committed on that thread too (a private temporary index),
  so git stays off the driver thread. Agents that are not `concurrent` are called one at a time.
- Instant agents are asked only when a slot is free, so they see every result first; agents
  that declare `ahead` have one proposal in the making per slot.
- A proposal is committed and pinned before it is queued; its row is written before its pin
  (a kill in between is repaired on resume: the ledger wins).
- A proposal whose files equal an earlier experiment's (or the base's) is not run: the agent
  is told and asked again at once; `MAX_DUPLICATES` in a row count as an agent error. A change
  to a file outside the editable globs is recorded as `invalid` and never run.
- `max_consecutive_errors` agent errors or refusals in a row stop the run with one line.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from pathlib import Path

from .agents import Agent, AgentContext, AgentError, ProposalsExhausted
from .errors import AutoresearchError, GitError
from .experiment import Kind, Outcome, Proposal, Status, Usage
from .judge import AgentFailing, Judge
from .ledger import Experiment, Ledger
from .metrics import tail_lines
from .ratchet import CommitResult, Ratchet
from .session import Session
from .state import RunState
from .strategies import Choice, Strategy

MAX_DUPLICATES = 12          # duplicate proposals in a row before it counts as an agent error


@dataclass
class _Prepared:
    """A proposal turned into a commit on top of the best it was asked against."""

    proposal: Proposal
    commit: CommitResult | None = None
    error: str | None = None
    lines: int = 0


@dataclass
class _Pending:
    """A proposal on its way: asked of the agent against `base` (the strategy's choice)."""

    choice: Choice
    future: Future
    asked: float = field(default_factory=time.time)

    @property
    def base(self) -> Experiment:
        return self.choice.parent


class LineCounter:
    """Non-blank lines of a commit's editable files (the simplicity criterion's size), counted
    once per blob."""

    def __init__(self, ratchet: Ratchet, editable: Callable[[str], bool]):
        self.ratchet = ratchet
        self.editable = editable
        self._by_blob: dict[str, int] = {}
        self._lock = threading.Lock()

    def count(self, commit: str) -> int:
        oids = [oid for p, oid in self.ratchet.list_files(commit).items() if self.editable(p)]
        with self._lock:
            unknown = [o for o in oids if o not in self._by_blob]
        counted = {oid: sum(1 for ln in blob.splitlines() if ln.strip())
                   for oid, blob in self.ratchet.read_blobs(unknown).items()}
        with self._lock:
            self._by_blob.update(counted)
            return sum(self._by_blob[o] for o in oids)


class Proposals:
    def __init__(self, session: Session, state: RunState, ratchet: Ratchet, agent: Agent,
                 judge: Judge, lines: LineCounter, slots: int, ahead: int | None,
                 strategy: Strategy, *, enqueue: Callable[[Experiment], None],
                 finished: Callable[[Experiment], None]):
        self.session = session
        self.spec = session.spec
        self.tag = session.tag
        self.state = state
        self.ratchet = ratchet
        self.agent = agent
        self.judge = judge
        self.lines = lines
        self.slots = slots
        self.ahead_option = ahead
        self.strategy = strategy
        self.enqueue = enqueue
        self.finished = finished
        self.pending: deque[_Pending] = deque()
        self.exhausted = False
        self.consecutive_errors = 0
        self._agent_lock = threading.Lock()

    # -- asking ahead ------------------------------------------------------------------------
    def ahead(self) -> int:
        """Proposals to keep in the making beyond what free slots need right now."""
        if self.ahead_option is not None:
            return max(0, self.ahead_option)
        if self.agent.ahead:
            return self.slots
        # an instant agent sees every result first on one slot; with several slots one proposal
        # kept ready takes its commit off the path of the slot that frees next
        return 1 if self.slots > 1 else 0

    def keep_coming(self, needed: int) -> None:
        """Have at least `needed` proposals (and the ahead ones) in the making."""
        if self.exhausted or self.state.incumbent is None:
            return
        want = max(needed, self.ahead())
        if not self.agent.concurrent:
            want = min(want, 1)
        while len(self.pending) < want:
            self.pending.append(self._ask())

    def waiting(self) -> list[Future]:
        return [p.future for p in self.pending if not p.future.done()]

    def ready(self) -> bool:
        return bool(self.pending) and self.pending[0].future.done()

    def _ask(self) -> _Pending:
        choice = self.strategy.choose([p.base for p in self.pending])
        base = choice.parent
        ctx = self._context(base, choice.operator)
        fut: Future = Future()

        def work() -> None:
            try:
                if ctx.parent is not None:    # git off the driver thread: the node's diff
                    ctx.parent_diff = self._node_diff(base)
                with self._agent_lock if not self.agent.concurrent else contextlib.nullcontext():
                    proposal = self.agent.propose(ctx)
                # committing here keeps git off the driver thread (a temporary index is private)
                fut.set_result(self._prepare(proposal, base))
            except BaseException as e:  # noqa: BLE001 - delivered to the driver thread
                fut.set_exception(e)

        threading.Thread(target=work, name="agent", daemon=True).start()
        return _Pending(choice, fut)

    def _node_diff(self, node: Experiment) -> str:
        """The node's editable files against the best's, as a diff (tree search)."""
        best = self.state.incumbent
        assert best is not None and best.commit_sha and node.commit_sha
        if best.tree_sha == node.tree_sha:
            return ""
        return self.ratchet.diff(best.commit_sha, node.commit_sha)

    def _context(self, base: Experiment, operator: str | None = None) -> AgentContext:
        assert base.commit_sha is not None
        files = self.ratchet.list_files(base.commit_sha)
        editable = [p for p in files if self.session.editable(p)]
        crash, crash_log = self.state.last_crash, None
        if operator == "debug":        # the node to fix is the crash to read
            crash = base
        if crash is not None and crash.log_path and (
                crash.status in (Status.CRASH, Status.TIMEOUT) or operator == "debug"):
            crash_log = f"experiment #{crash.seq} ({crash.description}): {crash.reason}\n" + \
                "\n".join(tail_lines(Path(crash.log_path), 50))
        feedback = "\n".join(self.judge.feedback) or None
        self.judge.feedback.clear()
        texts = self.ratchet.read_files(base.commit_sha, [*editable, "program.md"])
        program = texts.get("program.md", "") if "program.md" not in editable else ""
        seq = self.state.next_seq + len(self.pending)
        counter = {"n": 0}

        def workspace() -> Path:
            counter["n"] += 1
            wt = self.ratchet.worktree(f"propose-{threading.get_ident() % 1000}-{counter['n'] % 4}")
            return self.ratchet.checkout(wt, base.commit_sha)

        best = self.state.incumbent or base
        return AgentContext(
            program=program, files={p: texts[p] for p in editable if p in texts},
            history=self.state.history(), best=best.history_entry(), spec=self.spec,
            base_commit=base.commit_sha, experiment_seq=seq, last_crash_log=crash_log,
            feedback=feedback, workspace=workspace, editable=self.session.editable,
            log_dir=self.session.log_dir / "agent", operator=operator,
            parent=base.history_entry() if operator else None,
            parent_values=self.state.sample(base).values if operator else [])

    # -- taking a proposal -------------------------------------------------------------------
    def take(self, duplicates: int = 0, pending: _Pending | None = None) -> None:
        """Turn the oldest finished proposal into an experiment (or a recorded refusal)."""
        pending = pending or self.pending.popleft()
        try:
            prepared = pending.future.result()
        except ProposalsExhausted:
            self.exhausted = True
            self.pending.clear()
            return
        except AgentError as e:
            self._agent_error(pending.choice, e.reason, e.usage, e.agent_log)
            return
        except AutoresearchError:
            raise
        except Exception as e:  # an agent bug must not end an overnight run
            self._agent_error(pending.choice, f"{type(e).__name__}: {e}", Usage(), None)
            return
        self._accept(prepared, pending.choice, duplicates)

    def _agent_error(self, choice: Choice, reason: str, usage: Usage,
                     agent_log: str | None) -> None:
        self.consecutive_errors += 1
        e = self.state.add(
            kind=Kind.CANDIDATE, parent=choice.parent.commit_sha, agent=self.session.agent_name,
            description="(no proposal)", status=Status.AGENT_ERROR, reason=reason,
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cost_usd=usage.cost_usd, finished=time.time(), log_path=agent_log, **choice.fields())
        self.finished(e)
        self._check_error_streak(reason)

    def _check_error_streak(self, reason: str) -> None:
        limit = self.spec.agent.max_consecutive_errors
        if self.consecutive_errors >= limit:
            raise AgentFailing(f"the agent failed {limit} times in a row; last error: {reason} — "
                             f"check the agent's setup ([agent] max_consecutive_errors = {limit})")

    def _prepare(self, proposal: Proposal, base: Experiment) -> _Prepared:
        """Commit a proposal on top of base (any thread): the commit, or why there is none."""
        assert base.commit_sha is not None
        bad_paths = [p for p in (proposal.files or {}) if p.startswith("/") or ".." in Path(p).parts]
        if bad_paths:
            return _Prepared(proposal, error=f"paths outside the target: {', '.join(bad_paths)}")
        message = (f"{proposal.description}\n\nautoresearch {self.tag}: proposed by "
                   f"{self.session.agent_name}")
        try:
            cr = self.ratchet.make_commit(base.commit_sha, message, files=proposal.files,
                                          patch=proposal.patch)
        except GitError as e:
            return _Prepared(proposal, error=str(e))
        return _Prepared(proposal, cr, None, self.lines.count(cr.sha))

    def _accept(self, prepared: _Prepared, choice: Choice, duplicates: int) -> None:
        """Record a committed proposal as an experiment and queue it (or refuse it)."""
        base = choice.parent
        assert base.commit_sha is not None
        proposal, cr = prepared.proposal, prepared.commit
        if cr is None:
            self._agent_error(choice, prepared.error or "no commit", proposal.usage,
                              proposal.agent_log)
            return
        dup_of = self.state.trees.get(cr.tree)
        if dup_of is not None or not cr.changed:
            earlier = self.state.get(dup_of) if dup_of else base
            if proposal.refused:
                self._refused_duplicate(proposal, choice, earlier)
            else:
                self._duplicate(proposal, choice, earlier, duplicates)
            return
        outside = [p for p in cr.changed if not self.session.editable(p)]
        # an agent that only ever breaks the rules must stop too
        self.consecutive_errors = self.consecutive_errors + 1 if outside else 0
        reason = (f"changes file(s) outside the editable globs: {', '.join(outside)}" if outside else "")
        e = self.state.add(
            kind=Kind.CANDIDATE, parent=base.commit_sha, commit_sha=cr.sha, tree_sha=cr.tree,
            agent=self.session.agent_name, description=proposal.description,
            status=Status.INVALID if outside else Status.RUNNING, reason=reason,
            params=proposal.params, seed=self.session.seed, diff_added=cr.added,
            diff_removed=cr.removed, code_lines=prepared.lines,
            input_tokens=proposal.usage.input_tokens, output_tokens=proposal.usage.output_tokens,
            cost_usd=proposal.usage.cost_usd, notes=_notes(proposal),
            log_path=proposal.agent_log, finished=time.time() if outside else None,
            **choice.fields())
        self.ratchet.pin(self.tag, e.seq, cr.sha)
        if outside:
            self.agent.observe(proposal, Outcome(e.id, Status.INVALID, None, reason))
            self.finished(e)
            self._check_error_streak(reason)
            return
        self.judge.proposals[e.id] = proposal
        self.strategy.record(e)
        self.enqueue(e)

    def _refused_duplicate(self, proposal: Proposal, choice: Choice,
                           earlier: Experiment) -> None:
        """A proposal whose edits to locked files were dropped and whose rest repeats an earlier
        experiment: refused, so it is an `invalid` row (not a silent duplicate)."""
        reason = (f"edited file(s) that are not editable (dropped): {', '.join(proposal.refused)}; "
                  f"the rest repeats experiment #{earlier.seq}")
        self.consecutive_errors += 1
        e = self.state.add(**refused_row(parent=choice.parent.commit_sha,
                                         agent=self.session.agent_name,
                                         description=proposal.description, reason=reason,
                                         usage=proposal.usage, notes="; ".join(proposal.notes),
                                         log_path=proposal.agent_log), **choice.fields())
        self.agent.observe(proposal, Outcome(e.id, Status.INVALID, None, reason))
        self.finished(e)
        self._check_error_streak(reason)

    # -- proposals made ahead of time when the run stops --------------------------------------
    def ready_cost(self) -> float:
        """What proposals made ahead of time, ready but not taken yet, have cost."""
        return sum(_usage_of(p).cost_usd for p in self.pending if p.future.done())

    def record_dropped(self) -> None:
        """Every paid proposal is counted: those made ahead of time and dropped when the run
        stops become rows with their usage. A ready proposal with a commit is an `interrupted`
        candidate (pinned; a resumed run measures it); one still being made is stopped (close)
        and, when it cost something, recorded as an `agent-error` row."""
        if not self.pending:
            return
        pending, self.pending = list(self.pending), deque()
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
                        and cr.tree not in self.state.trees
                        and all(self.session.editable(f) for f in cr.changed)):
                    e = self.state.add(
                        kind=Kind.CANDIDATE, parent=p.base.commit_sha, commit_sha=cr.sha,
                        tree_sha=cr.tree, agent=self.session.agent_name,
                        description=prepared.proposal.description, status=Status.INTERRUPTED,
                        reason=why + " (a resumed run measures it)",
                        params=prepared.proposal.params, seed=self.session.seed,
                        diff_added=cr.added, diff_removed=cr.removed, code_lines=prepared.lines,
                        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                        cost_usd=usage.cost_usd, notes=_notes(prepared.proposal),
                        log_path=prepared.proposal.agent_log, finished=time.time(),
                        **p.choice.fields())
                    self.ratchet.pin(self.tag, e.seq, cr.sha)
                else:
                    error = p.future.exception() if p.future.done() else None
                    detail = (error.reason if isinstance(error, AgentError) else
                              "still being made" if not p.future.done() else "not usable")
                    e = self.state.add(
                        kind=Kind.CANDIDATE, parent=p.base.commit_sha,
                        agent=self.session.agent_name,
                        description=prepared.proposal.description if prepared else "(no proposal)",
                        status=Status.AGENT_ERROR, reason=f"{why}; dropped ({detail})",
                        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                        cost_usd=usage.cost_usd, finished=time.time(),
                        log_path=(error.agent_log if isinstance(error, AgentError) else None) or (
                            prepared.proposal.agent_log if prepared else None),
                        **p.choice.fields())
            except AutoresearchError:
                continue                 # a stopping run must not fail on its bookkeeping
            self.finished(e)

    def _duplicate(self, proposal: Proposal, choice: Choice, earlier: Experiment,
                   duplicates: int) -> None:
        self.agent.observe(proposal, Outcome(None, earlier.status, earlier.metric,
                                             reason="duplicate", duplicate_of=earlier.seq,
                                             metrics=earlier.metrics or {}))
        if duplicates + 1 >= MAX_DUPLICATES:
            self._agent_error(choice, f"{MAX_DUPLICATES} proposals in a row repeated earlier "
                              f"experiments", proposal.usage, proposal.agent_log)
            return
        self.judge.feedback.append(
            f"Your proposal ({proposal.description!r}) gives exactly the files of experiment "
            f"#{earlier.seq} ({earlier.status}, {self.spec.metric} = {earlier.metric}). "
            f"It was not run again: propose something different.")
        retry = self._ask()
        retry.future.exception()  # wait: a duplicate must not take a slot's turn
        self.take(duplicates + 1, retry)


def _notes(proposal: Proposal) -> str:
    # log_path becomes the run's log once it runs: the notes keep where the transcript is
    return "; ".join(proposal.notes + ([f"agent transcript: {proposal.agent_log}"]
                                       if proposal.agent_log else []))


def _usage_of(pending: _Pending) -> Usage:
    """What a proposal on its way has cost so far: its proposal's usage, or its error's."""
    if not pending.future.done():
        return Usage()
    error = pending.future.exception()
    if error is None:
        return pending.future.result().proposal.usage
    return error.usage if isinstance(error, AgentError) else Usage()


def refused_row(*, parent: str | None, agent: str, description: str, reason: str,
                usage: Usage | None = None, notes: str = "",
                log_path: str | None = None) -> dict:
    """The fields of a refused attempt's row: an `invalid` candidate that was never run."""
    usage = usage or Usage()
    return dict(kind=Kind.CANDIDATE, parent=parent, agent=agent, description=description,
                status=Status.INVALID, reason=reason, input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens, cost_usd=usage.cost_usd, notes=notes,
                finished=time.time(), log_path=log_path)


def record_refused(ledger: Ledger, tag: str, **fields) -> Experiment:
    """Every refused attempt is a ledger row (for `try`, outside a loop): see refused_row."""
    return ledger.add_experiment(tag, **refused_row(**fields))
