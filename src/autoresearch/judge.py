"""The judge: what a result or a verdict does to an experiment, as one table of transitions.

    kind                 event             status        then
    baseline             failed            (as run)      stop the run: the baseline must run
    baseline             broke-constraint  discard       stop the run: relax the constraint
    baseline             measured          keep          schedule the baseline's re-measurements
                                                         (one per slot at a time); a best adopted
                                                         from a hub moves the branch to it
    candidate, rebase    failed            (as run)      tell the agent
    candidate, rebase    broke-constraint  discard       tell the agent
    candidate, rebase    measured          pending       ask the policy (-> one of the verdicts)
    repeat               failed            (as run)      its candidate: repeat-failed
    repeat               broke-constraint  crash         its candidate: repeat-failed
    repeat               measured          repeat        its candidate: ask the policy again once
                                                         none of its repeats is still running
    candidate, rebase    keep              keep          commit onto the best, move the branch;
                                                         with a holdout, watch it (-> diverged);
                                                         a hub contributor claims it
    candidate, rebase    keep-stale        rebased       replay onto the newer best as a `rebase`
                                                         row (discard if it conflicts, repeats an
                                                         earlier tree, or the run is out of room);
                                                         never for a tree node's child (node_parent
                                                         set): it is kept as it was measured
    candidate, rebase    discard           discard       tell the agent
    candidate, rebase    more              pending       add a `repeat` row (of it or of the best)
    candidate, rebase    no-verdict        discard       tell the agent (twice max_runs repeats)
    candidate, rebase    repeat-failed     discard       tell the agent (only while pending)
    candidate, rebase    diverged          discard       a keep whose holdout worsened beyond its
                                                         noise, with on_divergence = "revert":
                                                         the branch and the best go back
    any                  interrupted       interrupted   nothing: a resumed run measures it again

`TRANSITIONS` (at the end of this module) is that table as data; `Judge.apply` is the only place a judged status is
written. The status a finished evaluation reports is read in one function, `evaluation_status`.

Besides the table: `remeasure_best` measures the best again when the policy asks (drift watch:
at intervals, and once on resume); `adopt` adds a hub's best as a `baseline`-kind row; the
holdout value an evaluation computed is written into the row's decision record with its
measurement, and carried into the verdict's record.

Order is crash safety: a kept commit is pinned and its row written before the branch moves; a
repeat's or rebase's row is written (and pinned) before it is queued.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .config import TargetSpec
from .errors import AutoresearchError
from .evaluation import EvalResult
from .evaluation import Outcome as EvalOutcome
from .experiment import Kind, Outcome, Proposal, Status
from .ledger import Experiment
from .metrics import tail_lines
from .policies import FirstRun, Policy, PolicyContext, Verdict
from .state import RunState
from .summary import ReportedBest, divergence, format_best, holdout_of, holdout_refs, report_best

if TYPE_CHECKING:
    from .hub.contributor import HubContributor
    from .pruning import Pruner


class RunStopped(AutoresearchError):
    """The run ended for a reason the user must hear about (baseline failed, agent keeps failing)."""


class AgentFailing(RunStopped):
    """The agent failed `max_consecutive_errors` times in a row: a fault of the agent, not of the
    target (a comparison records it as that organisation's failure and goes on)."""


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
    DIVERGED = "diverged"                    # kept, then reverted: the holdout got worse
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class Transition:
    status: Status | None      # None: the status the evaluation reported
    action: Callable[..., None]  # the Judge method that follows the write
    by_action: bool = False    # the action writes the status itself, after git (keep, rebase)


#: an evaluation's outcome as a status (MEASURED is not here: the policy decides)
_STATUS_OF = {EvalOutcome.CRASH: Status.CRASH, EvalOutcome.TIMEOUT: Status.TIMEOUT,
              EvalOutcome.OVER_BUDGET: Status.OVER_BUDGET, EvalOutcome.INVALID: Status.INVALID,
              EvalOutcome.PRUNED: Status.PRUNED, EvalOutcome.INTERRUPTED: Status.INTERRUPTED}


def evaluation_status(res: EvalResult) -> Status | None:
    """How an evaluation ended: None when it measured (the judge decides the status), else
    the status it ended in. The one place that reads `EvalResult.outcome`."""
    return None if res.outcome == EvalOutcome.MEASURED else _STATUS_OF[res.outcome]


def _first_run(decision: dict[str, Any] | None) -> FirstRun | None:
    """The `first_run` a decision record carries (a policy's evidence, kept by the judge)."""
    f = (decision or {}).get("first_run")
    try:
        var = f.get("var")
        return FirstRun(float(f["effect"]), float(f["sigma"]), int(f["best_runs"]),
                        float(var) if isinstance(var, (int, float)) else None)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


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
                 driver: Driver, observe: Callable[[Proposal, Outcome], None], seed: int = 0,
                 slots: int = 1, say: Callable[[str], None] | None = None):
        self.state = state
        self.policy = policy
        self.spec = spec
        self.git = git
        self.driver = driver
        self.observe = observe
        self.seed = seed
        self.slots = slots                            # the executor's (baseline runs at once)
        self.say = say or (lambda text: None)         # a line for the user (the reporter)
        self.tag = state.tag
        self.hub: HubContributor | None = None        # contributor mode: kept rows are claims
        self.stop_reason: str | None = None           # on_divergence = "stop" fired
        self.proposals: dict[int, Proposal] = {}      # experiment id -> proposal, until told
        self.feedback: list[str] = []                 # for the agent's next context
        # each judged candidate's first run (a policy's `first_run` evidence), for its prior
        self.first_runs: dict[int, FirstRun] = {
            e.id: f for e in state.rows.values() if (f := _first_run(e.decision)) is not None}

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
        elif res.holdout is not None:   # recorded with the measurement; the verdict carries it
            self.apply(e, Event.MEASURED, metric=res.metric, reason="measured",
                       decision={"holdout": res.holdout}, **fields)
        else:
            self.apply(e, Event.MEASURED, metric=res.metric, reason="measured", **fields)

    def on_fault(self, e: Experiment, reason: str) -> None:
        """The executor lost the job (a worker died, a node vanished): a crash."""
        self.apply(e, Event.FAILED, Status.CRASH, reason=reason, finished=time.time(), pid=None)

    def context(self) -> PolicyContext:
        return PolicyContext(self.spec.direction, self.spec.policy, self.state.replicate_groups(),
                             list(self.first_runs.values()), self.state.seeded_groups())

    def decide(self, cand: Experiment) -> None:
        """Ask the policy about a pending candidate; the verdict is an event of the table."""
        inc = self.state.incumbent
        assert inc is not None
        d = self.policy.decide(self.state.sample(cand), self.state.sample(inc), self.context())
        record = {"verdict": d.verdict.value, "reason": d.reason, "evidence": d.evidence,
                  "at": time.time(), "against": inc.seq}
        if (h := holdout_of(cand)) is not None:
            record["holdout"] = h
        first = d.evidence.get("first_run") or (cand.decision or {}).get("first_run")
        if (f := _first_run({"first_run": first})) is not None:  # kept in every later record
            record["first_run"] = first
            self.first_runs.setdefault(cand.id, f)
        if d.verdict == Verdict.MORE:
            if len(self.state.repeats_of(cand.id)) >= 2 * max(1, self.spec.policy.max_runs):
                self.apply(cand, Event.NO_VERDICT, reason="no verdict within the run cap",
                           decision=record)
            else:
                self.apply(cand, Event.MORE, reason=d.reason, decision=record,
                           then={"who": inc if d.rerun == "incumbent" else cand})
        elif d.verdict == Verdict.KEEP:
            # a tree search's child was measured as a whole: keep it as it is
            stale = cand.parent != inc.commit_sha and cand.node_parent is None
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
        record: dict[str, Any] = {"verdict": "keep", "reason": "baseline", "at": time.time()}
        if (h := holdout_of(e)) is not None:
            record["holdout"] = h
        self.state.update(e, reason="baseline", decision=record)
        self.state.incumbent = e
        if e is not self.state.baseline and e.commit_sha:
            self.git.set_branch(self.tag, e.commit_sha)   # a hub best, adopted
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
        if cand.kind == Kind.BASELINE:
            if cand is self.state.incumbent:
                self.top_up_baseline()   # a deterministic metric stops after two that agree
        elif cand.status == Status.PENDING and not self.repeats_running(cand):
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
        sample = self.state.sample(cand)
        est = self.policy.estimate(sample, ctx)
        record["estimate"] = est.to_dict()
        delta = est.mean - self.policy.estimate(self.state.sample(inc), ctx).mean
        message = (f"{self.spec.metric} {format_best(est.mean, est.sem, est.n)} ({delta:+.6f}): "
                   f"{cand.description}\n\n"
                   f"autoresearch {self.tag} experiment #{cand.seq}, proposed by {cand.agent}")
        # the kept commit says what was tried and what it scored; same tree and parent
        kept = self.git.commit_tree(cand.tree_sha, inc.commit_sha, message)
        self.git.pin(self.tag, cand.seq, kept)
        self.state.update(cand, status=Status.KEEP, reason=fields["reason"], decision=record,
                          commit_sha=kept)
        self.git.set_branch(self.tag, kept, expect=inc.commit_sha)
        self.state.incumbent = cand
        if self.spec.holdout and self._watch_holdout(cand, inc):
            return
        self._tell_and_finish(cand, fields)
        if self.hub is not None:
            self.hub.kept(kept, inc.commit_sha, est.mean, sample.values, cand.description)

    def _watch_holdout(self, kept: Experiment, previous: Experiment) -> bool:
        """The Goodhart guard after a keep: the holdout along the kept chain. True when the
        keep was reverted (a `diverged` transition, which finishes it)."""
        chain = [e for e in self.state.kept_chain() if e.id != kept.id]
        refs = [(r, self.state.sample(r)) for r in holdout_refs(chain)]
        alarm = divergence(self.policy, self.context(), kept, self.state.sample(kept), refs)
        if alarm is None:
            return False
        record = dict(kept.decision or {}, holdout_alarm=alarm)
        text = (f"holdout divergence at #{kept.seq}: {self.spec.metric} improved by "
                f"{alarm['validation_change']:+.6g} while the holdout worsened by "
                f"{alarm['holdout_change']:+.6g} (beyond its noise, {alarm['threshold']:.3g}) "
                f"against #{alarm['against']}; on_divergence = {self.spec.on_divergence}")
        self.say(text)
        if self.spec.on_divergence == "revert":
            self.apply(kept, Event.DIVERGED, reason=f"reverted: {text}", decision=record,
                       then={"previous": previous})
            return True
        self.state.update(kept, decision=record)
        if self.spec.on_divergence == "stop":
            self.stop_reason = text
        return False

    def _revert(self, kept: Experiment, fields: dict[str, Any], previous: Experiment) -> None:
        """The row says discard (written first); then the branch and the best go back."""
        assert previous.commit_sha and kept.commit_sha
        self.git.set_branch(self.tag, previous.commit_sha, expect=kept.commit_sha)
        self.state.incumbent = previous
        self._tell_and_finish(kept, fields)

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
            agent=cand.agent, role=cand.role,
            description=f"{cand.description} (rebased onto #{inc.seq})", status=Status.RUNNING,
            candidate_of=cand.id, params=cand.params, seed=self.seed, code_lines=self.driver.code_lines(new))
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
            agent=of.agent, role=of.role, description=description, status=Status.RUNNING,
            candidate_of=cand.id, code_lines=of.code_lines, params=None)
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
        if valid >= needed or self.baseline_complete():
            return True
        # flaky re-measurements get one more try each; past that, go on with what there is
        return running == 0 and (valid + failed >= 2 * needed or not self.driver.room())

    def top_up_baseline(self) -> None:
        """Schedule the baseline measurements still missing (also after a restart)."""
        base = self.state.incumbent
        if base is None or base.kind != Kind.BASELINE or self.baseline_complete():
            return
        needed = self.policy.baseline_runs(self.spec.policy)
        valid, running, failed = self.baseline_counts()
        # one run per slot at a time: a deterministic metric stops after two that agree
        for _ in range(min(needed - valid, self.slots) - running):
            if valid + running + failed >= 2 * needed or not self.driver.room():
                break
            self.add_repeat(base, base, "re-measure the baseline (noise estimate)")
            running += 1

    def baseline_complete(self) -> bool:
        """Do the baseline's runs so far suffice (the policy says; a deterministic metric
        needs two that agree)?"""
        assert self.state.incumbent is not None
        return self.policy.baseline_complete(self.state.sample(self.state.incumbent).values,
                                             self.spec.policy)

    def remeasure_best(self, resumed: bool = False) -> None:
        """Measure the best again when the policy asks (drift watch: at intervals, on resume),
        unless a run of its code is already queued or running."""
        inc = self.state.incumbent
        if inc is None or not self.driver.room() or (
                inc.kind == Kind.BASELINE and not self.baseline_ready()):
            return
        if self.policy.remeasure_best(self.state.sample(inc), self.state.next_seq,
                                      self.spec.policy, resumed=resumed) \
                and not self.state.busy(inc.tree_sha):
            why = "on resume" if resumed else "at its interval"
            self.add_repeat(inc, inc, f"re-measure best #{inc.seq} {why} (drift watch)")

    def sync_hub(self, hub: HubContributor) -> None:
        """Contributor mode, after each wait: the hub's verdicts become the agent's feedback; a
        new hub best is adopted (`adopt`)."""
        inc = self.state.incumbent
        news = hub.sync(inc.commit_sha if inc else None)
        self.feedback.extend(news.feedback)
        if news.best is not None:
            self.adopt(news.best, news.description)

    def adopt(self, commit: str, description: str) -> None:
        """A hub's best this run lacks is measured here as a `baseline`-kind row; once measured
        it is the best (candidates proposed against the old one are rebased onto it when they
        win)."""
        tree = self.git.tree_of(commit)
        if tree in self.state.trees:
            return
        e = self.state.add(kind=Kind.BASELINE, parent=None, commit_sha=commit, tree_sha=tree,
                           agent="hub", description=description, status=Status.RUNNING,
                           seed=self.seed, code_lines=self.driver.code_lines(commit))
        self.git.pin(self.tag, e.seq, commit)
        self.driver.enqueue(e)

    def reported(self) -> ReportedBest | None:
        """The run's one reported best (summary.ReportedBest), from memory."""
        inc, base = self.state.incumbent, self.state.baseline
        if inc is None or base is None:
            return None
        return report_best(self.policy, self.context(), inc, self.state.sample(inc), base,
                           self.state.sample(base))

    def value_of(self, e: Experiment) -> float | None:
        """An experiment's value as the run reports it: the policy's estimate over its code's
        runs (results.tsv's kept rows, and every row of the original format)."""
        sample = self.state.sample(e)
        return self.policy.estimate(sample, self.context()).mean if sample.values else None

    def values(self, original: bool) -> dict[int, float]:
        """Reported values by id for results.tsv: of kept rows (of every row but repeats in
        the original format)."""
        return {e.id: v for e in self.state.rows.values()
                if (e.status == Status.KEEP or (original and e.kind != Kind.REPEAT))
                and e.metric is not None and (v := self.value_of(e)) is not None}

    def resume_pending(self, resumed: bool = False) -> None:
        """After a restart: schedule missing baseline runs, re-measure the best (`resumed`:
        the run had rows before this process), judge what was left pending."""
        self.top_up_baseline()
        if resumed:
            self.remeasure_best(resumed=True)
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

    def pruning_hook(self, pruner: Pruner | None,
                     e: Experiment) -> Callable[[float, float], str | None] | None:
        """What stops e early (--prune): its curve against the best's curves, or None."""
        inc = self.state.incumbent
        if pruner is None or e.kind not in (Kind.CANDIDATE, Kind.REBASE) or inc is None:
            return None
        refs = [m.curve for m in self.state.measurements(inc.tree_sha) if m.curve]
        if not refs:
            return None
        return pruner.watch([[(p, v) for p, v in c] for c in refs], self.noise()).report

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
    Event.DIVERGED: Transition(Status.DISCARD, Judge._revert),
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
