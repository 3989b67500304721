"""The script agent replays JSON Lines proposals and ends the run when they run out."""

from __future__ import annotations

import json

import pytest

from autoresearch.agents.base import AgentContext, ProposalsExhausted
from autoresearch.agents.script_agent import ScriptAgent
from autoresearch.config import TargetSpec
from autoresearch.errors import ConfigError
from autoresearch.experiment import HistoryEntry, Status

SPEC = TargetSpec.model_validate({"editable": ["train.py"], "run": "true", "metric": "loss"})
CTX = AgentContext(program="", files={"train.py": "A = 1\n"}, history=[], best=None, spec=SPEC,
                   base_commit="0" * 40, experiment_seq=2)
PATCH = "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-A = 1\n+A = 2\n"


def write(tmp_path, items) -> str:
    path = tmp_path / "proposals.jsonl"
    path.write_text("\n".join(i if isinstance(i, str) else json.dumps(i) for i in items) + "\n")
    return str(path)


def test_replays_files_and_patch_proposals_in_order(tmp_path):
    path = write(tmp_path, [{"description": "whole file", "files": {"train.py": "A = 3\n"}},
                            "",
                            {"description": "a patch", "patch": PATCH}])
    agent = ScriptAgent(path)
    first, second = agent.propose(CTX), agent.propose(CTX)
    assert (first.description, first.files, first.patch) == ("whole file", {"train.py": "A = 3\n"}, None)
    assert (second.description, second.files, second.patch) == ("a patch", None, PATCH)
    assert first.params == {"script_line": 1} and second.params == {"script_line": 2}
    with pytest.raises(ProposalsExhausted):
        agent.propose(CTX)


def test_a_missing_description_names_the_line(tmp_path):
    agent = ScriptAgent(write(tmp_path, [{"files": {"train.py": "A = 3\n"}}]))
    assert agent.propose(CTX).description == "proposals.jsonl line 1"


def test_resume_skips_proposals_already_tried(tmp_path):
    agent = ScriptAgent(write(tmp_path, [{"description": f"p{i}", "files": {"train.py": f"A = {i}\n"}}
                                         for i in range(3)]))
    done = [HistoryEntry(id=1, seq=1, status=Status.KEEP, metric=1.0, description="baseline"),
            HistoryEntry(id=2, seq=2, status=Status.DISCARD, metric=2.0, description="p0",
                         params={"script_line": 1})]
    agent.resume(done)
    assert agent.propose(CTX).description == "p1"


def test_malformed_json_names_file_and_line(tmp_path):
    path = write(tmp_path, [{"description": "ok", "files": {"train.py": "x"}}, '{"description": oops}'])
    with pytest.raises(ConfigError) as info:
        ScriptAgent(path)
    assert f"{path}:2: not valid JSON" in str(info.value)


def test_a_line_without_files_or_patch_is_refused(tmp_path):
    path = write(tmp_path, [{"description": "nothing to do"}])
    with pytest.raises(ConfigError, match=r"proposals.jsonl:1: a proposal needs"):
        ScriptAgent(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        ScriptAgent(str(tmp_path / "nope.jsonl"))
