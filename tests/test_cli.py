"""End-to-end tests of the command line contract: real subprocesses, real git repos."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import shutil
import time

import pytest
from conftest import ar, build_target, git, ledger_rows, proposal, write_script

from autoresearch.config import tomllib


def _script(tmp_path, *values):
    return write_script(tmp_path / "proposals.jsonl", [proposal(v) for v in values])


def _run(root, script, *args, check=True):
    return ar(root, "run", "--agent", f"script:{script}", "--policy", "greedy", *args, check=check)


def _one_error(p) -> str:
    """The error a command failed with: exit 1, no traceback, `error:` first."""
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout
    assert p.stderr.startswith("error: "), p.stderr
    return p.stderr


# == init =======================================================================================
def test_init_with_flags_writes_the_toml_and_program_md(tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    p = ar(root, "init", "--editable", "train.py", "--locked", "data.py", "--run", "python train.py",
           "--evaluate", "python eval.py", "--metric", "val_bpb", "--direction", "maximize",
           "--budget", "5")
    assert p.returncode == 0, p.stderr
    cfg = tomllib.loads((root / "autoresearch.toml").read_text())
    assert cfg == {"editable": ["train.py"], "locked": ["data.py"], "run": "python train.py",
                   "evaluate": "python eval.py", "metric": "val_bpb", "direction": "maximize",
                   "budget": 5.0}
    program = (root / "program.md").read_text()
    assert "val_bpb, higher is better" in program and "`train.py`" in program

    again = ar(root, "init", "--editable", "x.py", "--run", "python x.py", "--metric", "m")
    assert "already exists" in _one_error(again)
    assert tomllib.loads((root / "autoresearch.toml").read_text())["metric"] == "val_bpb"


def test_init_refuses_a_directory_outside_git(tmp_path):
    p = ar(tmp_path, "init", "--editable", "train.py", "--run", "python train.py", "--metric", "m")
    assert "not inside a git repository" in _one_error(p)
    assert not (tmp_path / "autoresearch.toml").exists()


def test_init_template_quickstart_makes_a_committed_repo_and_refuses_to_overwrite(tmp_path):
    dest = tmp_path / "qs"
    p = ar(tmp_path, "init", "--template", "quickstart", str(dest))
    assert p.returncode == 0, p.stderr
    for name in ("autoresearch.toml", "program.md", "train.py", "evaluate.py", "prepare.py"):
        assert (dest / name).is_file(), name
    assert git(dest, "status", "--porcelain") == ""
    assert git(dest, "rev-list", "--count", "HEAD") == "1"
    tracked = git(dest, "ls-files").split()
    assert {"autoresearch.toml", "program.md", "train.py", "evaluate.py"} <= set(tracked)

    (dest / "train.py").write_text("# mine\n")
    again = ar(tmp_path, "init", "--template", "quickstart", str(dest))
    assert "already exists" in _one_error(again)
    assert (dest / "train.py").read_text() == "# mine\n"


# == run ========================================================================================
def test_run_uses_todays_tag_counts_the_baseline_and_leaves_the_checkout_alone(tmp_path, make_target):
    root = make_target(tmp_path)
    head = git(root, "rev-parse", "HEAD")
    script = _script(tmp_path, 5.0, 20.0, 3.0)
    p = _run(root, script, "--max-experiments", "3")
    tag = dt.date.today().strftime("%b%d").lower()
    assert re.fullmatch(r"[a-z]{3}\d{2}", tag)
    assert f"run {tag}" in p.stdout

    rows = ledger_rows(root, tag)
    assert [(r["seq"], r["status"], r["metric"]) for r in rows] == [
        (1, "keep", 10.0), (2, "keep", 5.0), (3, "discard", 20.0)]
    # the branch holds the best; the user's checkout, HEAD and index are untouched
    assert git(root, "rev-parse", f"autoresearch/{tag}^{{tree}}") == git(
        root, "rev-parse", f"{rows[1]['commit']}^{{tree}}")
    assert git(root, "rev-parse", "HEAD") == head
    assert git(root, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    assert (root / "results.tsv").is_file()
    assert git(root, "check-ignore", "results.tsv") == "results.tsv"
    assert "results.tsv" not in git(root, "ls-files")
    lines = (root / "results.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["commit", "score", "memory_gb", "status", "description"]
    assert [ln.split("\t")[3] for ln in lines[1:]] == ["keep", "keep", "discard"]


def test_rerunning_a_tag_resumes_without_rerunning_finished_experiments(tmp_path, make_target):
    root = make_target(tmp_path)
    script = _script(tmp_path, 9.0, 8.0, 12.0, 7.0)
    _run(root, script, "--tag", "t", "--max-experiments", "2")
    first = ledger_rows(root, "t")
    assert [r["seq"] for r in first] == [1, 2]

    p = _run(root, script, "--tag", "t", "--max-experiments", "4")
    assert "reached --max-experiments 4" in p.stdout
    rows = ledger_rows(root, "t")
    assert [r["seq"] for r in rows] == [1, 2, 3, 4]
    for before, after in zip(first, rows[:2], strict=True):
        assert (after["started"], after["finished"], after["status"]) == (
            before["started"], before["finished"], before["status"])
    # the script agent went on with the next lines, not from the top
    assert [r["description"] for r in rows] == ["baseline", "value 9.0", "value 8.0", "value 12.0"]
    assert git(root, "rev-parse", "autoresearch/t") == rows[2]["commit"]

    # a third invocation with nothing left to do runs nothing
    p = _run(root, script, "--tag", "t", "--max-experiments", "4")
    assert ledger_rows(root, "t") == rows


# == reading a run ==============================================================================
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One small finished run (baseline, a keep, a discard, a crash) shared by the read tests."""
    tmp = tmp_path_factory.mktemp("finished")
    root = build_target(tmp)
    script = write_script(tmp / "p.jsonl", [
        proposal(4.0, description="lower the value"),
        proposal(6.0, description="raise it again"),
        {"description": "break it", "files": {"train.py": "print('boom')\nraise SystemExit(3)\n"}},
    ])
    _run(root, script, "--tag", "r1", "--max-experiments", "4")
    return root


