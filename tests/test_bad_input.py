"""Bad input added with the run options and the locked spec: one error line each, no traceback,
and nothing already recorded is lost."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from conftest import ar, cli_env, ledger_rows


def _one_error(p) -> str:
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in p.stderr, p.stderr
    return lines[0]


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--workers", "0", "--workers must be at least 1 (got 0)"),
    ("--max-experiments", "0", "--max-experiments must be at least 1 (got 0)"),
    ("--budget", "-1", "--budget must be above 0 (got -1)"),
    ("--max-time", "0", "--max-time must be above 0 (got 0)"),
    ("--max-cost", "-2", "--max-cost must be above 0 (got -2)"),
])
def test_a_numeric_flag_out_of_range_is_one_error_line(tmp_path, make_target, flag, value, says):
    root = make_target(tmp_path)
    assert says in _one_error(ar(root, "run", "--tag", "t", flag, value))
    assert not (root / ".autoresearch" / "ledger.db").exists()   # nothing started


def test_an_uncommitted_toml_is_refused_and_the_ledger_kept(tmp_path, make_target):
    root = make_target(tmp_path)
    ok = ar(root, "run", "--tag", "t", "--policy", "greedy", "--max-experiments", "2")
    assert ok.returncode == 0, ok.stderr
    before = ledger_rows(root, "t")
    toml = root / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('"budget": 1', '"budget": 2').replace("budget = 1", "budget = 2"))
    line = _one_error(ar(root, "run", "--tag", "t", "--policy", "greedy", "--max-experiments", "3"))
    assert "autoresearch.toml differs from the version run 't' started with" in line
    assert ledger_rows(root, "t") == before


def test_sandbox_without_bubblewrap_is_one_error_line(tmp_path, make_target):
    root = make_target(tmp_path, sandbox=True)
    # a PATH with git and this Python, and no bwrap
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "git").symlink_to(shutil.which("git"))
    env = cli_env()
    env["PATH"] = f"{bindir}{os.pathsep}{Path(sys.executable).parent}"
    import subprocess
    p = subprocess.run([sys.executable, "-m", "autoresearch.cli", "run", "--tag", "t",
                        "--max-experiments", "1"], cwd=root, env=env, capture_output=True,
                       text=True, timeout=60)
    assert "sandbox = true needs bubblewrap" in _one_error(p)
