"""Adversarial checks of the core: escapes from the locked evaluator, `try` side effects, resume.

Each test reproduces an attack or a failure found in review and pins the protection against it.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from conftest import ar, build_target, git, ledger_rows, processes_with, proposal, write_script

from autoresearch.runner import run_command


def _statuses(root: Path, tag: str) -> list[tuple[str, float | None, str]]:
    return [(r["status"], r["metric"], r["description"]) for r in ledger_rows(root, tag)]


def _set(path: Path, pattern: str, repl: str) -> None:
    path.write_text(re.sub(pattern, repl, path.read_text(), flags=re.M))


# -- agent-driven mode ----------------------------------------------------------------------
def test_try_does_not_use_an_edited_toml(tmp_path):
    root = build_target(tmp_path, policy=None)
    ar(root, "start", "--tag", "s", "--policy", "greedy", check=True)
    _set(root / "autoresearch.toml", r"^evaluate = .*$", 'evaluate = "echo score: 0.0001"')
    _set(root / "train.py", r"^VALUE = .*$", "VALUE = 50.0")   # really worse
    ar(root, "try", "-m", "worse, with a faked evaluator")
    cand = ledger_rows(root, "s")[-1]
    assert cand["status"] != "keep" and cand["metric"] != 0.0001


def test_try_leaves_untracked_files_alone(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    root = build_target(repo, name="sub", git_init=False)
    git(repo, "add", "-A", ".")
    git(repo, "commit", "-q", "-m", "target in a subdirectory")
    ar(root, "start", "--tag", "s", "--policy", "greedy", check=True)
    (root / "mydata.csv").write_text("precious\n")
    (repo / "notes.txt").write_text("precious\n")
    _set(root / "train.py", r"^VALUE = .*$", "VALUE = 5.0")
    ar(root, "try", "-m", "value 5")
    assert (root / "mydata.csv").exists() and (repo / "notes.txt").exists()


def test_try_refuses_and_restores_an_edited_locked_file(tmp_path):
    root = build_target(tmp_path, policy=None)
    ar(root, "start", "--tag", "s", "--policy", "greedy", check=True)
    original = (root / "evaluate.py").read_text()
    (root / "evaluate.py").write_text('print("score: 0.0001")\n')
    _set(root / "train.py", r"^VALUE = .*$", "VALUE = 50.0")
    p = ar(root, "try", "-m", "worse, with an edited evaluator")
    assert "evaluate.py" in p.stdout and (root / "evaluate.py").read_text() == original
    assert ledger_rows(root, "s")[-1]["metric"] == 50.0


# -- the locked evaluator -------------------------------------------------------------------
def test_run_step_cannot_shadow_an_evaluator_import(tmp_path):
    evaluate = "import json\nprint(f\"score: {json.loads(open('out.txt').read())}\")\n"
    root = build_target(tmp_path, files={"evaluate.py": evaluate}, policy=None)
    evil = ("open('json.py', 'w').write('print(\"score: 0.0001\")\\n"
            "import os\\nos._exit(0)\\n')\n")
    script = write_script(tmp_path / "p.jsonl", [proposal(50.0, extra=evil, description="evil")])
    ar(root, "run", "--tag", "t", "--policy", "greedy", "--agent", f"script:{script}")
    evil_row = ledger_rows(root, "t")[-1]
    assert evil_row["status"] != "keep" and evil_row["metric"] != 0.0001


def test_run_step_cannot_rewrite_the_checkout_toml_for_the_next_session(tmp_path):
    root = build_target(tmp_path, policy=None)
    evil = ("import re\np = '../../../autoresearch.toml'\ns = open(p).read()\n"
            "open(p, 'w').write(re.sub(r'(?m)^evaluate = .*$', "
            "'evaluate = \"echo score: 0.0001\"', s))\n")
    script = write_script(tmp_path / "p.jsonl", [proposal(50.0, extra=evil, description="evil"),
                                                 proposal(60.0, description="plain worse")])
    ar(root, "run", "--tag", "t", "--policy", "greedy", "--agent", f"script:{script}",
       "--max-experiments", "2", check=True)
    ar(root, "run", "--tag", "t", "--policy", "greedy", "--agent", f"script:{script}")
    assert ("keep", 0.0001, "plain worse") not in _statuses(root, "t")


def test_patch_that_renames_a_locked_file_is_invalid_and_never_runs(tmp_path):
    root = build_target(tmp_path, policy=None, editable=["*.py"])
    patch = ("diff --git a/evaluate.py b/train2.py\nsimilarity index 100%\n"
             "rename from evaluate.py\nrename to train2.py\n")
    script = write_script(tmp_path / "p.jsonl", [{"description": "rename", "patch": patch}])
    ar(root, "run", "--tag", "t", "--policy", "greedy", "--agent", f"script:{script}", check=True)
    row = ledger_rows(root, "t")[-1]
    assert row["status"] == "invalid" and "evaluate.py" in row["reason"]
    assert row["wall_time"] is None


def test_locked_wins_over_an_overlapping_editable_glob(tmp_path):
    root = build_target(tmp_path, policy=None, editable=["*.py"])
    script = write_script(tmp_path / "p.jsonl", [
        {"description": "fake evaluator", "files": {"evaluate.py": 'print("score: 0.0001")\n'}}])
    ar(root, "run", "--tag", "t", "--policy", "greedy", "--agent", f"script:{script}", check=True)
    row = ledger_rows(root, "t")[-1]
    assert row["status"] == "invalid" and row["metric"] is None


# -- the runner -----------------------------------------------------------------------------
def test_a_double_forked_process_with_a_clean_environment_does_not_outlive_its_step(tmp_path, marker):
    code = ("import os\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            f"        os.execve('/bin/sh', ['/bin/sh', '-c', 'sleep 30; : {marker}'], {{}})\n"
            "    os._exit(0)\n"
            "os.wait()\n")
    (tmp_path / "escape.py").write_text(code)
    try:
        r = run_command(f"{sys.executable} escape.py", cwd=tmp_path, env=dict(os.environ),
                        log_path=tmp_path / "log", timeout=10)
        assert r.exit_code == 0
        deadline = time.monotonic() + 3   # the kill is sent; give the kernel a moment to reap
        while processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert processes_with(marker) == []
    finally:
        for p in processes_with(marker):
            p.kill()


# -- resume ---------------------------------------------------------------------------------
def test_resume_adds_the_missing_baseline_measurements(tmp_path):
    root = build_target(tmp_path, policy=None)
    ar(root, "run", "--tag", "t", "--policy", "noise-aware", "--max-experiments", "1", check=True)
    p = ar(root, "run", "--tag", "t", "--max-experiments", "4", check=True)
    assert len(ledger_rows(root, "t")) == 4, p.stdout
