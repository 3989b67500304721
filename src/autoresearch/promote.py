"""Scale promotion: replay a run's kept changes at a larger scale, keep the ones that transfer.

`autoresearch promote --from TAG --scale NAME` measures, at the scale NAME of autoresearch.toml's
[scales] (its env, budget and timeout), these arms:

    baseline     the commit run TAG started from
    best         run TAG's final best: every kept change
    without #k   the best with kept change #k left out (leave-one-out), one arm per kept change,
                 built with the ratchet's three-way merge (the change's diff reversed onto the
                 best)
    after #k     the run's own best after change #k: only for a change that cannot be left out
                 (later keeps rewrote its lines: its `without` row is `invalid` and says so),
                 which is then measured added one by one, after #k against the one before it

Leave-one-out (rather than adding every change one by one onto the baseline) measures each change
where it will live: beside all the others, so an effect that only shows together with the later
changes is credited, and the arms number one per change plus two.

Each arm is measured `repeats` times (default: the policy's baseline runs, at least 2), round by
round across the slots, so that a drift of the machine hits every arm alike. Per kept change the
report sets its effect at the run's scale (from run TAG's ledger: its runs against the runs of
the best it was kept on) beside its effect at scale NAME (the best against the best without it),
each with a 95% interval from the local noise of its scale (policies/noise.py), and a verdict:

    transfers    the interval at scale NAME lies above `min_effect` (better by more than it)
    does not     the interval lies below `min_effect` (with 0: the change makes it worse)
    unclear      otherwise, or an arm failed to measure

The changes that transfer are replayed in their order onto the baseline (one commit each; else
the best with the others reverted; else the run's own best after the longest run of transferring
changes from its first), and that subset is measured
afresh, `repeats` runs of its own: when it is better than the baseline beyond `min_effect` it is
kept and the branch autoresearch/TAG-NAME moves to it; otherwise the branch stays at the baseline.

Everything is in the ledger: a promotion is a run of its own (tag `TAG-NAME`, recorded with its
source and scale) whose rows are the arms (the first run of an arm is a `candidate`, its other
runs `repeat`s; the subset a `keep` or a `discard` with the report in its decision), so `status`,
`log`, `show` and the dashboard show it. The plan is rebuilt from run TAG and git at every start
and matched to the rows by their recorded arm: a promotion killed at any point resumes where it
stood (runs left running are measured again), and one that finished prints its report again.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from scipy import stats

from .config import CONFIG_NAME, Target, spec_from_text
from .errors import ConfigError
from .evaluation import EvalResult
from .executors import LocalExecutor
from .experiment import Kind, Status
from .judge import RunStopped, evaluation_status
from .ledger import MEASURED, Experiment, Ledger
from .policies import DEFAULT_POLICY, make_policy
from .policies.noise import local_noise
from .proposals import LineCounter
from .ratchet import Ratchet
from .session import Session
from .state import RunState
from .summary import kept_order

CONFIDENCE = 0.95    # two-sided level of every interval in the report
TRANSFERS, DOES_NOT, UNCLEAR = "transfers", "does not", "unclear"


# == the report, as data ===========================================================================
@dataclass
class Effect:
    """How much better a change makes the metric (positive: better, in the metric's units), with
    its interval; None where it could not be measured."""

    value: float | None = None
    low: float | None = None
    high: float | None = None
    runs: tuple[int, int] = (0, 0)        # runs with the change, runs without it

    def text(self) -> str:
        if self.value is None:
            return "—"
        if self.low is None or self.high is None:
            return f"{self.value:+.6g} (no noise estimate)"
        return f"{self.value:+.6g} [{self.low:+.6g}, {self.high:+.6g}]"

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "low": self.low, "high": self.high, "runs": list(self.runs)}


@dataclass
class ArmSummary:
    """One arm at the promotion's scale: its first row, the mean of its valid runs, counts."""

    seq: int | None
    mean: float | None
    runs: int
    failed: int
    description: str


@dataclass
class ChangeReport:
    seq: int                    # the kept experiment in the source run
    description: str
    small: Effect               # at the source run's scale (its ledger)
    large: Effect               # at the promotion's scale (leave-one-out)
    verdict: str                # TRANSFERS, DOES_NOT or UNCLEAR
    why: str = ""               # what the verdict rests on, or why there is none

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "description": self.description, "small": self.small.to_dict(),
                "large": self.large.to_dict(), "verdict": self.verdict, "why": self.why}


