"""The ledger: every run and experiment in SQLite (.autoresearch/ledger.db).

Only the driver process writes; other processes (`status`, `log`, the dashboard) read at the
same time thanks to WAL mode. Each state change is one transaction, so a kill -9 leaves either
the old or the new row, never half of one. results.tsv and `export` are views of this database.

The connection is private: every query anyone needs is a method here. Writes return or take
the row's values (`add_experiment` builds the new row in memory), so the loop never reads back
what it wrote; listings are cut by seq in SQL (`page`, `page_before`, `tail`, `by_seqs`,
`iter_experiments`), so their cost does not grow with the run. `dumps` is the one JSON encoder
(columns, exports, `--json` output and the dashboard): inf and NaN become strings.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import sqlite3
import sys
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LedgerError
from .experiment import HistoryEntry, Kind, Status

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
    state TEXT DEFAULT 'active',
    scale TEXT,               -- the [scales] entry it runs at (None: the toml as written)
    source TEXT,              -- a promotion: the tag of the run it replays
    strategy TEXT,            -- ratchet | tree (strategies.py); NULL: ratchet
    org TEXT                  -- the organisation of a `compare` run (compare.py), else NULL
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
    node_parent INTEGER,              -- tree search: the node (experiment id) it was proposed from
    operator TEXT,                    -- tree search: draft | improve | debug
    org TEXT,                         -- its run's organisation (compare.py), else NULL
    UNIQUE (tag, seq)
);
CREATE INDEX IF NOT EXISTS experiments_tag_status ON experiments(tag, status);
CREATE INDEX IF NOT EXISTS experiments_commit ON experiments(commit_sha);
-- one tree's measurements (the policies' samples, `status`, the dashboard): not a scan of the
-- run's rows per tree
CREATE INDEX IF NOT EXISTS experiments_tree ON experiments(tag, tree_sha);
CREATE TABLE IF NOT EXISTS research_notes (
    tag TEXT PRIMARY KEY,             -- one notes text per run, written by its agents (notes.py)
    text TEXT NOT NULL DEFAULT '',
    updated REAL
);
CREATE TABLE IF NOT EXISTS slots (
    tag TEXT NOT NULL,
    slot INTEGER NOT NULL,
    experiment_id INTEGER,
    since REAL,
    gpu TEXT,
    host TEXT,
    PRIMARY KEY (tag, slot)
);
CREATE TABLE IF NOT EXISTS comparisons (   -- `autoresearch compare`: one row per comparison
    name TEXT PRIMARY KEY,
    created REAL NOT NULL,
    spec TEXT NOT NULL                -- JSON: organisations, budgets, repeats, base commit
);
CREATE TABLE IF NOT EXISTS comparison_runs (
    comparison TEXT NOT NULL,
    tag TEXT NOT NULL,
    org TEXT NOT NULL,
    repeat INTEGER NOT NULL,
    seconds REAL DEFAULT 0,           -- wall time spent in its turns
    done TEXT,                        -- why it needs no more turns; NULL while it does
    PRIMARY KEY (comparison, tag)
);
CREATE TABLE IF NOT EXISTS generations (   -- `autoresearch evolve-program`
    meta TEXT NOT NULL,
    generation INTEGER NOT NULL,
    created REAL NOT NULL,
    record TEXT NOT NULL,             -- JSON: incumbent, variants, comparison, winner, commit
    PRIMARY KEY (meta, generation)
);
"""

_JSON_COLS = {"metrics", "params", "decision", "curve"}


def jsonable(obj: Any) -> Any:
    """Plain JSON values: inf and NaN become strings (JSON has neither, browsers reject them),
    enums their value, dataclasses (a policy's Estimate) dicts, numpy scalars Python numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, enum.Enum):
        return jsonable(obj.value)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, PackedJSON):
        return obj.unpacked()
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "item"):
        return jsonable(obj.item())
    return str(obj)


def dumps(obj: Any, **kwargs: Any) -> str:
    """The one JSON encoder: the ledger's columns, `export`, `log --json` and the dashboard."""
    return json.dumps(jsonable(obj), allow_nan=False, **kwargs)


