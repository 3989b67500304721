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
  is told and asked again at once; `MAX_DUPLICATES` in a row count as an agent error. A
  near-duplicate (neardup.py) is the same, and is recorded as a `duplicate` row (pinned, never
  run). A change to a file outside the editable globs is recorded as `invalid` and never run.
- With a portfolio (portfolio.py) each proposal is asked of the member with the fewest slots in
  use per share, recorded with its agent and role, and its outcome told to that member only.
- `max_consecutive_errors` agent errors or refusals in a row by one agent stop the run.
- The research notes (notes.py) are updated from a taken proposal on the driver thread and
  written to the ledger; each context carries them and the summary of what was tried.
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

from .agents import AgentContext, AgentError, ProposalsExhausted
from .errors import AutoresearchError, GitError
from .experiment import Kind, Outcome, Proposal, Status, Usage
from .judge import AgentFailing, Judge
from .ledger import Experiment, Ledger
from .metrics import tail_lines
from .neardup import Match, NearDuplicates
from .notes import Tried, add_entry, bound, themes_of
from .portfolio import Member, Portfolio
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
    themes: list[str] | None = None     # what it touches (notes.themes_of)


@dataclass
class _Pending:
    """A proposal on its way: asked of the agent against `base` (the strategy's choice)."""

    choice: Choice
    future: Future
    member: Member
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
    def __init__(self, session: Session, state: RunState, ratchet: Ratchet, portfolio: Portfolio,
                 judge: Judge, lines: LineCounter, slots: int, ahead: int | None,
                 strategy: Strategy, *, enqueue: Callable[[Experiment], None],
                 finished: Callable[[Experiment], None]):
        self.session = session
        self.spec = session.spec
        self.tag = session.tag
        self.state = state
        self.ratchet = ratchet
        self.portfolio = portfolio
        self.judge = judge
        self.lines = lines
        self.slots = slots
        self.ahead_option = ahead
        self.strategy = strategy
        self.enqueue = enqueue
        self.finished = finished
        self.pending: deque[_Pending] = deque()
        settings = self.spec.notes
        self.near = NearDuplicates(settings, self._read_versioned)
        self._by_commit: dict[str, Experiment] = {}
        self.tried = Tried(self._read, self.spec.direction, settings.summary_chars,
                           value=self._mean, commit_row=self._by_commit.get)
        self.notes = session.ledger.research_notes(self.tag)
        for e in state.rows.values():       # a resumed run: what was tried before
            self._watch(e)
            self._index(e)
        state.watchers.append(self._watch)

    def _watch(self, e: Experiment) -> None:
        """Every row written: the commit index and the summary's counts follow it."""
        if e.commit_sha and e.kind != Kind.REPEAT:
            self._by_commit.setdefault(e.commit_sha, e)
        self.tried.observe(e)

    def _mean(self, e: Experiment) -> float | None:
        values = self.state.sample(e).values
        return sum(values) / len(values) if values else None

    @property
    def exhausted(self) -> bool:
        return self.portfolio.exhausted

    # -- the code of earlier experiments (near-duplicates, themes) ----------------------------
    def _read_versioned(self, commit: str) -> dict[str, tuple[str, str]]:
        oids = self.session.editable_files(self.ratchet.list_files(commit))
        blobs = self.ratchet.read_blobs(oids.values())
        return {p: (o, blobs[o].decode("utf-8", "replace")) for p, o in oids.items() if o in blobs}

    def _read(self, commit: str) -> dict[str, str]:
        return {p: t for p, (_, t) in self._read_versioned(commit).items()}

    def _index(self, e: Experiment, themes: list[str] | None = None) -> None:
        if not e.commit_sha or e.kind == Kind.REPEAT or e.status in (Status.INVALID,
                                                                     Status.DUPLICATE):
            return
        try:
            self.near.add(e.id, e.commit_sha, e.parent)
            if e.kind == Kind.CANDIDATE:
                self.tried.note(e, themes)
        except GitError:
            return       # a commit gone after a gc: nothing to compare with

    # -- asking ahead ------------------------------------------------------------------------
    def ahead(self) -> int:
        """Proposals to keep in the making beyond what free slots need right now."""
        if self.ahead_option is not None:
            return max(0, self.ahead_option)
        if self.portfolio.ahead:
            return self.slots
        # an instant agent sees every result first on one slot; with several slots one proposal
        # kept ready takes its commit off the path of the slot that frees next
        return 1 if self.slots > 1 else 0

    def keep_coming(self, needed: int) -> None:
        """Have at least `needed` proposals (and the ahead ones) in the making."""
        if self.exhausted or self.state.incumbent is None:
            return
        want = max(needed, self.ahead())
        while len(self.pending) < want:
            making = {m: sum(1 for p in self.pending if p.member is m)
                      for m in self.portfolio.members}
            member = self.portfolio.choose(
                {m: n + self.state.running_by[m.key] for m, n in making.items()}, making)
            if member is None:
                return
            self.pending.append(self._ask(member))

    def waiting(self) -> list[Future]:
        return [p.future for p in self.pending if not p.future.done()]

    def _next_ready(self) -> _Pending | None:
        """The oldest finished proposal whose member has none older still in the making (a
        fast member's proposal need not wait for a slow one's; one member's stay in order)."""
        slow: set[int] = set()
        for p in self.pending:
            if p.future.done() and id(p.member) not in slow:
                return p
            slow.add(id(p.member))
        return None

    def ready(self) -> bool:
        return self._next_ready() is not None

    def _ask(self, member: Member) -> _Pending:
        choice = self.strategy.choose([p.base for p in self.pending])
        base = choice.parent
        ctx = self._context(base, member, choice.operator)
        fut: Future = Future()
        member.asked += 1
        agent = member.agent

        def work() -> None:
            try:
                if ctx.parent is not None:    # git off the driver thread: the node's diff
                    ctx.parent_diff = self._node_diff(base)
                with member.lock if not agent.concurrent else contextlib.nullcontext():
                    proposal = agent.propose(ctx)
                proposal.agent = member.label
                # committing here keeps git off the driver thread (a temporary index is private)
                fut.set_result(self._prepare(proposal, base, member))
            except BaseException as e:  # noqa: BLE001 - delivered to the driver thread
                fut.set_exception(e)

        threading.Thread(target=work, name="agent", daemon=True).start()
        return _Pending(choice, fut, member)

    def _node_diff(self, node: Experiment) -> str:
        """The node's editable files against the best's, as a diff (tree search)."""
        best = self.state.incumbent
        assert best is not None and best.commit_sha and node.commit_sha
        if best.tree_sha == node.tree_sha:
            return ""
        return self.ratchet.diff(best.commit_sha, node.commit_sha)

    def _context(self, base: Experiment, member: Member,
                 operator: str | None = None) -> AgentContext:
        assert base.commit_sha is not None
        editable = list(self.session.editable_files(self.ratchet.list_files(base.commit_sha)))
        crash, crash_log = self.state.last_crash, None
        if operator == "debug":        # the node to fix is the crash to read
            crash = base
        if crash is not None and crash.log_path and (
                crash.status in (Status.CRASH, Status.TIMEOUT) or operator == "debug"):
            crash_log = f"experiment #{crash.seq} ({crash.description}): {crash.reason}\n" + \
                "\n".join(tail_lines(Path(crash.log_path), 50))
        feedback = "\n".join(self.judge.feedback + member.feedback) or None
        self.judge.feedback.clear()
        member.feedback.clear()
        texts = self.ratchet.read_files(base.commit_sha, [*editable, member.program])
        program = texts.get(member.program, "") if member.program not in editable else ""
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
            parent_values=self.state.sample(base).values if operator else [],
            role=member.role, **self._research())

    def _research(self) -> dict:
        """The notes and the summary of what was tried, for a context (none when disabled)."""
        settings = self.spec.notes
        if not settings.enabled:
            return {}
        return dict(research_notes=self.notes, notes_chars=settings.max_chars,
                    tried=self.tried.render())

    # -- taking a proposal -------------------------------------------------------------------
    def take(self, duplicates: int = 0, pending: _Pending | None = None) -> None:
        """Turn the oldest finished proposal into an experiment (or a recorded refusal)."""
        if pending is None:
            pending = self._next_ready() or self.pending[0]
            self.pending.remove(pending)
        member = pending.member
        try:
            prepared = pending.future.result()
        except ProposalsExhausted:
            member.exhausted = True
            self.pending = deque(p for p in self.pending if p.member is not member)
            return
        except AgentError as e:
            self._agent_error(pending.choice, e.reason, e.usage, e.agent_log, member)
            return
        except AutoresearchError:
            raise
        except Exception as e:  # an agent bug must not end an overnight run
            self._agent_error(pending.choice, f"{type(e).__name__}: {e}", Usage(), None, member)
            return
        cr = prepared.commit
        repeat = cr is not None and (cr.tree in self.state.trees or not cr.changed)
        # first the notes: an exact repeat has no row, any other proposal gets the next seq
        self._take_notes(prepared.proposal, member, None if repeat else self.state.next_seq)
        self._accept(prepared, pending.choice, duplicates, member)

    def _take_notes(self, proposal: Proposal, member: Member, seq: int | None) -> None:
        """What the proposal wrote to the research notes, bounded and stored in the ledger."""
        limit = self.spec.notes.max_chars
        if not self.spec.notes.enabled or (proposal.notes_text is None
                                           and not (proposal.notes_entry or "").strip()):
            return
        if proposal.notes_text is not None:
            text, cut = bound(proposal.notes_text, limit)
        else:
            text, cut = add_entry(self.notes, proposal.notes_entry or "", seq=seq,
                                  who=member.label, max_chars=limit)
        if cut:
            member.feedback.append(f"The research notes are limited to {limit} characters: the "
                                   f"oldest lines were dropped. Keep them short; merge old lines.")
        if text != self.notes:
            self.notes = text
            self.session.ledger.set_research_notes(self.tag, text)

    def _agent_error(self, choice: Choice, reason: str, usage: Usage,
                     agent_log: str | None, member: Member) -> None:
        member.errors += 1
        e = self.state.add(
            kind=Kind.CANDIDATE, parent=choice.parent.commit_sha, agent=member.spec,
            role=member.role, description="(no proposal)", status=Status.AGENT_ERROR,
            reason=reason, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cost_usd=usage.cost_usd, finished=time.time(), log_path=agent_log, **choice.fields())
        self.finished(e)
        self._check_error_streak(reason, member)

    def _check_error_streak(self, reason: str, member: Member) -> None:
        limit = self.spec.agent.max_consecutive_errors
        if member.errors >= limit:
            who = "the agent" if len(self.portfolio.members) == 1 else f"agent {member.label}"
            raise AgentFailing(f"{who} failed {limit} times in a row; last error: {reason} — "
                             f"check the agent's setup ([agent] max_consecutive_errors = {limit})")

    def _prepare(self, proposal: Proposal, base: Experiment, member: Member) -> _Prepared:
        """Commit a proposal on top of base (any thread): the commit, or why there is none."""
        assert base.commit_sha is not None
        bad_paths = [p for p in (proposal.files or {}) if p.startswith("/") or ".." in Path(p).parts]
        if bad_paths:
            return _Prepared(proposal, error=f"paths outside the target: {', '.join(bad_paths)}")
        message = (f"{proposal.description}\n\nautoresearch {self.tag}: proposed by "
                   f"{member.label}")
        try:
            cr = self.ratchet.make_commit(base.commit_sha, message, files=proposal.files,
                                          patch=proposal.patch)
            themes = None
            if cr.changed and self.spec.notes.enabled:
                paths = [p for p in cr.changed if self.session.editable(p)]
                themes = themes_of(self.ratchet.read_files(base.commit_sha, paths),
                                   self.ratchet.read_files(cr.sha, paths))
            if self.spec.notes.near_duplicates and cr.changed:
                self.near.version(cr.sha)           # fingerprinted here, off the driver thread
                self.near.change(cr.sha, base.commit_sha)
        except GitError as e:
            return _Prepared(proposal, error=str(e))
        return _Prepared(proposal, cr, None, self.lines.count(cr.sha), themes)

    def _accept(self, prepared: _Prepared, choice: Choice, duplicates: int,
                member: Member) -> None:
        """Record a committed proposal as an experiment and queue it (or refuse it)."""
        base = choice.parent
        assert base.commit_sha is not None
        proposal, cr = prepared.proposal, prepared.commit
        if cr is None:
            self._agent_error(choice, prepared.error or "no commit", proposal.usage,
                              proposal.agent_log, member)
            return
        dup_of = self.state.trees.get(cr.tree)
        if dup_of is not None or not cr.changed:
            earlier = self.state.get(dup_of) if dup_of else base
            if proposal.refused:
                self._refused_duplicate(proposal, choice, earlier, member)
            else:
                self._duplicate(proposal, choice, earlier, duplicates, member)
            return
        outside = [p for p in cr.changed if not self.session.editable(p)]
        # an agent that only ever breaks the rules must stop too
        member.errors = member.errors + 1 if outside else 0
        reason = (f"changes file(s) outside the editable globs: {', '.join(outside)}" if outside else "")
        match = (self.near.find(cr.sha, base.commit_sha)
                 if self.spec.notes.near_duplicates and not outside else None)
        if match is not None:
            self._near_duplicate(prepared, choice, match, duplicates, member)
            return
        e = self.state.add(
            kind=Kind.CANDIDATE, parent=base.commit_sha, commit_sha=cr.sha, tree_sha=cr.tree,
            agent=member.spec, role=member.role, description=proposal.description,
            status=Status.INVALID if outside else Status.RUNNING, reason=reason,
            params=proposal.params, seed=self.session.seed, diff_added=cr.added,
            diff_removed=cr.removed, code_lines=prepared.lines,
            input_tokens=proposal.usage.input_tokens, output_tokens=proposal.usage.output_tokens,
            cost_usd=proposal.usage.cost_usd, notes=_notes(proposal),
            log_path=proposal.agent_log, finished=time.time() if outside else None,
            **choice.fields())
        self.ratchet.pin(self.tag, e.seq, cr.sha)
        if outside:
            member.agent.observe(proposal, Outcome(e.id, Status.INVALID, None, reason))
            self.finished(e)
            self._check_error_streak(reason, member)
            return
        self._index(e, prepared.themes)
        self.judge.proposals[e.id] = proposal
        self.strategy.record(e)
        self.enqueue(e)

    def _near_duplicate(self, prepared: _Prepared, choice: Choice, match: Match,
                        duplicates: int, member: Member) -> None:
        """Recorded as a `duplicate` row (pinned, never run); the agent is told and asked again."""
        base = choice.parent
        proposal, cr = prepared.proposal, prepared.commit
        assert cr is not None
        earlier = self.state.get(match.exp_id)
        e = self.state.add(
            kind=Kind.CANDIDATE, parent=base.commit_sha, commit_sha=cr.sha, agent=member.spec,
            role=member.role, description=proposal.description, status=Status.DUPLICATE,
            reason=f"near-duplicate of #{earlier.seq} ({match.rule}): {match.detail}; not run",
            params=proposal.params, seed=self.session.seed, diff_added=cr.added,
            diff_removed=cr.removed, code_lines=prepared.lines,
            input_tokens=proposal.usage.input_tokens, output_tokens=proposal.usage.output_tokens,
            cost_usd=proposal.usage.cost_usd, notes=_notes(proposal),
            log_path=proposal.agent_log, finished=time.time(), **choice.fields())
        self.ratchet.pin(self.tag, e.seq, cr.sha)
        self.tried.note(e, prepared.themes or [])
        self.finished(e)
        self._duplicate(proposal, choice, earlier, duplicates, member, match=match, row=e)

    def _refused_duplicate(self, proposal: Proposal, choice: Choice,
                           earlier: Experiment, member: Member) -> None:
        """A proposal whose edits to locked files were dropped and whose rest repeats an earlier
        experiment: refused, so it is an `invalid` row (not a silent duplicate)."""
        reason = (f"edited file(s) that are not editable (dropped): {', '.join(proposal.refused)}; "
                  f"the rest repeats experiment #{earlier.seq}")
        member.errors += 1
        e = self.state.add(**refused_row(parent=choice.parent.commit_sha, agent=member.spec,
                                         description=proposal.description, reason=reason,
                                         usage=proposal.usage, notes="; ".join(proposal.notes),
                                         log_path=proposal.agent_log), role=member.role,
                           **choice.fields())
        member.agent.observe(proposal, Outcome(e.id, Status.INVALID, None, reason))
        self.finished(e)
        self._check_error_streak(reason, member)

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
            self.portfolio.close()           # a CLI agent's running call is killed, not orphaned
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
                        tree_sha=cr.tree, agent=p.member.spec, role=p.member.role,
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
                        agent=p.member.spec, role=p.member.role,
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
                   duplicates: int, member: Member, match: Match | None = None,
                   row: Experiment | None = None) -> None:
        """Tell the member which experiment its proposal repeats, and ask it again at once."""
        member.agent.observe(proposal, Outcome(
            row.id if row else None, earlier.status, earlier.metric,
            reason=f"near-duplicate ({match.rule})" if match else "duplicate",
            duplicate_of=earlier.seq, metrics=earlier.metrics or {}))
        if duplicates + 1 >= MAX_DUPLICATES:
            usage = Usage() if row else proposal.usage       # a recorded row holds its cost
            self._agent_error(choice, f"{MAX_DUPLICATES} proposals in a row repeated earlier "
                              f"experiments", usage, proposal.agent_log, member)
            return
        how = (f"is a near-duplicate of experiment #{earlier.seq}: {match.detail}" if match else
               f"gives exactly the files of experiment #{earlier.seq}")
        member.feedback.append(
            f"Your proposal ({proposal.description!r}) {how} ({earlier.status}, "
            f"{self.spec.metric} = {earlier.metric}). It was not run: propose something "
            f"different.")
        retry = self._ask(member)
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
