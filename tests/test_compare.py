"""`autoresearch compare`: research organisations on one target, interleaved, with statistics.

End to end on the quickstart target with a fake OpenAI server whose stand-in model follows the
program.md it is given (a program that says MAGIC gets the learning-rate fix, any other a change
that hurts), so a better organisation is really better; the statistics are pinned against scipy.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import build_target, ledger_experiments, proposal, write_script
from scipy import stats

from autoresearch import templates
from autoresearch.compare import (
    RunResult,
    analyse,
    holm,
    interval,
    parse_organisations,
    welch,
)
from autoresearch.errors import ConfigError, LedgerError
from autoresearch.ledger import Ledger
from autoresearch.testing import FakeOpenAIServer

CLI = [sys.executable, "-c", "import sys; from autoresearch.cli import main; sys.exit(main())"]
TRAIN = (Path(templates.__file__).parent / "quickstart" / "train.py").read_text().splitlines()
LR_OLD = next(line for line in TRAIN if line.startswith("LEARNING_RATE = 0.002 "))
LR_NEW = LR_OLD.replace("0.002", "0.1  ")            # with MOMENTUM_NEW: val_loss ~1.09 -> ~0.16
MOMENTUM_OLD = next(line for line in TRAIN if line.startswith("MOMENTUM = 0.5 "))
MOMENTUM_NEW = MOMENTUM_OLD.replace("0.5 ", "0.9 ")
INIT_OLD = next(line for line in TRAIN if line.startswith("INIT_SCALE = 0.2 "))
INIT_BAD = INIT_OLD.replace("= 0.2 ", "= 20.0")      # exploding initial weights: far worse
MAGIC = "MAGIC: use learning rate 0.1 with momentum 0.9."


def block(old: str, new: str, description: str, path: str = "train.py") -> str:
    return (f"Description: {description}\n\n{path}\n<<<<<<< SEARCH\n{old}\n=======\n{new}\n"
            f">>>>>>> REPLACE\n")


def follows_program(body: dict) -> str:
    """A stand-in model: the program's advice decides the proposal."""
    prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
    program = prompt.split("# Program (program.md)", 1)[-1].split("# Best so far", 1)[0]
    if MAGIC in program and LR_OLD in prompt:
        return (block(LR_OLD, LR_NEW, "learning rate 0.1, momentum 0.9")
                + "\n" + block(MOMENTUM_OLD, MOMENTUM_NEW, "")[len("Description: \n\n"):])
    return block(INIT_OLD, INIT_BAD, "huge initial weights")


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(CLI + args, cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout


def quickstart(tmp_path: Path) -> Path:
    target = tmp_path / "qs"
    r = run(["init", "--template", "quickstart", str(target)], tmp_path)
    assert r.returncode == 0, r.stderr
    (target / "magic.md").write_text((target / "program.md").read_text() + "\n" + MAGIC + "\n")
    return target


def rows_of(target: Path) -> dict[str, list]:
    """Every run's rows, read as `status` reads them ({} while the ledger is being created)."""
    try:
        ledger = Ledger(target / ".autoresearch" / "ledger.db", readonly=True)
    except LedgerError:
        return {}
    try:
        return {r.tag: ledger_experiments(target, r.tag) for r in ledger.runs()}
    except sqlite3.OperationalError:
        return {}
    finally:
        ledger.close()


def test_compare_runs_each_organisation_interleaved_and_finds_the_better_one(tmp_path):
    target = quickstart(tmp_path)
    with FakeOpenAIServer([], responder=follows_program) as server:
        r = run(["compare", "plain=program.md", "magic.md", "--agent", "openai:fake",
                 "--experiments", "2", "--repeats", "2", "--budget", "0.3", "--policy", "greedy",
                 "--name", "t1", "--json", "-q"], target, server.env())
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout[r.stdout.index("{\n"):r.stdout.rindex("}") + 1])
    runs = rows_of(target)
    tags = {f"cmp-t1-{o}-r{k}" for o in ("plain", "magic") for k in (1, 2)}
    assert set(runs) == tags
    for tag, rows in runs.items():
        org = tag.split("-")[2]
        assert [e.seq for e in rows] == [1, 2]
        assert {e.org for e in rows} == {org}               # every row carries its organisation
        # each run's branch holds its organisation's program.md on the one shared baseline
        program = git(target, "show", f"autoresearch/{tag}:program.md")
        assert (MAGIC in program) == (org == "magic")
        start = rows[0].commit_sha if org == "plain" else git(target, "rev-parse",
                                                             f"{rows[0].commit_sha}^").strip()
        assert start == git(target, "rev-parse", "HEAD").strip()
    # interleaved: the baselines ran org by org in turn, not one organisation's repeats first
    order = sorted(((rows[0].started, tag.split("-")[2]) for tag, rows in runs.items()))
    assert [o for _, o in order] == ["plain", "magic"] * 2
    stats_by_org = {o["org"]: o for o in rep["analysis"]["organisations"]}
    assert stats_by_org["magic"]["improvement"]["mean"] > 0.5      # val_loss ~1.09 -> ~0.16
    assert stats_by_org["magic"]["keep_rate"]["mean"] == 1.0
    assert stats_by_org["plain"]["keep_rate"]["mean"] == 0.0
    (test,) = rep["analysis"]["tests"]
    assert test["significant"] and test["better"] == "magic" and test["holm_p"] < 0.05
    status = run(["status", "--tag", "cmp-t1-magic-r2"], target)
    assert "organisation magic" in status.stdout
    out = target / ".autoresearch" / "compare" / "t1"
    assert json.loads((out / "compare.json").read_text())["name"] == "t1"
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def tiny(tmp_path: Path, sleep: float = 0.0) -> tuple[Path, Path]:
    """A tiny deterministic target (conftest) and a script of four better proposals."""
    root = build_target(tmp_path, sleep=sleep, files={"program.md": "# the tiny target\n"})
    script = write_script(tmp_path / "s.jsonl", [proposal(v, sleep) for v in (9.0, 8.0, 7.0, 6.0)])
    return root, script


