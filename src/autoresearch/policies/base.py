"""The acceptance-policy interface: decide keep, discard or "measure again".

A policy sees the measurements of a candidate and of the incumbent (the current best) and returns
a Decision. Greedy decides after one run; a statistical policy may ask for more runs of either,
which the loop schedules as `repeat` experiments linked to the candidate and then asks again.

Values arrive in the metric's own units; `direction` says which way is better. Every decision
carries its evidence (runs, means, spread, statistic, p-value) so the ledger can show why.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import PolicySettings


class Verdict(str, enum.Enum):
    KEEP = "keep"
    DISCARD = "discard"
    MORE = "more"            # measure again; `rerun` says whom


@dataclass
class Sample:
    """Every finite measurement of one commit, plus its code size for the simplicity tie-break."""

    values: list[float]             # oldest first
    lines: int = 0
    #: how many of the first values are the runs that selected this commit as the best (they
    #: are biased by the winner's curse); 0 when it was never selected (the baseline)
    selection: int = 0
    #: when each value was measured, as experiment numbers (same order as `values`); empty when
    #: unknown. The policy compares only runs made under comparable conditions.
    at: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)


@dataclass
class PolicyContext:
    direction: Literal["minimize", "maximize"]
    settings: PolicySettings
    #: all groups of repeated measurements seen so far in this run (one list per commit with
    #: two or more runs), for a pooled estimate of the noise
    replicate_groups: list[list[float]] = field(default_factory=list)


@dataclass
class Decision:
    verdict: Verdict
    reason: str
    rerun: Literal["candidate", "incumbent"] | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


class Policy(ABC):
    name: str = "policy"

    def baseline_runs(self, settings: PolicySettings) -> int:
        """How many times the baseline is measured before any candidate (at most)."""
        return 1

    def baseline_complete(self, values: list[float], settings: PolicySettings) -> bool:
        """Whether the baseline's runs so far suffice (a deterministic metric needs no more)."""
        return len(values) >= self.baseline_runs(settings)

    def remeasure_best(self, incumbent: Sample, now: int, settings: PolicySettings,
                       resumed: bool = False) -> bool:
        """Whether the best should be measured again now, before more candidates (drift watch):
        `now` is the number the next experiment gets; `resumed` is true once when a run resumes."""
        return False

    @abstractmethod
    def decide(self, candidate: Sample, incumbent: Sample, ctx: PolicyContext) -> Decision:
        """Judge a candidate against the incumbent."""

    def current(self, incumbent: Sample, ctx: PolicyContext) -> tuple[list[float], list[int]]:
        """The best's runs made under the conditions of now (values, at); by default all."""
        return list(incumbent.values), list(incumbent.at)

    def estimate(self, incumbent: Sample, ctx: PolicyContext) -> dict[str, Any]:
        """The best's value as reported: mean and uncertainty (not the luckiest draw)."""
        n = incumbent.n
        mean = incumbent.mean
        if n < 2:
            return {"mean": mean, "n": n, "sem": None}
        var = sum((v - mean) ** 2 for v in incumbent.values) / (n - 1)
        return {"mean": mean, "n": n, "sem": (var / n) ** 0.5}
