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
    assert argv[argv.index("--script") + 2:] == [
        "-p", "--output-format", "stream-json", "--verbose", "--include-partial-messages",
        "--permission-mode", "acceptEdits", "--tools", "Read,Edit,Write", "--no-session-persistence"]
    prompt = (tmp_path / "steps.jsonl.prompts" / "0.txt").read_text()
    assert "Lower the loss." in prompt and TRAIN in prompt and "Description:" in prompt
    log = (tmp_path / "logs" / "proposal-0001.log").read_text()
    assert p.agent_log == str(tmp_path / "logs" / "proposal-0001.log")
    assert "raise LR" in log and "experiment #" not in log   # a proposal number, not an experiment's


def test_codex_preset_via_override_variable(tmp_path, monkeypatch):
    script = write_script(tmp_path, [{"description": "bigger batch", "edits": [
        {"path": "train.py", "search": "BATCH_SIZE = 32", "replace": "BATCH_SIZE = 64"}]}])
    exe = fake_agent_binary(tmp_path, "my-codex", script)
    monkeypatch.setenv("AUTORESEARCH_CODEX_BIN", str(exe))
    p = CodingAgentCLI.preset("codex", AgentSettings()).propose(context(tmp_path))
    assert p.description == "bigger batch" and "BATCH_SIZE = 64" in p.files["train.py"]
    argv = json.loads((tmp_path / "steps.jsonl.prompts" / "0.argv.json").read_text())
    assert argv[-7:] == ["exec", "--json", "--ephemeral", "--sandbox", "workspace-write",
                         "--skip-git-repo-check", "-"]
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
    assert p.refused == ["data/notes.txt", "prepare.py"]


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


# == the real tools' protocols, errors, stalls and checks ======================================
def _on_path(tmp_path, monkeypatch, name: str, script: Path) -> None:
    fake_agent_binary(tmp_path, name, script)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(f"AUTORESEARCH_{name.upper()}_BIN", raising=False)
    monkeypatch.delenv("CODEX_HOME", raising=False)


def test_claude_error_is_recorded_from_the_result_fields_not_the_raw_json(tmp_path, monkeypatch):
    script = write_script(tmp_path, [{"api_error": 401, "message": "invalid API key"}])
    _on_path(tmp_path, monkeypatch, "claude", script)
    with pytest.raises(AgentError) as info:
        CodingAgentCLI.preset("claude", AgentSettings()).propose(context(tmp_path))
    reason = info.value.reason
    assert reason == "claude failed: API Error: 401 invalid API key (api_error_status 401)"
    assert "{" not in reason


def test_claude_partial_messages_count_as_progress_but_stay_out_of_the_log(tmp_path, monkeypatch):
    script = write_script(tmp_path, [{"description": "raise LR now please", "edits": [RAISE_LR]}])
    _on_path(tmp_path, monkeypatch, "claude", script)
    p = CodingAgentCLI.preset("claude", AgentSettings()).propose(context(tmp_path))
    log = Path(p.agent_log).read_text()
    assert p.description == "raise LR now please"
    assert "stream_event" not in log and "partial-message lines not kept" in log
    assert '"type": "result"' in log


def test_codex_tokens_come_from_its_json_events_and_are_priced(tmp_path, monkeypatch):
    script = write_script(tmp_path, [{"description": "bigger batch", "input_tokens": 3000,
                                      "output_tokens": 120, "edits": [RAISE_LR]}])
    _on_path(tmp_path, monkeypatch, "codex", script)
    settings = AgentSettings(prices={"codex": {"input": 1.0, "output": 10.0}})
    p = CodingAgentCLI.preset("codex", settings).propose(context(tmp_path))
    assert p.description == "bigger batch"
    assert (p.usage.input_tokens, p.usage.output_tokens) == (3000, 120)
    assert p.usage.cost_usd == pytest.approx((3000 * 1.0 + 120 * 10.0) / 1e6)


def test_codex_text_output_tokens_used_line_is_read(tmp_path):
    script = write_script(tmp_path, [{"description": "d", "input_tokens": 3000, "output_tokens": 120,
                                      "edits": [RAISE_LR]}])
    agent = CodingAgentCLI.from_command(f"{FAKE_AGENT_CLI} --script {script} --codex-text 2>&1",
                                        AgentSettings())
    p = agent.propose(context(tmp_path))
    assert p.usage.input_tokens == 3120


def test_codex_failure_is_recorded_from_turn_failed(tmp_path, monkeypatch):
    script = write_script(tmp_path, [{"api_error": 401, "message": "Unauthorized"}])
    _on_path(tmp_path, monkeypatch, "codex", script)
    with pytest.raises(AgentError, match=r"^codex failed: unexpected status 401 Unauthorized$"):
        CodingAgentCLI.preset("codex", AgentSettings()).propose(context(tmp_path))


@pytest.mark.parametrize("home", ["/tmp/codex-home", "{tmp}"])
def test_codex_home_under_tmp_is_refused_with_the_reason(tmp_path, monkeypatch, home):
    import tempfile

    script = write_script(tmp_path, [{}])
    _on_path(tmp_path, monkeypatch, "codex", script)
    monkeypatch.setenv("CODEX_HOME", home.format(tmp=tempfile.gettempdir() + "/x"))
    with pytest.raises(AgentConfigError, match=r"CODEX_HOME=.* is under /tmp, where Codex's sandbox"):
        CodingAgentCLI.preset("codex", AgentSettings())


