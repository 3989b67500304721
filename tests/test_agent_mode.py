"""Agent-driven mode: a coding agent edits the checkout and calls `start` once, then `try`.

Real subprocesses over a tiny target in a throwaway git repo.
"""

from __future__ import annotations

import json

import pytest
from conftest import ar, build_target, git, ledger_rows, train_source

MAX_LINES = 15   # what a coding agent has to read after each try


@pytest.fixture
def started(tmp_path):
    """A tiny target after `autoresearch start --tag t --policy greedy`."""
    root = build_target(tmp_path)
    p = ar(root, "start", "--tag", "t", "--policy", "greedy")
    assert p.returncode == 0, p.stdout + p.stderr
    return root


def _try(root, message, value=None, source=None):
    if value is not None or source is not None:
        (root / "train.py").write_text(source if source is not None else train_source(value))
    return ar(root, "try", "-m", message)


def test_start_creates_and_checks_out_the_branch_and_measures_the_baseline(tmp_path):
    root = build_target(tmp_path)
    main = git(root, "rev-parse", "HEAD")
    p = ar(root, "start", "--tag", "t")
    assert p.returncode == 0, p.stdout + p.stderr
    assert git(root, "symbolic-ref", "HEAD") == "refs/heads/autoresearch/t"
    assert git(root, "rev-parse", "HEAD") == main
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    assert "baseline score = 10.0" in p.stdout
    status = json.loads(ar(root, "status", "--json", check=True).stdout)
    assert status["tag"] == "t" and status["baseline"] == 10.0 and status["agent"] == "coding-agent"
    rows = ledger_rows(root, "t")
    assert rows[0]["kind"] == "baseline" and rows[0]["status"] == "keep"
    # noise-aware by default: the baseline is measured more than once
    assert all(r["kind"] in ("baseline", "repeat") for r in rows) and len(rows) >= 2


def test_start_refuses_a_branch_that_is_not_its_own(tmp_path):
    root = build_target(tmp_path)
    git(root, "branch", "autoresearch/mine")
    p = ar(root, "start", "--tag", "mine")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "branch autoresearch/mine already exists" in p.stderr
    assert git(root, "symbolic-ref", "HEAD") == "refs/heads/main"


def test_a_better_change_is_committed_on_the_branch(started):
    root = started
    before = git(root, "rev-parse", "HEAD")
    p = _try(root, "lower the value", 4.0)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("keep #2: score = 4.0")
    assert len(p.stdout.splitlines()) <= MAX_LINES
    head = git(root, "rev-parse", "HEAD")
    assert head != before and git(root, "rev-parse", "HEAD^") == before
    assert git(root, "symbolic-ref", "HEAD") == "refs/heads/autoresearch/t"
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    assert "lower the value" in git(root, "log", "-1", "--format=%B")
    assert ledger_rows(root, "t")[1]["commit"] == head
    assert "VALUE = 4.0" in (root / "train.py").read_text()


def test_a_worse_change_is_reverted_to_the_last_kept_state(started):
    root = started
    _try(root, "lower the value", 4.0)
    kept_head = git(root, "rev-parse", "HEAD")
    kept_text = (root / "train.py").read_text()
    p = _try(root, "raise the value", 40.0)
    assert p.returncode == 3, p.stdout + p.stderr          # the documented exit code of a discard
    assert p.stdout.startswith("discard #3: score = 40.0")
    assert len(p.stdout.splitlines()) <= MAX_LINES
    assert (root / "train.py").read_text() == kept_text
    assert git(root, "rev-parse", "HEAD") == kept_head
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""


def test_changes_to_other_tracked_files_are_refused_and_restored(started):
    root = started
    readme = (root / "README.md").read_text()
    (root / "README.md").write_text("rewritten by the agent\n")
    (root / "evaluate.py").write_text("print('score: -5')\n")
    p = _try(root, "only the readme")
    assert p.returncode == 5                                # invalid
    assert p.stdout.startswith("invalid #2: ")
    assert "refused and restored" in p.stdout and "README.md" in p.stdout
    assert "evaluate.py" in p.stdout
    assert (root / "README.md").read_text() == readme
    assert "-5" not in (root / "evaluate.py").read_text()
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    rows = ledger_rows(root, "t")
    # nothing ran, but the refused attempt is a row
    assert [r["status"] for r in rows if r["kind"] == "candidate"] == ["invalid"]
    refused = rows[-1]
    assert refused["description"] == "only the readme" and "README.md" in refused["reason"]
    assert refused["commit"] in (None, "")
    assert (root / "results.tsv").read_text().splitlines()[-1].endswith("\tinvalid\tonly the readme")

    # with an editable change alongside, only the editable change is tried
    (root / "README.md").write_text("again\n")
    p = _try(root, "value and readme", 6.0)
    assert "refused and restored: README.md" in p.stdout and "keep #3" in p.stdout
    assert p.returncode == 0
    assert git(root, "show", "HEAD:README.md") == readme.strip()
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""


