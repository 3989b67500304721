"""The ledger: every run and experiment in SQLite (.autoresearch/ledger.db).

Only the driver process writes; other processes (`status`, `log`, the dashboard) read at the
same time thanks to WAL mode. Each state change is one transaction, so a kill -9 leaves either
the old or the new row, never half of one. results.tsv and `export` are views of this database.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LedgerError
from .experiment import HistoryEntry, Status

SCHEMA_VERSION = 1

#: statuses whose metric is a valid measurement of their commit
MEASURED = (Status.KEEP, Status.DISCARD, Status.REPEAT, Status.PENDING, Status.REBASED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs (
    tag TEXT PRIMARY KEY,
    created REAL NOT NULL,
    base_commit TEXT NOT NULL,
    metric TEXT NOT NULL,
    direction TEXT NOT NULL,
    agent TEXT,
    policy TEXT,
    locked TEXT,              -- JSON {path: blob id} of locked files at the start
    setup_done INTEGER DEFAULT 0,
    state TEXT DEFAULT 'active'
);
CREATE TABLE IF NOT EXISTS experiments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tag TEXT NOT NULL,
    seq INTEGER NOT NULL,             -- 1 is the baseline
    kind TEXT NOT NULL,               -- baseline | candidate | repeat | rebase
    parent TEXT,                      -- the best commit it was proposed against
    commit_sha TEXT,
    tree_sha TEXT,
    agent TEXT,
    description TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    reason TEXT DEFAULT '',
    metric REAL,
    metrics TEXT DEFAULT '{}',
    params TEXT,
    candidate_of INTEGER REFERENCES experiments(id),
    seed INTEGER DEFAULT 0,
    slot INTEGER,
    gpu TEXT,
    created REAL,
    started REAL,
    finished REAL,
    wall_time REAL,
    peak_memory_mb REAL,
    exit_code INTEGER,
    log_path TEXT,
    diff_added INTEGER,
    diff_removed INTEGER,
    code_lines INTEGER,
    input_tokens INTEGER DEFAULT 0,
    output_tokens INTEGER DEFAULT 0,
    cost_usd REAL DEFAULT 0,
    decision TEXT,                    -- JSON: verdict, reason, evidence
    curve TEXT,                       -- JSON [[progress, value], ...]
    notes TEXT DEFAULT '',
    pid INTEGER,
    pid_started REAL,
    UNIQUE (tag, seq)
);
CREATE INDEX IF NOT EXISTS experiments_tag_status ON experiments(tag, status);
CREATE INDEX IF NOT EXISTS experiments_commit ON experiments(commit_sha);
CREATE TABLE IF NOT EXISTS slots (
    tag TEXT NOT NULL,
    slot INTEGER NOT NULL,
    experiment_id INTEGER,
    since REAL,
    gpu TEXT,
    host TEXT,
    PRIMARY KEY (tag, slot)
);
"""

_JSON_COLS = {"metrics", "params", "decision", "curve"}