def _dumps(obj: Any) -> str | None:
    return None if obj is None else dumps(obj)


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    """Column values as SQLite stores them: JSON text for the JSON columns, enum values as text."""
    out = dict(fields)
    for k in _JSON_COLS & out.keys():
        out[k] = _dumps(out[k])
    for k in ("status", "kind"):
        if isinstance(out.get(k), enum.Enum):
            out[k] = out[k].value
    return out


def _interned(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {sys.intern(k): v for k, v in pairs}


_DECODER = json.JSONDecoder(object_pairs_hook=_interned)


def _loads(text: str) -> Any:
    """A JSON column decoded for a row kept in memory: its keys (a small vocabulary, repeated
    in every row: "verdict", "evidence", a metric's name) are shared, not one copy per row."""
    return _DECODER.decode(text)


# What a decision record usually says (the keys and words the judge and the policies write): the
# preset dictionary its packed form is compressed against. It lives in memory only (the ledger
# stores the plain text), so changing it changes nothing recorded; a record unlike it still
# packs, just less tightly.
_ZDICT = json.dumps({
    "verdict": "discard", "reason": "not worth another run (P(no better) = 0.937, E[effect] = "
    "-0.01 sd); 40.4271 (n=1) vs best 50.1594 (n=32): 9.73 better; does not beat best",
    "evidence": {"runs": 1, "best_runs": 32, "best_since": 1, "mean": 40.42706575407209,
                 "best_mean": 50.15936802666289, "effect": 9.7323022725908,
                 "sigma": 32.351722835636345, "sigma_df": 31.0, "min_effect": 0.0, "margin": 0.0,
                 "lines": 2, "best_lines": 2, "first_run": {
                     "effect": 9.7323022725908, "sigma": 32.351722835636345, "best_runs": 32,
                     "var": 1.03125}, "se": 32.85332984660599, "statistic": 0.2962348814574187,
                 "p_value": None, "posterior_bad": 0.9365997933331832,
                 "posterior_mean": -0.005968087392463474, "keep_value": -1.87916767405883,
                 "go_value": -0.0182726353931185, "keep_penalty": 2.0,
                 "run_price": 0.0182726353931185, "prior": {
                     "proposals": 200, "no_effect": 0.7907, "better": 0.0722, "worse": 0.1371,
                     "mean_better_sd": 1.012}, "fresh_best_runs": 0, "seed_share": 0.0,
                 "seed_share_estimate": 0.0, "seed_share_df": 0.0, "paired": False,
                 "rule": "screen", "shrink": 0.0, "exact": True, "holdout": None},
    "at": 1796040748.9768844, "against": 1, "holdout": 0.5, "holdout_alarm": None,
    "first_run": {"effect": 9.7323022725908, "sigma": 32.351722835636345, "best_runs": 32,
                  "var": 1.03125}}).encode()


class PackedJSON(Mapping):
    """A decision record as a read-only mapping kept packed: its JSON text compressed against
    a preset dictionary of what records say (about 230 bytes for the default policy's 1.2 KB
    record, 2.7 KB decoded), decoded on each access.

    Every row of a run is held in memory (state.py), and a policy's decision record is its
    largest part while the hot path reads it only for the few kept rows. Reads (`[...]`,
    `.get`, `dict(...)`, `**`) work as on a dict; nothing writes into a decision record in
    place (a new one replaces it). `text` is the JSON text exactly as given."""

    __slots__ = ("_packed",)

    def __init__(self, text: str) -> None:
        pack = zlib.compressobj(6, zdict=_ZDICT)
        self._packed = pack.compress(text.encode()) + pack.flush()

    @property
    def text(self) -> str:
        unpack = zlib.decompressobj(zdict=_ZDICT)
        return (unpack.decompress(self._packed) + unpack.flush()).decode()

    def unpacked(self) -> dict[str, Any]:
        return _loads(self.text)

    def __getitem__(self, key: str) -> Any:
        return self.unpacked()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.unpacked())

    def __len__(self) -> int:
        return len(self.unpacked())

    def __bool__(self) -> bool:
        return self.text != "{}"

    def __repr__(self) -> str:
        return f"PackedJSON({self.text})"


