"""Coding-agent CLIs: presets and commands run the fake agent CLI in a real scratch directory."""

import json
import os
import time
from pathlib import Path

import pytest
from conftest import FAKE_AGENT_CLI, fake_agent_binary

from autoresearch.agents.base import AgentContext, AgentError
from autoresearch.agents.cli import CodingAgentCLI
from autoresearch.config import AgentSettings, TargetSpec
from autoresearch.errors import AgentConfigError

TRAIN = "LEARNING_RATE = 0.01\nBATCH_SIZE = 32\n"
RAISE_LR = {"path": "train.py", "search": "LEARNING_RATE = 0.01", "replace": "LEARNING_RATE = 0.02"}
def write_script(tmp_path: Path, steps: list[dict]) -> Path:
    script = tmp_path / "steps.jsonl"
    script.write_text("".join(json.dumps(s) + "\n" for s in steps))
    return script


def context(tmp_path: Path) -> AgentContext:
    ws = tmp_path / "workspace"
    ws.mkdir()
    (ws / "train.py").write_text(TRAIN)
    (ws / "helpers.py").write_text("H = 1\n")
    (ws / "prepare.py").write_text("X = 1\n")
    spec = TargetSpec(editable=["*.py"], locked=["prepare.py"], run="python train.py", metric="val_loss")
    return AgentContext(program="Lower the loss.", files={"train.py": TRAIN, "helpers.py": "H = 1\n"},
                        history=[], best=None, spec=spec, base_commit="0" * 40, experiment_seq=7,
                        workspace=lambda: ws, editable=lambda p: p.endswith(".py") and p != "prepare.py",
                        log_dir=tmp_path / "logs")


def command_agent(script: Path, tail: str = "", **kw) -> CodingAgentCLI:
    return CodingAgentCLI.from_command(f"{FAKE_AGENT_CLI} --script {script} {tail}", AgentSettings(**kw))


def test_claude_preset_edits_in_place_with_its_flags_and_reports_cost(tmp_path, monkeypatch):
    script = write_script(tmp_path, [{"description": "raise LR", "edits": [RAISE_LR], "cost_usd": 0.25,
                                      "input_tokens": 1200, "output_tokens": 300}])
    fake_agent_binary(tmp_path, "claude", script)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("AUTORESEARCH_CLAUDE_BIN", raising=False)
    ctx = context(tmp_path)
    p = CodingAgentCLI.preset("claude", AgentSettings()).propose(ctx)
    assert p.description == "raise LR"
    assert p.files == {"train.py": "LEARNING_RATE = 0.02\nBATCH_SIZE = 32\n"}
    assert (p.usage.input_tokens, p.usage.output_tokens, p.usage.cost_usd) == (1200, 300, 0.25)
    argv = json.loads((tmp_path / "steps.jsonl.prompts" / "0.argv.json").read_text())
    assert argv[argv.index("--script") + 2:] == ["-p", "--permission-mode", "acceptEdits",
                                                 "--output-format", "json"]
    prompt = (tmp_path / "steps.jsonl.prompts" / "0.txt").read_text()
    assert "Lower the loss." in prompt and TRAIN in prompt and "Description:" in prompt
    assert "raise LR" in (tmp_path / "logs" / "agent-7.log").read_text()


def test_codex_preset_via_override_variable(tmp_path, monkeypatch):
    script = write_script(tmp_path, [{"description": "bigger batch", "edits": [
        {"path": "train.py", "search": "BATCH_SIZE = 32", "replace": "BATCH_SIZE = 64"}]}])
    exe = fake_agent_binary(tmp_path, "my-codex", script)
    monkeypatch.setenv("AUTORESEARCH_CODEX_BIN", str(exe))
    p = CodingAgentCLI.preset("codex", AgentSettings()).propose(context(tmp_path))
    assert p.description == "bigger batch" and "BATCH_SIZE = 64" in p.files["train.py"]
    argv = json.loads((tmp_path / "steps.jsonl.prompts" / "0.argv.json").read_text())
    assert argv[-5:] == ["exec", "--sandbox", "workspace-write", "--skip-git-repo-check", "-"]
    assert "Lower the loss." in (tmp_path / "steps.jsonl.prompts" / "0.txt").read_text()


def test_missing_binary_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("AUTORESEARCH_CLAUDE_BIN", raising=False)
    with pytest.raises(AgentConfigError, match="not on PATH.*AUTORESEARCH_CLAUDE_BIN"):
        CodingAgentCLI.preset("claude", AgentSettings())


def test_command_with_prompt_placeholder_gets_the_prompt_as_an_argument(tmp_path):
    script = write_script(tmp_path, [{"description": "raise LR", "edits": [RAISE_LR]}])
    p = command_agent(script, "{prompt}").propose(context(tmp_path))
    assert "0.02" in p.files["train.py"]
    argv = json.loads((tmp_path / "steps.jsonl.prompts" / "0.argv.json").read_text())
    assert "Lower the loss." in argv[-1] and "`Description: <what you changed" in argv[-1]


def test_description_falls_back_to_a_summary_of_the_diff(tmp_path):
    script = write_script(tmp_path, [{"edits": [RAISE_LR]}])
    p = command_agent(script).propose(context(tmp_path))
    assert p.description == "train.py: LEARNING_RATE = 0.01 -> LEARNING_RATE = 0.02"


def test_new_and_deleted_editable_files_are_read_back(tmp_path):
    script = write_script(tmp_path, [{"description": "split", "write": {"model.py": "W = 2\n"},
                                      "delete": ["helpers.py"]}])
    p = command_agent(script).propose(context(tmp_path))
    assert p.files == {"model.py": "W = 2\n", "helpers.py": None}


def test_edits_to_locked_files_are_dropped_and_noted(tmp_path):
    script = write_script(tmp_path, [{"description": "cheat", "edits": [RAISE_LR],
                                      "write": {"prepare.py": "X = 0\n", "data/notes.txt": "n\n"}}])
    p = command_agent(script).propose(context(tmp_path))
    assert set(p.files) == {"train.py"}
    assert p.notes == ["dropped edits to files that are not editable: data/notes.txt, prepare.py"]


def test_only_locked_edits_is_agent_error(tmp_path):
    script = write_script(tmp_path, [{"description": "cheat", "write": {"prepare.py": "X = 0\n"}}])
    with pytest.raises(AgentError, match=r"changed no editable file \(dropped edits .*prepare.py\)"):
        command_agent(script).propose(context(tmp_path))


def test_no_change_is_agent_error(tmp_path):
    script = write_script(tmp_path, [{"description": "thought about it"}])
    with pytest.raises(AgentError, match="the agent changed no editable file") as info:
        command_agent(script).propose(context(tmp_path))
    assert "thought about it" in open(info.value.agent_log).read()


def test_timeout_kills_the_agent(tmp_path):
    script = write_script(tmp_path, [{"sleep": 30, "edits": [RAISE_LR]}])
    start = time.monotonic()
    with pytest.raises(AgentError, match="no answer within 1 s"):
        command_agent(script, timeout=1).propose(context(tmp_path))
    assert time.monotonic() - start < 10
    assert (tmp_path / "workspace" / "train.py").read_text() == TRAIN


def test_failing_exit_status_is_agent_error(tmp_path):
    script = write_script(tmp_path, [{"edits": [RAISE_LR], "exit": 1, "stdout": "out of credits"}])
    with pytest.raises(AgentError, match="exited with status 1"):
        command_agent(script).propose(context(tmp_path))