def test_compare_again_continues_its_runs_and_a_changed_organisation_is_refused(tmp_path):
    root, script = tiny(tmp_path)

    def args(n: int, b: str = "program.md") -> list[str]:
        return ["compare", f"a=program.md@script:{script}", f"b={b}@script:{script}",
                "--experiments", str(n), "--repeats", "1", "--policy", "greedy", "--name",
                "again", "-q"]

    r = run(args(2), root)
    assert r.returncode == 0, r.stdout + r.stderr
    first = {tag: [e.id for e in rows] for tag, rows in rows_of(root).items()}
    assert set(first) == {"cmp-again-a-r1", "cmp-again-b-r1"}
    assert all(len(ids) == 2 for ids in first.values())
    r = run(args(3), root)                       # a larger budget: the same runs, continued
    assert r.returncode == 0, r.stdout + r.stderr
    after = rows_of(root)
    for tag, ids in first.items():
        assert [e.id for e in after[tag]][:2] == ids and [e.seq for e in after[tag]] == [1, 2, 3]
        assert [e.description for e in after[tag]] == ["baseline", "value 9.0", "value 8.0"]
    (root / "other.md").write_text("a different organisation\n")
    r = run(args(3, "other.md"), root)
    assert r.returncode == 1
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "comparison 'again' was started with organisations" in err
    assert "give another --name" in err


def test_compare_killed_mid_turn_is_finished_by_the_same_command(tmp_path):
    root, script = tiny(tmp_path, sleep=0.5)
    args = ["compare", f"a=program.md@script:{script}", f"b=program.md@script:{script}",
            "--experiments", "4", "--repeats", "1", "--policy", "greedy", "--name", "k9", "-q"]
    proc = subprocess.Popen(CLI + args, cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:         # wait until a turn is under way past the baselines
            rows = rows_of(root)
            if sum(len(v) for v in rows.values()) >= 3 and any(
                    e.status.value == "running" for v in rows.values() for e in v):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the comparison never got going")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {tag: [e.id for e in rows] for tag, rows in rows_of(root).items()}
    r = run(args, root)
    assert r.returncode == 0, r.stdout + r.stderr
    after = rows_of(root)
    assert set(after) == {"cmp-k9-a-r1", "cmp-k9-b-r1"}
    for tag, rows in after.items():
        assert [e.seq for e in rows] == [1, 2, 3, 4]
        assert [e.id for e in rows][:len(before.get(tag, []))] == before.get(tag, [])
        assert all(e.status.finished for e in rows), [(e.seq, e.status) for e in rows]
        # nothing proposed twice, nothing lost: the script's lines in order, each once
        assert [e.description for e in rows] == ["baseline", "value 9.0", "value 8.0", "value 7.0"]
        assert [e.metric for e in rows] == [10.0, 9.0, 8.0, 7.0]


def test_hours_are_shared_equally_between_the_runs(tmp_path):
    root = build_target(tmp_path)                 # a tiny target: about a second per turn
    for name in ("a.md", "b.md"):
        (root / name).write_text(f"organisation {name}\n")
    r = run(["compare", "a.md", "b.md", "--hours", "0.002", "--repeats", "1", "--policy",
             "greedy", "--name", "h", "--json", "-q"], root)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout[r.stdout.index("{\n"):r.stdout.rindex("}") + 1])
    share = 0.002 * 3600 / 2
    assert {x["org"] for x in rep["runs"]} == {"a", "b"}
    for x in rep["runs"]:         # turns go on until each run has used its share, then stop
        assert x["seconds"] >= share and x["experiments"] >= 1 and x["done"] is None
    assert all(o["improvement_per_hour"]["n"] == 1 for o in rep["analysis"]["organisations"])


