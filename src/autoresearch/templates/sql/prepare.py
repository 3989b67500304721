"""sql target: the fixed data set (LOCKED: the agent may not change this file).

A shop database with `customers` and `orders`, generated from a fixed seed, so every machine
sees the same rows and nothing is downloaded. `python prepare.py` writes it once to
$AUTORESEARCH_CACHE/sql/shop-<orders>.db (default ~/.cache/autoresearch); the size is
SQL_ORDERS (default 200,000 orders) and SQL_CUSTOMERS (default 20,000).
"""

import hashlib
import os
import random
import sqlite3
import sys
from pathlib import Path

SEED = 20240611                      # fixed: the same data everywhere
ORDERS = int(os.environ.get("SQL_ORDERS", "200000"))
CUSTOMERS = int(os.environ.get("SQL_CUSTOMERS", "20000"))
DAYS = 1000                          # order days 0..999
REGIONS = ["north", "south", "east", "west", "central", "islands", "mountains", "coast"]
SEGMENTS = ["consumer", "small", "enterprise", "public"]
STATUSES = ["pending", "shipped", "shipped", "shipped", "returned", "cancelled"]


def cache_dir() -> Path:
    root = os.environ.get("AUTORESEARCH_CACHE") or os.path.expanduser("~/.cache/autoresearch")
    return Path(root) / "sql"


def db_path() -> Path:
    return cache_dir() / f"shop-{CUSTOMERS}-{ORDERS}.db"


def build(path: Path) -> None:
    rng = random.Random(SEED)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    db = sqlite3.connect(tmp)
    db.executescript("""
        CREATE TABLE customers (id INTEGER PRIMARY KEY, region TEXT NOT NULL,
                                segment TEXT NOT NULL, signup_day INTEGER NOT NULL);
        CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL,
                             day INTEGER NOT NULL, status TEXT NOT NULL,
                             amount_cents INTEGER NOT NULL);
    """)
    db.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)",
                   ((i, rng.choice(REGIONS), rng.choice(SEGMENTS), rng.randrange(DAYS))
                    for i in range(1, CUSTOMERS + 1)))
    db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)",
                   ((i, rng.randrange(1, CUSTOMERS + 1), rng.randrange(DAYS),
                     rng.choice(STATUSES), rng.randrange(100, 100_000))
                    for i in range(1, ORDERS + 1)))
    db.commit()
    db.close()
    os.replace(tmp, path)   # atomic: a reader never sees half a database


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def ensure() -> Path:
    path = db_path()
    if not path.exists():
        build(path)
    return path


if __name__ == "__main__":
    p = ensure()
    print(f"data: {p} ({p.stat().st_size / 2**20:.1f} MiB, sha256 {digest(p)})")
    print(f"rows: {ORDERS}")
    sys.exit(0)