def test_status_and_log_report_the_run_as_json(finished_run):
    root = finished_run
    st = json.loads(ar(root, "status", "--json", check=True).stdout)
    assert st["tag"] == "r1" and st["metric"] == "score" and st["direction"] == "minimize"
    assert st["experiments"] == 4
    assert st["counts"] == {"keep": 2, "discard": 1, "crash": 1}
    assert st["baseline"] == 10.0
    assert st["best"]["seq"] == 2 and st["best"]["metric"] == 4.0
    assert st["best"]["commit"] == git(root, "rev-parse", "autoresearch/r1")

    rows = json.loads(ar(root, "log", "--json", check=True).stdout)
    assert [(r["seq"], r["status"]) for r in rows] == [
        (1, "keep"), (2, "keep"), (3, "discard"), (4, "crash")]
    assert "exited with code 3" in rows[3]["reason"]
    limited = json.loads(ar(root, "log", "--json", "--limit", "2", check=True).stdout)
    assert [r["seq"] for r in limited] == [3, 4]

    human = ar(root, "status", check=True).stdout
    assert "run r1" in human and "baseline 10.000000" in human and "4.000000" in human


def test_show_prints_the_diff_against_the_parent_and_the_log_tail(finished_run):
    p = ar(finished_run, "show", "2", check=True)
    assert "#2 lower the value" in p.stdout
    assert "-VALUE = 10.0" in p.stdout and "+VALUE = 4.0" in p.stdout
    assert "score: 4.0" in p.stdout          # the evaluator's line, from the log tail
    crash = ar(finished_run, "show", "4", check=True).stdout
    assert "crash" in crash and "boom" in crash
    missing = ar(finished_run, "show", "99")
    assert "no experiment #99" in _one_error(missing)


def test_export_writes_tsv_csv_and_jsonl(finished_run, tmp_path):
    root = finished_run
    tsv = ar(root, "export", "--format", "tsv", check=True).stdout
    assert tsv == (root / "results.tsv").read_text()
    rows = list(csv.DictReader(io.StringIO(ar(root, "export", "--format", "csv", check=True).stdout)))
    assert [r["status"] for r in rows] == ["keep", "keep", "discard", "crash"]
    assert float(rows[1]["metric"]) == 4.0 and "score" in rows[0]   # a metric column per metric
    out = tmp_path / "r.jsonl"
    ar(root, "export", "--format", "jsonl", "-o", str(out), check=True)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seq"] for r in recs] == [1, 2, 3, 4] and recs[1]["metrics"]["score"] == 4.0


def test_a_limit_below_one_is_one_error(finished_run):
    for cmd in (("log", "--limit", "0"), ("export", "--limit", "-3")):
        assert "--limit must be at least 1" in _one_error(ar(finished_run, *cmd))


