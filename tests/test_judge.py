"""The judge's table of transitions, row by row, in-process (milliseconds each).

A real ledger (SQLite in tmp_path) under a real RunState; git and the loop are small fakes that
record what the judge asked of them; the policy is a stub that returns a chosen verdict, so each
case pins the table, not a policy.
"""

from __future__ import annotations

import pytest

from autoresearch.config import parse_spec
from autoresearch.evaluation import EvalResult
from autoresearch.evaluation import Outcome as EvalOutcome
from autoresearch.experiment import Kind, Status
from autoresearch.judge import TRANSITIONS, Event, Judge, RunStopped
from autoresearch.ledger import Ledger
from autoresearch.policies import Decision, Policy, Verdict
from autoresearch.state import RunState


class FakeGit:
    def __init__(self) -> None:
        self.branch = "c0"
        self.pins: dict[int, str] = {}
        self.trees: dict[str, str] = {}
        self.merged: str | None = "merged"
        self.n = 0

    def commit_tree(self, tree: str, parent: str, message: str) -> str:
        self.n += 1
        sha = f"kept{self.n}"
        self.trees[sha] = tree
        self.message = message
        return sha

    def merge_onto(self, commit, old_base, new_base, message):
        return self.merged

    def tree_of(self, commit: str) -> str:
        return self.trees.get(commit, f"tree-of-{commit}")

    def pin(self, tag, seq, commit):
        self.pins[seq] = commit
        return f"refs/autoresearch/{tag}/{seq}"

    def set_branch(self, tag, commit, expect=None):
        assert expect is None or expect == self.branch, "the branch moved under the judge"
        self.branch = commit


class FakeDriver:
    def __init__(self) -> None:
        self.queue: list = []
        self.done: list = []
        self.has_room = True

    def enqueue(self, e, first=False):
        self.queue.insert(0, e) if first else self.queue.append(e)

    def room(self):
        return self.has_room

    def finished(self, e):
        self.done.append((e.seq, e.status))

    def code_lines(self, commit):
        return 7


class Stub(Policy):
    name = "stub"

    def __init__(self, verdict=Verdict.DISCARD, rerun=None):
        self.verdict, self.rerun = verdict, rerun

    def decide(self, candidate, incumbent, ctx):
        return Decision(self.verdict, f"stub says {self.verdict.value}", rerun=self.rerun)


class H:
    """A run whose baseline (#1, tree t0, commit c0, metric 10) is kept."""

    def __init__(self, tmp_path, constraints=(), max_runs=3, base_holdout=None, slots=1,
                 policy=None, **spec_keys):
        self.ledger = Ledger(tmp_path / "ledger.db")
        run = self.ledger.create_run("t", "c0", "score", "minimize", "a", "stub", {})
        self.spec = parse_spec({"editable": ["train.py"], "run": "true", "metric": "score",
                                "constraints": list(constraints),
                                "policy": {"max_runs": max_runs}, **spec_keys},
                               tmp_path / "autoresearch.toml")
        self.state = RunState(self.ledger, run)
        self.git, self.driver, self.told = FakeGit(), FakeDriver(), []
        self.policy = policy or Stub()
        self.said: list[str] = []
        self.judge = Judge(self.state, self.policy, self.spec, self.git, self.driver,
                           lambda p, o: self.told.append(o), seed=0, slots=slots,
                           say=self.said.append)
        self.base = self.state.add(kind=Kind.BASELINE, commit_sha="c0", tree_sha="t0",
                                   status=Status.RUNNING, description="baseline")
        self.judge.on_result(self.base, measured(10.0, vram_mb=1.0, holdout=base_holdout), {})
        self.driver.done.clear()

    def candidate(self, parent="c0", n=1, **fields):
        e = self.state.add(kind=Kind.CANDIDATE, parent=parent, commit_sha=f"c{n}",
                           tree_sha=f"t{n}", status=Status.RUNNING, description=f"cand {n}",
                           **fields)
        self.judge.proposals[e.id] = object()
        return e

    def row(self, e):
        """The ledger's row: memory and storage must agree."""
        return self.ledger.get(e.id)


