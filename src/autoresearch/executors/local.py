"""Local slots: N experiments at once, each in its own worktree, each on its own GPU."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

from ..errors import ConfigError
from ..evaluation import EvalResult, Job, evaluate
from ..ratchet import Ratchet
from .base import Executor, SlotInfo


class LocalExecutor(Executor):
    def __init__(self, ratchet: Ratchet, workers: int = 1, gpus: list[str] | None = None):
        super().__init__()
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1 (got {workers})")
        if gpus and len(gpus) < workers:
            raise ConfigError(
                f"--workers {workers} needs at least {workers} GPUs in --gpus (got {','.join(gpus)}): "
                f"two experiments never share a GPU")
        if gpus and len(set(gpus)) != len(gpus):
            raise ConfigError(f"--gpus lists a GPU twice: {','.join(gpus)}")
        self.ratchet = ratchet
        self.slots = workers
        self.gpus = gpus[:workers] if gpus else None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="slot")

    def slot_info(self, slot: int) -> SlotInfo:
        return SlotInfo(slot, self.gpus[slot] if self.gpus else None)

    def prepare(self) -> None:
        for slot in range(self.slots):
            self.ratchet.worktree(f"slot-{slot}")

    def _start(self, job: Job, slot: int, should_stop: Callable[[float, float], str | None] | None,
               on_start: Callable[[int], None] | None) -> Future[EvalResult]:
        job = replace(job, gpu=self.gpus[slot] if self.gpus else None)

        def work() -> EvalResult:
            wt = self.ratchet.worktree(f"slot-{slot}")
            target_dir = self.ratchet.checkout(wt, job.commit)
            return evaluate(target_dir, job, stop_event=self.stop_event,
                            should_stop=should_stop, on_start=on_start,
                            materialize=lambda dest: self.ratchet.materialize(job.commit, dest),
                            checked=lambda keys: self.ratchet.checked(wt, keys),
                            changed=lambda commit: self.ratchet.touched(wt, commit))

        return self._pool.submit(work)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