def test_a_crash_prints_the_log_tail_and_restores_the_file(started):
    root = started
    before = (root / "train.py").read_text()
    p = _try(root, "break it", source="print('about to fail')\nraise SystemExit('kaboom 42')\n")
    assert p.stdout.startswith("crash #2: no score measured;"), p.stdout
    assert p.returncode == 4 and "None" not in p.stdout.splitlines()[0]
    assert "exited with code 1" in p.stdout
    assert "| about to fail" in p.stdout and "| kaboom 42" in p.stdout
    assert len(p.stdout.splitlines()) <= MAX_LINES
    assert (root / "train.py").read_text() == before
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""


def test_trying_an_earlier_experiment_again_is_not_run(started):
    root = started
    _try(root, "raise the value", 40.0)             # discarded, file restored
    p = _try(root, "the same again", 40.0)
    assert p.returncode == 6 and "repeats an earlier experiment" in p.stdout
    assert len(ledger_rows(root, "t")) == 2
    assert "VALUE = 10.0" in (root / "train.py").read_text()


def test_try_off_the_branch_is_one_error(tmp_path):
    root = build_target(tmp_path)
    p = _try(root, "anything", 3.0)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.startswith("error: not on an autoresearch/TAG branch")


def test_start_says_where_it_is_and_not_why_the_loop_stopped(tmp_path):
    root = build_target(tmp_path)
    p = ar(root, "start", "--tag", "t", "--policy", "greedy")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "stopped" not in p.stdout and "no more proposals" not in p.stdout
    assert "Now edit, then: autoresearch try" in p.stdout


def test_nothing_to_try_has_its_own_exit_code(started):
    p = _try(started, "no change at all")
    assert p.returncode == 6 and p.stdout.startswith("nothing to try")


def test_a_refused_edit_whose_rest_repeats_an_earlier_experiment_is_an_invalid_row(started):
    root = started
    _try(root, "raise the value", 40.0)                       # discard #2
    (root / "evaluate.py").write_text("print('score: -5')\n")
    p = _try(root, "the same again, and the evaluator", 40.0)
    assert p.returncode == 5, p.stdout + p.stderr
    assert p.stdout.startswith("invalid #3: ") and "repeats an earlier experiment" in p.stdout
    rows = ledger_rows(root, "t")
    assert rows[-1]["status"] == "invalid" and "evaluate.py" in rows[-1]["reason"]
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""


def test_the_verdict_counts_the_runs_of_the_candidate_not_of_the_best(tmp_path):
    root = build_target(tmp_path)
    # noise-aware-v1 re-measures a new best; the default judges this exact metric in one run
    ar(root, "start", "--tag", "t", "--policy", "noise-aware-v1", check=True)
    assert _try(root, "lower the value", 4.0).returncode == 0
    p = _try(root, "lower it again", 3.0)                    # v1 re-measures the best #4
    first = p.stdout.splitlines()[0]
    rows = ledger_rows(root, "t")
    cand = next(r for r in rows if r["description"] == "lower it again")
    refreshes = [r for r in rows if r["description"] == f"re-measure best #4 against #{cand['seq']}"]
    own = [r for r in rows if r["id"] == cand["id"] or r["description"] == f"repeat of #{cand['seq']}"]
    assert refreshes, rows
    assert f"; {len(own)} run(s) of this change (and {len(refreshes)} of the best" in first, first


def test_try_exit_codes_are_documented_in_the_readme():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for code, verdict in ((0, "keep"), (3, "discard"), (4, "crash"), (5, "invalid"), (6, "nothing")):
        assert f"| {code} | {verdict}" in readme, (code, verdict)
