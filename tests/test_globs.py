"""Editable/locked glob matching: `*` within a segment, `**` across segments, top-level globs."""

from __future__ import annotations

import pytest

from autoresearch.globs import matches


@pytest.mark.parametrize("path,glob,ok", [
    ("train.py", "*.py", True),
    ("sub/train.py", "*.py", False),          # `*` never crosses a slash
    ("src/a.py", "src/*.py", True),
    ("src/x/a.py", "src/*.py", False),
    ("src/a.py", "src/**/*.py", True),        # `**/` may match zero segments
    ("src/x/y/a.py", "src/**/*.py", True),
    ("src/x/y/a.txt", "src/**/*.py", False),
    ("a/b/c", "**", True),
    ("deep/dir/model.py", "**/model.py", True),
    ("model.py", "**/model.py", True),
    ("src/x/y", "src/**", True),
    ("train.py", "train.py", True),
    ("sub/train.py", "train.py", False),       # a glob without a slash is top level only
    ("train.pyc", "train.py", False),
    ("a1.py", "a?.py", True),
    ("a/.py", "a?.py", False),
    ("config.yaml", "./config.yaml", True),
    (".env", "./.env", True),
    ("a+b.py", "a+b.py", True),               # regex characters are literal
    ("aab.py", "a+b.py", False),
])
def test_glob_matching(path, glob, ok):
    assert matches(path, [glob]) is ok


def test_any_of_several_globs_matches():
    assert matches("prepare.py", ["train.py", "prepare.py"])
    assert not matches("other.py", ["train.py", "prepare.py"])
    assert not matches("train.py", [])


def test_a_sessions_bulk_editable_filter_agrees_with_its_per_path_verdict(tmp_path):
    """Session.editable_files (what proposals use on every commit of a large tree) keeps
    exactly the paths `editable` allows, whether or not their verdicts are remembered yet."""
    from conftest import build_target

    from autoresearch.config import load_target
    from autoresearch.ledger import Ledger
    from autoresearch.ratchet import Ratchet
    from autoresearch.session import Session

    root = build_target(tmp_path, editable=["train.py", "lib/*.py"], locked=["lib/secret.py"])
    target = load_target(root)
    session = Session(target, Ledger(tmp_path / "ledger.db"), Ratchet(root), "t",
                      agent_name="script", policy_name="greedy", budget=None, seed=0)
    files = {p: f"oid-{p}" for p in ["train.py", "evaluate.py", "lib/a.py", "lib/secret.py",
                                     "lib/b.txt", "README.md"]}
    want = {"train.py": "oid-train.py", "lib/a.py": "oid-lib/a.py"}
    assert session.editable_files(files) == want          # verdicts made now
    assert session.editable_files(files) == want          # verdicts remembered
    files["lib/c.py"] = "oid-lib/c.py"                     # one not seen before
    assert session.editable_files(files) == {**want, "lib/c.py": "oid-lib/c.py"}
    assert [p for p in files if session.editable(p)] == list(session.editable_files(files))
