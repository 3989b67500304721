"""Every agent backend drives a real `autoresearch run` on the quickstart target, offline.

The LLM backends talk to the fake servers over real HTTP; the coding-agent CLIs are the fake CLI
standing in for `claude` and `codex` first on PATH. Each run must keep one change, discard
another, and record every scripted fault as its own experiment while the loop goes on.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAKE_AGENT_CLI, fake_agent_binary

from autoresearch import templates
from autoresearch.testing import FakeAnthropicServer, FakeOpenAIServer

CLI = [sys.executable, "-c", "import sys; from autoresearch.cli import main; sys.exit(main())"]
TRAIN = (Path(templates.__file__).parent / "quickstart" / "train.py").read_text().splitlines()
LR_OLD = next(line for line in TRAIN if line.startswith("LEARNING_RATE = 0.002 "))
LR_NEW = LR_OLD.replace("0.002", "0.004")            # trains faster within the budget: kept
HIDDEN_OLD = next(line for line in TRAIN if line.startswith("HIDDEN_SIZE = 12 "))
HIDDEN_BAD = HIDDEN_OLD.replace("= 12", "= 1 ")      # one hidden unit cannot fit the spirals


def block(old: str, new: str, description: str, path: str = "train.py") -> str:
    return (f"Description: {description}\n\n{path}\n<<<<<<< SEARCH\n{old}\n=======\n{new}\n"
            f">>>>>>> REPLACE\n")


GOOD = block(LR_OLD, LR_NEW, "double the learning rate")
BAD = block(HIDDEN_OLD, HIDDEN_BAD, "one hidden unit")
MISS = block(HIDDEN_OLD.replace("12", "13"), HIDDEN_BAD, "one hidden unit")
LOCKED = block("import numpy as np", "import numpy", "touch the evaluator", path="evaluate.py")


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 240):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(CLI + args, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def quickstart(tmp_path: Path, agent_toml: str) -> Path:
    target = tmp_path / "qs"
    r = run(["init", "--template", "quickstart", str(target)], tmp_path)
    assert r.returncode == 0, r.stderr
    with open(target / "autoresearch.toml", "a") as f:
        f.write("\n[agent]\n" + agent_toml)
    subprocess.run(["git", "commit", "-qam", "agent settings"], cwd=target, check=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
    return target


def loop(target: Path, agent: str, n: int, env: dict[str, str] | None = None) -> list[dict]:
    r = run(["run", "--agent", agent, "--max-experiments", str(n), "--policy", "greedy",
             "--budget", "0.5", "--tag", "e2e", "-q"], target, env)
    assert r.returncode == 0, r.stdout + r.stderr
    out = run(["export", "--format", "jsonl", "--tag", "e2e"], target)
    if out.returncode != 0:                       # older CLI without --tag on export
        out = run(["export", "--format", "jsonl"], target)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert [r["seq"] for r in rows] == list(range(1, n + 1)), out.stdout
    return rows


def statuses(rows: list[dict]) -> list[str]:
    return [r["status"] for r in rows]


def test_openai_backend_keeps_discards_and_survives_429_500_and_garbage(tmp_path):
    target = quickstart(tmp_path, "max_retries = 1\nmax_consecutive_errors = 3\n"
                                  "prices = { fake = { input = 2.0, output = 8.0 } }\n")
    script = [{"status": 429, "retry_after": 0}, {"reply": GOOD, "input_tokens": 1000, "output_tokens": 100},
              BAD, {"status": 500, "retry_after": 0}, {"status": 500, "retry_after": 0},
              "I am not sure what to change."]
    with FakeOpenAIServer(script) as server:
        rows = loop(target, "openai:fake", 5, server.env())
    assert statuses(rows) == ["keep", "keep", "discard", "agent-error", "agent-error"]
    assert rows[1]["description"] == "double the learning rate"
    assert rows[1]["input_tokens"] == 1000 and rows[1]["cost_usd"] == pytest.approx(0.0028)
    assert "HTTP 500 (after 1 retries)" in rows[3]["reason"]
    assert "no SEARCH/REPLACE block" in rows[4]["reason"]
    assert server.remaining == 0
    assert (target / ".autoresearch").exists()


def test_anthropic_backend_retries_a_non_matching_block_and_refuses_locked_edits(tmp_path):
    target = quickstart(tmp_path, "timeout = 1\nmax_retries = 0\nmax_consecutive_errors = 3\n")
    script = [GOOD, MISS, BAD, LOCKED, LOCKED, {"delay": 3, "reply": GOOD}]
    with FakeAnthropicServer(script) as server:
        rows = loop(target, "anthropic:fake", 5, server.env())
    assert statuses(rows) == ["keep", "keep", "discard", "agent-error", "agent-error"]
    assert rows[2]["description"] == "one hidden unit"
    get, *posts = server.requests                   # the connectivity check, then the proposals
    assert get["method"] == "GET"
    retry = posts[2]["body"]["messages"][-1]["content"]
    assert f"Did you mean these lines from train.py?\n```\n{HIDDEN_OLD}" in retry
    assert "not editable were refused: evaluate.py" in rows[3]["reason"]
    assert "no answer within 1 s" in rows[4]["reason"]


def fake_bin(tmp_path: Path, name: str, steps: list[dict]) -> tuple[dict[str, str], Path]:
    script = tmp_path / f"{name}.jsonl"
    script.write_text("".join(json.dumps(s) + "\n" for s in steps))
    exe = fake_agent_binary(tmp_path, name, script)
    return {"PATH": f"{exe.parent}{os.pathsep}{os.environ['PATH']}"}, script


EDIT_GOOD = {"description": "double the learning rate", "edits": [{"path": "train.py", "search": LR_OLD, "replace": LR_NEW}]}
EDIT_BAD = {"description": "one hidden unit", "edits": [{"path": "train.py", "search": HIDDEN_OLD, "replace": HIDDEN_BAD}]}


def test_claude_backend_drops_locked_edits_and_survives_a_timeout(tmp_path):
    target = quickstart(tmp_path, "timeout = 3\nmax_consecutive_errors = 3\n")
    env, _ = fake_bin(tmp_path, "claude", [
        {**EDIT_GOOD, "cost_usd": 0.05},
        {**EDIT_BAD, "write": {"prepare.py": "# tampered\n"}},
        {"description": "tamper only", "write": {"evaluate.py": "print('val_loss: 0')\n"}},
        {"sleep": 30, **EDIT_GOOD}])
    rows = loop(target, "claude", 5, env)
    assert statuses(rows) == ["keep", "keep", "discard", "agent-error", "agent-error"]
    assert rows[1]["cost_usd"] == pytest.approx(0.05)
    shown = run(["show", "3", "--tag", "e2e"], target).stdout     # export has no notes column
    assert "dropped edits to files that are not editable: prepare.py" in " ".join(shown.split())
    assert "changed no editable file" in rows[3]["reason"] and "evaluate.py" in rows[3]["reason"]
    assert "no answer within 3 s" in rows[4]["reason"]
    assert "tampered" not in (target / "prepare.py").read_text()


def test_codex_backend_records_an_agent_that_changed_nothing(tmp_path):
    target = quickstart(tmp_path, "max_consecutive_errors = 3\n")
    env, script = fake_bin(tmp_path, "codex", [EDIT_GOOD, {"description": "nothing to do"}, EDIT_BAD])
    rows = loop(target, "codex", 4, env)
    assert statuses(rows) == ["keep", "keep", "agent-error", "discard"]
    assert rows[2]["reason"] == "the agent changed no editable file"
    argv = json.loads((script.parent / "codex.jsonl.prompts" / "0.argv.json").read_text())
    assert argv[-7:] == ["exec", "--json", "--ephemeral", "--sandbox", "workspace-write",
                         "--skip-git-repo-check", "-"]


def test_command_backend_with_prompt_argument(tmp_path):
    target = quickstart(tmp_path, "max_consecutive_errors = 3\n")
    script = tmp_path / "agent.jsonl"
    script.write_text(json.dumps(EDIT_GOOD) + "\n" + json.dumps({"edits": EDIT_BAD["edits"]}) + "\n")
    rows = loop(target, f"command:{FAKE_AGENT_CLI} --script {script} {{prompt}}", 3)
    assert statuses(rows) == ["keep", "keep", "discard"]
    assert rows[2]["description"] == f"train.py: {HIDDEN_OLD} -> {HIDDEN_BAD}"
    prompt = (tmp_path / "agent.jsonl.prompts" / "0.txt").read_text()
    assert "| 1 | keep |" in prompt and "baseline" in prompt    # the history reached the agent


# == the first hour with a real-world setup ====================================================
def _paid_steps(n: int, cost: float) -> list[dict]:
    from conftest import train_source
    return [{"description": f"value {v}", "write": {"train.py": train_source(float(v), sleep=1.0)},
             "cost_usd": cost} for v in range(20, 20 + n)]


def test_proposals_made_ahead_and_dropped_at_the_stop_are_counted_in_the_cost(tmp_path):
    from conftest import build_target

    target = build_target(tmp_path, sleep=1.0)
    env, script = fake_bin(tmp_path, "claude", _paid_steps(8, 0.01))
    r = run(["run", "--agent", "claude", "--max-experiments", "3", "--policy", "greedy",
             "--ahead", "2", "--tag", "t", "-q"], target, env)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [json.loads(line) for line in
            run(["export", "--format", "jsonl", "--tag", "t"], target).stdout.splitlines()]
    answered = len(list((script.parent / "claude.jsonl.prompts").glob("*.done")))
    assert sum(row["cost_usd"] for row in rows) == pytest.approx(0.01 * answered)
    dropped = [row for row in rows if row["status"] == "interrupted"]
    assert dropped and all(row["cost_usd"] == pytest.approx(0.01) for row in dropped)
    assert all("the run stopped before it was measured" in row["reason"] for row in dropped)
    status = json.loads(run(["status", "--json", "--tag", "t"], target).stdout)
    assert status["cost_usd"] == pytest.approx(0.01 * answered)

    # a resumed run measures what was paid for instead of asking again
    r = run(["run", "--agent", "claude", "--max-experiments", str(len(rows) + 1), "--policy",
             "greedy", "--ahead", "0", "--tag", "t", "-q"], target, env)
    assert r.returncode == 0, r.stdout + r.stderr
    again = {row["seq"]: row for row in (json.loads(line) for line in run(
        ["export", "--format", "jsonl", "--tag", "t"], target).stdout.splitlines())}
    assert all(again[row["seq"]]["status"] in ("keep", "discard") for row in dropped)


def test_max_cost_counts_proposals_that_are_ready_but_not_taken(tmp_path):
    from conftest import build_target

    target = build_target(tmp_path, sleep=1.0)
    env, script = fake_bin(tmp_path, "claude", _paid_steps(12, 0.01))
    r = run(["run", "--agent", "claude", "--max-cost", "0.025", "--policy", "greedy",
             "--ahead", "2", "--tag", "t", "-q"], target, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "reached --max-cost $0.025" in r.stdout
    rows = [json.loads(line) for line in
            run(["export", "--format", "jsonl", "--tag", "t"], target).stdout.splitlines()]
    answered = len(list((script.parent / "claude.jsonl.prompts").glob("*.done")))
    assert sum(row["cost_usd"] for row in rows) == pytest.approx(0.01 * answered)
    # it stops asking once what was paid reaches the cap: at most the proposals already asked for
    assert answered <= 3 + 2


def test_a_rejected_key_stops_a_cli_agent_run_before_it_starts(tmp_path):
    target = quickstart(tmp_path, "")
    env, script = fake_bin(tmp_path, "claude", [EDIT_GOOD])
    (script.parent / "claude.jsonl.check.json").write_text(
        json.dumps({"api_error": 401, "message": "invalid API key"}))
    r = run(["run", "--agent", "claude", "--max-experiments", "3", "--tag", "e2e"], target, env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: --agent claude: the connectivity check failed: API Error: 401 invalid API key "
        "(api_error_status 401) — check the endpoint and the key the tool uses (see the README's "
        "agents section), or set [agent] check = false"]
    assert not (target / ".autoresearch" / "logs" / "e2e").exists()   # no baseline was measured


def test_aider_history_files_never_show_up_in_the_rows(tmp_path):
    target = quickstart(tmp_path, "")
    script = tmp_path / "aider.jsonl"
    script.write_text(json.dumps({**EDIT_GOOD, "aider_files": True}) + "\n")
    rows = loop(target, f"command:{FAKE_AGENT_CLI} --script {script} --message {{prompt}}", 2)
    shown = run(["show", "2", "--tag", "e2e"], target).stdout
    assert rows[1]["description"] == "double the learning rate"
    notes = next(line for line in shown.splitlines() if line.strip().startswith("notes"))
    assert "dropped edits" not in shown and ".aider.chat" not in shown
    # the only note: where the agent's transcript is (proposal 1, not experiment 2)
    assert notes.split() == ["notes", "agent", "transcript:",
                             str(target / ".autoresearch/logs/e2e/agent/proposal-0001.log")]


def test_a_locked_edit_whose_rest_repeats_an_earlier_experiment_is_an_invalid_row(tmp_path):
    original = (Path(templates.__file__).parent / "quickstart" / "train.py").read_text()
    target = quickstart(tmp_path, "max_consecutive_errors = 3\n")
    env, _ = fake_bin(tmp_path, "claude", [
        EDIT_GOOD,                                                          # kept: #2
        {"description": "undo it, and tamper", "write": {"train.py": original,
                                                          "prepare.py": "# tampered\n"}},
        EDIT_BAD])
    # --ahead 0: the second proposal is asked against the kept #2, so undoing it repeats #1
    r = run(["run", "--agent", "claude", "--max-experiments", "4", "--policy", "greedy", "--ahead",
             "0", "--budget", "0.5", "--tag", "e2e", "-q"], target, env)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [json.loads(line) for line in
            run(["export", "--format", "jsonl", "--tag", "e2e"], target).stdout.splitlines()]
    assert statuses(rows) == ["keep", "keep", "invalid", "discard"]
    assert rows[2]["description"] == "undo it, and tamper"
    assert rows[2]["reason"] == ("edited file(s) that are not editable (dropped): prepare.py; "
                                 "the rest repeats experiment #1")
    assert "tampered" not in (target / "prepare.py").read_text()