def _column(k: str, text: str) -> Any:
    """A JSON column's value as rows hold it: the decision record packed, the others decoded."""
    return PackedJSON(text) if k == "decision" else _loads(text)


def as_stored(fields: dict[str, Any]) -> dict[str, Any]:
    """Field values exactly as a read of the row would return them (JSON columns round-tripped),
    so that the in-memory run state and the ledger never disagree."""
    out = dict(fields)
    for k in _JSON_COLS & out.keys():
        v = out[k]
        out[k] = _column(k, dumps(v)) if v else ({} if k == "metrics" else None)
    if "status" in out and not isinstance(out["status"], Status):
        out["status"] = Status(out["status"])
    if "kind" in out and out["kind"] is not None and not isinstance(out["kind"], Kind):
        out["kind"] = Kind(out["kind"])
    return out


@dataclass(slots=True)   # slots: a run holds every row in memory (state.py), ~0.4 KB each
class Experiment:
    """One ledger row, decoded."""

    id: int
    tag: str
    seq: int
    kind: Kind
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
    decision: Mapping[str, Any] | None   # a PackedJSON when read or stored
    curve: list | None
    notes: str
    pid: int | None
    pid_started: float | None
    node_parent: int | None       # tree search: the experiment id of the node it started from
    operator: str | None          # tree search: draft | improve | debug
    org: str | None = None        # its run's organisation (compare.py)
    role: str | None = None           # the proposer's role in a portfolio ([[agents]] role)

    def history_entry(self) -> HistoryEntry:
        return HistoryEntry(id=self.id, seq=self.seq, status=self.status, metric=self.metric,
                            description=self.description, metrics=self.metrics,
                            params=self.params, commit=self.commit_sha, parent=self.parent,
                            candidate_of=self.candidate_of, agent=self.agent, role=self.role)


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
    scale: str | None = None     # the [scales] entry it runs at
    source: str | None = None    # a promotion (promote.py): the run it replays
    strategy: str | None = None  # ratchet | tree (strategies.py)
    org: str | None = None       # the organisation of a `compare` run


_COLUMNS = tuple(f.name for f in dataclasses.fields(Experiment))
#: a new row's values before the insert's own fields (the schema's defaults, decoded)
_NEW_ROW: dict[str, Any] = {c: None for c in _COLUMNS} | {
    "description": "", "reason": "", "metrics": {}, "seed": 0, "input_tokens": 0,
    "output_tokens": 0, "cost_usd": 0.0, "notes": ""}


