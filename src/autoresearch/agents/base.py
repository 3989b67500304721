"""The agent interface: one proposal at a time from a fresh, bounded context.

An agent is a sampler in Optuna's sense: `propose(context) -> Proposal` says what to try next,
`observe(proposal, outcome)` tells it how that went. Agents never run git and never touch the
user's checkout; coding-agent CLIs edit a scratch workspace that the harness gives them, and the
harness reads the editable files back from it.

Faults are typed: AgentError for an answer with no usable edit (recorded as an `agent-error`
experiment, the loop goes on), ProposalsExhausted when an agent has nothing more to offer (the run
ends cleanly).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..experiment import HistoryEntry, Outcome, Proposal, Usage

if TYPE_CHECKING:
    from ..config import TargetSpec


class AgentError(Exception):
    """The agent produced nothing usable; `usage` is what the failed attempt cost."""

    def __init__(self, reason: str, usage: Usage | None = None, agent_log: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.usage = usage or Usage()
        self.agent_log = agent_log


class ProposalsExhausted(Exception):
    """The agent has no further proposals (a replayed script ran out)."""


@dataclass
class AgentContext:
    """Everything an agent may know when it proposes.

    `files` are the editable files at the commit the proposal starts from (`base_commit`: the
    best, or under the tree strategy the chosen node), keyed by path relative to the target
    root. `history` holds every finished experiment, oldest first. `workspace()` checks that
    commit out into a scratch directory and returns the target root inside it; only agents that
    edit files in place (coding-agent CLIs) call it.

    Tree search (strategies.py) also names the `operator` (draft, improve or debug) and the
    `parent` node the proposal starts from, with its runs and its diff against the best; under
    the ratchet these are None and empty, and `best` is the node.
    """

    program: str
    files: dict[str, str]
    history: list[HistoryEntry]
    best: HistoryEntry | None
    spec: TargetSpec
    base_commit: str
    experiment_seq: int                       # the seq number this proposal will get
    last_crash_log: str | None = None
    feedback: str | None = None               # e.g. "that duplicated experiment #12"
    workspace: Callable[[], Path] | None = None
    editable: Callable[[str], bool] = field(default=lambda p: True)  # is this path editable?
    log_dir: Path | None = None               # where the agent may save its transcript
    operator: str | None = None               # tree search: draft | improve | debug
    parent: HistoryEntry | None = None        # tree search: the node it starts from
    parent_values: list[float] = field(default_factory=list)   # that node's runs
    parent_diff: str | None = None            # that node against the best ("" when the same)
    role: str | None = None                   # its role in a portfolio ([[agents]] role)
    research_notes: str = ""                  # the run's research notes (notes.py), shared
    notes_chars: int = 0                      # their size limit; 0: notes are off
    tried: str = ""                           # the machine-made summary of what was tried


class Agent(ABC):
    """Base class for proposers. Subclasses set `name`."""

    name: str = "agent"
    #: may `propose` be called again before earlier proposals were observed (proposals ahead of
    #: time and several workers)? Agents that cannot say so are called one at a time.
    concurrent: bool = True
    #: is `propose` slow (an LLM, a coding-agent CLI)? Then the loop asks for the next proposals
    #: while experiments run, one per slot; an instant agent is asked only when a slot is free
    #: so that it sees every result first.
    ahead: bool = False

    @abstractmethod
    def propose(self, context: AgentContext) -> Proposal:
        """Return the next change to try; raise AgentError or ProposalsExhausted."""

    def observe(self, proposal: Proposal, outcome: Outcome) -> None:  # noqa: B027
        """Learn from a judged proposal. The default ignores it."""

    def resume(self, history: list[HistoryEntry]) -> None:  # noqa: B027
        """Rebuild internal state from the ledger after a restart. The default ignores it."""

    def baseline_params(self) -> dict[str, Any] | None:
        """The parameters the unmodified code stands for (a sampler's starting point), recorded
        with the baseline; None when the agent has no parameters."""
        return None

    def check(self) -> None:  # noqa: B027
        """Before the run: one cheap call that proves the endpoint answers and accepts the key;
        raise AgentConfigError with the server's message when it does not. The default does
        nothing (offline agents)."""

    def close(self) -> None:  # noqa: B027
        """Release resources (servers, subprocesses)."""


def save_agent_log(context: AgentContext, agent: str, text: str, ext: str) -> str | None:
    """Write a transcript to the context's log directory as `proposal-NNNN.EXT`; its path.

    Proposals are numbered in the order they were asked for. The number is not an experiment
    number: a proposal made ahead of time may become any experiment, or none (the ledger row
    links to its transcript, and `autoresearch show N` prints the path).
    """
    if context.log_dir is None:
        return None
    context.log_dir.mkdir(parents=True, exist_ok=True)
    best = f", against best #{context.best.seq}" if context.best is not None else ""
    for n in range(1, 1_000_000):
        path = context.log_dir / f"proposal-{n:04d}.{ext}"
        try:
            with open(path, "x", encoding="utf-8") as f:     # exclusive: parallel proposals
                f.write(f"# {agent}, proposal {n}{best}\n{text}")
            return str(path)
        except FileExistsError:
            continue
    return None
