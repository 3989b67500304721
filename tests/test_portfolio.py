"""Several agents at once, research notes and near-duplicates, end to end.

Each test drives a real `autoresearch run` on the quickstart target with offline agents (the
optuna agent, script agents, the fake OpenAI server, the fake coding-agent CLI) and reads the
ledger back: who proposed each experiment, what each prompt carried, what was refused as a
near-duplicate and never ran.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import FAKE_AGENT_CLI, ar, cli_env, commit_all, git, ledger_rows, write_script

from autoresearch import templates
from autoresearch.ledger import Ledger
from autoresearch.testing import FakeOpenAIServer

TRAIN = (Path(templates.__file__).parent / "quickstart" / "train.py").read_text()
LR = "LEARNING_RATE = 0.002     # step size of SGD"


def quickstart(tmp_path: Path, toml: str = "", files: dict[str, str] | None = None) -> Path:
    target = tmp_path / "qs"
    ar(tmp_path, "init", "--template", "quickstart", str(target), check=True)
    with open(target / "autoresearch.toml", "a") as f:
        f.write("\n" + toml)
    for rel, text in (files or {}).items():
        (target / rel).write_text(text)
    commit_all(target, "settings")
    return target


def run(target: Path, *args: str) -> str:
    p = ar(target, "run", "--tag", "t", "--policy", "greedy", "--budget", "0.3", "-q", *args,
           timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def train(**changes: str) -> str:
    """train.py with lines replaced: train(LR="LEARNING_RATE = 0.004")."""
    text = TRAIN
    for old, new in changes.items():
        line = next(ln for ln in text.splitlines() if ln.startswith(old))
        text = text.replace(line, new)
    return text


def step(description: str, **changes: str) -> dict:
    return {"description": description, "files": {"train.py": train(**changes)}}


def notes_of(target: Path) -> str:
    ledger = Ledger(target / ".autoresearch" / "ledger.db")
    try:
        return ledger.research_notes("t")
    finally:
        ledger.close()


def whole_file(description: str, text: str, note: str | None = None) -> str:
    reply = f"Description: {description}\n\ntrain.py\n```python\n{text}```\n"
    return reply + (f"\nResearch note: {note}\n" if note else "")


# == several agents at once =======================================================================
def test_a_portfolio_from_flags_records_the_real_proposer_and_reports_the_yield(tmp_path):
    target = quickstart(tmp_path)
    script = write_script(tmp_path / "steps.jsonl", [
        step("faster learning", LEARNING_RATE="LEARNING_RATE = 0.004"),
        step("wider", HIDDEN_SIZE="HIDDEN_SIZE = 16"),
        step("smaller batches", BATCH_SIZE="BATCH_SIZE = 256"),
        step("more momentum", MOMENTUM="MOMENTUM = 0.8")])
    run(target, "--agent", f"script:{script}:1", "--agent", "optuna:1", "--workers", "2",
        "--max-experiments", "7")
    rows = ledger_rows(target, "t")
    cands = [r for r in rows if r["kind"] == "candidate"]
    by = {r["agent"] for r in cands}
    assert by == {f"script:{script}", "optuna"}, by
    for r in cands:     # the agent column is the real proposer: its params say who made it
        if r["agent"] == "optuna":
            assert "LEARNING_RATE" in (r["params"] or {})
        else:
            assert "script_line" in (r["params"] or {})

    info = json.loads(ar(target, "status", "--tag", "t", "--json", check=True).stdout)
    assert info["agent"] == f"script:{script}:1 + optuna:1"
    yields = {y["agent"]: y for y in info["agents"]}
    for agent in by:
        mine = [r for r in cands if r["agent"] == agent]
        assert yields[agent]["proposals"] == len(mine)
        assert yields[agent]["kept"] == sum(r["status"] == "keep" for r in mine)
    text = ar(target, "status", "--tag", "t", check=True).stdout
    assert "yield by agent" in text and "optuna" in text

    # resumed without --agent: the recorded portfolio goes on, both members still asked
    run(target, "--max-experiments", "11")
    later = [r for r in ledger_rows(target, "t") if r["kind"] == "candidate"][len(cands):]
    assert later and {r["agent"] for r in later} <= by
    assert any(r["agent"] == "optuna" for r in later)


def test_roles_use_their_own_program_and_share_notes_and_the_summary(tmp_path):
    roles = ('[[agents]]\nagent = "openai:fake"\nrole = "explorer"\nprogram = "explorer.md"\n'
             '[[agents]]\nagent = "optuna"\nrole = "tuner"\nprogram = "tuner.md"\n')
    target = quickstart(tmp_path, roles, files={
        "explorer.md": "EXPLORER-MARKER: try bold architectural changes.\n",
        "tuner.md": "TUNER-MARKER: tune constants.\n"})
    faster = train(LEARNING_RATE="LEARNING_RATE = 0.004     # step size of SGD")
    same_reformatted = faster.replace("LEARNING_RATE = 0.004     # step size of SGD",
                                      "LEARNING_RATE=0.004  # a faster step")
    replies = [whole_file("faster learning", faster, "a higher learning rate trains faster"),
               whole_file("faster learning, again", same_reformatted),
               whole_file("smaller batches", train(BATCH_SIZE="BATCH_SIZE = 256")),
               whole_file("wider", train(HIDDEN_SIZE="HIDDEN_SIZE = 16")),
               whole_file("wider still", train(HIDDEN_SIZE="HIDDEN_SIZE = 24"))]
    with FakeOpenAIServer(replies) as server:
        p = subprocess.run([sys.executable, "-m", "autoresearch.cli", "run", "--tag", "t",
                            "--policy", "greedy", "--budget", "0.3", "-q", "--max-experiments",
                            "5"], cwd=target, capture_output=True, text=True, timeout=240,
                           env={**cli_env(), **server.env()})
        env_ok = p.returncode == 0
        prompts = [r["body"]["messages"][-1]["content"] if len(r["body"]["messages"]) == 1
                   else json.dumps(r["body"]["messages"])
                   for r in server.requests if r["method"] == "POST"]
    assert env_ok, p.stdout + p.stderr
    rows = {r["seq"]: r for r in ledger_rows(target, "t")}
    explorer = [r for r in rows.values() if r["role"] == "explorer"]
    tuner = [r for r in rows.values() if r["role"] == "tuner"]
    assert explorer and tuner
    assert all(r["agent"] == "openai:fake" for r in explorer)
    assert all(r["agent"] == "optuna" for r in tuner)

    first = prompts[0]
    assert "EXPLORER-MARKER" in first and "TUNER-MARKER" not in first
    assert "# Program of your role, explorer" in first
    assert "Research note: <text>" in first        # how an API agent writes notes

    # the near-duplicate: recorded, never run, and the explorer told which experiment it repeats
    kept_lr = next(r for r in explorer if r["description"] == "faster learning")
    dup = next(r for r in rows.values() if r["status"] == "duplicate")
    assert dup["description"] == "faster learning, again" and dup["role"] == "explorer"
    assert f"near-duplicate of #{kept_lr['seq']} (formatting)" in dup["reason"]
    assert dup["started"] is None and dup["metric"] is None
    retry = next(p for p in prompts if "is a near-duplicate of experiment" in p)
    assert f"near-duplicate of experiment #{kept_lr['seq']}" in retry

    # the notes and the summary of what was tried reach the next prompts
    note = f"- #{kept_lr['seq']} (openai:fake (explorer)): a higher learning rate trains faster"
    later = [p for p in prompts[1:] if "What was tried, by theme" in p]
    assert later, "no prompt carried the summary"
    assert note in later[0] and "train.py: LEARNING_RATE" in later[0]
    assert note in notes_of(target)

    # nothing the agent must not see: the holdout values stay out of notes and summary
    holdouts = [r["decision"]["holdout"] for r in rows.values()
                if (r["decision"] or {}).get("holdout") is not None]
    assert holdouts, "the quickstart's holdout ran"
    section = later[-1][later[-1].index("# Research notes"):later[-1].index("# Editable files")]
    assert "holdout" not in section.lower()
    for h in holdouts:
        assert f"{h:.4g}" not in section and f"{h:.6f}" not in section


def test_a_coding_agent_keeps_notes_in_its_scratch_file_never_committed(tmp_path):
    target = quickstart(tmp_path)
    steps = [
        {"description": "faster", "edits": [{"path": "train.py", "search": LR,
                                             "replace": LR.replace("0.002", "0.004")}],
         "write": {".autoresearch-notes.md": "LR 0.004 trains faster.\n"}},
        {"description": "wider", "edits": [{"path": "train.py", "search": "HIDDEN_SIZE = 12",
                                            "replace": "HIDDEN_SIZE = 16"}],
         "write": {".autoresearch-notes.md": "LR 0.004 trains faster.\nTry width next.\n"}}]
    script = write_script(tmp_path / "cli.jsonl", steps)
    run(target, "--agent", f"command:{FAKE_AGENT_CLI} --script {script}", "--max-experiments", "3")
    rows = {r["seq"]: r for r in ledger_rows(target, "t")}
    assert [rows[s]["status"] != "invalid" for s in (2, 3)] == [True, True]
    assert "not editable" not in rows[2]["notes"] + rows[2]["reason"]
    second = (tmp_path / "cli.jsonl.prompts" / "2.txt").read_text()
    assert "LR 0.004 trains faster." in second and ".autoresearch-notes.md" in second
    assert notes_of(target) == "LR 0.004 trains faster.\nTry width next."
    shown = ar(target, "notes", "--tag", "t", check=True).stdout
    assert "LR 0.004 trains faster.\nTry width next." in shown
    for s in (2, 3):
        listed = git(target, "ls-tree", "-r", "--name-only", rows[s]["commit"])
        assert ".autoresearch-notes.md" not in listed.split()


# == near-duplicates ==============================================================================
def test_near_duplicates_are_recorded_never_run_and_do_not_count_as_experiments(tmp_path):
    target = quickstart(tmp_path)
    script = write_script(tmp_path / "steps.jsonl", [
        step("faster", LEARNING_RATE="LEARNING_RATE = 0.004     # step size of SGD"),
        step("faster, reformatted", LEARNING_RATE="LEARNING_RATE=0.004 # SGD's step"),
        step("faster by a hair", LEARNING_RATE="LEARNING_RATE = 0.00401"),
        step("much faster", LEARNING_RATE="LEARNING_RATE = 0.008"),
        step("much faster, the same files", LEARNING_RATE="LEARNING_RATE = 0.008"),
        step("wider", HIDDEN_SIZE="HIDDEN_SIZE = 16")])
    run(target, "--agent", f"script:{script}", "--max-experiments", "4")
    rows = {r["seq"]: r for r in ledger_rows(target, "t")}
    assert [(s, r["status"] == "duplicate") for s, r in rows.items()] == [
        (1, False), (2, False), (3, True), (4, True), (5, False), (6, False)]
    assert "near-duplicate of #2 (formatting)" in rows[3]["reason"]
    assert "near-duplicate of #2 (constants)" in rows[4]["reason"]
    assert "0.00401 vs 0.004" in rows[4]["reason"]
    for s in (3, 4):
        assert rows[s]["started"] is None and rows[s]["metric"] is None
        assert not (target / ".autoresearch" / "logs" / "t" / f"{s:05d}.log").exists()
        assert git(target, "rev-parse", f"refs/autoresearch/t/{s:05d}") == rows[s]["commit"]
    # the exact duplicate is not a row; the last proposal ran although --max-experiments is 4
    assert rows[6]["description"] == "wider" and rows[6]["metric"] is not None
    assert "much faster, the same files" not in [r["description"] for r in rows.values()]
    results = (target / "results.tsv").read_text()
    assert "faster by a hair" in results and re.search(r"\tduplicate\t", results)


def test_near_duplicate_detection_can_be_turned_off(tmp_path):
    target = quickstart(tmp_path, "[notes]\nnear_duplicates = false\n")
    script = write_script(tmp_path / "steps.jsonl", [
        step("faster", LEARNING_RATE="LEARNING_RATE = 0.004"),
        step("faster by a hair", LEARNING_RATE="LEARNING_RATE = 0.00401")])
    run(target, "--agent", f"script:{script}", "--max-experiments", "5")
    rows = ledger_rows(target, "t")
    assert [r["status"] == "duplicate" for r in rows] == [False, False, False]
    assert rows[2]["metric"] is not None


def test_bad_portfolios_are_one_line_errors_that_leave_nothing_behind(tmp_path):
    target = quickstart(tmp_path, '[[agents]]\nagent = "optuna"\nprogram = "tuner.md"\n')
    cases = [(["--agent", "optuna", "--agent", "optuna:2"], "--agent optuna is given twice"),
             (["--agent", "claude:0"], "share of slots must be at least 1"),
             ([], "program = 'tuner.md', which is not committed")]
    for flags, message in cases:
        p = ar(target, "run", "--tag", "t", "--max-experiments", "2", *flags)
        assert p.returncode == 1, p.stdout + p.stderr
        out = (p.stdout + p.stderr).strip()
        assert message in out and len(out.splitlines()) == 1, out
        assert not (target / ".autoresearch" / "ledger.db").exists()
