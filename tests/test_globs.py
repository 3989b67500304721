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