@dataclass
class PromotionReport:
    source: str
    tag: str
    scale: str
    source_scale: str | None
    metric: str
    direction: str
    min_effect: float
    repeats: int
    arms: dict[str, ArmSummary] = field(default_factory=dict)     # by arm key
    changes: list[ChangeReport] = field(default_factory=list)
    subset: list[int] = field(default_factory=list)        # source seqs that transfer
    subset_vs_baseline: Effect | None = None
    subset_vs_best: Effect | None = None
    promoted: bool = False
    branch: str = ""
    commit: str | None = None
    note: str = ""             # why the branch did not move, when it did not

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "tag": self.tag, "scale": self.scale,
                "source_scale": self.source_scale, "metric": self.metric,
                "direction": self.direction, "min_effect": self.min_effect,
                "repeats": self.repeats,
                "arms": {k: dataclasses.asdict(a) for k, a in self.arms.items()},
                "changes": [c.to_dict() for c in self.changes], "subset": self.subset,
                "subset_vs_baseline": self.subset_vs_baseline.to_dict()
                if self.subset_vs_baseline else None,
                "subset_vs_best": self.subset_vs_best.to_dict() if self.subset_vs_best else None,
                "promoted": self.promoted, "branch": self.branch, "commit": self.commit,
                "note": self.note}


def effect(with_values: list[float], without_values: list[float], groups: list[list[float]],
           direction: str, floor: float = 0.0) -> Effect:
    """The improvement `with` brings over `without` (positive: better), with its interval from
    the local noise (policies/noise.local_noise) at the level of `with`."""
    if not with_values or not without_values:
        return Effect(runs=(len(with_values), len(without_values)))
    m_with = sum(with_values) / len(with_values)
    m_without = sum(without_values) / len(without_values)
    value = (m_without - m_with) if direction == "minimize" else (m_with - m_without)
    runs = (len(with_values), len(without_values))
    sigma, df = local_noise(groups, m_with, floor)
    if df == 0:
        return Effect(value, runs=runs)
    q = stats.norm.ppf(0.5 + CONFIDENCE / 2) if math.isinf(df) else \
        stats.t.ppf(0.5 + CONFIDENCE / 2, df)
    half = float(q) * sigma * math.sqrt(1 / runs[0] + 1 / runs[1])
    return Effect(value, value - half, value + half, runs)


def verdict_of(e: Effect, min_effect: float) -> str:
    if e.low is None or e.high is None or e.value is None:
        return UNCLEAR
    if e.low == e.high:        # a metric that repeats exactly: the effect is known
        return TRANSFERS if e.value > min_effect else DOES_NOT
    if e.low > min_effect:
        return TRANSFERS
    if e.high < min_effect:
        return DOES_NOT
    return UNCLEAR


# == the plan ==================================================================================
@dataclass
class Change:
    """One kept change of the source run: the kept commit and the best it was kept on."""

    row: Experiment
    commit: str
    parent: str


@dataclass
class Arm:
    key: str                      # "baseline", "best", "without:SEQ", "subset"
    description: str
    commit: str | None
    parent: str | None
    row: Experiment | None = None    # its first row, once added
    changes: list[int] = field(default_factory=list)   # the subset's: source seqs it holds

    def params(self) -> dict[str, Any]:
        return {"promote": {"arm": self.key, **({"changes": self.changes} if self.changes else {})}}


def arm_of(e: Experiment) -> str | None:
    """The arm a promotion row is the first row of (None for repeats and other rows)."""
    if e.kind == Kind.BASELINE and e.seq == 1:
        return "baseline"
    p = (e.params or {}).get("promote")
    return p.get("arm") if isinstance(p, dict) and e.candidate_of is None else None


def kept_changes(ledger: Ledger, ratchet: Ratchet, source: str) -> list[Change]:
    """The source run's kept chain, oldest first; each link's parent must be the previous one."""
    run = ledger.get_run(source)
    assert run is not None
    kept = sorted((e for e in ledger.with_status(source, Status.KEEP) if e.kind != Kind.BASELINE
                   or e.seq != 1), key=kept_order)
    out: list[Change] = []
    prev = run.base_commit
    for e in kept:
        if e.kind == Kind.BASELINE or not e.commit_sha:
            raise ConfigError(f"run '{source}' adopted another best (#{e.seq}: "
                              f"{e.description!r}) — promote replays a run's own kept changes "
                              f"only")
        parent = ratchet.parent_of(e.commit_sha)
        if parent != prev:
            raise ConfigError(f"run '{source}': kept experiment #{e.seq} is not built on the "
                              f"best before it — its kept chain is not linear, so it cannot be "
                              f"replayed")
        out.append(Change(e, e.commit_sha, parent))
        prev = e.commit_sha
    return out


