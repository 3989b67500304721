"""The judge: what a result or a verdict does to an experiment, as one table of transitions.

    kind                 event             status        then
    baseline             failed            (as run)      stop the run: the baseline must run
    baseline             broke-constraint  discard       stop the run: relax the constraint
    baseline             measured          keep          schedule the baseline's re-measurements
    candidate, rebase    failed            (as run)      tell the agent
    candidate, rebase    broke-constraint  discard       tell the agent
    candidate, rebase    measured          pending       ask the policy (-> one of the verdicts)
    repeat               failed            (as run)      its candidate: repeat-failed
    repeat               broke-constraint  crash         its candidate: repeat-failed
    repeat               measured          repeat        its candidate: ask the policy again once
                                                         none of its repeats is still running
    candidate, rebase    keep              keep          commit onto the best, move the branch
    candidate, rebase    keep-stale        rebased       replay onto the newer best as a `rebase`
                                                         row (discard if it conflicts, repeats an
                                                         earlier tree, or the run is out of room)
    candidate, rebase    discard           discard       tell the agent
    candidate, rebase    more              pending       add a `repeat` row (of it or of the best)
    candidate, rebase    no-verdict        discard       tell the agent (twice max_runs repeats)
    candidate, rebase    repeat-failed     discard       tell the agent (only while pending)
    any                  interrupted       interrupted   nothing: a resumed run measures it again

`TRANSITIONS` (at the end of this module) is that table as data; `Judge.apply` is the only place a judged status is
written. The status a finished evaluation reports is read in one function, `evaluation_status`.

Order is crash safety: a kept commit is pinned and its row written before the branch moves; a
repeat's or rebase's row is written (and pinned) before it is queued.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .config import TargetSpec
from .errors import AutoresearchError
from .evaluation import EvalResult
from .experiment import Kind, Outcome, Proposal, Status
from .ledger import Experiment
from .metrics import tail_lines
from .policies import Policy, PolicyContext, Verdict
from .state import RunState


class RunStopped(AutoresearchError):
    """The run ended for a reason the user must hear about (baseline failed, agent keeps failing)."""


class Event(str, enum.Enum):
    FAILED = "failed"                        # the evaluation ended without a valid measurement
    BROKE_CONSTRAINT = "broke-constraint"    # measured, but outside a [constraints] bound
    MEASURED = "measured"
    KEEP = "keep"                            # the policy's verdicts on a pending row
    KEEP_STALE = "keep-stale"                # keep, but it was proposed against an older best
    DISCARD = "discard"
    MORE = "more"
    NO_VERDICT = "no-verdict"                # MORE once too often
    REPEAT_FAILED = "repeat-failed"          # one of its repeats failed
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class Transition:
    status: Status | None      # None: the status the evaluation reported
    action: Callable[..., None]  # the Judge method that follows the write
    by_action: bool = False    # the action writes the status itself, after git (keep, rebase)


def evaluation_status(res: EvalResult) -> Status | None:
    """How an evaluation ended: None when it measured (the judge decides the status), else
    the status it ended in. The one place that reads `EvalResult.status`."""
    return None if res.status == Status.RUNNING else res.status


class Git(Protocol):
    """What the judge asks of git (the ratchet); a fake in the judge's unit tests."""

    def commit_tree(self, tree: str, parent: str, message: str) -> str: ...
    def merge_onto(self, commit: str, old_base: str, new_base: str, message: str) -> str | None: ...
    def tree_of(self, commit: str) -> str: ...
    def pin(self, tag: str, seq: int, commit: str) -> str: ...
    def set_branch(self, tag: str, commit: str, expect: str | None = None) -> None: ...


class Driver(Protocol):
    """What the judge asks of the loop."""

    def enqueue(self, e: Experiment, first: bool = False) -> None: ...
    def room(self) -> bool: ...
    def finished(self, e: Experiment) -> None: ...
    def code_lines(self, commit: str) -> int: ...