def test_plot_writes_a_png(finished_run, tmp_path):
    out = tmp_path / "chart.png"
    ar(finished_run, "plot", "-o", str(out), check=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reading_commands_name_the_known_tags_for_an_unknown_one(finished_run):
    p = ar(finished_run, "status", "--tag", "nope")
    assert "no run with tag 'nope'" in _one_error(p) and "r1" in p.stderr


# == errors =====================================================================================
def test_malformed_toml_is_one_error(tmp_path, make_target):
    root = make_target(tmp_path)
    (root / "autoresearch.toml").write_text('editable = ["train.py"\n')
    msg = _one_error(ar(root, "run", "--max-experiments", "1"))
    assert "not valid TOML" in msg and "autoresearch.toml" in msg


def test_an_error_stays_on_one_line_in_a_pipe(tmp_path, make_target):
    root = make_target(tmp_path)
    (root / "autoresearch.toml").write_text('editable = ["train.py"\n')
    p = ar(root, "status", columns=None)
    assert p.returncode == 1
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_unknown_key_is_one_error_with_a_suggestion(tmp_path, make_target):
    root = make_target(tmp_path, lockd=["evaluate.py"])
    msg = _one_error(ar(root, "run", "--max-experiments", "1"))
    assert "unknown key 'lockd'" in msg and "did you mean 'locked'?" in msg


def test_a_target_outside_git_is_one_error(tmp_path, make_target):
    root = make_target(tmp_path, git_init=False)
    msg = _one_error(ar(root, "run", "--max-experiments", "1"))
    assert "not inside a git repository" in msg


def test_a_missing_run_command_stops_at_the_baseline_with_the_log_named(tmp_path, make_target):
    root = make_target(tmp_path, run="no-such-command-xyz", evaluate=None)
    p = ar(root, "run", "--tag", "t", "--policy", "greedy", "--max-experiments", "3")
    msg = _one_error(p)
    log = root / ".autoresearch" / "logs" / "t" / "00001.log"
    assert "baseline" in msg and "code 127" in msg and str(log) in msg
    assert "no-such-command-xyz" in log.read_text()
    rows = ledger_rows(root, "t")
    assert len(rows) == 1 and rows[0]["status"] == "crash" and rows[0]["exit_code"] == 127
    assert "exited with code 127" in rows[0]["reason"]


def test_an_evaluator_without_the_metric_is_a_crash(tmp_path, make_target):
    root = make_target(tmp_path, evaluate="python -c 'print(\"accuracy: 3\")'")
    p = ar(root, "run", "--tag", "t", "--policy", "greedy", "--max-experiments", "2")
    msg = _one_error(p)
    assert "no 'score: <number>' line in the evaluate step's output" in msg
    row = ledger_rows(root, "t")[0]
    assert row["status"] == "crash" and row["reason"].startswith("no 'score: <number>' line")
    assert row["metrics"] == {"accuracy": 3.0}


# == demo =======================================================================================
@pytest.mark.slow
def test_demo_runs_twenty_experiments_and_beats_the_baseline(tmp_path):
    dest = tmp_path / "demo"
    t0 = time.monotonic()
    p = ar(tmp_path, "demo", str(dest), "--policy", "greedy", timeout=180)
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr
    assert took < 120, took
    assert (dest / "progress.png").read_bytes()[:4] == b"\x89PNG"
    lines = (dest / "results.tsv").read_text().splitlines()
    assert len(lines) == 21
    rows = ledger_rows(dest, "demo")
    assert len(rows) == 20
    best = min(r["metric"] for r in rows if r["status"] == "keep")
    assert best < rows[0]["metric"]
    assert git(dest, "rev-list", "--count", "autoresearch/demo") != "1"



def test_demo_runs_unsandboxed_with_a_note_where_bubblewrap_is_missing(tmp_path, monkeypatch):
    from autoresearch.cli import _demo_without_sandbox
    from autoresearch.config import load_target
    from autoresearch.templates import write_template

    write_template("quickstart", tmp_path / "with")
    if shutil.which("bwrap"):
        assert _demo_without_sandbox(tmp_path / "with") is None
        assert load_target(tmp_path / "with").spec.sandbox is True
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))   # no bwrap on PATH
    write_template("quickstart", tmp_path / "without")
    why = _demo_without_sandbox(tmp_path / "without")
    assert why and "bubblewrap" in why
    assert load_target(tmp_path / "without").spec.sandbox is False
