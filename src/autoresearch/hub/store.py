"""The hub's storage: users, claims, verifications, the best per hardware class and its chain.

One API (`HubStore`) over two backends: embedded SQLite in WAL mode (the default, one machine)
and PostgreSQL through psycopg 3 (`postgresql://...`, hubs beyond one machine). The SQL is one
portable dialect; a backend only opens connections, maps placeholders and brackets transactions.

Guarantees:
- Every state change is one transaction (`atomic()`), committed with a synchronous write before
  the HTTP answer leaves, so a kill -9 of the hub loses no claim and no verification.
- Compound changes (lease a claim, decide it, move the best) nest in one `atomic()` block. On
  PostgreSQL an advisory lock serialises writers, so several hub processes may share a database.
- The best of a hardware class moves only by compare-and-swap on its version.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AutoresearchError

SCHEMA_VERSION = 1
_ADVISORY_KEY = 0x61726875   # "arhu": the hub's writer lock on PostgreSQL

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    """CREATE TABLE IF NOT EXISTS users (
        id {pk}, name TEXT NOT NULL UNIQUE, role TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE,
        streak INTEGER NOT NULL DEFAULT 0, created DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS claims (
        id {pk}, user_id INTEGER NOT NULL, hardware TEXT NOT NULL, kind TEXT NOT NULL,
        parent TEXT NOT NULL, commit_sha TEXT NOT NULL UNIQUE, tree_sha TEXT NOT NULL,
        agent TEXT NOT NULL DEFAULT '', description TEXT NOT NULL DEFAULT '',
        claimed_metric DOUBLE PRECISION, claimed_runs TEXT NOT NULL DEFAULT '[]',
        status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', flags TEXT NOT NULL DEFAULT '[]',
        duplicate_of INTEGER, rebased_from INTEGER, needed INTEGER NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0, diff TEXT NOT NULL DEFAULT '',
        diff_sig TEXT NOT NULL DEFAULT '[]', added INTEGER NOT NULL DEFAULT 0,
        removed INTEGER NOT NULL DEFAULT 0, verified_metric DOUBLE PRECISION,
        best_metric DOUBLE PRECISION, p_value DOUBLE PRECISION,
        created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS claims_open ON claims (status, hardware, priority, id)",
    "CREATE INDEX IF NOT EXISTS claims_user ON claims (user_id, created)",
    "CREATE INDEX IF NOT EXISTS claims_tree ON claims (tree_sha)",
    "CREATE INDEX IF NOT EXISTS claims_hw ON claims (hardware, id)",
    "CREATE INDEX IF NOT EXISTS claims_updated ON claims (updated)",
    """CREATE TABLE IF NOT EXISTS verifications (
        id {pk}, claim_id INTEGER NOT NULL, verifier_id INTEGER NOT NULL, against TEXT NOT NULL,
        status TEXT NOT NULL, expires DOUBLE PRECISION NOT NULL,
        candidate_runs TEXT NOT NULL DEFAULT '[]', best_runs TEXT NOT NULL DEFAULT '[]',
        seeds TEXT NOT NULL DEFAULT '[]', outcome TEXT NOT NULL DEFAULT '',
        reason TEXT NOT NULL DEFAULT '', created DOUBLE PRECISION NOT NULL,
        finished DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS verifications_claim ON verifications (claim_id, status)",
    "CREATE INDEX IF NOT EXISTS verifications_open ON verifications (status, expires)",
    """CREATE TABLE IF NOT EXISTS best (
        hardware TEXT PRIMARY KEY, commit_sha TEXT NOT NULL, claim_id INTEGER,
        version INTEGER NOT NULL, metric DOUBLE PRECISION, updated DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS chain (
        id {pk}, hardware TEXT NOT NULL, claim_id INTEGER, commit_sha TEXT NOT NULL,
        parent TEXT, metric DOUBLE PRECISION, best_metric DOUBLE PRECISION,
        p_value DOUBLE PRECISION, verifiers TEXT NOT NULL DEFAULT '[]',
        at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS chain_hw ON chain (hardware, id)",
]

#: claim statuses; the open ones still await verification
OPEN = ("queued", "verifying")
FINAL = ("verified", "rejected", "duplicate", "rebased", "conflict")


class Conflict(AutoresearchError):
    """A write broke a uniqueness rule (the same commit claimed twice, a user name taken)."""


@dataclass
class User:
    id: int
    name: str
    role: str
    streak: int = 0
    created: float = 0.0


@dataclass
class Claim:
    id: int
    user_id: int
    hardware: str
    kind: str                 # claim | rebase
    parent: str
    commit_sha: str
    tree_sha: str
    agent: str
    description: str
    claimed_metric: float | None
    claimed_runs: list[float]
    status: str
    reason: str
    flags: list[str]
    duplicate_of: int | None
    rebased_from: int | None
    needed: int
    priority: int
    diff: str
    diff_sig: list[str]
    added: int
    removed: int
    verified_metric: float | None
    best_metric: float | None
    p_value: float | None
    created: float
    updated: float


@dataclass
class Verification:
    id: int
    claim_id: int
    verifier_id: int
    against: str
    status: str               # leased | done | expired | abandoned
    expires: float
    candidate_runs: list[float]
    best_runs: list[float]
    seeds: list[int]
    outcome: str              # measured | crash | error ('' while leased)
    reason: str
    created: float
    finished: float | None


@dataclass
class Best:
    hardware: str
    commit_sha: str
    claim_id: int | None
    version: int
    metric: float | None
    updated: float


@dataclass
class ChainLink:
    id: int
    hardware: str
    claim_id: int | None
    commit_sha: str
    parent: str | None
    metric: float | None
    best_metric: float | None
    p_value: float | None
    verifiers: list[str] = field(default_factory=list)
    at: float = 0.0


_JSON = {"claimed_runs", "flags", "diff_sig", "candidate_runs", "best_runs", "seeds", "verifiers"}


def _row(cls, row: dict[str, Any] | None):
    if row is None:
        return None
    data = {k: (json.loads(v) if k in _JSON and isinstance(v, str) else v)
            for k, v in row.items() if k in cls.__dataclass_fields__}
    return cls(**data)


def _enc(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


# == backends ==================================================================================
class _Backend:
    """A connection, a placeholder style and transaction brackets; nothing else."""

    pk = "INTEGER PRIMARY KEY AUTOINCREMENT"
    url = ""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.depth = 0

    def run(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def begin(self) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        self.run("COMMIT")

    def rollback(self) -> None:
        self.run("ROLLBACK")

    def close(self) -> None:
        raise NotImplementedError


class _SQLite(_Backend):
    def __init__(self, path: Path):
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.url = f"sqlite:///{path}"
        try:
            self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                                      timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")   # an answered request survives kill -9
            self.db.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as e:
            raise AutoresearchError(f"cannot open the hub database {path}: {e} — check the path "
                                    f"and its permissions (--data DIR)") from None
        self.db.row_factory = sqlite3.Row

    def run(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        try:
            cur = self.db.execute(sql, args)
        except sqlite3.IntegrityError as e:
            raise Conflict(str(e)) from None
        return [dict(r) for r in cur.fetchall()] if cur.description else []

    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def close(self) -> None:
        self.db.close()


class _Postgres(_Backend):
    pk = "BIGSERIAL PRIMARY KEY"

    def __init__(self, url: str):
        super().__init__()
        self.url = url
        try:
            import psycopg
            from psycopg.rows import dict_row
        except ImportError:
            raise AutoresearchError("--db postgresql://... needs psycopg 3: pip install "
                                    "'autoresearch[hub]'") from None
        try:
            self.db = psycopg.connect(url, autocommit=True, row_factory=dict_row)
        except psycopg.Error as e:
            raise AutoresearchError(f"cannot connect to {_redact(url)}: "
                                    f"{str(e).strip().splitlines()[0]} — check --db") from None

    def run(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        import psycopg

        try:
            cur = self.db.execute(sql.replace("?", "%s"), args)
        except psycopg.errors.IntegrityError as e:
            raise Conflict(str(e).strip().splitlines()[0]) from None
        return list(cur.fetchall()) if cur.description else []

    def begin(self) -> None:
        self.run("BEGIN")
        self.run("SELECT pg_advisory_xact_lock(?)", (_ADVISORY_KEY,))

    def close(self) -> None:
        self.db.close()


def _redact(url: str) -> str:
    """The URL without its password, for error messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return url


# == the store =================================================================================
class HubStore:
    """Everything the hub remembers, behind one API, on either backend."""

    def __init__(self, backend: _Backend):
        self.b = backend
        with self.atomic():
            for stmt in _SCHEMA:
                self.b.run(stmt.replace("{pk}", self.b.pk))
            if not self.b.run("SELECT value FROM meta WHERE key = 'schema'"):
                self.b.run("INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    @property
    def url(self) -> str:
        return _redact(self.b.url)

    def close(self) -> None:
        self.b.close()

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """One transaction; nested blocks join the outer one."""
        b = self.b
        with b.lock:
            if b.depth == 0:
                b.begin()
            b.depth += 1
            try:
                yield
            except BaseException:
                b.depth -= 1
                if b.depth == 0:
                    b.rollback()
                raise
            b.depth -= 1
            if b.depth == 0:
                b.commit()

    def _all(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        """One statement: inside an open transaction it joins it; alone it is atomic by itself
        (autocommit), so a read takes no write lock."""
        with self.b.lock:
            return self.b.run(sql, args)

    def _one(self, sql: str, args: tuple = ()) -> dict[str, Any] | None:
        rows = self._all(sql, args)
        return rows[0] if rows else None

    def _insert(self, table: str, fields: dict[str, Any]) -> int:
        cols = list(fields)
        row = self._one(f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                        f"({', '.join('?' * len(cols))}) RETURNING id",
                        tuple(_enc(v) for v in fields.values()))
        assert row is not None
        return int(row["id"])

    def _update(self, table: str, key: int, fields: dict[str, Any]) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        self._all(f"UPDATE {table} SET {sets} WHERE id = ?",
                  (*(_enc(v) for v in fields.values()), key))

    # -- meta --------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return row["value"] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.atomic():
            self._all("DELETE FROM meta WHERE key = ?", (key,))
            self._all("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- users -------------------------------------------------------------------------------
    def add_user(self, name: str, role: str, key_hash: str) -> User:
        with self.atomic():
            if self._one("SELECT id FROM users WHERE name = ?", (name,)):
                raise AutoresearchError(f"user '{name}' already exists — pick another name")
            uid = self._insert("users", {"name": name, "role": role, "key_hash": key_hash,
                                         "streak": 0, "created": time.time()})
        return User(uid, name, role, 0)

    def user_by_key_hash(self, key_hash: str) -> User | None:
        return _row(User, self._one("SELECT * FROM users WHERE key_hash = ?", (key_hash,)))

    def user(self, uid: int) -> User | None:
        return _row(User, self._one("SELECT * FROM users WHERE id = ?", (uid,)))

    def users(self) -> list[User]:
        return [_row(User, r) for r in self._all("SELECT * FROM users ORDER BY id")]

    def set_streak(self, uid: int, streak: int) -> None:
        self._update("users", uid, {"streak": streak})

    # -- claims ------------------------------------------------------------------------------
    def add_claim(self, **fields: Any) -> Claim:
        now = time.time()
        fields.setdefault("created", now)
        fields.setdefault("updated", now)
        cid = self._insert("claims", fields)
        claim = self.claim(cid)
        assert claim is not None
        return claim

    def claim(self, cid: int) -> Claim | None:
        return _row(Claim, self._one("SELECT * FROM claims WHERE id = ?", (cid,)))

    def claim_by_commit(self, sha: str) -> Claim | None:
        return _row(Claim, self._one("SELECT * FROM claims WHERE commit_sha = ?", (sha,)))

    def claim_by_tree(self, tree: str, hardware: str) -> Claim | None:
        return _row(Claim, self._one(
            "SELECT * FROM claims WHERE tree_sha = ? AND hardware = ? AND status <> 'duplicate' "
            "ORDER BY id LIMIT 1", (tree, hardware)))

    def update_claim(self, cid: int, **fields: Any) -> None:
        fields["updated"] = time.time()
        self._update("claims", cid, fields)

    def claims(self, *, user_id: int | None = None, hardware: str | None = None,
               statuses: tuple[str, ...] | None = None, limit: int = 100,
               newest_first: bool = True) -> list[Claim]:
        where, args = [], []
        if user_id is not None:
            where.append("user_id = ?")
            args.append(user_id)
        if hardware is not None:
            where.append("hardware = ?")
            args.append(hardware)
        if statuses:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            args.extend(statuses)
        sql = "SELECT * FROM claims" + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY id {'DESC' if newest_first else 'ASC'} LIMIT ?"
        return [_row(Claim, r) for r in self._all(sql, (*args, limit))]

    def recent_signatures(self, hardware: str, limit: int) -> list[tuple[int, list[str]]]:
        rows = self._all("SELECT id, diff_sig FROM claims WHERE hardware = ? AND kind = 'claim' "
                         "ORDER BY id DESC LIMIT ?", (hardware, limit))
        return [(r["id"], json.loads(r["diff_sig"])) for r in rows]

    def claims_since(self, user_id: int, since: float) -> int:
        row = self._one("SELECT COUNT(*) AS n FROM claims WHERE user_id = ? AND created >= ? "
                        "AND kind = 'claim'", (user_id, since))
        return int(row["n"]) if row else 0

    def count_claims(self, hardware: str | None = None) -> dict[str, int]:
        sql = "SELECT status, COUNT(*) AS n FROM claims"
        args: tuple = ()
        if hardware is not None:
            sql += " WHERE hardware = ?"
            args = (hardware,)
        return {r["status"]: int(r["n"]) for r in self._all(sql + " GROUP BY status", args)}

    def open_candidates(self, hardware: str, limit: int = 50) -> list[Claim]:
        """Open claims of a class, the flagged (priority) ones first, then the oldest."""
        return [_row(Claim, r) for r in self._all(
            "SELECT * FROM claims WHERE hardware = ? AND status IN ('queued', 'verifying') "
            "ORDER BY priority DESC, id ASC LIMIT ?", (hardware, limit))]

    def claim_commits(self) -> list[str]:
        return [r["commit_sha"] for r in self._all("SELECT commit_sha FROM claims")]

    # -- verifications -----------------------------------------------------------------------
    def add_verification(self, **fields: Any) -> Verification:
        fields.setdefault("created", time.time())
        vid = self._insert("verifications", fields)
        v = self.verification(vid)
        assert v is not None
        return v

    def verification(self, vid: int) -> Verification | None:
        return _row(Verification, self._one("SELECT * FROM verifications WHERE id = ?", (vid,)))

    def verifications(self, claim_id: int, statuses: tuple[str, ...] | None = None
                      ) -> list[Verification]:
        sql, args = "SELECT * FROM verifications WHERE claim_id = ?", [claim_id]
        if statuses:
            sql += f" AND status IN ({', '.join('?' * len(statuses))})"
            args.extend(statuses)
        return [_row(Verification, r) for r in self._all(sql + " ORDER BY id", tuple(args))]

    def update_verification(self, vid: int, **fields: Any) -> None:
        self._update("verifications", vid, fields)

    def expire_leases(self, now: float) -> list[int]:
        """Mark leases past their expiry as expired; returns their claim ids."""
        with self.atomic():
            rows = self._all("SELECT id, claim_id FROM verifications WHERE status = 'leased' "
                             "AND expires < ?", (now,))
            for r in rows:
                self._update("verifications", r["id"], {"status": "expired", "finished": now,
                                                        "reason": "lease expired"})
        return [r["claim_id"] for r in rows]

    def active_leases(self, verifier_id: int | None = None) -> list[Verification]:
        sql, args = "SELECT * FROM verifications WHERE status = 'leased'", ()
        if verifier_id is not None:
            sql += " AND verifier_id = ?"
            args = (verifier_id,)
        return [_row(Verification, r) for r in self._all(sql + " ORDER BY id", args)]

    # -- the best and its chain ----------------------------------------------------------------
    def best(self, hardware: str) -> Best | None:
        return _row(Best, self._one("SELECT * FROM best WHERE hardware = ?", (hardware,)))

    def bests(self) -> list[Best]:
        return [_row(Best, r) for r in self._all("SELECT * FROM best ORDER BY hardware")]

    def init_best(self, hardware: str, commit: str) -> Best:
        with self.atomic():
            best = self.best(hardware)
            if best is None:
                self._all("INSERT INTO best (hardware, commit_sha, claim_id, version, metric, "
                          "updated) VALUES (?, ?, NULL, 0, NULL, ?)", (hardware, commit, time.time()))
                best = self.best(hardware)
        assert best is not None
        return best

    def swap_best(self, hardware: str, expect_version: int, commit: str, claim_id: int | None,
                  metric: float | None) -> bool:
        """Compare-and-swap: move the best only if nobody moved it since `expect_version`."""
        with self.atomic():
            rows = self._all("UPDATE best SET commit_sha = ?, claim_id = ?, version = version + 1, "
                             "metric = ?, updated = ? WHERE hardware = ? AND version = ? "
                             "RETURNING version", (commit, claim_id, metric, time.time(), hardware,
                                                   expect_version))
        return bool(rows)

    def measure_best(self, hardware: str, commit: str, metric: float) -> None:
        """Record a first measured value of a best that has none (the base); not a move."""
        self._all("UPDATE best SET metric = ?, updated = ? WHERE hardware = ? AND commit_sha = ? "
                  "AND metric IS NULL", (metric, time.time(), hardware, commit))

    def add_link(self, **fields: Any) -> None:
        fields.setdefault("at", time.time())
        self._insert("chain", fields)

    def chain(self, hardware: str, limit: int = 200) -> list[ChainLink]:
        rows = self._all("SELECT * FROM chain WHERE hardware = ? ORDER BY id DESC LIMIT ?",
                         (hardware, limit))
        return [_row(ChainLink, r) for r in reversed(rows)]

    def chain_commits(self, hardware: str | None = None) -> list[str]:
        sql, args = "SELECT commit_sha FROM chain", ()
        if hardware is not None:
            sql, args = sql + " WHERE hardware = ?", (hardware,)
        return [r["commit_sha"] for r in self._all(sql, args)]

    def state_version(self) -> tuple:
        """Changes whenever anything shown on the leaderboard changes (for caching)."""
        row = self._one("SELECT (SELECT COALESCE(MAX(updated), 0) FROM claims) AS c, "
                        "(SELECT COUNT(*) FROM verifications) AS v, "
                        "(SELECT COALESCE(SUM(version), 0) FROM best) AS b")
        assert row is not None
        return (row["c"], row["v"], row["b"])


def open_store(db: str | None, data_dir: Path) -> HubStore:
    """`--db`: None or sqlite:///PATH for SQLite (default DATA/hub.db), postgresql://... else."""
    if db is None or db == "":
        return HubStore(_SQLite(Path(data_dir) / "hub.db"))
    if db.startswith("sqlite:///"):
        return HubStore(_SQLite(Path(db[len("sqlite:///"):])))
    if db.startswith(("postgresql://", "postgres://")):
        return HubStore(_Postgres(db))
    raise AutoresearchError(f"--db {db!r} is not a database URL — use sqlite:///PATH or "
                            f"postgresql://USER@HOST/DB")