class Judge:
    def __init__(self, state: RunState, policy: Policy, spec: TargetSpec, git: Git,
                 driver: Driver, observe: Callable[[Proposal, Outcome], None], seed: int = 0):
        self.state = state
        self.policy = policy
        self.spec = spec
        self.git = git
        self.driver = driver
        self.observe = observe
        self.seed = seed
        self.tag = state.tag
        self.proposals: dict[int, Proposal] = {}      # experiment id -> proposal, until told
        self.feedback: list[str] = []                 # for the agent's next context

    # -- the table ------------------------------------------------------------------------
    def apply(self, e: Experiment, event: Event, status: Status | None = None, *,
              then: dict[str, Any] | None = None, **fields: Any) -> None:
        """Write the transition's status (or `status`, the evaluation's) with `fields`, then
        run its action with `fields` and `then` (arguments for the action only)."""
        t = TRANSITIONS.get((e.kind, event))
        if t is None:
            raise AssertionError(f"no transition for a {e.kind} on {event}")
        if not t.by_action:
            self.state.update(e, status=t.status or status, **fields)
        t.action(self, e, fields, **(then or {}))

    def on_result(self, e: Experiment, res: EvalResult, fields: dict[str, Any]) -> None:
        """A finished evaluation: failed, broke a constraint, or measured."""
        status = evaluation_status(res)
        if status == Status.INTERRUPTED:
            self.apply(e, Event.INTERRUPTED, reason=res.reason, **fields)
        elif status is not None:
            self.apply(e, Event.FAILED, status, reason=res.reason, **fields)
        elif violation := next((r for c in self.spec.parsed_constraints
                                if (r := c.check(res.metrics))), None):
            self.apply(e, Event.BROKE_CONSTRAINT, reason=violation, metric=res.metric, **fields)
        else:
            self.apply(e, Event.MEASURED, metric=res.metric, reason="measured", **fields)

    def on_fault(self, e: Experiment, reason: str) -> None:
        """The executor lost the job (a worker died, a node vanished): a crash."""
        self.apply(e, Event.FAILED, Status.CRASH, reason=reason, finished=time.time(), pid=None)

    def context(self) -> PolicyContext:
        return PolicyContext(self.spec.direction, self.spec.policy, self.state.replicate_groups())

    def decide(self, cand: Experiment) -> None:
        """Ask the policy about a pending candidate; the verdict is an event of the table."""
        inc = self.state.incumbent
        assert inc is not None
        d = self.policy.decide(self.state.sample(cand), self.state.sample(inc), self.context())
        record = {"verdict": d.verdict.value, "reason": d.reason, "evidence": d.evidence,
                  "at": time.time(), "against": inc.seq}
        if d.verdict == Verdict.MORE:
            if len(self.state.repeats_of(cand.id)) >= 2 * max(1, self.spec.policy.max_runs):
                self.apply(cand, Event.NO_VERDICT, reason="no verdict within the run cap",
                           decision=record)
            else:
                self.apply(cand, Event.MORE, reason=d.reason, decision=record,
                           then={"who": inc if d.rerun == "incumbent" else cand})
        elif d.verdict == Verdict.KEEP:
            stale = cand.parent != inc.commit_sha
            self.apply(cand, Event.KEEP_STALE if stale else Event.KEEP, reason=d.reason,
                       decision=record)
        else:
            self.apply(cand, Event.DISCARD, reason=d.reason, decision=record)

    # -- actions ----------------------------------------------------------------------------
    def _nothing(self, e: Experiment, fields: dict[str, Any]) -> None:
        pass

    def _tell_and_finish(self, e: Experiment, fields: dict[str, Any]) -> None:
        self.tell(e)
        self.driver.finished(e)

    def _decide(self, e: Experiment, fields: dict[str, Any]) -> None:
        self.decide(e)

    def _stop_baseline_failed(self, e: Experiment, fields: dict[str, Any]) -> None:
        self.driver.finished(e)
        log = e.log_path
        tail = "\n".join(tail_lines(Path(log), 15)) if log else ""
        raise RunStopped(f"the baseline (the unmodified code) failed: {e.reason} — fix the target "
                         f"so that it runs; log: {log}\n{tail}")

    def _stop_baseline_broke(self, e: Experiment, fields: dict[str, Any]) -> None:
        raise RunStopped(f"the baseline breaks {e.reason} — relax the constraint in "
                         f"autoresearch.toml or fix the target")

    def _baseline_kept(self, e: Experiment, fields: dict[str, Any]) -> None:
        self.state.update(e, reason="baseline", decision={"verdict": "keep", "reason": "baseline",
                                                          "at": time.time()})
        self.state.incumbent = e
        self.driver.finished(e)
        self.top_up_baseline()

    def _repeat_failed(self, e: Experiment, fields: dict[str, Any]) -> None:
        self.driver.finished(e)
        if e.candidate_of is None:
            return
        cand = self.state.get(e.candidate_of)
        if cand.kind == Kind.BASELINE:
            self.top_up_baseline()
        elif cand.status == Status.PENDING:  # a flaky re-measurement of a kept best is no news
            self.apply(cand, Event.REPEAT_FAILED, reason=f"repeat #{e.seq} failed: {e.reason}")

    def _repeat_measured(self, e: Experiment, fields: dict[str, Any]) -> None:
        self.driver.finished(e)
        if e.candidate_of is None:
            return
        cand = self.state.get(e.candidate_of)
        if cand.kind != Kind.BASELINE and cand.status == Status.PENDING \
                and not self.repeats_running(cand):
            self.decide(cand)

    def _measure_again(self, cand: Experiment, fields: dict[str, Any], who: Experiment) -> None:
        if not self.driver.room():
            return  # stays pending; a resumed run goes on measuring it
        if who is not cand:
            self.add_repeat(who, cand, f"re-measure best #{who.seq} against #{cand.seq}")
        else:
            self.add_repeat(cand, cand, f"repeat of #{cand.seq}")

    def _keep(self, cand: Experiment, fields: dict[str, Any]) -> None:
        inc = self.state.incumbent
        assert inc is not None and cand.commit_sha and inc.commit_sha and cand.tree_sha
        record = fields["decision"]
        ctx = self.context()
        est = self.policy.estimate(self.state.sample(cand), ctx)
        record["estimate"] = est.to_dict()
        delta = est.mean - self.policy.estimate(self.state.sample(inc), ctx).mean
        message = (f"{self.spec.metric} {est.mean:.6f} ({delta:+.6f}): {cand.description}\n\n"
                   f"autoresearch {self.tag} experiment #{cand.seq}, proposed by {cand.agent}")
        # the kept commit says what was tried and what it scored; same tree and parent
        kept = self.git.commit_tree(cand.tree_sha, inc.commit_sha, message)
        self.git.pin(self.tag, cand.seq, kept)
        self.state.update(cand, status=Status.KEEP, reason=fields["reason"], decision=record,
                          commit_sha=kept)
        self.git.set_branch(self.tag, kept, expect=inc.commit_sha)
        self.state.incumbent = cand
        self._tell_and_finish(cand, fields)

    def _rebase(self, cand: Experiment, fields: dict[str, Any]) -> None:
        """A winner proposed against an older best: replay it onto the new best, measure again."""
        inc = self.state.incumbent
        assert inc is not None and cand.commit_sha and cand.parent and inc.commit_sha
        record = fields["decision"]
        new = self.git.merge_onto(cand.commit_sha, cand.parent, inc.commit_sha,
                                  f"{cand.description} (rebased onto #{inc.seq})")
        if new is None:
            self.feedback.append(
                f"Experiment #{cand.seq} ({cand.description!r}) improved on the best it was proposed "
                f"against, but its change conflicts with the new best #{inc.seq}. Re-propose the "
                f"idea against the current code.")
            self.apply(cand, Event.DISCARD, reason=f"won against an older best but conflicts "
                       f"with the new best #{inc.seq}; the agent was told", decision=record)
            return
        tree = self.git.tree_of(new)
        earlier_id = self.state.trees.get(tree)
        earlier = self.state.get(earlier_id) if earlier_id is not None else None
        rebased = f"won against an older best; rebased onto #{inc.seq} as #{{}} and measured again there"
        if earlier is not None and earlier.candidate_of == cand.id:
            # a restart after the rebase row was written but before this verdict
            self.state.update(cand, status=Status.REBASED, reason=rebased.format(earlier.seq),
                              decision=record)
            self.driver.finished(cand)
            return
        if earlier is not None or not self.driver.room():
            why = "already measured" if earlier is not None else "no room left for its re-evaluation"
            self.apply(cand, Event.DISCARD, reason=f"won against an older best; rebased version "
                       f"{why}", decision=record)
            return
        r = self.state.add(
            kind=Kind.REBASE, parent=inc.commit_sha, commit_sha=new, tree_sha=tree,
            agent=cand.agent, description=f"{cand.description} (rebased onto #{inc.seq})",
            status=Status.RUNNING, candidate_of=cand.id, params=cand.params, seed=self.seed,
            code_lines=self.driver.code_lines(new))
        self.git.pin(self.tag, r.seq, new)
        if cand.id in self.proposals:
            self.proposals[r.id] = self.proposals[cand.id]
        self.driver.enqueue(r, first=True)
        self.state.update(cand, status=Status.REBASED, reason=rebased.format(r.seq),
                          decision=record)
        self.proposals.pop(cand.id, None)
        self.driver.finished(cand)

    # -- repeats and the baseline ----------------------------------------------------------
    def add_repeat(self, of: Experiment, cand: Experiment, description: str) -> Experiment:
        r = self.state.add(
            kind=Kind.REPEAT, parent=of.parent, commit_sha=of.commit_sha, tree_sha=of.tree_sha,
            agent=of.agent, description=description, status=Status.RUNNING, candidate_of=cand.id,
            code_lines=of.code_lines, params=None)
        self.git.pin(self.tag, r.seq, of.commit_sha or "")
        self.driver.enqueue(r)
        return r

    def repeats_running(self, cand: Experiment) -> bool:
        return any(r.status == Status.RUNNING for r in self.state.repeats_of(cand.id))

    def baseline_counts(self) -> tuple[int, int, int]:
        """(valid measurements, runs queued or running, failed runs) of the baseline's code."""
        base = self.state.incumbent
        assert base is not None
        rows = self.state.on_tree(base.tree_sha)
        valid = sum(1 for r in rows if r.metric is not None and r.status in (
            Status.KEEP, Status.DISCARD, Status.REPEAT, Status.PENDING, Status.REBASED))
        running = sum(1 for r in rows if r.status == Status.RUNNING)
        failed = sum(1 for r in rows if r.status in (Status.CRASH, Status.TIMEOUT))
        return valid, running, failed

    def baseline_ready(self) -> bool:
        inc = self.state.incumbent
        if inc is None:
            return False
        if inc.kind != Kind.BASELINE:
            return True
        needed = self.policy.baseline_runs(self.spec.policy)
        valid, running, failed = self.baseline_counts()
        if valid >= needed:
            return True
        # flaky re-measurements get one more try each; past that, go on with what there is
        return running == 0 and (valid + failed >= 2 * needed or not self.driver.room())

    def top_up_baseline(self) -> None:
        """Schedule the baseline measurements still missing (also after a restart)."""
        base = self.state.incumbent
        if base is None or base.kind != Kind.BASELINE:
            return
        needed = self.policy.baseline_runs(self.spec.policy)
        valid, running, failed = self.baseline_counts()
        for _ in range(needed - valid - running):
            if valid + running + failed >= 2 * needed or not self.driver.room():
                break
            self.add_repeat(base, base, "re-measure the baseline (noise estimate)")
            running += 1

    def resume_pending(self) -> None:
        """After a restart: schedule missing baseline runs, judge what was left pending."""
        self.top_up_baseline()
        for e in [e for e in self.state.open_rows() if e.status == Status.PENDING]:
            if not self.repeats_running(e):
                self.decide(e)

    # -- the agent and the pruner ------------------------------------------------------------
    def tell(self, e: Experiment) -> None:
        """Tell the agent how its proposal ended (the mean over every run of its code)."""
        proposal = self.proposals.pop(e.id, None)
        if proposal is None:
            return
        values = self.state.sample(e).values
        metric = sum(values) / len(values) if values else e.metric
        self.observe(proposal, Outcome(e.id, e.status, metric, e.reason, metrics=e.metrics or {}))

    def noise(self) -> float | None:
        """The policy's noise sd of one run of the best (for the pruner)."""
        inc = self.state.incumbent
        if inc is None or not self.state.measurements(inc.tree_sha):
            return None
        return self.policy.estimate(self.state.sample(inc), self.context()).sigma