def test_an_organisation_whose_agent_keeps_failing_is_recorded_and_the_others_go_on(tmp_path):
    root = build_target(tmp_path, files={"program.md": "# the tiny target\n"},
                        extra_toml="[agent]\nmax_consecutive_errors = 1\nmax_retries = 0\n")
    script = write_script(tmp_path / "s.jsonl", [proposal(v) for v in (9.0, 8.0)])
    with FakeOpenAIServer(["I am not sure what to change."] * 4) as server:
        r = run(["compare", f"good=program.md@script:{script}", "broken=program.md@openai:fake",
                 "--experiments", "3", "--repeats", "1", "--policy", "greedy", "--name", "fail",
                 "--json", "-q"], root, server.env())
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout[r.stdout.index("{\n"):r.stdout.rindex("}") + 1])
    by_org = {o["org"]: o for o in rep["analysis"]["organisations"]}
    assert by_org["broken"]["failures"] == {"agent-error": 1}
    assert by_org["good"]["keep_rate"]["mean"] == 1.0
    runs = {x["tag"]: x for x in rep["runs"]}
    assert "the agent failed 1 times in a row" in runs["cmp-fail-broken-r1"]["done"]
    assert runs["cmp-fail-broken-r1"]["experiments"] == 2          # no more turns for it
    assert runs["cmp-fail-good-r1"]["experiments"] == 3            # the other one went on


# -- organisations from the command line ----------------------------------------------------------
def test_organisations_are_named_after_their_files_paired_with_agents(tmp_path):
    for n in ("program.md", "explorer.md"):
        (tmp_path / n).write_text(n)
    orgs = parse_organisations(["program.md", "explorer.md@claude"], None, root=tmp_path)
    assert [(o.name, o.agent, o.text) for o in orgs] == [("program", "optuna", "program.md"),
                                                         ("explorer", "claude", "explorer.md")]
    orgs = parse_organisations(["program.md", "program.md"], ["openai:a", "openai:b"], root=tmp_path)
    assert [o.name for o in orgs] == ["program-openai-a", "program-openai-b"]
    assert [o.agent for o in orgs] == ["openai:a", "openai:b"]
    orgs = parse_organisations(["program.md", "program.md"], None, root=tmp_path)
    assert [o.name for o in orgs] == ["program-optuna", "program-optuna-2"]
    orgs = parse_organisations(["program.md", "program=explorer.md"], None, root=tmp_path)
    assert [o.name for o in orgs] == ["program-optuna", "program"]     # a given name wins
    orgs = parse_organisations(["x=program.md", "y=program.md@command:ssh a@b"], ["codex"],
                               root=tmp_path)
    assert [(o.name, o.agent) for o in orgs] == [("x", "codex"), ("y", "command:ssh a@b")]


@pytest.mark.parametrize("items, agents, words", [
    (["program.md"], None, "at least two organisations"),
    (["program.md", "nope.md"], None, "no program file 'nope.md'"),
    (["program.md", "program.md"], ["a", "b", "c"], "--agent was given 3 times for 2"),
    (["program.md", "program.md@claude"], ["a", "b"], "names its agent and --agent is given"),
    (["x=program.md", "x=program.md"], None, "'x' is given twice"),
    (["program.md", "program.md@"], None, "empty agent after '@'"),
])
def test_bad_organisations_are_one_error_that_names_the_fix(tmp_path, items, agents, words):
    (tmp_path / "program.md").write_text("p")
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        parse_organisations(items, agents, root=tmp_path)