def measured(metric: float, holdout: float | None = None, **metrics: float) -> EvalResult:
    return EvalResult(EvalOutcome.MEASURED, "", metric, {"score": metric, **metrics}, 1.0, 0.0,
                      0, "", holdout=holdout)


def failed(status: Status, reason: str = "boom") -> EvalResult:
    """An evaluation that ended in `status` (the outcome of the same name)."""
    return EvalResult(EvalOutcome(status.value), reason, None, {}, 1.0, 0.0, 1, "")


@pytest.fixture
def h(tmp_path):
    return H(tmp_path)


def test_every_row_of_the_table_names_an_action_of_the_judge():
    for (kind, event), t in TRANSITIONS.items():
        assert getattr(Judge, t.action.__name__) is t.action, (kind, event)
    for kind in (Kind.CANDIDATE, Kind.REBASE):
        assert {ev for (k, ev) in TRANSITIONS if k == kind} == set(Event)
    for kind in (Kind.BASELINE, Kind.REPEAT):
        assert {ev for (k, ev) in TRANSITIONS if k == kind} == {
            Event.FAILED, Event.BROKE_CONSTRAINT, Event.MEASURED, Event.INTERRUPTED}


def test_a_measured_baseline_is_kept_and_becomes_the_best(h):
    assert h.base.status == Status.KEEP and h.row(h.base).status == Status.KEEP
    assert h.state.incumbent is h.base
    assert h.base.decision["reason"] == "baseline" and h.base.metric == 10.0


@pytest.mark.parametrize("verdict, status, moves", [
    (Verdict.KEEP, Status.KEEP, True),
    (Verdict.DISCARD, Status.DISCARD, False),
])
def test_a_verdict_on_a_measured_candidate(h, verdict, status, moves):
    h.policy.verdict = verdict
    c = h.candidate()
    h.judge.on_result(c, measured(5.0), {"wall_time": 1.0})
    assert c.status == status and h.row(c).status == status and h.row(c).metric == 5.0
    assert (h.git.branch != "c0") == moves
    assert h.told[-1].status == status and h.driver.done == [(c.seq, status)]
    if moves:   # the kept commit is c's tree on top of the best, pinned before the branch moved
        assert h.git.trees[h.git.branch] == "t1" and h.git.pins[c.seq] == h.git.branch
        assert h.state.incumbent is c and c.commit_sha == h.git.branch
        assert c.decision["estimate"]["mean"] == 5.0
        assert "score 5.000000 (-5.000000): cand 1" in h.git.message


@pytest.mark.parametrize("status", [Status.CRASH, Status.TIMEOUT, Status.PRUNED, Status.INVALID])
def test_a_failed_candidate_keeps_the_evaluations_status_and_the_agent_hears(h, status):
    c = h.candidate()
    h.judge.on_result(c, failed(status), {})
    assert h.row(c).status == status and h.row(c).reason == "boom"
    assert h.told[-1].status == status and h.git.branch == "c0"


def test_a_candidate_that_breaks_a_constraint_is_discarded_with_the_bound_named(tmp_path):
    h = H(tmp_path, constraints=["vram_mb <= 100"])
    h.policy.verdict = Verdict.KEEP   # better, but out of bounds: the policy is never asked
    c = h.candidate()
    h.judge.on_result(c, measured(1.0, vram_mb=500.0), {})
    assert h.row(c).status == Status.DISCARD and "vram_mb" in h.row(c).reason
    assert h.git.branch == "c0"


def test_a_failed_baseline_stops_the_run(tmp_path):
    h = H(tmp_path)
    b = h.state.add(kind=Kind.BASELINE, commit_sha="c0", tree_sha="t0", status=Status.RUNNING)
    with pytest.raises(RunStopped, match="baseline .* failed: boom"):
        h.judge.on_result(b, failed(Status.CRASH), {})
    assert h.row(b).status == Status.CRASH


