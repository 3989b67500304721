"""A portfolio: several agents proposing for one run, each with its share of the slots.

Given as `--agent claude:3 --agent optuna:1` (a trailing `:N` is the share; add `:1` when a
spec of your own ends in `:digits`) or as `[[agents]]` entries in autoresearch.toml, which may
also give each agent a `role` and its own `program` (an organisation: an explorer and a tuner
sharing the ledger and the research notes). A single agent is a portfolio of one.

Guarantees:
- Shares: the next proposal is asked of the member with the fewest slots in use (its proposals
  in the making plus its experiments queued or running, repeats included) per share of slots;
  ties go to the member with the fewest proposals per share so far, so that on one slot the
  proposals alternate in the ratio of the shares.
- Every proposal is recorded with its member's agent spec (the ledger's `agent` column) and
  role; its outcome is told to that member only (`observe`).
- Each member keeps its own state: on resume it is given only the rows it proposed (a portfolio
  of one is given every row, as before portfolios). The optuna agent therefore learns only from
  its own trials: another agent's rows change more than its parameters, so their metric is not
  a function of them.
- A member that runs out of proposals leaves the rotation; the run ends when all have.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .agents import Agent
from .config import PROGRAM_NAME, AgentEntry
from .errors import ConfigError
from .experiment import HistoryEntry, Outcome, Proposal

_SHARE = re.compile(r"^(?P<spec>.+?):(?P<slots>[0-9]+)$")
#: the agents that take no argument: `claude:3` can only be a share
_BARE = ("optuna", "claude", "codex")


def split_share(value: str) -> tuple[str, int | None]:
    """`claude:3` -> ("claude", 3); `script:x.jsonl:2` -> ("script:x.jsonl", 2); a value
    without a trailing `:N` keeps its share unset (None)."""
    m = _SHARE.match(value.strip())
    if not m:
        return value.strip(), None
    spec, slots = m.group("spec"), int(m.group("slots"))
    if ":" not in spec and spec not in _BARE:
        return value.strip(), None          # `openai:7` names a model, not a share
    if slots < 1:
        raise ConfigError(f"--agent {value}: the share of slots must be at least 1 "
                          f"(e.g. {spec}:1)")
    return spec, slots


def entries_from_flags(values: Iterable[str]) -> list[AgentEntry]:
    """--agent values as portfolio entries (each share 1 unless given)."""
    out = []
    seen: set[str] = set()
    for v in values:
        spec, slots = split_share(v)
        if spec in seen:
            raise ConfigError(f"--agent {spec} is given twice — give it once with its share "
                              f"(e.g. --agent {spec}:2), or use [[agents]] with roles")
        seen.add(spec)
        out.append(AgentEntry(agent=spec, slots=slots or 1))
    return out


def describe(entries: list[AgentEntry]) -> str:
    """The portfolio as the runs table records it: the spec of a single agent, else the
    `--agent` values joined by ' + ' (parsed back by `parse_recorded`)."""
    if len(entries) == 1 and entries[0].role is None and entries[0].program is None:
        return entries[0].agent
    return " + ".join(f"{e.agent}:{e.slots}" + (f" ({e.role})" if e.role else "")
                      for e in entries)


def parse_recorded(text: str) -> list[str]:
    """The --agent values of a recorded portfolio (roles are the toml's: a resumed run without
    --agent and without [[agents]] keeps the agents and shares, not the roles)."""
    return [re.sub(r"\s*\([^)]*\)$", "", part.strip()) for part in text.split(" + ")]


@dataclass(eq=False)
class Member:
    """One agent of a portfolio."""

    spec: str                       # the --agent value (the ledger's agent column)
    agent: Agent
    slots: int = 1
    role: str | None = None
    program: str = PROGRAM_NAME     # the program.md its prompt uses
    exhausted: bool = False
    asked: int = 0                  # proposals asked of it in this session
    errors: int = 0                 # agent errors or refusals in a row
    feedback: list[str] = field(default_factory=list)   # for its next context only
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.spec, self.role)

    @property
    def label(self) -> str:
        return self.spec + (f" ({self.role})" if self.role else "")


class Portfolio:
    """The members, who is asked next, and the routing of outcomes and resumed rows."""

    def __init__(self, members: list[Member]):
        if not members:
            raise ConfigError("no agent given — use --agent or an [[agents]] table")
        self.members = members
        self._by_label = {m.label: m for m in members}

    @classmethod
    def single(cls, spec: str, agent: Agent) -> Portfolio:
        return cls([Member(spec, agent)])

    @property
    def name(self) -> str:
        return describe([AgentEntry(agent=m.spec, slots=m.slots, role=m.role,
                                    program=None if m.program == PROGRAM_NAME else m.program)
                         for m in self.members])

    @property
    def ahead(self) -> bool:
        return any(m.agent.ahead for m in self.members)

    @property
    def exhausted(self) -> bool:
        return all(m.exhausted for m in self.members)

    def choose(self, in_use: dict[Member, int], making: dict[Member, int]) -> Member | None:
        """The member to ask next (None: every member is exhausted, or one at a time and
        busy). `in_use`: slots each member holds now (its experiments queued or running and
        its proposals in the making); `making`: its proposals in the making."""
        free = [m for m in self.members if not m.exhausted
                and (m.agent.concurrent or not making.get(m, 0))]
        if not free:
            return None
        return min(free, key=lambda m: (in_use.get(m, 0) / m.slots, m.asked / m.slots,
                                        self.members.index(m)))

    def member_of(self, proposal: Proposal) -> Member:
        return self._by_label.get(proposal.agent or "", self.members[0])

    # -- what the loop asks of an agent, routed -------------------------------------------------
    def observe(self, proposal: Proposal, outcome: Outcome) -> None:
        self.member_of(proposal).agent.observe(proposal, outcome)

    def resume(self, history: list[HistoryEntry]) -> None:
        if len(self.members) == 1:
            self.members[0].agent.resume(history)
            return
        for m in self.members:
            m.agent.resume([h for h in history if (h.agent, h.role) == m.key])

    def baseline_params(self) -> dict[str, Any] | None:
        for m in self.members:
            params = m.agent.baseline_params()
            if params is not None:
                return params
        return None

    def check(self) -> None:
        for m in self.members:
            m.agent.check()

    def close(self) -> None:
        for m in self.members:
            m.agent.close()
