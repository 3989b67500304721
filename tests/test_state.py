"""The run state: written through to the ledger, never read back, indexes kept on each write."""

from __future__ import annotations

from autoresearch.experiment import Kind, Status
from autoresearch.ledger import Ledger
from autoresearch.state import RunState


def _state(tmp_path) -> RunState:
    ledger = Ledger(tmp_path / "ledger.db")
    return RunState(ledger, ledger.create_run("t", "c0", "score", "minimize", "a", "p", {}))


def test_history_lists_finished_and_pending_rows_in_seq_order_whatever_the_finish_order(tmp_path):
    s = _state(tmp_path)
    a, b, c = (s.add(kind=Kind.CANDIDATE, status=Status.RUNNING, tree_sha=f"t{i}")
               for i in range(3))
    s.update(c, status=Status.DISCARD, metric=3.0)
    s.update(a, status=Status.PENDING, metric=1.0)
    assert [h.seq for h in s.history()] == [a.seq, c.seq]
    s.update(b, status=Status.CRASH)
    s.update(a, status=Status.KEEP)
    assert [(h.seq, h.status) for h in s.history()] == [
        (a.seq, Status.KEEP), (b.seq, Status.CRASH), (c.seq, Status.DISCARD)]
    s.update(b, status=Status.RUNNING)        # a resumed run measures it again
    assert [h.seq for h in s.history()] == [a.seq, c.seq]


def test_a_reloaded_state_equals_the_one_written_through(tmp_path):
    s = _state(tmp_path)
    base = s.add(kind=Kind.BASELINE, status=Status.RUNNING, tree_sha="t0", commit_sha="c0")
    s.update(base, status=Status.KEEP, metric=2.0, decision={"at": 1.0})
    rep = s.add(kind=Kind.REPEAT, status=Status.RUNNING, tree_sha="t0", candidate_of=base.id)
    s.update(rep, status=Status.REPEAT, metric=2.5)
    s.add(kind=Kind.CANDIDATE, status=Status.INVALID, tree_sha="t1", cost_usd=0.25)
    again = RunState.load(s.ledger, s.run)
    assert list(again.rows.values()) == list(s.rows.values())
    assert again.replicate_groups() == s.replicate_groups() == [[2.0, 2.5]]
    assert again.trees == s.trees == {"t0": base.id}    # an invalid tree is not a duplicate
    assert again.cost == s.cost == 0.25 and again.next_seq == s.next_seq == 4
    assert again.incumbent == base and [r.id for r in again.repeats_of(base.id)] == [rep.id]


def test_a_measurement_of_zero_is_a_measurement(tmp_path):
    s = _state(tmp_path)
    e = s.add(kind=Kind.CANDIDATE, status=Status.RUNNING, tree_sha="t")
    s.update(e, status=Status.PENDING, metric=0.0)
    assert s.sample(e).values == [0.0]


def test_samples_say_when_each_run_was_made_and_the_kept_chain_follows_reverts(tmp_path):
    s = _state(tmp_path)
    base = s.add(kind=Kind.BASELINE, status=Status.RUNNING, tree_sha="t0", commit_sha="c0")
    s.update(base, status=Status.KEEP, metric=2.0, decision={"at": 1.0})
    c = s.add(kind=Kind.CANDIDATE, status=Status.RUNNING, tree_sha="t1")
    rep = s.add(kind=Kind.REPEAT, status=Status.RUNNING, tree_sha="t0", candidate_of=c.id)
    assert s.busy("t0") and not s.busy("t9")            # a run of the best is queued
    s.update(rep, status=Status.REPEAT, metric=2.2)
    assert s.sample(base).values == [2.0, 2.2] and s.sample(base).at == [base.seq, rep.seq]
    s.update(c, status=Status.KEEP, metric=1.0, decision={"at": 2.0})
    assert [e.seq for e in s.kept_chain()] == [base.seq, c.seq] and s.baseline is base
    s.update(c, status=Status.DISCARD)                  # a keep reverted by the holdout guard
    assert s.kept_chain() == [base] and not s.busy("t0")
