"""sql target: the evaluator (LOCKED). Times query.sql and checks its answer on every run.

    python evaluate.py           gate + timing; prints `query_ms: <median>` and its spread
    python evaluate.py --plan    prints the query plan (the run step: a hint for the agent)

Protocol:
1. The data set is verified against the generator (row counts and sums recomputed from the
   fixed seed), so a database that was shrunk or edited is refused.
2. It is copied to a private temporary directory and changed there from a seed drawn now (from
   os.urandom): every amount moves by one random offset, and a random share of the orders gets
   a fresh day and status. The answer cannot be known before the evaluation, so a query that
   returns constants (the reference's rows, computed once) fails the gate; the data's shape,
   and so every plan's speed, is unchanged.
3. indexes.sql runs on that copy (only CREATE INDEX, DROP INDEX and ANALYZE statements), and is
   timed apart as `index_ms`. The reference query (below, not the agent's) gives the expected
   rows.
4. query.sql must be one SELECT (or WITH) statement. It runs on a read-only connection with an
   authorizer that allows reads only, and is stopped after QUERY_TIMEOUT seconds.
5. One warm-up run, then at least MIN_RUNS timed runs (up to MAX_RUNS, or until the budget is
   spent). Every run's rows are compared with the reference: as a multiset when the reference
   has no ORDER BY, in order otherwise. `query_ms` is the median; `query_ms_iqr` its spread.
"""

import os
import random
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import prepare

REFERENCE = """
SELECT c.region, COUNT(*) AS n, SUM(o.amount_cents) AS revenue_cents
FROM orders o JOIN customers c ON c.id = o.customer_id
WHERE o.status = 'shipped' AND o.day BETWEEN 970 AND 999 AND c.segment = 'enterprise'
GROUP BY c.region
"""
MIN_RUNS = 5              # timed runs at least
MAX_RUNS = 15             # timed runs at most
QUERY_TIMEOUT = 10.0      # seconds for one run of the query
RESHUFFLED = 0.02         # share of the orders given a fresh day and status per evaluation
ALLOWED_SETUP = re.compile(r"^\s*(CREATE\s+(UNIQUE\s+)?INDEX|DROP\s+INDEX|ANALYZE)\b", re.I)


def fail(message: str) -> int:
    print(f"eval_error: {message}", flush=True)
    return 1


def strip_comments(sql: str) -> str:
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.S)
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


def statements(sql: str) -> list[str]:
    out, buf = [], ""
    for line in strip_comments(sql).splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip().strip(";").strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


def expected_fingerprint() -> tuple[int, int, int]:
    """Row count, sum of amounts and sum of days, recomputed from the generator's seed."""
    rng = random.Random(prepare.SEED)
    for _ in range(prepare.CUSTOMERS):
        rng.choice(prepare.REGIONS), rng.choice(prepare.SEGMENTS), rng.randrange(prepare.DAYS)
    amount = days = 0
    for _ in range(prepare.ORDERS):
        rng.randrange(1, prepare.CUSTOMERS + 1)
        days += rng.randrange(prepare.DAYS)
        rng.choice(prepare.STATUSES)
        amount += rng.randrange(100, 100_000)
    return prepare.ORDERS, amount, days


def perturb(conn: sqlite3.Connection) -> None:
    """Fresh data for this evaluation only: an answer computed in advance is wrong here."""
    rng = random.Random(int.from_bytes(os.urandom(16), "little"))
    conn.execute("UPDATE orders SET amount_cents = amount_cents + ?", (rng.randrange(1, 1000),))
    ids = rng.sample(range(1, prepare.ORDERS + 1), max(1, int(prepare.ORDERS * RESHUFFLED)))
    conn.executemany("UPDATE orders SET day = ?, status = ? WHERE id = ?",
                     [(rng.randrange(prepare.DAYS), rng.choice(prepare.STATUSES), i)
                      for i in ids])
    conn.commit()


def read_only(action, *args) -> int:
    allowed = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}
    return sqlite3.SQLITE_OK if action in allowed else sqlite3.SQLITE_DENY


def canonical(rows: list[tuple], ordered: bool) -> list[tuple]:
    rows = [tuple(round(v, 9) if isinstance(v, float) else v for v in r) for r in rows]
    return rows if ordered else sorted(rows, key=repr)


