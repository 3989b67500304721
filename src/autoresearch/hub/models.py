"""Pydantic models of every input the hub accepts. Unknown fields are refused, sizes bounded,
numbers finite: a request that does not fit is a 422 naming the field, before any work."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

HARDWARE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
SHA_PATTERN = r"^[0-9a-f]{40}$"
ROLES = ("contributor", "verifier", "admin")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _finite(values: list[float]) -> list[float]:
    for v in values:
        if not math.isfinite(v):
            raise ValueError("measurements must be finite numbers")
    return values


class ClaimIn(_Strict):
    """A claim: one commit (as a base64 git bundle against its hub parent) and what it scored."""

    bundle: str = Field(min_length=1, description="base64 of `git bundle create - COMMIT ^PARENT`")
    parent: str = Field(pattern=SHA_PATTERN)
    hardware: str = Field(pattern=HARDWARE_PATTERN)
    metric: float
    runs: list[float] = Field(default_factory=list, max_length=1000)
    agent: str = Field("", max_length=200)
    description: str = Field("", max_length=2000)

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("the claimed metric must be a finite number")
        return v

    _runs = field_validator("runs")(classmethod(lambda cls, v: _finite(v)))


class LeaseIn(_Strict):
    hardware: str = Field(pattern=HARDWARE_PATTERN)


class ReportIn(_Strict):
    """A verifier's measurements of a leased claim: fresh-seed runs of both commits."""

    outcome: Literal["measured", "crash", "error"]
    candidate_runs: list[float] = Field(default_factory=list, max_length=100)
    best_runs: list[float] = Field(default_factory=list, max_length=100)
    seeds: list[int] = Field(default_factory=list, max_length=200)
    reason: str = Field("", max_length=2000)

    _runs = field_validator("candidate_runs", "best_runs")(classmethod(lambda cls, v: _finite(v)))


class UserIn(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
    role: Literal["contributor", "verifier", "admin"] = "contributor"
