"""Agents by name: the proposers of changes.

    optuna              offline: TPE over the numeric constants of the editable files (default)
    script:PATH         replay JSON Lines proposals
    claude, codex       coding-agent CLIs (agents/cli.py)
    command:"CMD"       any other coding-agent CLI
    openai:MODEL        an OpenAI-compatible Chat Completions server (agents/llm.py)
    anthropic:MODEL     the Anthropic Messages API
"""

from __future__ import annotations

from ..config import Target
from ..errors import AgentConfigError
from .base import Agent, AgentContext, AgentError, ProposalsExhausted

DEFAULT_AGENT = "optuna"


def make_agent(spec: str, target: Target, *, files: dict[str, str], seed: int = 0) -> Agent:
    """Build the agent named by an --agent value. `files`: the editable files at the base."""
    name, _, arg = spec.partition(":")
    if name == "optuna" and not arg:
        from .optuna_agent import OptunaAgent
        return OptunaAgent(target.spec, files, seed=seed)
    if name == "script" and arg:
        from .script_agent import ScriptAgent
        return ScriptAgent(arg)
    if name in ("claude", "codex") and not arg:
        from .cli import CodingAgentCLI
        return CodingAgentCLI.preset(name, target.spec.agent)
    if name == "command":
        from .cli import CodingAgentCLI
        return CodingAgentCLI.from_command(arg, target.spec.agent)
    if name in ("openai", "anthropic"):
        from .llm import AnthropicAgent, OpenAIAgent
        cls = OpenAIAgent if name == "openai" else AnthropicAgent
        return cls(arg.strip(), target.spec.agent)
    raise AgentConfigError(
        f"unknown agent '{spec}' — use optuna, script:PATH, claude, codex, command:\"CMD\", "
        f"openai:MODEL or anthropic:MODEL")


__all__ = ["Agent", "AgentContext", "AgentError", "ProposalsExhausted", "make_agent", "DEFAULT_AGENT"]
