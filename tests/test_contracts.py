"""Every built-in plug-in keeps its interface's contract (autoresearch.testing.contracts).

One contract per interface, run against every implementation: all agents (the LLM ones through
the fake servers, the coding-agent CLIs through the fake CLI), both policies, both executors.
Ray shares one small local instance for this module, started and shut down here as in
test_ray.py.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import FAKE_AGENT_CLI, fake_agent_binary

import autoresearch
from autoresearch.agents.base import Agent, AgentContext
from autoresearch.agents.cli import CodingAgentCLI
from autoresearch.agents.llm import AnthropicAgent, OpenAIAgent
from autoresearch.agents.optuna_agent import OptunaAgent
from autoresearch.agents.script_agent import ScriptAgent
from autoresearch.config import AgentSettings, TargetSpec, load_spec
from autoresearch.executors.local import LocalExecutor
from autoresearch.policies.greedy import GreedyPolicy
from autoresearch.policies.noise_aware import NoiseAwarePolicy
from autoresearch.policies.sequential import SequentialPolicy
from autoresearch.ratchet import Ratchet
from autoresearch.testing import FakeAnthropicServer, FakeOpenAIServer
from autoresearch.testing.contracts import (
    AGENT_PROPOSALS,
    ContractViolation,
    check_agent,
    check_executor,
    check_policy,
)

QUICKSTART = Path(autoresearch.__file__).parent / "templates" / "quickstart"
TRAIN = "LEARNING_RATE = 0.01\nBATCH_SIZE = 32\n"
RAISE_LR = {"path": "train.py", "search": "LEARNING_RATE = 0.01", "replace": "LEARNING_RATE = 0.02"}
LLM_REPLY = ("Description: double the learning rate\n\ntrain.py\n<<<<<<< SEARCH\n"
             "LEARNING_RATE = 0.01\n=======\nLEARNING_RATE = 0.02\n>>>>>>> REPLACE\n")
STEPS = AGENT_PROPOSALS + 5          # script lines / fake CLI steps: more than the check asks for


# == agents ======================================================================================
def small_context(tmp_path: Path) -> Callable[[], AgentContext]:
    """A context over train.py (editable) and prepare.py (locked), with a fresh workspace each time."""
    spec = TargetSpec(editable=["train.py"], locked=["prepare.py"], run="python train.py",
                      metric="val_loss")
    made = {"n": 0}

    def workspace() -> Path:
        made["n"] += 1
        ws = tmp_path / "workspaces" / str(made["n"])
        ws.mkdir(parents=True)
        (ws / "train.py").write_text(TRAIN)
        (ws / "prepare.py").write_text("X = 1\n")
        return ws

    def factory() -> AgentContext:
        return AgentContext(program="Lower the loss.", files={"train.py": TRAIN}, history=[],
                            best=None, spec=spec, base_commit="0" * 40, experiment_seq=2,
                            workspace=workspace, editable=lambda p: p == "train.py",
                            log_dir=tmp_path / "agent-logs")
    return factory


def cli_script(tmp_path: Path) -> Path:
    script = tmp_path / "steps.jsonl"
    step = {"description": "raise the learning rate", "edits": [RAISE_LR]}
    script.write_text("".join(json.dumps(step) + "\n" for _ in range(STEPS)))
    return script


@pytest.fixture
def optuna_setup(tmp_path):
    spec = load_spec(QUICKSTART / "autoresearch.toml")
    files = {"train.py": (QUICKSTART / "train.py").read_text()}

    def context() -> AgentContext:
        return AgentContext(program="Lower val_loss.", files=dict(files), history=[], best=None,
                            spec=spec, base_commit="0" * 40, experiment_seq=2,
                            editable=lambda p: p == "train.py")
    return (lambda: OptunaAgent(spec, files, seed=0)), context


@pytest.fixture
def script_setup(tmp_path):
    path = tmp_path / "proposals.jsonl"
    path.write_text("".join(json.dumps({"description": f"value {i}",
                                        "files": {"train.py": f"LEARNING_RATE = 0.0{i % 9 + 1}\n"}})
                            + "\n" for i in range(STEPS)))
    return (lambda: ScriptAgent(str(path))), small_context(tmp_path)


@pytest.fixture
def command_setup(tmp_path):
    script = cli_script(tmp_path)
    agent = lambda: CodingAgentCLI.from_command(f"{FAKE_AGENT_CLI} --script {script}", AgentSettings())  # noqa: E731
    return agent, small_context(tmp_path)


def _preset_setup(name: str, tmp_path: Path, monkeypatch) -> tuple:
    fake_agent_binary(tmp_path, name, cli_script(tmp_path))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(f"AUTORESEARCH_{name.upper()}_BIN", raising=False)
    assert shutil.which(name) == str(tmp_path / "bin" / name)
    return (lambda: CodingAgentCLI.preset(name, AgentSettings())), small_context(tmp_path)


@pytest.fixture
def claude_setup(tmp_path, monkeypatch):
    return _preset_setup("claude", tmp_path, monkeypatch)


@pytest.fixture
def codex_setup(tmp_path, monkeypatch):
    return _preset_setup("codex", tmp_path, monkeypatch)


def _llm_setup(server_cls, agent_cls, tmp_path: Path) -> Iterator[tuple]:
    with server_cls([LLM_REPLY], loop=True) as server:
        settings = AgentSettings(timeout=10, max_retries=0)
        yield ((lambda: agent_cls("fake-model", settings, base_url=server.base_url,
                                  api_key="test-key")), small_context(tmp_path))


@pytest.fixture
def openai_setup(tmp_path):
    yield from _llm_setup(FakeOpenAIServer, OpenAIAgent, tmp_path)


@pytest.fixture
def anthropic_setup(tmp_path):
    yield from _llm_setup(FakeAnthropicServer, AnthropicAgent, tmp_path)


AGENTS = ["optuna", "script", "command", "claude", "codex", "openai", "anthropic"]


@pytest.mark.parametrize("name", AGENTS)
def test_built_in_agent_keeps_the_agent_contract(name, request):
    agent_factory, context_factory = request.getfixturevalue(f"{name}_setup")
    check_agent(agent_factory, context_factory)


def test_the_agent_contract_catches_an_agent_that_writes_a_locked_file(tmp_path):
    from autoresearch.experiment import Proposal

    class Cheater(Agent):
        name = "cheater"

        def propose(self, context: AgentContext) -> Proposal:
            return Proposal("edit the evaluator", files={"prepare.py": "X = 0\n"})

    with pytest.raises(ContractViolation, match="prepare.py.*not editable"):
        check_agent(Cheater, small_context(tmp_path))


# == policies ====================================================================================
@pytest.mark.parametrize("policy", [GreedyPolicy, NoiseAwarePolicy, SequentialPolicy],
                         ids=["greedy", "noise-aware-v1", "noise-aware"])
def test_built_in_policy_keeps_the_policy_contract(policy):
    check_policy(policy)


def test_the_policy_contract_catches_a_policy_that_keeps_everything():
    from autoresearch.policies.base import Decision, Verdict

    class KeepAll(GreedyPolicy):
        name = "keep-all"

        def decide(self, candidate, incumbent, ctx):
            return Decision(Verdict.KEEP, "always")

    with pytest.raises(ContractViolation, match="worse than the best"):
        check_policy(KeepAll)


# == executors ===================================================================================
@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def test_local_executor_keeps_the_executor_contract(make_target, tmp_path):
    root = make_target(tmp_path)
    check_executor(lambda: LocalExecutor(Ratchet(root), workers=2), root)


def test_ray_executor_keeps_the_executor_contract(local_ray, make_target, tmp_path):
    from autoresearch.executors.ray_executor import RayExecutor

    root = make_target(tmp_path)
    check_executor(lambda: RayExecutor(Ratchet(root), workers=2), root)
    assert local_ray.is_initialized()     # an executor leaves a Ray it did not start running