def timed(conn: sqlite3.Connection, sql: str) -> tuple[float, list[tuple]]:
    deadline = time.perf_counter() + QUERY_TIMEOUT
    conn.set_progress_handler(lambda: 1 if time.perf_counter() > deadline else 0, 10_000)
    t0 = time.perf_counter()
    rows = conn.execute(sql).fetchall()
    return (time.perf_counter() - t0) * 1000.0, rows


def main(argv: list[str]) -> int:
    source = prepare.db_path()
    if not source.exists():
        return fail(f"no data at {source}: run 'python prepare.py' first (the target's setup)")
    query_sql = statements(Path("query.sql").read_text(encoding="utf-8"))
    if len(query_sql) != 1 or not re.match(r"^\s*(SELECT|WITH)\b", query_sql[0], re.I):
        return fail("query.sql must hold exactly one SELECT (or WITH ... SELECT) statement")
    query = query_sql[0].rstrip(";")
    setup = statements(Path("indexes.sql").read_text(encoding="utf-8"))
    bad = next((s for s in setup if not ALLOWED_SETUP.match(s)), None)
    if bad is not None:
        return fail(f"indexes.sql may hold only CREATE INDEX, DROP INDEX and ANALYZE: "
                    f"{' '.join(bad.split())[:80]!r}")

    with tempfile.TemporaryDirectory(prefix="ar-sql-") as tmp:
        db = Path(tmp) / "shop.db"
        shutil.copyfile(source, db)
        rw = sqlite3.connect(db)
        got = rw.execute("SELECT COUNT(*), COALESCE(SUM(amount_cents), 0), "
                         "COALESCE(SUM(day), 0) FROM orders").fetchone()
        if tuple(got) != expected_fingerprint():
            return fail(f"the data set at {source} differs from the generator's: delete it and "
                        f"run 'python prepare.py' again")
        perturb(rw)
        reference = rw.execute(REFERENCE).fetchall()
        ordered = re.search(r"\bORDER\s+BY\b", REFERENCE, re.I) is not None
        t0 = time.perf_counter()
        try:
            for s in setup:
                rw.execute(s)
            rw.commit()
        except sqlite3.Error as e:
            return fail(f"indexes.sql failed: {e}")
        index_ms = (time.perf_counter() - t0) * 1000.0
        rw.close()
        db_mb = db.stat().st_size / 2**20

        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        conn.set_authorizer(read_only)
        if "--plan" in argv:
            try:
                plan = conn.execute("EXPLAIN QUERY PLAN " + query).fetchall()
            except sqlite3.Error as e:
                return fail(f"query.sql does not compile: {e}")
            print("query plan:")
            for row in plan:
                print("  " + str(row[-1]))
            print(f"indexes: {len(setup)} statements, {index_ms:.0f} ms")
            return 0

        want = canonical(reference, ordered)
        budget = float(os.environ.get("AUTORESEARCH_BUDGET_SECONDS", "20"))
        times: list[float] = []
        started = time.perf_counter()
        for i in range(MAX_RUNS + 1):
            try:
                ms, rows = timed(conn, query)
            except sqlite3.OperationalError as e:
                if "interrupted" in str(e):
                    return fail(f"one run of the query took over {QUERY_TIMEOUT:g} s")
                return fail(f"query.sql failed: {e}")
            except sqlite3.Error as e:
                return fail(f"query.sql failed: {e}")
            if canonical(rows, ordered) != want:
                return fail(f"run {i}: the result differs from the reference ({len(rows)} rows, "
                            f"expected {len(reference)}; first {rows[:2]} vs {reference[:2]})")
            if i > 0:                 # run 0 warms the page cache
                times.append(ms)
            if len(times) >= MIN_RUNS and time.perf_counter() - started > budget:
                break
        conn.close()

    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    print(f"query_ms: {statistics.median(times):.4f}")
    print(f"query_ms_iqr: {q[2] - q[0]:.4f}")
    print(f"runs: {len(times)}")
    print(f"index_ms: {index_ms:.1f}")
    print(f"db_mb: {db_mb:.2f}")
    print(f"rows: {prepare.ORDERS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