def test_a_baseline_outside_a_constraint_stops_the_run(tmp_path):
    h = H(tmp_path, constraints=["vram_mb <= 100"])
    b = h.state.add(kind=Kind.BASELINE, commit_sha="c0", tree_sha="t0", status=Status.RUNNING)
    with pytest.raises(RunStopped, match="relax the constraint"):
        h.judge.on_result(b, measured(1.0, vram_mb=500.0), {})
    assert h.row(b).status == Status.DISCARD


def test_an_interrupted_experiment_is_only_recorded(h):
    c = h.candidate()
    h.judge.on_result(c, failed(Status.INTERRUPTED, "stopped"), {})
    assert h.row(c).status == Status.INTERRUPTED and not h.told and not h.driver.done


def test_more_adds_a_repeat_of_the_candidate_and_a_second_measurement_decides(h):
    h.policy.verdict, h.policy.rerun = Verdict.MORE, "candidate"
    c = h.candidate()
    h.judge.on_result(c, measured(5.0), {})
    assert h.row(c).status == Status.PENDING
    (r,) = h.driver.queue
    assert r.kind == Kind.REPEAT and r.candidate_of == c.id and r.tree_sha == c.tree_sha
    assert h.git.pins[r.seq] == c.commit_sha
    h.policy.verdict = Verdict.KEEP
    h.judge.on_result(r, measured(6.0), {})
    assert h.row(r).status == Status.REPEAT and h.row(c).status == Status.KEEP
    assert h.told[-1].metric == 5.5     # the agent hears the mean over every run of its code


def test_more_against_the_incumbent_re_measures_the_best(h):
    h.policy.verdict, h.policy.rerun = Verdict.MORE, "incumbent"
    c = h.candidate()
    h.judge.on_result(c, measured(5.0), {})
    (r,) = h.driver.queue
    assert r.tree_sha == "t0" and r.candidate_of == c.id


def test_more_without_room_leaves_the_candidate_pending(h):
    h.policy.verdict = Verdict.MORE
    h.driver.has_room = False
    c = h.candidate()
    h.judge.on_result(c, measured(5.0), {})
    assert h.row(c).status == Status.PENDING and not h.driver.queue and not h.told


def test_more_past_the_run_cap_is_a_discard(tmp_path):
    h = H(tmp_path, max_runs=1)
    h.policy.verdict = Verdict.MORE
    c = h.candidate()
    h.judge.on_result(c, measured(5.0), {})
    for _ in range(2):   # twice max_runs repeats, then no verdict
        r = h.driver.queue.pop()
        h.judge.on_result(r, measured(5.0), {})
    assert h.row(c).status == Status.DISCARD and h.row(c).reason == "no verdict within the run cap"


def test_a_failed_repeat_discards_its_pending_candidate(h):
    h.policy.verdict = Verdict.MORE
    c = h.candidate()
    h.judge.on_result(c, measured(5.0), {})
    r = h.driver.queue.pop()
    h.judge.on_result(r, failed(Status.CRASH), {})
    assert h.row(r).status == Status.CRASH
    assert h.row(c).status == Status.DISCARD and h.row(c).reason == f"repeat #{r.seq} failed: boom"


def test_a_repeat_waits_for_its_siblings_before_the_policy_is_asked_again(h):
    h.policy.verdict = Verdict.MORE
    c = h.candidate()
    h.judge.on_result(c, measured(5.0), {})
    h.judge.add_repeat(c, c, "a second repeat at once")
    first, second = h.driver.queue
    h.policy.verdict = Verdict.KEEP
    h.judge.on_result(first, measured(5.0), {})
    assert h.row(c).status == Status.PENDING      # `second` still runs
    h.judge.on_result(second, measured(5.0), {})
    assert h.row(c).status == Status.KEEP


