"""The executor interface: where an experiment's commit is evaluated.

`submit(job) -> Future[EvalResult]` is the whole surface. The local executor runs a fixed number
of slots, each with its own git worktree and (optionally) its own GPU; the Ray executor ships
the commit to a cluster. Executors never decide what a result means; evaluation.py does.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from ..evaluation import EvalResult, Job


@dataclass
class SlotInfo:
    slot: int
    gpu: str | None
    host: str | None = None


class Executor(ABC):
    #: how many experiments may be in flight at once
    slots: int = 1

    def __init__(self) -> None:
        self.stop_event = threading.Event()

    @abstractmethod
    def submit(self, job: Job, *, slot: int,
               should_stop: Callable[[float, float], str | None] | None = None,
               on_start: Callable[[int], None] | None = None) -> Future[EvalResult]:
        """Start evaluating job in the given free slot (0 <= slot < slots)."""

    def slot_info(self, slot: int) -> SlotInfo:
        return SlotInfo(slot, None)

    def prepare(self) -> None:  # noqa: B027
        """Create per-slot resources up front, on the driver thread."""

    def interrupt(self) -> None:
        """Ask every running job to stop (recorded as interrupted)."""
        self.stop_event.set()

    def shutdown(self) -> None:  # noqa: B027
        pass