def _finite(obj: Any) -> Any:
    """JSON has no inf or NaN: store them as strings so every reader can parse the ledger."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _dumps(obj: Any) -> str | None:
    return None if obj is None else json.dumps(_finite(obj))


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    """Column values as SQLite stores them: JSON text for the JSON columns, enum values as text."""
    out = dict(fields)
    for k in _JSON_COLS & out.keys():
        out[k] = _dumps(out[k])
    if isinstance(out.get("status"), Status):
        out["status"] = out["status"].value
    return out


@dataclass
class Experiment:
    """One ledger row, decoded."""

    id: int
    tag: str
    seq: int
    kind: str
    parent: str | None
    commit_sha: str | None
    tree_sha: str | None
    agent: str | None
    description: str
    status: Status
    reason: str
    metric: float | None
    metrics: dict[str, float]
    params: dict[str, Any] | None
    candidate_of: int | None
    seed: int
    slot: int | None
    gpu: str | None
    created: float | None
    started: float | None
    finished: float | None
    wall_time: float | None
    peak_memory_mb: float | None
    exit_code: int | None
    log_path: str | None
    diff_added: int | None
    diff_removed: int | None
    code_lines: int | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    decision: dict[str, Any] | None
    curve: list | None
    notes: str
    pid: int | None
    pid_started: float | None

    def history_entry(self) -> HistoryEntry:
        return HistoryEntry(id=self.id, seq=self.seq, status=self.status, metric=self.metric,
                            description=self.description, metrics=self.metrics,
                            params=self.params, commit=self.commit_sha, parent=self.parent,
                            candidate_of=self.candidate_of)


@dataclass
class Run:
    tag: str
    created: float
    base_commit: str
    metric: str
    direction: str
    agent: str | None
    policy: str | None
    locked: dict[str, str]
    setup_done: bool
    state: str


class Ledger:
    def __init__(self, path: Path, *, readonly: bool = False):
        self.path = Path(path)
        if readonly and not self.path.exists():
            raise LedgerError(f"no ledger at {self.path} — run 'autoresearch run' first")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None,
                                      check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA busy_timeout = 30000")
            if not readonly:
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA synchronous = NORMAL")
                self.db.executescript(_SCHEMA)
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"{self.path}: cannot open the ledger ({e}) — move the file aside "
                              f"to start a new one") from None
        self._lock = threading.RLock()

    def close(self) -> None:
        self.db.close()

    # -- runs -------------------------------------------------------------------------------
    def get_run(self, tag: str) -> Run | None:
        r = self.db.execute("SELECT * FROM runs WHERE tag = ?", (tag,)).fetchone()
        if r is None:
            return None
        d = dict(r)
        d["locked"] = json.loads(d["locked"] or "{}")
        d["setup_done"] = bool(d["setup_done"])
        return Run(**d)

    def create_run(self, tag: str, base_commit: str, metric: str, direction: str, agent: str,
                   policy: str, locked: dict[str, str]) -> Run:
        with self._lock:
            self.db.execute(
                "INSERT INTO runs (tag, created, base_commit, metric, direction, agent, policy, locked)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (tag, time.time(), base_commit, metric, direction, agent, policy, json.dumps(locked)))
        run = self.get_run(tag)
        assert run is not None
        return run

    def update_run(self, tag: str, **fields: Any) -> None:
        if "locked" in fields:
            fields["locked"] = json.dumps(fields["locked"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self.db.execute(f"UPDATE runs SET {cols} WHERE tag = ?", (*fields.values(), tag))

    def runs(self) -> list[Run]:
        tags = [r[0] for r in self.db.execute("SELECT tag FROM runs ORDER BY created")]
        return [r for t in tags if (r := self.get_run(t))]

    def resolve_tag(self, tag: str | None) -> str:
        """The run a command asks about: the given tag, or the latest; one clear error if none."""
        tag = tag or self.latest_tag()
        if tag is None:
            raise LedgerError("no runs recorded yet — start one with 'autoresearch run'")
        if self.get_run(tag) is None:
            known = ", ".join(r.tag for r in self.runs()) or "none"
            raise LedgerError(f"no run with tag '{tag}' (known tags: {known})")
        return tag

    def latest_tag(self) -> str | None:
        r = self.db.execute(
            "SELECT tag FROM experiments ORDER BY id DESC LIMIT 1").fetchone() or \
            self.db.execute("SELECT tag FROM runs ORDER BY created DESC LIMIT 1").fetchone()
        return r[0] if r else None

    # -- experiments ------------------------------------------------------------------------
    def add_experiment(self, tag: str, **fields: Any) -> Experiment:
        """Insert with the next seq number of the tag, atomically."""
        fields.setdefault("created", time.time())
        fields = _encode(fields)
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM experiments WHERE tag = ?",
                                      (tag,)).fetchone()[0]
                cols = ["tag", "seq", *fields]
                cur = self.db.execute(
                    f"INSERT INTO experiments ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                    (tag, seq, *fields.values()))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return self.get(cur.lastrowid)

    def update(self, exp_id: int, **fields: Any) -> None:
        fields = _encode(fields)
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self.db.execute(f"UPDATE experiments SET {cols} WHERE id = ?", (*fields.values(), exp_id))

    def update_many(self, changes: Iterable[tuple[int, dict[str, Any]]]) -> None:
        """Several row updates in one transaction (a decision that touches a candidate and its
        repeats must land whole)."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for exp_id, fields in changes:
                    fields = _encode(fields)
                    cols = ", ".join(f"{k} = ?" for k in fields)
                    self.db.execute(f"UPDATE experiments SET {cols} WHERE id = ?",
                                    (*fields.values(), exp_id))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    @staticmethod
    def _decode(r: sqlite3.Row) -> Experiment:
        d = dict(r)
        for k in _JSON_COLS:
            d[k] = json.loads(d[k]) if d[k] else ({} if k == "metrics" else None)
        d["status"] = Status(d["status"])
        d["notes"] = d["notes"] or ""
        d["reason"] = d["reason"] or ""
        d["input_tokens"] = d["input_tokens"] or 0
        d["output_tokens"] = d["output_tokens"] or 0
        d["cost_usd"] = d["cost_usd"] or 0.0
        return Experiment(**d)

    def get(self, exp_id: int) -> Experiment:
        r = self.db.execute("SELECT * FROM experiments WHERE id = ?", (exp_id,)).fetchone()
        if r is None:
            raise LedgerError(f"no experiment with id {exp_id}")
        return self._decode(r)

    def by_seq(self, tag: str, seq: int) -> Experiment | None:
        r = self.db.execute("SELECT * FROM experiments WHERE tag = ? AND seq = ?", (tag, seq)).fetchone()
        return self._decode(r) if r else None

    def experiments(self, tag: str | None = None) -> list[Experiment]:
        if tag is None:
            rows = self.db.execute("SELECT * FROM experiments ORDER BY id")
        else:
            rows = self.db.execute("SELECT * FROM experiments WHERE tag = ? ORDER BY seq", (tag,))
        return [self._decode(r) for r in rows]

    def measurements(self, tag: str, tree: str | None, before: int | None = None) -> list[Experiment]:
        """Every valid measurement of one tree (content) in a run, oldest first."""
        if tree is None:
            return []
        q = ("SELECT * FROM experiments WHERE tag = ? AND tree_sha = ? AND metric IS NOT NULL "
             f"AND status IN ({','.join('?' * len(MEASURED))})")
        args: list[Any] = [tag, tree, *[s.value for s in MEASURED]]
        if before is not None:
            q += " AND id < ?"
            args.append(before)
        return [self._decode(r) for r in self.db.execute(q + " ORDER BY id", args)]

    def count(self, tag: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM experiments WHERE tag = ?", (tag,)).fetchone()[0]

    # -- slots (what each worker is doing, for `status`) -------------------------------------
    def set_slot(self, tag: str, slot: int, experiment_id: int | None, gpu: str | None = None,
                 host: str | None = None) -> None:
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO slots VALUES (?,?,?,?,?,?)",
                            (tag, slot, experiment_id, time.time(), gpu, host))

    def slots(self, tag: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute(
            "SELECT * FROM slots WHERE tag = ? ORDER BY slot", (tag,))]

    def clear_slots(self, tag: str) -> None:
        with self._lock:
            self.db.execute("DELETE FROM slots WHERE tag = ?", (tag,))
