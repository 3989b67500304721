"""The hub's commands as a user meets them: keys shown once and stored hashed, and bad input as
one clear line (exit 1)."""

from __future__ import annotations

import hashlib
import sqlite3

from conftest import ar, build_target
from hubkit import add_user


def test_add_user_prints_the_key_once_and_stores_only_its_hash(tmp_path):
    data = tmp_path / "hubdata"
    key = add_user(data, "alice", "verifier")
    db = sqlite3.connect(data / "hub.db")
    rows = db.execute("SELECT name, role, key_hash FROM users").fetchall()
    dump = "\n".join(db.iterdump())
    db.close()
    assert rows == [("alice", "verifier", hashlib.sha256(key.encode()).hexdigest())]
    assert key not in dump
    p = ar(tmp_path, "hub", "add-user", "alice", "--data", str(data))
    assert p.returncode == 1 and "user 'alice' already exists" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_bad_hub_input_is_one_clear_line(tmp_path):
    root = build_target(tmp_path)
    (root / "autoresearch.toml").write_text((root / "autoresearch.toml").read_text() + "# edited\n")
    for args, words in (
            (["hub", "serve", "--target", str(root), "--data", str(tmp_path / "d")],
             "is not committed as it is"),
            (["hub", "serve", "--target", str(tmp_path / "nowhere")], "autoresearch.toml"),
            (["hub", "serve", "--target", str(root), "--runs", "1"], "--runs must be at least 2"),
            (["hub", "serve", "--target", str(root), "--db", "mysql://x"], "sqlite:///PATH"),
            (["hub", "leaderboard", "--hub", "http://127.0.0.1:9", "--retry-for", "0.2"],
             "did not answer"),
            (["verify", "--hub", "http://127.0.0.1:9", "--key", "k", "--workers", "0"],
             "--workers must be at least 1"),
            (["verify", "--hub", "http://127.0.0.1:9", "--key", "k", "--workers", "2", "--gpus", "0"],
             "one per worker")):
        p = ar(tmp_path, *args, timeout=60)
        assert p.returncode == 1, (args, p.stdout, p.stderr)
        assert words in p.stderr, (args, p.stderr)
        assert p.stderr.startswith("error:") and "Traceback" not in p.stderr
