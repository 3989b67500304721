"""The vocabulary shared by every module: experiment kinds and statuses, proposals, outcomes.

Two enums hold what an experiment is (`Kind`) and where it stands (`Status`); everything else
is plain dataclasses so that agents, policies, executors and the ledger can be written and
tested apart.

The experiment's state machine (every transition the loop makes; nothing else writes a status):

    from          event                                         to            kinds
    (new)         proposal committed, files editable            running       candidate
    (new)         proposal touches a non-editable file          invalid       candidate
    (new)         the agent gave no usable proposal             agent-error   candidate
    (new)         run opened with no rows                       running       baseline
    (new)         the policy asks for another measurement       running       repeat
    (new)         a winner replayed onto a newer best           running       rebase
    running       dispatched to a slot (again after a resume)   running       all
    (new)         proposal near-duplicates an earlier one       duplicate     candidate
    running       Ctrl-C / SIGTERM / executor stopped           interrupted   all
    interrupted   the run resumes                               running       all
    running       the command failed / timed out / pruned       crash|timeout|pruned|invalid
    running       measured; breaks a constraint                 discard (repeat: crash)
    running       measured                                      pending       baseline, candidate, rebase
    running       measured                                      repeat        repeat
    pending       baseline: first measurement                   keep          baseline
    pending       the policy: keep, on top of the best          keep          candidate, rebase
    pending       the policy: keep, proposed against an older   rebased       candidate, rebase
                  best (a `rebase` row measures it again; never
                  a tree search's child, kept as measured)
    pending       the policy: discard / no verdict within cap   discard       candidate, rebase
    pending       the policy: measure again                     pending       candidate, rebase
    pending       one of its repeats failed                     discard       candidate, rebase

`judge.py` holds the policy's part of this table as code; `loop.py` the rest.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Kind(str, enum.Enum):
    """What an experiment is. A str enum: rows and JSON carry the plain value."""

    BASELINE = "baseline"        # the unmodified code the run started from
    CANDIDATE = "candidate"      # a proposal of the agent
    REPEAT = "repeat"            # another measurement of a candidate's (or the best's) code
    REBASE = "rebase"            # a winner against an older best, replayed onto the newer one

    def __str__(self) -> str:
        return self.value


class Status(str, enum.Enum):
    RUNNING = "running"          # committed and being evaluated
    PENDING = "pending"          # measured once, the policy wants more evidence
    KEEP = "keep"                # became the best; the run branch points at it
    DISCARD = "discard"          # measured and not better
    CRASH = "crash"              # a command failed, or the metric was missing / NaN / infinite
    TIMEOUT = "timeout"          # killed at the hard timeout
    OVER_BUDGET = "over-budget"  # ran past the budget plus its allowance; never kept
    INVALID = "invalid"          # touched a file outside the editable globs; never run
    INTERRUPTED = "interrupted"  # stopped by Ctrl-C / SIGTERM
    AGENT_ERROR = "agent-error"  # the agent gave no usable proposal
    PRUNED = "pruned"            # stopped early: its curve was clearly worse than the best's
    REPEAT = "repeat"            # an extra measurement of an earlier candidate (noise-aware policy)
    REBASED = "rebased"          # won against an older best; replayed onto the new best and measured again
    DUPLICATE = "duplicate"      # a near-duplicate of an earlier experiment (neardup.py); never run

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        return self not in (Status.RUNNING, Status.PENDING)

    @property
    def failed(self) -> bool:
        return self in (Status.CRASH, Status.TIMEOUT, Status.OVER_BUDGET, Status.INVALID,
                        Status.AGENT_ERROR)


@dataclass
class Usage:
    """What one proposal cost the agent."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cost_usd + other.cost_usd,
        )


@dataclass
class Proposal:
    """A change to try: a description plus new file contents or a unified diff.

    Paths are relative to the target directory (where autoresearch.toml lives).
    """

    description: str
    files: dict[str, str | None] | None = None   # None as a value deletes that file
    patch: str | None = None
    params: dict[str, Any] | None = None      # sampled values, for samplers such as Optuna
    usage: Usage = field(default_factory=Usage)
    notes: list[str] = field(default_factory=list)  # e.g. edits outside the editable files, dropped
    refused: list[str] = field(default_factory=list)  # paths it edited that are not editable (dropped)
    agent_log: str | None = None              # path of the agent's saved transcript
    notes_entry: str | None = None            # a line to add to the run's research notes (notes.py)
    notes_text: str | None = None             # the whole new research notes (a coding agent's file)
    agent: str | None = None                  # the harness sets it: the portfolio member that made it


@dataclass
class Outcome:
    """What the harness tells an agent after its proposal was judged."""

    experiment_id: int | None
    status: Status
    metric: float | None
    reason: str = ""
    duplicate_of: int | None = None   # the proposal repeated this earlier experiment's files
    metrics: dict[str, float] = field(default_factory=dict)  # every metric it recorded (constraints)


@dataclass(slots=True)   # one per experiment, held for the whole run (state.py)
class HistoryEntry:
    """One row of the experiment history as agents and the context builder see it."""

    id: int
    seq: int
    status: Status
    metric: float | None
    description: str
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] | None = None
    commit: str | None = None
    parent: str | None = None
    candidate_of: int | None = None
    agent: str | None = None          # who proposed it (the ledger's agent column)
    role: str | None = None           # its role in a portfolio ([[agents]] role), if any