def test_a_winner_against_an_older_best_is_rebased_and_measured_again_first(h):
    h.policy.verdict = Verdict.KEEP
    newer = h.candidate(n=1)
    h.judge.on_result(newer, measured(5.0), {})
    old = h.candidate(parent="c0", n=2)           # proposed against the baseline
    h.driver.queue.append("something queued before")
    h.judge.on_result(old, measured(4.0), {})
    assert h.row(old).status == Status.REBASED and f"as #{old.seq + 1}" in h.row(old).reason
    rb = h.driver.queue[0]
    assert rb.kind == Kind.REBASE and rb.candidate_of == old.id and rb.commit_sha == "merged"
    assert rb.parent == newer.commit_sha and h.git.pins[rb.seq] == "merged"
    assert h.judge.proposals[rb.id] is not None   # the agent hears how the rebased one ends


def test_a_rebase_that_conflicts_is_discarded_and_the_agent_told_why(h):
    h.policy.verdict = Verdict.KEEP
    h.judge.on_result(h.candidate(n=1), measured(5.0), {})
    h.git.merged = None
    old = h.candidate(parent="c0", n=2)
    h.judge.on_result(old, measured(4.0), {})
    assert h.row(old).status == Status.DISCARD and "conflicts" in h.row(old).reason
    assert "Re-propose" in h.judge.feedback[-1]


def test_memory_and_ledger_agree_after_every_transition(h):
    h.policy.verdict, h.policy.rerun = Verdict.MORE, "candidate"
    c = h.candidate()
    h.judge.on_result(c, measured(5.0), {"curve": [[0.5, 6.0]], "metrics": {"x": float("inf")}})
    h.policy.verdict = Verdict.KEEP
    h.judge.on_result(h.driver.queue.pop(), measured(4.0), {})
    for e in h.state.rows.values():
        assert h.ledger.get(e.id) == e


def test_a_job_the_executor_lost_is_a_crash_the_agent_hears_about(h):
    c = h.candidate()
    h.judge.on_fault(c, "executor error: NodeDied: gone")
    assert h.row(c).status == Status.CRASH and h.row(c).reason.startswith("executor error")
    assert h.told[-1].status == Status.CRASH and h.driver.done == [(c.seq, Status.CRASH)]


# -- the holdout guard, drift re-measurements, the baseline schedule, a hub's best --------------
def _guarded(tmp_path, on_divergence):
    h = H(tmp_path, base_holdout=10.0, holdout="python evaluate.py --holdout",
          on_divergence=on_divergence)
    h.policy.verdict = Verdict.KEEP
    c = h.candidate()
    h.judge.on_result(c, measured(5.0, holdout=30.0), {})   # validation better, holdout worse
    return h, c


def test_a_keep_whose_holdout_worsens_is_reverted_when_on_divergence_is_revert(tmp_path):
    h, c = _guarded(tmp_path, "revert")
    assert h.row(c).status == Status.DISCARD and h.row(c).reason.startswith("reverted: holdout")
    alarm = h.row(c).decision["holdout_alarm"]
    assert alarm["against"] == 1 and alarm["holdout_change"] == 20.0
    assert h.git.branch == "c0" and h.state.incumbent is h.base   # the branch went back
    assert h.told[-1].status == Status.DISCARD and h.driver.done == [(c.seq, Status.DISCARD)]
    assert "holdout divergence at #2" in h.said[-1] and h.judge.stop_reason is None


@pytest.mark.parametrize("mode", ["warn", "stop"])
def test_a_holdout_alarm_without_revert_keeps_and_records_it(tmp_path, mode):
    h, c = _guarded(tmp_path, mode)
    assert h.row(c).status == Status.KEEP and h.state.incumbent is c
    assert h.row(c).decision["holdout"] == 30.0 and h.row(c).decision["holdout_alarm"]
    assert (h.judge.stop_reason is not None) == (mode == "stop")


def test_a_holdout_that_improves_with_the_metric_raises_no_alarm(tmp_path):
    h = H(tmp_path, base_holdout=10.0, holdout="python evaluate.py --holdout",
          on_divergence="revert")
    h.policy.verdict = Verdict.KEEP
    c = h.candidate()
    h.judge.on_result(c, measured(5.0, holdout=6.0), {})
    assert h.row(c).status == Status.KEEP and "holdout_alarm" not in h.row(c).decision
    assert h.row(h.base).decision["holdout"] == 10.0 and not h.said