# -- the table (after the class: its actions are the Judge's methods) -----------------------------
_B, _C, _R, _RB = Kind.BASELINE, Kind.CANDIDATE, Kind.REPEAT, Kind.REBASE
_JUDGED = {
    Event.FAILED: Transition(None, Judge._tell_and_finish),
    Event.BROKE_CONSTRAINT: Transition(Status.DISCARD, Judge._tell_and_finish),
    Event.MEASURED: Transition(Status.PENDING, Judge._decide),
    Event.KEEP: Transition(Status.KEEP, Judge._keep, by_action=True),
    Event.KEEP_STALE: Transition(Status.REBASED, Judge._rebase, by_action=True),
    Event.DISCARD: Transition(Status.DISCARD, Judge._tell_and_finish),
    Event.MORE: Transition(Status.PENDING, Judge._measure_again),
    Event.NO_VERDICT: Transition(Status.DISCARD, Judge._tell_and_finish),
    Event.REPEAT_FAILED: Transition(Status.DISCARD, Judge._tell_and_finish),
}
TRANSITIONS: dict[tuple[Kind, Event], Transition] = {
    (_B, Event.FAILED): Transition(None, Judge._stop_baseline_failed),
    (_B, Event.BROKE_CONSTRAINT): Transition(Status.DISCARD, Judge._stop_baseline_broke),
    (_B, Event.MEASURED): Transition(Status.KEEP, Judge._baseline_kept),
    (_R, Event.FAILED): Transition(None, Judge._repeat_failed),
    (_R, Event.BROKE_CONSTRAINT): Transition(Status.CRASH, Judge._repeat_failed),
    (_R, Event.MEASURED): Transition(Status.REPEAT, Judge._repeat_measured),
    **{(k, ev): t for k in (_C, _RB) for ev, t in _JUDGED.items()},
    **{(k, Event.INTERRUPTED): Transition(Status.INTERRUPTED, Judge._nothing) for k in Kind},
}