class Ledger:
    """The only way to the database. The connection is private: every query a command, the
    loop or the dashboard needs is a method here, and lists are paged by id in SQL."""

    def __init__(self, path: Path, *, readonly: bool = False):
        self.path = Path(path)
        if readonly and not self.path.exists():
            raise LedgerError(f"no ledger at {self.path} — run 'autoresearch run' first")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None,
                                       check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout = 30000")
            if not readonly:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = NORMAL")
                self._db.executescript(_SCHEMA)
                self._migrate()
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                                 (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"{self.path}: cannot open the ledger ({e}) — move the file aside "
                              f"to start a new one") from None
        self._lock = threading.RLock()

    #: columns added after the first schema: (table, column, type), added to older ledgers
    _ADDED_COLUMNS = (("runs", "scale", "TEXT"), ("runs", "source", "TEXT"),
                      ("runs", "strategy", "TEXT"), ("experiments", "node_parent", "INTEGER"),
                      ("experiments", "operator", "TEXT"),
                      ("runs", "org", "TEXT"), ("experiments", "org", "TEXT"),
                      ("experiments", "role", "TEXT"))   # role: a portfolio member's

    def _migrate(self) -> None:
        """Add the columns an older ledger lacks (never a table rebuilt: nothing is lost)."""
        for table, column, kind in self._ADDED_COLUMNS:
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self._db.close()

    def data_version(self) -> int:
        """SQLite's data version: it changes when another connection commits a write."""
        with self._lock:
            return self._db.execute("PRAGMA data_version").fetchone()[0]

    def journal_mode(self) -> str:
        return self._db.execute("PRAGMA journal_mode").fetchone()[0]

    # -- runs -------------------------------------------------------------------------------
    def get_run(self, tag: str) -> Run | None:
        r = self._db.execute("SELECT * FROM runs WHERE tag = ?", (tag,)).fetchone()
        if r is None:
            return None
        d = dict(r)
        d["locked"] = json.loads(d["locked"] or "{}")
        d["setup_done"] = bool(d["setup_done"])
        return Run(**d)

    def create_run(self, tag: str, base_commit: str, metric: str, direction: str, agent: str,
                   policy: str, locked: dict[str, str], *, scale: str | None = None,
                   source: str | None = None, strategy: str | None = None,
                   org: str | None = None) -> Run:
        with self._lock:
            self._db.execute(
                "INSERT INTO runs (tag, created, base_commit, metric, direction, agent, policy, "
                "locked, scale, source, strategy, org) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (tag, time.time(), base_commit, metric, direction, agent, policy, json.dumps(locked),
                 scale, source, strategy, org))
        run = self.get_run(tag)
        assert run is not None
        return run

    def update_run(self, tag: str, **fields: Any) -> None:
        if "locked" in fields:
            fields["locked"] = json.dumps(fields["locked"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE runs SET {cols} WHERE tag = ?", (*fields.values(), tag))

    def runs(self) -> list[Run]:
        tags = [r[0] for r in self._db.execute("SELECT tag FROM runs ORDER BY created")]
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
        r = self._db.execute(
            "SELECT tag FROM experiments ORDER BY id DESC LIMIT 1").fetchone() or \
            self._db.execute("SELECT tag FROM runs ORDER BY created DESC LIMIT 1").fetchone()
        return r[0] if r else None

    # -- writing experiments (the loop's hot path: append and update, never read back) ---------
    def add_experiment(self, tag: str, *, seq: int | None = None, **fields: Any) -> Experiment:
        """Insert a row with `seq` (default: the tag's next, chosen atomically) and return it
        as it now stands in the database, built in memory."""
        fields.setdefault("created", time.time())
        encoded = _encode(fields)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if seq is None:
                    seq = self._db.execute(
                        "SELECT COALESCE(MAX(seq), 0) + 1 FROM experiments WHERE tag = ?",
                        (tag,)).fetchone()[0]
                cols = ["tag", "seq", *encoded]
                cur = self._db.execute(
                    f"INSERT INTO experiments ({', '.join(cols)}) "
                    f"VALUES ({', '.join('?' * len(cols))})", (tag, seq, *encoded.values()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        row = {**_NEW_ROW, **as_stored(fields), "id": cur.lastrowid, "tag": tag, "seq": seq}
        return Experiment(**row)

    def update(self, exp_id: int, **fields: Any) -> None:
        fields = _encode(fields)
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE experiments SET {cols} WHERE id = ?",
                             (*fields.values(), exp_id))

    def update_many(self, changes: Iterable[tuple[int, dict[str, Any]]]) -> None:
        """Several row updates in one transaction (a decision that touches a candidate and its
        repeats must land whole)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for exp_id, fields in changes:
                    fields = _encode(fields)
                    cols = ", ".join(f"{k} = ?" for k in fields)
                    self._db.execute(f"UPDATE experiments SET {cols} WHERE id = ?",
                                     (*fields.values(), exp_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- reading experiments -----------------------------------------------------------------
    @staticmethod
    def _decode(r: sqlite3.Row) -> Experiment:
        d = dict(r)
        for k in _JSON_COLS:
            d[k] = _column(k, d[k]) if d[k] else ({} if k == "metrics" else None)
        d["status"] = Status(d["status"])
        d["kind"] = Kind(d["kind"])
        d["notes"] = d["notes"] or ""
        d["reason"] = d["reason"] or ""
        d["input_tokens"] = d["input_tokens"] or 0
        d["output_tokens"] = d["output_tokens"] or 0
        d["cost_usd"] = d["cost_usd"] or 0.0
        for column in ("node_parent", "operator"):   # a read-only look at an older ledger
            d.setdefault(column, None)
        return Experiment(**d)

    def _select(self, where: str, args: Iterable[Any], order: str = "seq",
                limit: int | None = None) -> list[Experiment]:
        q = f"SELECT * FROM experiments WHERE {where} ORDER BY {order}"
        if limit is not None:
            q += f" LIMIT {int(limit)}"
        return [self._decode(r) for r in self._db.execute(q, tuple(args))]

    def get(self, exp_id: int) -> Experiment:
        r = self._db.execute("SELECT * FROM experiments WHERE id = ?", (exp_id,)).fetchone()
        if r is None:
            raise LedgerError(f"no experiment with id {exp_id}")
        return self._decode(r)

    def by_seq(self, tag: str, seq: int) -> Experiment | None:
        r = self._db.execute("SELECT * FROM experiments WHERE tag = ? AND seq = ?",
                             (tag, seq)).fetchone()
        return self._decode(r) if r else None

    def experiments(self, tag: str | None = None) -> list[Experiment]:
        """Every row of a run (of every run with no tag). For opening a run and whole exports;
        listings use `page` or `tail`."""
        if tag is None:
            return self._select("1", (), order="id")
        return self._select("tag = ?", (tag,))

    def iter_experiments(self, tag: str | None = None, chunk: int = 500) -> Iterator[Experiment]:
        """Every row, oldest first, read `chunk` rows at a time (exports of big runs)."""
        after = -1
        while True:
            if tag is None:
                rows = self._select("id > ?", (after,), order="id", limit=chunk)
            else:
                rows = self._select("tag = ? AND seq > ?", (tag, after), limit=chunk)
            yield from rows
            if len(rows) < chunk:
                return
            after = rows[-1].id if tag is None else rows[-1].seq

    def page(self, tag: str, after_seq: int = 0, limit: int | None = None) -> list[Experiment]:
        """Rows with seq > after_seq, oldest first, at most `limit`."""
        return self._select("tag = ? AND seq > ?", (tag, after_seq), limit=limit)

    def page_before(self, tag: str, before_seq: int, limit: int) -> list[Experiment]:
        """The `limit` rows just before seq `before_seq`, oldest first."""
        rows = self._select("tag = ? AND seq < ?", (tag, before_seq), order="seq DESC", limit=limit)
        return rows[::-1]

    def by_seqs(self, tag: str, seqs: Iterable[int]) -> list[Experiment]:
        seqs = list(seqs)
        if not seqs:
            return []
        return self._select(f"tag = ? AND seq IN ({','.join('?' * len(seqs))})", (tag, *seqs))

    def tail(self, tag: str, limit: int) -> list[Experiment]:
        """The last `limit` rows, oldest first."""
        rows = self._select("tag = ?", (tag,), order="seq DESC", limit=limit)
        return rows[::-1]

    def with_status(self, tag: str, *statuses: Status) -> list[Experiment]:
        marks = ",".join("?" * len(statuses))
        return self._select(f"tag = ? AND status IN ({marks})", (tag, *[s.value for s in statuses]))

    def with_decision_key(self, tag: str, key: str) -> list[Experiment]:
        """Rows whose decision record has `key` (a word), oldest first."""
        if not key.isidentifier():
            raise ValueError(f"decision key {key!r} must be a word")
        return self._select(f"tag = ? AND json_extract(decision, '$.{key}') IS NOT NULL", (tag,))

    def repeats_of(self, exp_id: int) -> list[Experiment]:
        """The rows measured for a candidate (its repeats and its rebased version)."""
        return self._select("candidate_of = ?", (exp_id,), order="id")

    def measurements(self, tag: str, tree: str | None, before: int | None = None) -> list[Experiment]:
        """Every valid measurement of one tree (content) in a run, oldest first."""
        if tree is None:
            return []
        q = ("tag = ? AND tree_sha = ? AND metric IS NOT NULL "
             f"AND status IN ({','.join('?' * len(MEASURED))})")
        args: list[Any] = [tag, tree, *[s.value for s in MEASURED]]
        if before is not None:
            q += " AND id < ?"
            args.append(before)
        return self._select(q, args, order="id")

    def replicate_groups(self, tag: str) -> list[list[float]]:
        """The measured values of every tree measured two or more times, oldest first."""
        marks = ",".join("?" * len(MEASURED))
        rows = self._db.execute(
            f"SELECT tree_sha, metric FROM experiments WHERE tag = ? AND metric IS NOT NULL "
            f"AND status IN ({marks}) AND tree_sha IN (SELECT tree_sha FROM experiments "
            f"WHERE tag = ? AND metric IS NOT NULL AND status IN ({marks}) "
            f"GROUP BY tree_sha HAVING COUNT(*) >= 2) ORDER BY id",
            (tag, *[s.value for s in MEASURED], tag, *[s.value for s in MEASURED]))
        groups: dict[str, list[float]] = {}
        for tree, metric in rows:
            groups.setdefault(tree or "", []).append(metric)
        return list(groups.values())

    def count(self, tag: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM experiments WHERE tag = ?",
                                (tag,)).fetchone()[0]

    def totals(self, tag: str) -> dict[str, Any]:
        """Counts by status, cost, tokens and improvements of a run, in one query each."""
        counts = {st: n for st, n in self._db.execute(
            "SELECT status, COUNT(*) FROM experiments WHERE tag = ? GROUP BY status", (tag,))}
        cost, tin, tout = self._db.execute(
            "SELECT COALESCE(SUM(cost_usd), 0), COALESCE(SUM(input_tokens), 0), "
            "COALESCE(SUM(output_tokens), 0) FROM experiments WHERE tag = ?", (tag,)).fetchone()
        improvements = self._db.execute(
            "SELECT COUNT(*) FROM experiments WHERE tag = ? AND status = ? AND kind != ?",
            (tag, Status.KEEP.value, Kind.BASELINE.value)).fetchone()[0]
        return {"counts": counts, "experiments": sum(counts.values()), "cost_usd": float(cost),
                "input_tokens": int(tin), "output_tokens": int(tout),
                "improvements": improvements}

    def proposals_by_agent(self, tag: str) -> list[tuple[str | None, str | None, int, float]]:
        """(agent, role, candidates, their cost) of a run, in order of first proposal."""
        return [tuple(r) for r in self._db.execute(
            "SELECT agent, role, COUNT(*), COALESCE(SUM(cost_usd), 0) FROM experiments "
            "WHERE tag = ? AND kind = ? GROUP BY agent, role ORDER BY MIN(id)",
            (tag, Kind.CANDIDATE.value))]

    def operator_counts(self, tag: str) -> dict[str, dict[str, int]]:
        """Tree search: proposals and keeps by operator ({"improve": {"proposed": 12,
        "kept": 2}, ...}); empty for a ratchet run."""
        rows = self._db.execute(
            "SELECT operator, COUNT(*), SUM(status = ?) FROM experiments WHERE tag = ? AND "
            "operator IS NOT NULL GROUP BY operator ORDER BY operator",
            (Status.KEEP.value, tag))
        return {op: {"proposed": n, "kept": int(kept or 0)} for op, n, kept in rows}

    def running_seqs(self, tag: str) -> list[int]:
        return [r[0] for r in self._db.execute(
            "SELECT seq FROM experiments WHERE tag = ? AND status = ? ORDER BY seq",
            (tag, Status.RUNNING.value))]

    def by_ids(self, ids: Iterable[int]) -> dict[int, Experiment]:
        ids = list(ids)
        if not ids:
            return {}
        return {e.id: e for e in self._select(f"id IN ({','.join('?' * len(ids))})", ids)}

    # -- research notes (notes.py): one bounded text per run --------------------------------
    def research_notes(self, tag: str) -> str:
        """The run's research notes ("" when none were written, or in an older ledger)."""
        try:
            r = self._db.execute("SELECT text FROM research_notes WHERE tag = ?", (tag,)).fetchone()
        except sqlite3.OperationalError:      # a read-only view of a ledger from before notes
            return ""
        return r[0] if r else ""

    def set_research_notes(self, tag: str, text: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO research_notes VALUES (?,?,?)",
                             (tag, text, time.time()))

    # -- slots (what each worker is doing, for `status`) -------------------------------------
    def set_slot(self, tag: str, slot: int, experiment_id: int | None, gpu: str | None = None,
                 host: str | None = None) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO slots VALUES (?,?,?,?,?,?)",
                             (tag, slot, experiment_id, time.time(), gpu, host))

    def slots(self, tag: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.execute(
            "SELECT * FROM slots WHERE tag = ? ORDER BY slot", (tag,))]

    def clear_slots(self, tag: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM slots WHERE tag = ?", (tag,))

    # -- comparisons (compare.py) and program generations (evolve.py) --------------------------
    def get_comparison(self, name: str) -> dict[str, Any] | None:
        """The spec a comparison was started with (JSON), or None."""
        r = self._db.execute("SELECT spec FROM comparisons WHERE name = ?", (name,)).fetchone()
        return json.loads(r[0]) if r else None

    def create_comparison(self, name: str, spec: dict[str, Any],
                          runs: list[tuple[str, str, int]]) -> None:
        """A comparison and its runs (tag, org, repeat), in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO comparisons VALUES (?,?,?)",
                                 (name, time.time(), dumps(spec)))
                self._db.executemany(
                    "INSERT INTO comparison_runs (comparison, tag, org, repeat) VALUES (?,?,?,?)",
                    [(name, tag, org, k) for tag, org, k in runs])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def comparison_runs(self, name: str) -> list[dict[str, Any]]:
        """The runs of a comparison (tag, org, repeat, seconds, done), in planning order."""
        return [dict(r) for r in self._db.execute(
            "SELECT tag, org, repeat, seconds, done FROM comparison_runs WHERE comparison = ? "
            "ORDER BY rowid", (name,))]

    def update_comparison_run(self, name: str, tag: str, *, add_seconds: float = 0.0,
                              done: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE comparison_runs SET seconds = seconds + ?, done = COALESCE(?, done) "
                "WHERE comparison = ? AND tag = ?", (add_seconds, done, name, tag))

    def comparisons(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT name FROM comparisons ORDER BY created")]

    def record_generation(self, meta: str, generation: int, record: dict[str, Any]) -> None:
        """One generation of `evolve-program` (written again as it advances)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO generations VALUES (?,?,?,?)",
                             (meta, generation, time.time(), dumps(record)))

    def generations(self, meta: str) -> list[dict[str, Any]]:
        """Every recorded generation of a meta run, oldest first."""
        return [json.loads(r[0]) for r in self._db.execute(
            "SELECT record FROM generations WHERE meta = ? ORDER BY generation", (meta,))]