def test_a_comparison_needs_exactly_one_budget(tmp_path):
    target = quickstart(tmp_path)
    for extra in ([], ["--experiments", "3", "--hours", "1"]):
        r = run(["compare", "program.md", "magic.md", *extra], target)
        assert r.returncode == 1 and "compare needs one budget" in r.stderr
        assert not (target / ".autoresearch" / "ledger.db").exists()


# -- the statistics ---------------------------------------------------------------------------------
def test_welch_and_the_interval_agree_with_scipy():
    a, b = [1.0, 1.4, 0.9, 1.2], [0.2, 0.5, 0.1]
    w = welch(a, b, 0.05)
    assert w["p"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert w["mannwhitney_p"] == pytest.approx(stats.mannwhitneyu(a, b).pvalue)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (w["low"], w["high"]) == pytest.approx((ci.low, ci.high))
    iv = interval(a, 0.95)
    lo, hi = stats.t.interval(0.95, len(a) - 1, loc=sum(a) / 4, scale=stats.sem(a))
    assert (iv.low, iv.high) == pytest.approx((lo, hi))
    assert interval([0.5], 0.95).low is None and interval([], 0.95).mean is None
    assert interval([0.0, 1.0], 0.95, (0.0, 1.0)).low == 0.0


def test_holm_adjusts_step_down_and_keeps_order():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, None]) == [0.5, None]


def result(org: str, k: int, best: float, baseline: float = 1.0) -> RunResult:
    return RunResult(org, k, f"{org}{k}", 10, 3600.0, baseline, best, [baseline, best], 9, 2, 0.5)


def test_analyse_reports_per_organisation_figures_and_a_corrected_test():
    rs = ([result("a", k, 0.5 + 0.01 * k) for k in range(4)]
          + [result("b", k, 0.9 + 0.01 * k) for k in range(4)]
          + [result("c", k, 0.9 + 0.01 * (3 - k)) for k in range(4)])
    a = analyse(rs, ["a", "b", "c"], "minimize", 0.05)
    by = {o["org"]: o for o in a["organisations"]}
    assert by["a"]["improvement"]["mean"] == pytest.approx(0.485)
    assert by["a"]["improvement_per_experiment"]["mean"] == pytest.approx(0.0485)
    assert by["a"]["improvement_per_hour"]["mean"] == pytest.approx(0.485)
    assert by["a"]["keep_rate"]["mean"] == pytest.approx(2 / 9)
    assert by["a"]["cost_usd"]["mean"] == pytest.approx(0.5)
    tests = {(t["a"], t["b"]): t for t in a["tests"]}
    assert tests[("a", "b")]["better"] == "a" and tests[("a", "c")]["better"] == "a"
    assert not tests[("b", "c")]["significant"]
    raw = sorted(t["p"] for t in a["tests"])
    assert sorted(t["holm_p"] for t in a["tests"])[0] == pytest.approx(3 * raw[0])
    maxi = analyse([result("a", 0, 2.0), result("a", 1, 2.2), result("b", 0, 1.0),
                    result("b", 1, 1.0)], ["a", "b"], "maximize")
    assert {o["org"]: o["improvement"]["mean"] for o in maxi["organisations"]} == \
        pytest.approx({"a": 1.1, "b": 0.0})


def test_an_older_ledger_gains_the_organisation_columns_and_keeps_its_rows(tmp_path):
    db = tmp_path / "ledger.db"
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE runs (tag TEXT PRIMARY KEY, created REAL NOT NULL, "
                      "base_commit TEXT NOT NULL, metric TEXT NOT NULL, direction TEXT NOT NULL, "
                      "agent TEXT, policy TEXT, locked TEXT, setup_done INTEGER DEFAULT 0, "
                      "state TEXT DEFAULT 'active');"
                      "INSERT INTO runs (tag, created, base_commit, metric, direction) "
                      "VALUES ('old', 1, 'abc', 'm', 'minimize');")
    con.close()
    ledger = Ledger(db)
    run = ledger.get_run("old")
    assert run is not None and run.org is None and run.base_commit == "abc"
    ledger.create_run("new", "def", "m", "minimize", "optuna", "greedy", {}, org="explorer")
    assert ledger.get_run("new").org == "explorer"
