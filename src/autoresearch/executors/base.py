"""The executor interface: where an experiment's commit is evaluated.

`submit(job, slot=...) -> Future[EvalResult]` starts a job; `free_slots`, `running` and
`collect` are how the driver keeps track of them (the executor owns its slots). The local executor runs a fixed number
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
    """Runs jobs in numbered slots and owns them: which slots are free, which jobs run where.

    The driver asks `free_slots()`, calls `submit(job, slot=...)` for one of them, waits on
    `running()` and takes finished jobs with `collect()`, which frees their slots. A slot is free
    only once its result was collected, so the driver always judges a result before it reuses
    the slot. `submit` never changes the Job it is given.
    """

    #: how many experiments may be in flight at once
    slots: int = 1

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self._jobs: dict[int, Future[EvalResult]] = {}     # slot -> its job, until collected
        self._slots_lock = threading.Lock()

    @abstractmethod
    def _start(self, job: Job, slot: int, should_stop: Callable[[float, float], str | None] | None,
               on_start: Callable[[int], None] | None) -> Future[EvalResult]:
        """Begin evaluating job in slot; the base class has checked that the slot is free."""

    def submit(self, job: Job, *, slot: int,
               should_stop: Callable[[float, float], str | None] | None = None,
               on_start: Callable[[int], None] | None = None) -> Future[EvalResult]:
        """Start evaluating job in the given slot (0 <= slot < slots, its last job finished).

        `should_stop(progress, value)` may end the run early (pruning); `on_start(pid)` is
        told the command's process id where it runs on this machine."""
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} does not exist (this executor has {self.slots})")
        with self._slots_lock:
            held = self._jobs.get(slot)
            if held is not None and not held.done():
                raise RuntimeError(f"slot {slot} is busy")
            fut = self._start(job, slot, should_stop, on_start)
            self._jobs[slot] = fut
        return fut

    def free_slots(self) -> list[int]:
        """Slots that take a job now, lowest first."""
        with self._slots_lock:
            return [s for s in range(self.slots) if s not in self._jobs]

    def running(self) -> list[Future[EvalResult]]:
        """The futures of every job not collected yet (to wait on)."""
        with self._slots_lock:
            return list(self._jobs.values())

    def collect(self) -> list[tuple[int, Future[EvalResult]]]:
        """Finished jobs as (slot, future), lowest slot first; their slots become free."""
        with self._slots_lock:
            done = sorted((s, f) for s, f in self._jobs.items() if f.done())
            for s, _ in done:
                del self._jobs[s]
        return done

    def slot_info(self, slot: int) -> SlotInfo:
        """Where a slot runs: its GPU and host, as shown by `status`."""
        return SlotInfo(slot, None)

    def prepare(self) -> None:  # noqa: B027
        """Create per-slot resources up front, on the driver thread."""

    def interrupt(self) -> None:
        """Ask every running job to stop (recorded as interrupted)."""
        self.stop_event.set()

    def shutdown(self) -> None:  # noqa: B027
        """Release the slots' resources; running jobs are waited for or cancelled."""