# == the promotion ================================================================================
@dataclass
class PromoteOptions:
    source: str
    scale: str
    tag: str
    budget: float | None = None
    workers: int = 1
    gpus: list[str] | None = None      # one per worker, as for run --gpus
    repeats: int | None = None
    min_effect: float | None = None     # None: the policy's min_effect


class Promotion:
    def __init__(self, target: Target, options: PromoteOptions,
                 say: Callable[[str], None] | None = None):
        self.opt = options
        self.say = say or (lambda text: None)
        self.base_target = target
        self.target = replace(target, spec=target.spec.at_scale(options.scale, target.config_path))
        self.spec = self.target.spec
        if not (target.state_dir / "ledger.db").exists():
            raise ConfigError(f"no runs recorded in {target.root} yet — run the loop first "
                              f"(autoresearch run --scale SMALL), then promote it")
        self.ledger = Ledger(target.state_dir / "ledger.db")
        self.ratchet = Ratchet(target.root)
        src = self.ledger.get_run(options.source)
        if src is None:
            known = ", ".join(r.tag for r in self.ledger.runs() if not r.source) or "none"
            raise ConfigError(f"no run with tag '{options.source}' to promote (known: {known})")
        if src.source:
            raise ConfigError(f"'{options.source}' is itself a promotion (of '{src.source}') — "
                              f"promote the run it came from")
        self.src = src
        mine = self.ledger.get_run(options.tag)
        if mine is not None and (mine.source != options.source or mine.scale != options.scale):
            raise ConfigError(f"tag '{options.tag}' is already taken by another run — give "
                              f"promote another --tag")
        self.policy = make_policy(src.policy or DEFAULT_POLICY)
        settings = self.spec.policy
        self.repeats = options.repeats or max(2, self.policy.baseline_runs(settings))
        if self.repeats < 2:
            raise ConfigError(f"--repeats must be at least 2 (got {self.repeats}): an interval "
                              f"needs two runs of an arm")
        self.min_effect = options.min_effect if options.min_effect is not None \
            else settings.min_effect
        self.changes = kept_changes(self.ledger, self.ratchet, options.source)
        if not self.changes:
            raise ConfigError(f"run '{options.source}' kept no change — there is nothing to "
                              f"promote")
        self._check_same_target()
        self.session = Session(self.target, self.ledger, self.ratchet, options.tag,
                               agent_name="promote", policy_name=self.policy.name,
                               budget=options.budget, seed=0, say=self.say, scale=options.scale,
                               source=options.source)
        self.lines = LineCounter(self.ratchet, self.session.editable)
        self.executor = LocalExecutor(self.ratchet, workers=options.workers, gpus=options.gpus)
        self.state: RunState | None = None
        self.arms: dict[str, Arm] = {}
        self.in_flight: dict[int, tuple[Experiment, Future[EvalResult]]] = {}
        self._pids: list[tuple[Experiment, int]] = []

    def _check_same_target(self) -> None:
        """The toml on disk may differ from the one run TAG started with in [scales] only: the
        commands and the metric must be the ones its changes were measured with."""
        base = self.src.base_commit
        text = self.ratchet.read_files(base, [CONFIG_NAME]).get(CONFIG_NAME)
        if text is None:
            raise ConfigError(f"run '{self.opt.source}' started from a commit without "
                              f"{CONFIG_NAME} — it cannot be promoted")
        then = spec_from_text(text, self.base_target.config_path)
        now = self.base_target.spec
        skip = {"scales"}
        if then.model_dump(exclude=skip) != now.model_dump(exclude=skip):
            diff = sorted(k for k in now.model_dump(exclude=skip)
                          if then.model_dump().get(k) != now.model_dump().get(k))
            raise ConfigError(f"{self.base_target.config_path} differs from the version run "
                              f"'{self.opt.source}' was measured with in {', '.join(diff)} (only "
                              f"[scales] may change) — restore those keys to promote it")

    # -- the arms ---------------------------------------------------------------------------
    def _plan(self) -> list[Arm]:
        """baseline, best and one leave-one-out arm per change (commits built when missing)."""
        best = self.changes[-1].commit
        arms = [Arm("baseline", "baseline", self.src.base_commit, None),
                Arm("best", f"the best of {self.opt.source} (#{self.changes[-1].row.seq}), "
                            f"every kept change", best, self.src.base_commit)]
        for c in self.changes:
            arms.append(Arm(f"without:{c.row.seq}", f"the best without #{c.row.seq}: "
                            f"{c.row.description}", None, best))
        return arms

    def _chain_arm(self, i: int) -> Arm:
        """The run's best after its i-th kept change (0: the baseline), as an arm: what a change
        that cannot be left out is measured by, added onto the best before it."""
        if i == 0:
            return self.arms["baseline"]
        if i == len(self.changes):
            return self.arms["best"]
        key = f"upto:{self.changes[i - 1].row.seq}"
        if key not in self.arms:
            c = self.changes[i - 1]
            self.arms[key] = Arm(key, f"the best of {self.opt.source} after #{c.row.seq}: "
                                      f"{c.row.description}", c.commit, c.parent)
        return self.arms[key]

    def _add_arm(self, arm: Arm) -> Experiment:
        """The arm's first row (its commit built and pinned first when it needs one)."""
        assert self.state is not None
        if arm.commit is None and arm.key.startswith("without:"):
            seq = int(arm.key.split(":")[1])
            c = next(c for c in self.changes if c.row.seq == seq)
            arm.commit = self.ratchet.merge_onto(
                c.parent, c.commit, self.changes[-1].commit,
                f"{self.opt.source} best without #{seq}: {c.row.description}\n\n"
                f"autoresearch promote {self.opt.tag}: leave-one-out arm")
            if arm.commit is None:
                return self.state.add(
                    kind=Kind.CANDIDATE, parent=self.changes[-1].commit, commit_sha=None,
                    tree_sha=None, agent="promote", description=arm.description,
                    status=Status.INVALID, params=arm.params(), finished=time.time(),
                    reason=f"#{seq} cannot be dropped cleanly from the best: later kept changes "
                           f"build on its lines (three-way merge conflict)")
        assert arm.commit is not None
        e = self.state.add(kind=Kind.CANDIDATE, parent=arm.parent, commit_sha=arm.commit,
                           tree_sha=self.ratchet.tree_of(arm.commit), agent="promote",
                           description=arm.description, status=Status.RUNNING,
                           params=arm.params(), code_lines=self.lines.count(arm.commit))
        self.ratchet.pin(self.opt.tag, e.seq, arm.commit)
        return e

    def _add_run(self, arm: Arm) -> Experiment:
        """Another run of an arm: a `repeat` row of its first row."""
        assert self.state is not None and arm.row is not None
        first = arm.row
        r = self.state.add(kind=Kind.REPEAT, parent=first.parent, commit_sha=first.commit_sha,
                           tree_sha=first.tree_sha, agent="promote",
                           description=f"run of #{first.seq} ({arm.key}) at scale "
                                       f"{self.opt.scale}",
                           status=Status.RUNNING, candidate_of=first.id,
                           code_lines=first.code_lines)
        self.ratchet.pin(self.opt.tag, r.seq, first.commit_sha or "")
        return r

    def runs_of(self, arm: Arm) -> list[Experiment]:
        assert self.state is not None
        if arm.row is None:
            return []
        return [arm.row, *self.state.repeats_of(arm.row.id)]

    def values(self, arm: Arm) -> list[float]:
        return [r.metric for r in self.runs_of(arm)
                if r.metric is not None and r.status in MEASURED and math.isfinite(r.metric)]

    def _counts(self, arm: Arm) -> tuple[int, int, int]:
        """(valid, running, failed) runs of an arm."""
        rows = self.runs_of(arm)
        valid = len(self.values(arm))
        running = sum(1 for r in rows if r.status == Status.RUNNING)
        return valid, running, len(rows) - valid - running

    def _needs(self, arm: Arm) -> bool:
        """Does the arm want another run started? (A failed run gets one retry each.)"""
        if arm.row is not None and arm.row.status == Status.INVALID:
            return False
        valid, running, failed = self._counts(arm)
        return valid + running < self.repeats and valid + running + failed < 2 * self.repeats

    # -- running -----------------------------------------------------------------------------
    def run(self) -> PromotionReport:
        """Measure every arm, judge the changes, measure and keep the subset; the report."""
        try:
            settings = {"promote": {"repeats": self.repeats, "min_effect": self.min_effect,
                                    "budget": self.session.budget}}
            self.state, _queue = self.session.open(lambda: settings, self.lines.count,
                                                   start=lambda: self.src.base_commit)
            self._keep_settings()
            self._match_rows()
            self.executor.prepare()
            self.session.setup(self.executor.stop_event, None)
            self.session.pin_cache()
            old_term = signal.getsignal(signal.SIGTERM)
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, _raise_interrupt)
            try:
                self._measure([a for k, a in self.arms.items() if k != "subset"])
                self._check_baseline()
                report = self._judge()
                subset = self._subset_arm(report)
                if subset is not None:
                    self._measure([subset])
                self._finish(report, subset)
            except BaseException:
                self._drain()
                raise
            finally:
                if threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGTERM, old_term)
                self.ledger.clear_slots(self.opt.tag)
            return report
        finally:
            self.executor.shutdown()
            self.session.close(None)
            self.ratchet.close()

    def _keep_settings(self) -> None:
        """A resumed promotion goes on with the settings it was made with (recorded on its
        first row): its runs and verdicts so far rest on them."""
        assert self.state is not None and self.state.baseline is not None
        made = (self.state.baseline.params or {}).get("promote", {})
        for flag, given, name in (("--repeats", self.opt.repeats, "repeats"),
                                  ("--min-effect", self.opt.min_effect, "min_effect")):
            if name not in made:
                continue
            if given is not None and given != made[name]:
                raise RunStopped(f"promotion '{self.opt.tag}' was made with {flag} "
                                 f"{made[name]:g} — resume it with that (or without {flag}), "
                                 f"or give another --tag for a new one")
            setattr(self, name, made[name])
        if made.get("budget", self.session.budget) != self.session.budget:
            raise RunStopped(f"promotion '{self.opt.tag}' was measured with a budget of "
                             f"{made['budget']:g}s, not {self.session.budget:g}s — resume it "
                             f"with --budget {made['budget']:g}, or give another --tag")

    def _check_baseline(self) -> None:
        """Without a measurement of the baseline at the scale there is nothing to compare: stop
        with the reason of its last run (a larger model out of memory, say)."""
        arm = self.arms["baseline"]
        if self.values(arm):
            return
        last = self.runs_of(arm)[-1]
        raise RunStopped(f"the baseline of '{self.opt.source}' failed at scale {self.opt.scale}: "
                         f"{last.reason} — fix the target or the scale's settings; log: "
                         f"{last.log_path}")

    def _match_rows(self) -> None:
        assert self.state is not None
        rows = {arm_of(e): e for e in self.state.rows.values() if arm_of(e)}
        for arm in self._plan():
            arm.row = rows.get(arm.key)
            if arm.row is not None and arm.row.commit_sha:
                arm.commit = arm.row.commit_sha
            self.arms[arm.key] = arm
        for i, c in enumerate(self.changes, 1):
            # a change that cannot be left out is measured added one by one instead
            without = self.arms[f"without:{c.row.seq}"]
            if without.row is None:
                without.row = self._add_arm(without)
            if without.row.status == Status.INVALID:
                for arm in (self._chain_arm(i - 1), self._chain_arm(i)):
                    arm.row = arm.row or rows.get(arm.key)
        if "subset" in rows:
            e = rows["subset"]
            changes = (e.params or {}).get("promote", {}).get("changes", [])
            self.arms["subset"] = Arm("subset", e.description, e.commit_sha, e.parent, e,
                                      changes)
        for arm in self.arms.values():
            if arm.row is None:
                arm.row = self._add_arm(arm) if arm.key != "baseline" else None

    def _measure(self, arms: list[Arm]) -> None:
        """Run the arms round by round until each has `repeats` valid runs (or has failed as
        often again); rows left running (a new arm's first row, a resumed run's) go first."""
        assert self.state is not None
        pending = sorted((r for a in arms for r in self.runs_of(a) if r.status == Status.RUNNING),
                         key=lambda r: r.seq)
        while True:
            free = self.executor.free_slots()
            while free:
                if pending:
                    e = pending.pop(0)
                else:
                    arm = self._next_arm(arms)
                    if arm is None:
                        break
                    e = self._add_run(arm)
                self._submit(e, free.pop(0))
            if not self.in_flight:
                return
            wait([f for _, f in self.in_flight.values()], timeout=1.0,
                 return_when=FIRST_COMPLETED)
            self.session.record_pids(self.state, self._pids)
            for slot, fut in self.executor.collect():
                e, _ = self.in_flight.pop(slot)
                self.session.check_ledger_untouched(e)
                self.ledger.set_slot(self.opt.tag, slot, None)
                self._record(e, fut)

    def _next_arm(self, arms: list[Arm]) -> Arm | None:
        """The arm with the fewest runs so far that wants one (round by round, in plan order)."""
        wanting = [a for a in arms if a.row is not None and self._needs(a)]
        if not wanting:
            return None
        return min(wanting, key=lambda a: sum(self._counts(a)[:2]))

    def _submit(self, e: Experiment, slot: int) -> None:
        assert self.state is not None
        seed = self.state.runs_before(e.tree_sha, e.id)
        job = self.session.job(e, seed)
        Path(job.log_path).unlink(missing_ok=True)
        info = self.executor.slot_info(slot)
        self.state.update(e, status=Status.RUNNING, started=time.time(), slot=slot, seed=seed,
                          gpu=info.gpu, log_path=job.log_path)
        self.ledger.set_slot(self.opt.tag, slot, e.id, info.gpu)
        fut = self.executor.submit(job, slot=slot, on_start=lambda pid: self._pids.append((e, pid)))
        self.in_flight[slot] = (e, fut)
        self.say(f"#{e.seq} {e.description}")

    def _record(self, e: Experiment, fut: Future[EvalResult]) -> None:
        """A finished run: its measurement, or how it failed (never judged by a policy)."""
        assert self.state is not None
        try:
            res = fut.result()
        except Exception as exc:  # an executor fault
            self.state.update(e, status=Status.CRASH, reason=f"executor error: {exc}",
                              finished=time.time(), pid=None)
            return
        fields: dict[str, Any] = dict(
            wall_time=res.wall_time, peak_memory_mb=res.peak_memory_mb, exit_code=res.exit_code,
            log_path=res.log_path, metrics=res.metrics, curve=res.curve or None,
            started=res.started or e.started, finished=res.finished or time.time(), pid=None)
        status = evaluation_status(res)
        violation = next((r for c in self.spec.parsed_constraints
                          if (r := c.check(res.metrics))), None) if status is None else None
        if status is not None:
            self.state.update(e, status=status, reason=res.reason, **fields)
        elif violation:
            self.state.update(e, status=Status.CRASH, reason=violation, **fields)
        else:
            measured = {Kind.BASELINE: Status.KEEP, Kind.REPEAT: Status.REPEAT}.get(
                e.kind, Status.PENDING)
            decision = {"verdict": "keep", "reason": "baseline", "at": time.time()} \
                if e.kind == Kind.BASELINE else None
            if res.holdout is not None:
                decision = dict(decision or {}, holdout=res.holdout)
            self.state.update(e, status=measured, metric=res.metric,
                              reason="baseline" if e.kind == Kind.BASELINE else
                              f"measured at scale {self.opt.scale}", decision=decision, **fields)
            if e.kind == Kind.BASELINE:
                self.state.incumbent = e
        self.say(f"#{e.seq} {e.status.value} {e.metric if e.metric is not None else e.reason}")

    def _drain(self) -> None:
        """Ctrl-C: stop the runs; each is recorded as interrupted (measured again on resume)."""
        self.executor.interrupt()
        assert self.state is not None
        for e, fut in list(self.in_flight.values()):
            try:
                fut.result(timeout=30)
            except Exception:
                pass
            self.state.update(e, status=Status.INTERRUPTED, finished=time.time(), pid=None,
                              reason="the promotion stopped before this run was recorded")
        self.in_flight.clear()

    # -- judging -----------------------------------------------------------------------------
    def _groups(self) -> list[list[float]]:
        assert self.state is not None
        return self.state.replicate_groups()

    def _judge(self) -> PromotionReport:
        """Each change's effect at both scales and its verdict."""
        assert self.state is not None
        direction = self.spec.direction
        floor = self.spec.policy.noise_floor
        report = PromotionReport(self.opt.source, self.opt.tag, self.opt.scale, self.src.scale,
                                 self.spec.metric, direction, self.min_effect, self.repeats,
                                 branch=f"autoresearch/{self.opt.tag}")
        for key, arm in self.arms.items():
            report.arms[key] = self._summary(arm)
        src_groups = self.ledger.replicate_groups(self.opt.source)
        best = self.values(self.arms["best"])
        prev_values = self._source_values(self.src.base_commit)
        for c in self.changes:
            kept_values = self._source_values(c.commit, c.row)
            small = effect(kept_values, prev_values, src_groups, direction, floor)
            prev_values = kept_values
            arm = self.arms[f"without:{c.row.seq}"]
            how = "left out of the best"
            if arm.row is not None and arm.row.status == Status.INVALID:
                i = self.changes.index(c) + 1
                large = effect(self.values(self._chain_arm(i)),
                               self.values(self._chain_arm(i - 1)), self._groups(), direction,
                               floor)
                how = "added onto the best before it (it cannot be left out cleanly)"
            else:
                large = effect(best, self.values(arm), self._groups(), direction, floor)
            v = verdict_of(large, self.min_effect)
            why = {TRANSFERS: f"better by more than {self.min_effect:g} at scale "
                              f"{self.opt.scale}",
                   DOES_NOT: f"not better by {self.min_effect:g} at scale {self.opt.scale}",
                   UNCLEAR: "the interval at scale " + self.opt.scale + " holds "
                            f"{self.min_effect:g}: more --repeats would tell"}[v] + f"; {how}"
            if large.value is None:
                why = "an arm did not measure (see its runs' reasons)"
            elif large.low is None:
                why = "no noise estimate (every arm measured once)"
            report.changes.append(ChangeReport(c.row.seq, c.row.description, small, large, v, why))
        report.subset = [c.seq for c in report.changes if c.verdict == TRANSFERS]
        return report

    def _summary(self, arm: Arm) -> ArmSummary:
        vals = self.values(arm)
        return ArmSummary(arm.row.seq if arm.row else None,
                          sum(vals) / len(vals) if vals else None, len(vals),
                          self._counts(arm)[2], arm.description)

    def _source_values(self, commit: str, row: Experiment | None = None) -> list[float]:
        """Every valid run of a commit's code in the source run (its tree)."""
        tree = row.tree_sha if row is not None else self.ratchet.tree_of(commit)
        return [m.metric for m in self.ledger.measurements(self.opt.source, tree)
                if m.metric is not None and math.isfinite(m.metric)]

    def _subset_arm(self, report: PromotionReport) -> Arm | None:
        """The arm of the changes that transfer (built when missing); None when none does."""
        if "subset" in self.arms:
            arm = self.arms["subset"]
            if arm.row is not None and arm.row.status in (Status.KEEP, Status.DISCARD):
                return None      # judged before a restart: nothing to measure
            return arm
        if not report.subset:
            return None
        commit, how, seqs = self._build_subset(report.subset)
        if commit is None:
            report.note = how
            return None
        report.subset = seqs
        names = ", ".join(f"#{s}" for s in report.subset)
        arm = Arm("subset", f"the changes of {self.opt.source} that transfer to scale "
                            f"{self.opt.scale}: {names} ({how})", commit, self.src.base_commit,
                  changes=list(report.subset))
        arm.row = self._add_arm(arm)
        self.arms["subset"] = arm
        return arm

    def _build_subset(self, seqs: list[int]) -> tuple[str | None, str, list[int]]:
        """(commit, how, the changes it holds): the transferring changes replayed in order onto
        the baseline, one commit each; else the best with the others reverted, newest first;
        else the run's own best after the longest run of transferring changes from its start
        (the later ones are left out). None when not even the first change transfers."""
        keep = [c for c in self.changes if c.row.seq in seqs]
        cur: str | None = self.src.base_commit
        for c in keep:
            assert cur is not None
            cur = self.ratchet.merge_onto(
                c.commit, c.parent, cur,
                f"{c.row.description}\n\nautoresearch promote {self.opt.tag}: #{c.row.seq} of "
                f"{self.opt.source} transfers to scale {self.opt.scale}")
            if cur is None:
                break
        if cur is not None:
            return cur, "replayed onto the baseline", seqs
        cur = self.changes[-1].commit
        for c in reversed([c for c in self.changes if c.row.seq not in seqs]):
            assert cur is not None
            cur = self.ratchet.merge_onto(
                c.parent, c.commit, cur,
                f"revert #{c.row.seq} of {self.opt.source}: {c.row.description}\n\n"
                f"autoresearch promote {self.opt.tag}: it does not transfer to scale "
                f"{self.opt.scale}")
            if cur is None:
                break
        if cur is not None:
            return cur, "the best with the others reverted", seqs
        prefix = []
        for c in self.changes:
            if c.row.seq not in seqs:
                break
            prefix.append(c)
        if prefix:
            return (prefix[-1].commit, f"the run's best after #{prefix[-1].row.seq}: the "
                    f"others do not separate cleanly", [c.row.seq for c in prefix])
        return None, ("the changes that transfer cannot be separated cleanly from the others "
                      "(three-way merge conflicts both ways): the branch stays at the "
                      "baseline"), []

    def _finish(self, report: PromotionReport, subset: Arm | None) -> None:
        """Verdicts into the rows; the subset kept (the branch moves) when it beats the baseline."""
        assert self.state is not None
        base_vals = self.values(self.arms["baseline"])
        best_vals = self.values(self.arms["best"])
        by_seq = {c.seq: c for c in report.changes}
        now = time.time()
        for key, arm in self.arms.items():
            row = arm.row
            if row is None or key in ("baseline", "subset") or row.status != Status.PENDING:
                continue
            if key == "best" or key.startswith("upto:"):
                reason = f"{arm.description}, at scale {self.opt.scale}"
                record: dict[str, Any] = {"promotion": {"arm": key}}
            else:
                c = by_seq[int(key.split(":")[1])]
                reason = (f"#{c.seq} {c.verdict}: {c.large.text()} at scale {self.opt.scale} "
                          f"vs {c.small.text()} at the run's scale")
                record = {"promotion": c.to_dict()}
            self.state.update(row, status=Status.DISCARD, reason=reason,
                              decision={**(row.decision or {}), "verdict": "discard",
                                        "reason": reason, "at": now,
                                        **record})
        arm = self.arms.get("subset")
        if arm is None or arm.row is None:
            if not report.subset:
                report.note = report.note or "no change transfers: the branch stays at the baseline"
            report.commit = self.src.base_commit
            return
        vals = self.values(arm)
        report.subset = arm.changes or report.subset
        report.arms["subset"] = self._summary(arm)
        report.subset_vs_baseline = effect(vals, base_vals, self._groups(),
                                           self.spec.direction, self.spec.policy.noise_floor)
        report.subset_vs_best = effect(vals, best_vals, self._groups(), self.spec.direction,
                                       self.spec.policy.noise_floor)
        row = arm.row
        if row.status == Status.KEEP:
            report.promoted, report.commit = True, row.commit_sha
            return
        if row.status == Status.DISCARD:
            report.note, report.commit = row.reason, self.src.base_commit
            return
        record = {"at": now, "promotion": {"changes": report.subset,
                                           "vs_baseline": report.subset_vs_baseline.to_dict(),
                                           "vs_best": report.subset_vs_best.to_dict()}}
        if verdict_of(report.subset_vs_baseline, self.min_effect) == TRANSFERS:
            reason = (f"verified at scale {self.opt.scale}: "
                      f"{report.subset_vs_baseline.text()} against the baseline")
            self.state.update(row, status=Status.KEEP, reason=reason,
                              decision={**(row.decision or {}), "verdict": "keep",
                                        "reason": reason, **record})
            self.state.incumbent = row
            old = self.ratchet.branch_commit(self.opt.tag)
            self.ratchet.set_branch(self.opt.tag, row.commit_sha or "", expect=old)
            report.promoted, report.commit = True, row.commit_sha
        else:
            reason = (f"not verified at scale {self.opt.scale}: "
                      f"{report.subset_vs_baseline.text()} against the baseline — the branch "
                      f"stays at the baseline")
            self.state.update(row, status=Status.DISCARD, reason=reason,
                              decision={**(row.decision or {}), "verdict": "discard",
                                        "reason": reason, **record})
            report.note, report.commit = reason, self.src.base_commit


def promote(target: Target, options: PromoteOptions,
            say: Callable[[str], None] | None = None) -> PromotionReport:
    """Run (or resume) a promotion; its report. Bad input is one ConfigError before anything
    is written; a failure the user must hear about is RunStopped, as for a run."""
    return Promotion(target, options, say).run()


def _raise_interrupt(signum, frame):  # noqa: ANN001 - a signal handler
    raise KeyboardInterrupt
