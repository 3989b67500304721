"""The SQLite ledger: seq numbering, JSON columns, atomic multi-row updates, WAL readers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from autoresearch.errors import LedgerError
from autoresearch.experiment import Status
from autoresearch.ledger import Ledger


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / ".autoresearch" / "ledger.db")
    yield led
    led.close()


def test_seq_numbers_count_per_tag(ledger):
    seqs = [(t, ledger.add_experiment(t, kind="candidate", status=Status.RUNNING).seq)
            for t in ("a", "a", "b", "a", "b")]
    assert seqs == [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("b", 2)]
    assert ledger.count("a") == 3
    assert [e.seq for e in ledger.experiments("b")] == [1, 2]


def test_json_columns_round_trip(ledger):
    e = ledger.add_experiment(
        "t", kind="candidate", status=Status.DISCARD, metrics={"val_bpb": 0.99, "mem_mb": 12.5},
        params={"LR": 0.01, "N": 3, "ACT": "relu"}, decision={"verdict": "discard", "at": 1.5},
        curve=[[0.1, 3.2], [0.5, 2.1]])
    got = ledger.get(e.id)
    assert got.metrics == {"val_bpb": 0.99, "mem_mb": 12.5}
    assert got.params == {"LR": 0.01, "N": 3, "ACT": "relu"}
    assert got.decision == {"verdict": "discard", "at": 1.5}
    assert got.curve == [[0.1, 3.2], [0.5, 2.1]]
    assert got.status is Status.DISCARD
    ledger.update(e.id, metrics={"val_bpb": 0.5}, params=None, status=Status.KEEP)
    got = ledger.get(e.id)
    assert got.metrics == {"val_bpb": 0.5} and got.params is None and got.status is Status.KEEP
    # unset JSON columns decode to their empty values
    bare = ledger.add_experiment("t", kind="candidate", status=Status.RUNNING)
    assert bare.metrics == {} and bare.params is None and bare.decision is None


def test_update_many_is_all_or_nothing(ledger):
    a = ledger.add_experiment("t", kind="candidate", status=Status.PENDING)
    b = ledger.add_experiment("t", kind="repeat", status=Status.RUNNING)

    def changes():
        yield a.id, {"status": Status.KEEP, "decision": {"verdict": "keep"}}
        yield b.id, {"status": Status.REPEAT}
        raise RuntimeError("crash between rows")

    with pytest.raises(RuntimeError):
        ledger.update_many(changes())
    assert ledger.get(a.id).status is Status.PENDING
    assert ledger.get(a.id).decision is None
    assert ledger.get(b.id).status is Status.RUNNING
    # and the connection is usable afterwards
    ledger.update_many([(a.id, {"status": Status.KEEP}), (b.id, {"status": Status.REPEAT})])
    assert (ledger.get(a.id).status, ledger.get(b.id).status) == (Status.KEEP, Status.REPEAT)


def test_update_many_with_a_bad_column_changes_nothing(ledger):
    a = ledger.add_experiment("t", kind="candidate", status=Status.PENDING)
    b = ledger.add_experiment("t", kind="candidate", status=Status.PENDING)
    with pytest.raises(Exception):  # noqa: B017 - sqlite3.OperationalError: no such column
        ledger.update_many([(a.id, {"status": Status.KEEP}), (b.id, {"no_such_column": 1})])
    assert ledger.get(a.id).status is Status.PENDING


READER = """
import json, sys
from autoresearch.ledger import Ledger
led = Ledger(sys.argv[1], readonly=True)
print(json.dumps([[e.seq, e.status.value, e.metric] for e in led.experiments("t")]))
"""


def test_a_reader_in_another_process_sees_rows_while_the_writer_is_open(ledger):
    ledger.create_run("t", "abc", "val_bpb", "minimize", "optuna", "greedy", {})
    ledger.add_experiment("t", kind="baseline", status=Status.KEEP, metric=1.0)
    ledger.add_experiment("t", kind="candidate", status=Status.RUNNING)
    assert ledger.journal_mode() == "wal"
    # hold a write transaction open: a WAL reader still sees the last committed state
    ledger._db.execute("BEGIN IMMEDIATE")
    ledger._db.execute("UPDATE experiments SET metric = 99 WHERE seq = 1")
    try:
        out = subprocess.run([sys.executable, "-c", READER, str(ledger.path)], capture_output=True,
                             text=True, timeout=30)
    finally:
        ledger._db.execute("ROLLBACK")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [[1, "keep", 1.0], [2, "running", None]]


def test_readonly_ledger_that_does_not_exist(tmp_path):
    with pytest.raises(LedgerError, match="no ledger at"):
        Ledger(tmp_path / "missing.db", readonly=True)


def test_corrupt_ledger_names_the_file(tmp_path):
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not a sqlite database, just some bytes" * 100)
    with pytest.raises(LedgerError) as info:
        Ledger(path)
    assert str(path) in str(info.value)
    assert "move the file aside" in str(info.value)


def test_runs_round_trip(ledger):
    run = ledger.create_run("t", "abc123", "val_bpb", "minimize", "optuna", "greedy",
                            {"program.md": "oid1"})
    assert run.locked == {"program.md": "oid1"} and run.setup_done is False
    ledger.update_run("t", setup_done=1)
    assert ledger.get_run("t").setup_done is True
    assert ledger.get_run("nope") is None
    assert ledger.latest_tag() == "t"


def test_add_experiment_returns_the_row_exactly_as_a_read_gives_it(ledger):
    e = ledger.add_experiment("t", kind="candidate", status=Status.RUNNING, metric=1.5,
                              metrics={"x": float("inf")}, params={"a": (1, 2)}, description="d")
    assert e == ledger.get(e.id)    # the loop keeps the returned row and never reads it back


def test_pages_are_cut_by_seq_in_sql(ledger):
    for i in range(25):
        ledger.add_experiment("t", kind="candidate", status=Status.DISCARD, metric=float(i))
    ledger.add_experiment("other", kind="candidate", status=Status.DISCARD)
    assert [e.seq for e in ledger.page("t", after_seq=20)] == [21, 22, 23, 24, 25]
    assert [e.seq for e in ledger.page("t", after_seq=0, limit=3)] == [1, 2, 3]
    assert [e.seq for e in ledger.tail("t", 4)] == [22, 23, 24, 25]
    assert [e.seq for e in ledger.page_before("t", 10, 3)] == [7, 8, 9]
    assert [e.seq for e in ledger.by_seqs("t", [25, 3, 99])] == [3, 25]
    assert [e.seq for e in ledger.iter_experiments("t", chunk=7)] == list(range(1, 26))
    assert ledger.totals("t")["counts"] == {"discard": 25}


def test_replicate_groups_are_the_trees_measured_twice_or_more(ledger):
    for tree, metric, status in [("a", 1.0, Status.KEEP), ("a", 1.2, Status.REPEAT),
                                 ("b", 2.0, Status.DISCARD), ("c", 3.0, Status.PENDING),
                                 ("c", 3.5, Status.REPEAT), ("c", None, Status.CRASH),
                                 ("b", 9.0, Status.INVALID)]:
        ledger.add_experiment("t", kind="candidate", tree_sha=tree, metric=metric, status=status)
    assert ledger.replicate_groups("t") == [[1.0, 1.2], [3.0, 3.5]]


def test_a_ledger_from_before_roles_and_notes_is_migrated_in_place(tmp_path):
    import sqlite3

    from autoresearch.ledger import _SCHEMA

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA.split("CREATE TABLE IF NOT EXISTS research_notes")[0])
    db.execute("INSERT INTO experiments (tag, seq, kind, status, agent) "
               "VALUES ('t', 1, 'baseline', 'keep', 'optuna')")
    db.commit()
    db.close()
    old = Ledger(path, readonly=True)           # a reader does not migrate, and still reads
    assert old.experiments("t")[0].role is None and old.research_notes("t") == ""
    old.close()
    ledger = Ledger(path)
    e = ledger.add_experiment("t", kind="candidate", status=Status.RUNNING, agent="claude",
                              role="explorer")
    assert ledger.get(e.id).role == "explorer" and ledger.experiments("t")[0].agent == "optuna"
    ledger.set_research_notes("t", "- #2 (claude): notes")
    assert ledger.research_notes("t") == "- #2 (claude): notes"
    ledger.close()
    assert Ledger(path).experiments("t")[0].role is None    # opening again adds nothing twice
