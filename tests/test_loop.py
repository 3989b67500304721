"""End-to-end tests of the loop's guarantees: what runs, what is refused, what is measured.

Each test drives `autoresearch run` in a subprocess over a tiny target in a throwaway git repo,
with a script agent replaying hand-written proposals.
"""

from __future__ import annotations

import time

import pytest
from conftest import ar, build_target, git, ledger_rows, processes_with, proposal, write_script


def _touch(path) -> str:
    """A line of train.py that leaves a trace if the code ever runs."""
    return f"open({str(path)!r}, 'w').write('ran')\n"


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """One run over proposals that attack the loop's rules, in order."""
    tmp = tmp_path_factory.mktemp("loop")
    root = build_target(tmp)
    ran_locked, ran_outside = tmp / "ran-locked", tmp / "ran-outside"
    bad_patch = ("--- a/train.py\n+++ b/train.py\n@@ -1,1 +1,1 @@\n-this line is not there\n"
                 "+neither is this one\n")
    steps = [
        {"description": "edit the evaluator too",
         "files": {"train.py": proposal(1.0, extra=_touch(ran_locked))["files"]["train.py"],
                   "evaluate.py": "print('score: -1')\n"}},                          # 2 invalid
        {"description": "edit the readme too",
         "files": {"train.py": proposal(1.0, extra=_touch(ran_outside))["files"]["train.py"],
                   "README.md": "changed\n"}},                                       # 3 invalid
        proposal(5.0, description="five"),                                           # 4 keep
        proposal(5.0, description="five again"),                                     # (same as best)
        {"description": "a patch that does not apply", "patch": bad_patch},          # 5 agent-error
        proposal(30.0, description="thirty"),                                        # 6 discard
        proposal(30.0, description="thirty again"),                                  # (same as #6)
        proposal(20.0, description="rewrite the evaluator while running",
                 extra="open('evaluate.py', 'w').write('print(\"score: -1000\")')\n"),  # 7 invalid
        proposal(20.0, description="print my own score",
                 extra="print('score: -999')\n"),                                    # 8 discard
        proposal(3.0, description="three"),                                          # 9 keep
    ]
    script = write_script(tmp / "steps.jsonl", steps)
    p = ar(root, "run", "--tag", "t", "--agent", f"script:{script}", "--policy", "greedy",
           "--max-experiments", "30")
    assert p.returncode == 0, p.stdout + p.stderr
    rows = {r["seq"]: r for r in ledger_rows(root, "t")}
    return root, rows, p.stdout, ran_locked, ran_outside


def _log(root, seq):
    return root / ".autoresearch" / "logs" / "t" / f"{seq:05d}.log"


def test_the_replayed_run_has_the_expected_verdicts(replayed):
    root, rows, out, *_ = replayed
    assert [(s, r["status"]) for s, r in rows.items()] == [
        (1, "keep"), (2, "invalid"), (3, "invalid"), (4, "keep"), (5, "agent-error"),
        (6, "discard"), (7, "invalid"), (8, "discard"), (9, "keep")]
    assert "the agent has no more proposals" in out


def test_a_proposal_touching_a_locked_file_is_invalid_and_never_runs(replayed):
    root, rows, _, ran_locked, _ = replayed
    assert "evaluate.py" in rows[2]["reason"]
    assert not ran_locked.exists()
    assert not _log(root, 2).exists() and rows[2]["started"] is None
    # it is still pinned, so what was tried can be looked at
    assert git(root, "rev-parse", "refs/autoresearch/t/00002") == rows[2]["commit"]


def test_a_proposal_touching_a_file_outside_the_editable_globs_is_invalid(replayed):
    root, rows, _, _, ran_outside = replayed
    assert "outside the editable globs: README.md" in rows[3]["reason"]
    assert not ran_outside.exists() and not _log(root, 3).exists()


def test_duplicate_proposals_are_not_run_again(replayed):
    _, rows, *_ = replayed
    descriptions = [r["description"] for r in rows.values()]
    assert "five again" not in descriptions and "thirty again" not in descriptions
    assert len({r["commit"] for r in rows.values()}) == len(rows)


def test_a_patch_that_does_not_apply_is_an_agent_error_and_the_loop_goes_on(replayed):
    _, rows, *_ = replayed
    assert rows[5]["kind"] == "candidate" and "does not apply" in rows[5]["reason"]
    assert rows[5]["commit"] is None
    assert rows[6]["description"] == "thirty" and rows[6]["metric"] == 30.0


def test_a_run_step_that_rewrites_the_evaluator_is_invalid(replayed):
    root, rows, *_ = replayed
    assert rows[7]["status"] == "invalid" and rows[7]["metric"] is None
    assert "modified locked file(s): evaluate.py" in rows[7]["reason"]
    assert "score: -1000" not in _log(root, 7).read_text()   # the evaluator never ran


def test_the_run_step_cannot_print_its_own_metric(replayed):
    root, rows, *_ = replayed
    assert "score: -999" in _log(root, 8).read_text()
    assert rows[8]["metric"] == 20.0 and rows[8]["status"] == "discard"


def test_the_branch_ends_on_the_last_kept_experiment(replayed):
    root, rows, *_ = replayed
    assert git(root, "rev-parse", "autoresearch/t") == rows[9]["commit"]
    assert git(root, "show", "autoresearch/t:train.py").count("VALUE = 3.0") == 1
    assert git(root, "show", "autoresearch/t:evaluate.py") == git(root, "show", "main:evaluate.py")
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""


def test_a_run_that_hangs_with_a_grandchild_is_killed_at_the_hard_timeout(tmp_path, marker):
    root = build_target(tmp_path, timeout=1.5)
    hang = ("import subprocess, sys\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', {marker!r}],"
            " start_new_session=True)\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', {marker!r}])\n"
            "time.sleep(600)\n")
    script = write_script(tmp_path / "p.jsonl", [proposal(1.0, description="hang", extra=hang)])
    t0 = time.monotonic()
    p = ar(root, "run", "--tag", "t", "--agent", f"script:{script}", "--policy", "greedy",
           "--max-experiments", "2")
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    row = ledger_rows(root, "t")[1]
    assert row["status"] == "timeout"
    assert "killed at the hard timeout of 1.5s" in row["reason"]
    assert took < 15
    assert processes_with(marker) == []