def test_codex_home_elsewhere_is_accepted(tmp_path, monkeypatch):
    script = write_script(tmp_path, [{}])
    _on_path(tmp_path, monkeypatch, "codex", script)
    monkeypatch.setenv("CODEX_HOME", "/root/.codex")
    assert CodingAgentCLI.preset("codex", AgentSettings()).name == "codex"


@pytest.mark.parametrize("name", ["claude", "codex"])
def test_an_agent_that_only_retries_is_killed_at_the_stall_timeout(tmp_path, monkeypatch, name):
    script = write_script(tmp_path, [{"retry_forever": True}])
    _on_path(tmp_path, monkeypatch, name, script)
    start = time.monotonic()
    with pytest.raises(AgentError, match=r"no progress for 1.5 s .*killed"):
        CodingAgentCLI.preset(name, AgentSettings(stall_timeout=1.5)).propose(context(tmp_path))
    assert time.monotonic() - start < 8


def test_a_silent_agent_is_killed_at_the_stall_timeout(tmp_path):
    script = write_script(tmp_path, [{"stall": 60, "edits": [RAISE_LR]}])
    start = time.monotonic()
    with pytest.raises(AgentError, match=r"no progress for 1 s"):
        command_agent(script, stall_timeout=1).propose(context(tmp_path))
    assert time.monotonic() - start < 8
    assert (tmp_path / "workspace" / "train.py").read_text() == TRAIN


def test_an_agent_that_prints_as_it_works_is_not_a_stall(tmp_path):
    # prints a line (its step notice), then works 1.5 s; progress is what counts, not speed
    script = write_script(tmp_path, [{"sleep": 1.5, "description": "slow but fine", "edits": [RAISE_LR]}])
    p = command_agent(script, stall_timeout=3).propose(context(tmp_path))
    assert p.description == "slow but fine"


@pytest.mark.parametrize("name", ["claude", "codex"])
def test_connectivity_check_passes_and_takes_no_step(tmp_path, monkeypatch, name):
    script = write_script(tmp_path, [{"description": "d", "edits": [RAISE_LR]}])
    _on_path(tmp_path, monkeypatch, name, script)
    agent = CodingAgentCLI.preset(name, AgentSettings())
    agent.check()
    assert agent.propose(context(tmp_path)).description == "d"


@pytest.mark.parametrize("name,message", [
    ("claude", r"API Error: 401 invalid API key \(api_error_status 401\)"),
    ("codex", r"unexpected status 401 invalid API key")])
def test_connectivity_check_fails_fast_with_the_servers_message(tmp_path, monkeypatch, name, message):
    script = write_script(tmp_path, [{}])
    (tmp_path / "steps.jsonl.check.json").write_text(json.dumps({"api_error": 401,
                                                                 "message": "invalid API key"}))
    _on_path(tmp_path, monkeypatch, name, script)
    with pytest.raises(AgentConfigError, match=rf"--agent {name}: the connectivity check failed: {message}"):
        CodingAgentCLI.preset(name, AgentSettings()).check()
    assert not (tmp_path / "steps.jsonl.state").exists()     # no proposal step was used


def test_connectivity_check_against_a_dead_endpoint_stops_at_the_stall_timeout(tmp_path, monkeypatch):
    script = write_script(tmp_path, [{}])
    (tmp_path / "steps.jsonl.check.json").write_text(json.dumps({"retry_forever": True}))
    _on_path(tmp_path, monkeypatch, "claude", script)
    start = time.monotonic()
    with pytest.raises(AgentConfigError, match=r"connectivity check failed: no progress for"):
        CodingAgentCLI.preset("claude", AgentSettings(stall_timeout=1)).check()
    assert time.monotonic() - start < 8


def test_connectivity_check_can_be_switched_off(tmp_path, monkeypatch):
    script = write_script(tmp_path, [{}])
    (tmp_path / "steps.jsonl.check.json").write_text(json.dumps({"api_error": 401}))
    _on_path(tmp_path, monkeypatch, "claude", script)
    CodingAgentCLI.preset("claude", AgentSettings(check=False)).check()


def test_aider_history_files_are_ignored(tmp_path):
    script = write_script(tmp_path, [{"description": "d", "edits": [RAISE_LR], "aider_files": True}])
    p = command_agent(script).propose(context(tmp_path))
    assert (tmp_path / "workspace" / ".aider.chat.history.md").exists()
    assert set(p.files) == {"train.py"} and p.notes == [] and p.refused == []


def test_close_kills_a_running_agent(tmp_path):
    import threading

    script = write_script(tmp_path, [{"sleep": 60, "edits": [RAISE_LR]}])
    agent = command_agent(script)
    errors = []

    def work():
        try:
            agent.propose(context(tmp_path))
        except AgentError as e:
            errors.append(e.reason)

    t = threading.Thread(target=work)
    t.start()
    deadline = time.monotonic() + 10
    while not (tmp_path / "steps.jsonl.state").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    start = time.monotonic()
    agent.close()
    t.join(timeout=15)
    assert errors == ["command: stopped with the run"]
    assert time.monotonic() - start < 8
