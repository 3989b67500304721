"""sandbox = true: the run step can write its own worktree and TMPDIR, nothing else (the
prepared data, the user's checkout). Skipped where bubblewrap is missing or cannot run."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import ar, train_source


def _bwrap_works() -> bool:
    if shutil.which("bwrap") is None:
        return False
    return subprocess.run(["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "true"],
                          capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _bwrap_works(), reason="bubblewrap is not usable here")

WRITE = (
    "import os, tempfile\n"
    "open(os.path.join(tempfile.gettempdir(), 'scratch'), 'w').write('ok')\n"   # allowed
    "open('local-output.bin', 'w').write('ok')\n"                                  # allowed
    "target = os.environ.get('TARGET_FILE')\n"
    "if target:\n"
    "    open(target, 'w').write('tampered')\n"
)


def _rows(root):
    out = ar(root, "export", "--format", "jsonl", check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_sandboxed_run_writes_its_worktree_but_not_the_cache(tmp_path, make_target):
    root = make_target(tmp_path, files={"train.py": train_source(5.0, 0.0, WRITE)},
                       sandbox=True)
    cache = root / ".autoresearch" / "cache"
    cache.mkdir(parents=True)
    victim = cache / "val.bin"
    victim.write_text("pinned validation data")
    toml = root / "autoresearch.toml"
    toml.write_text(toml.read_text() + f'\n[env]\nTARGET_FILE = "{victim}"\n')
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@l", "commit", "-qam", "env"],
                   cwd=root, check=True)
    p = ar(root, "run", "--tag", "sb", "--policy", "greedy", "--max-experiments", "1")
    assert victim.read_text() == "pinned validation data"
    row = _rows(root)[0]
    assert row["status"] == "crash" and "Read-only file system" in row["reason"], (row, p.stderr)


def test_sandboxed_run_that_writes_only_its_own_files_is_measured(tmp_path, make_target):
    root = make_target(tmp_path, files={"train.py": train_source(5.0, 0.0, WRITE)},
                       sandbox=True)
    p = ar(root, "run", "--tag", "sb", "--policy", "greedy", "--max-experiments", "1")
    row = _rows(root)[0]
    assert row["status"] == "keep" and row["metric"] == 5.0, (row, p.stdout, p.stderr)