class Counted(Stub):
    """Three baseline runs, and a drift watch that asks for the best every time."""

    def baseline_runs(self, settings):
        return 3

    def remeasure_best(self, incumbent, now, settings, resumed=False):
        return True


@pytest.mark.parametrize("slots, at_once", [(1, 1), (2, 2), (4, 2)])
def test_baseline_runs_are_scheduled_one_per_slot_at_a_time(tmp_path, slots, at_once):
    h = H(tmp_path, slots=slots, policy=Counted())
    most = 0
    while h.driver.queue:
        most = max(most, len(h.driver.queue))
        assert not h.judge.baseline_ready()
        h.judge.on_result(h.driver.queue.pop(0), measured(10.0), {})
    assert most == at_once and len(h.state.measurements("t0")) == 3
    assert h.judge.baseline_ready()


def test_the_best_is_re_measured_when_the_policy_asks_unless_a_run_of_it_is_queued(tmp_path):
    h = H(tmp_path, policy=Counted())
    while h.driver.queue:                       # the baseline's runs
        h.judge.on_result(h.driver.queue.pop(0), measured(10.0), {})
    h.judge.remeasure_best()
    (r,) = h.driver.queue
    assert r.kind == Kind.REPEAT and r.tree_sha == "t0" and "drift watch" in r.description
    h.judge.remeasure_best()                    # one is queued already: no second
    assert len(h.driver.queue) == 1
    h.driver.queue.clear()
    h.driver.has_room = False
    h.judge.on_result(r, measured(10.0), {})
    h.judge.remeasure_best()
    assert not h.driver.queue                   # no room left under --max-experiments


def test_a_hub_best_is_measured_as_a_baseline_and_then_moves_the_branch(h):
    h.judge.adopt("hubbest", "hub best of cpu (claim #3)")
    (e,) = h.driver.queue
    assert e.kind == Kind.BASELINE and e.agent == "hub" and h.git.pins[e.seq] == "hubbest"
    assert h.git.branch == "c0"                 # not before it is measured here
    h.driver.queue.clear()
    h.judge.on_result(e, measured(8.0), {})
    assert h.row(e).status == Status.KEEP and h.state.incumbent is e and h.git.branch == "hubbest"
    h.judge.adopt("hubbest", "again")           # a tree the run has: nothing
    assert not h.driver.queue


class FirstRunRecorder(Policy):
    """Records a `first_run` on a candidate's first decision (as the default policy does) and
    what the context offered it."""

    name = "recorder"

    def __init__(self):
        self.seen: list[list] = []
        self.verdicts = [Verdict.MORE, Verdict.DISCARD]

    def decide(self, candidate, incumbent, ctx):
        self.seen.append(list(ctx.first_runs))
        ev = {"first_run": {"effect": -candidate.values[0], "sigma": 1.0, "best_runs": 1}} \
            if candidate.n == 1 else {}
        return Decision(self.verdicts[min(candidate.n, 2) - 1], "recorded", rerun="candidate",
                        evidence=ev)


def test_each_candidates_first_run_reaches_the_policy_and_survives_a_restart(tmp_path):
    h = H(tmp_path, policy=FirstRunRecorder())
    c = h.candidate()
    h.judge.on_result(c, measured(5.0), {})
    (r,) = h.driver.queue
    h.judge.on_result(r, measured(6.0), {})          # the second decision has no first_run
    assert h.row(c).status == Status.DISCARD
    assert h.row(c).decision["first_run"]["effect"] == -5.0, "kept in the row's last record"
    c2 = h.candidate(n=2)
    h.judge.on_result(c2, measured(4.0), {})
    assert [f.effect for f in h.policy.seen[-1]] == [-5.0]
    # a resumed run reads them back from the ledger
    state = RunState.load(h.ledger, h.ledger.get_run("t"))
    judge = Judge(state, h.policy, h.spec, FakeGit(), FakeDriver(), lambda p, o: None)
    assert [f.effect for f in judge.context().first_runs] == [-5.0, -4.0]
