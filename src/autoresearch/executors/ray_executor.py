"""Ray slots: experiments as Ray tasks on a cluster (or on a local Ray started for the run).

What travels and what comes back:
- the code goes as `ratchet.archive(commit)`, a tar of the target's files at that commit, put in
  the object store once per commit; the worker extracts it into a temp dir and runs
  `evaluation.evaluate` there, exactly as a local slot would;
- the result comes back as the EvalResult plus the log's bytes; the driver writes the log to
  the job's log path, so the ledger and `autoresearch show` see it as for a local run.

The rules:
- One task per slot, one CPU each, one GPU each when GPUs are asked for (Ray sets
  CUDA_VISIBLE_DEVICES on the worker).
- The target's `setup` runs once per node before the first experiment there, under a file lock in
  the node's cache dir, keyed by the setup command and the locked files; AUTORESEARCH_CACHE points
  at that node-local dir. On the driver's own node the loop already ran setup, so its cache is used.
- A task whose worker process or node died is retried (WORKER_RETRIES); if it still fails the
  experiment is recorded as a crash "worker died: ...". Nothing submitted is ever lost.
- interrupt() raises the executor's stop board, a small actor that every task listens to from a
  thread of its own (STOP_POLL): the task stops its step as a local slot would, kills the step's
  process tree and sends back an interrupted result with the log. Ray's own cancel is only the
  fallback, for a task that has not answered after BOARD_GRACE seconds: first
  KeyboardInterrupt, then force after CANCEL_GRACE. (A KeyboardInterrupt thrown into a busy worker may land late, or
  where it cannot stop the step, and its result carries no log.)
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import io
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
import ray.exceptions

from ..config import CONFIG_NAME, load_spec
from ..errors import ConfigError
from ..evaluation import EvalResult, Job, Outcome, command_env, evaluate
from ..metrics import tail_lines
from ..ratchet import Ratchet
from ..runner import run_command
from .base import Executor, SlotInfo

WORKER_RETRIES = 2          # re-runs of a task whose worker process or node died
BOARD_GRACE = 5.0           # seconds a task has to answer the stop board
CANCEL_GRACE = 3.0          # then seconds between Ray's polite cancel and a forced one
BOARD_START = 30.0          # seconds prepare() waits for the stop board's actor to be up
STOP_POLL = 2.0             # seconds one call of a task's listener waits on the stop board
ARCHIVES_KEPT = 32          # commits whose archive stays in the object store
NODE_CACHE_ENV = "AUTORESEARCH_NODE_CACHE"  # on a node: root of its caches (default ~/.cache/autoresearch)


class RayExecutor(Executor):
    def __init__(self, ratchet: Ratchet, workers: int = 1, address: str | None = None,
                 gpus: bool = False, retries: int = WORKER_RETRIES):
        super().__init__()
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1 (got {workers})")
        self.ratchet = ratchet
        self.slots = workers
        self.address = address
        self.gpus = gpus
        self.retries = retries
        self._started_ray = False
        self._archives: OrderedDict[str, ray.ObjectRef] = OrderedDict()
        self._refs: dict[int, ray.ObjectRef] = {}      # slot -> running task
        self._hosts: dict[int, str] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ray-slot")
        self._remote: Any = None
        self._board: Any = None
        self._driver_node = ""

    # -- lifecycle ----------------------------------------------------------------------------
    def prepare(self) -> None:
        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            else:
                # a local Ray for this run: a logical CPU per slot, whatever the core count
                ray.init(num_cpus=self.slots, include_dashboard=False, log_to_driver=False)
            self._started_ray = True
        self._driver_node = ray.util.get_node_ip_address()
        self._board = _StopBoard.options(num_cpus=0).remote()
        try:   # up before the first task, so that a stop is heard from a task's start
            ray.get(self._board.wait.remote(0), timeout=BOARD_START)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError):
            pass   # Ray's cancel still stops the tasks
        self._remote = ray.remote(_run_task).options(
            num_cpus=1, num_gpus=1 if self.gpus else 0, max_retries=self.retries,
            retry_exceptions=False)

    def slot_info(self, slot: int) -> SlotInfo:
        return SlotInfo(slot, None, self._hosts.get(slot))

    def interrupt(self) -> None:
        super().interrupt()
        with self._lock:
            refs = list(self._refs.values())
        if self._board is not None:
            self._board.stop.remote()
        for force, grace in ((False, BOARD_GRACE), (True, CANCEL_GRACE)):
            if not refs:
                return
            _, refs = ray.wait(refs, num_returns=len(refs), timeout=grace)
            for ref in refs:
                ray.cancel(ref, force=force)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._archives.clear()
        if self._board is not None and ray.is_initialized():
            ray.kill(self._board)
        self._board = None
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    # -- one experiment -----------------------------------------------------------------------
    def _archive(self, commit: str) -> ray.ObjectRef:
        ref = self._archives.get(commit)
        if ref is None:
            ref = ray.put(self.ratchet.archive(commit))
            self._archives[commit] = ref
            while len(self._archives) > ARCHIVES_KEPT:
                self._archives.popitem(last=False)
        self._archives.move_to_end(commit)
        return ref

    def _start(self, job: Job, slot: int, should_stop: Callable[[float, float], str | None] | None,
               on_start: Callable[[int], None] | None) -> Future[EvalResult]:
        # on_start is not used: a pid on another node means nothing to the driver's resume
        if self._remote is None:
            self.prepare()
        with self._lock:
            ref = self._remote.remote(self._archive(job.commit), job, should_stop,
                                      self._driver_node, self._board)
            self._refs[slot] = ref

        def wait_for_it() -> EvalResult:
            try:
                return self._collect(job, ref, slot)
            finally:
                with self._lock:
                    self._refs.pop(slot, None)

        return self._pool.submit(wait_for_it)

    def _collect(self, job: Job, ref: ray.ObjectRef, slot: int) -> EvalResult:
        now = time.time()
        try:
            res, log_bytes = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            return _result(job, Outcome.INTERRUPTED, "interrupted (Ray task cancelled)", now)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError) as e:
            if self.stop_event.is_set():   # a forced cancel kills the worker too
                return _result(job, Outcome.INTERRUPTED, "interrupted (Ray worker stopped)", now)
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return _result(job, Outcome.CRASH, f"worker died ({self.retries} retries spent): {why}",
                           now)
        except ray.exceptions.RayError as e:
            why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            return _result(job, Outcome.CRASH, f"executor error: {type(e).__name__}: {why}", now)
        Path(job.log_path).parent.mkdir(parents=True, exist_ok=True)
        Path(job.log_path).write_bytes(log_bytes)
        if res.host:
            self._hosts[slot] = res.host
        return replace(res, log_path=job.log_path)


def _result(job: Job, outcome: Outcome, reason: str, started: float) -> EvalResult:
    return EvalResult(outcome, reason, None, {}, time.time() - started, 0.0, None, job.log_path,
                      started=started, finished=time.time())


@ray.remote(max_concurrency=1000)
class _StopBoard:
    """One per executor: raised once by interrupt(); each running task waits on it."""

    def __init__(self) -> None:
        self._raised = asyncio.Event()

    async def wait(self, seconds: float) -> bool:
        """True as soon as the board is raised; False after `seconds` without it."""
        try:
            await asyncio.wait_for(self._raised.wait(), seconds)
        except asyncio.TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        self._raised.set()


# == on the worker =================================================================================
def _run_task(archive: bytes, job: Job, should_stop: Callable[[float, float], str | None] | None,
              driver_node: str, board: Any) -> tuple[EvalResult, bytes]:
    """The Ray task: unpack the commit, set the node up once, evaluate, send back result and log.

    A thread listens to the stop board while the task runs and sets the step's stop event."""
    node = ray.util.get_node_ip_address()
    stop, done = threading.Event(), threading.Event()

    def listen() -> None:
        while not done.is_set():
            try:
                if ray.get(board.wait.remote(STOP_POLL)):
                    stop.set()
                    return
            except ray.exceptions.RayError:
                return   # the board is gone: Ray's own cancel is the fallback
    listener = threading.Thread(target=listen, name="autoresearch-stop", daemon=True)
    listener.start()
    try:
        return evaluate_on_node(archive, job, should_stop=should_stop, stop_event=stop,
                                on_driver_node=(node == driver_node), host=node)
    finally:
        done.set()


def evaluate_on_node(archive: bytes, job: Job, *,
                     should_stop: Callable[[float, float], str | None] | None = None,
                     stop_event: threading.Event | None = None,
                     on_driver_node: bool = False, host: str | None = None,
                     node_cache: Path | None = None) -> tuple[EvalResult, bytes]:
    """Evaluate job from its archive on this machine; plain Python, so it is testable without Ray."""
    host = host or socket.gethostname()
    work = Path(tempfile.mkdtemp(prefix=f"autoresearch-{job.seq:05d}-"))
    try:
        target_dir = _extract(archive, work / "target")
        log = work / "experiment.log"
        job = replace(job, log_path=str(log), env=dict(job.env))
        if not on_driver_node:
            # the driver's pin describes the driver's cache; this node's copy is read-only to
            # sandboxed steps but not pinned (README: trust)
            job.cache_pin = None
            failed = _setup_node(target_dir, job, node_cache, stop_event)
            if failed:
                return failed, log.read_bytes() if log.exists() else b""
        res = evaluate(target_dir, job, should_stop=should_stop, stop_event=stop_event,
                       materialize=lambda dest: _extract(archive, dest))
        return replace(res, host=host), log.read_bytes() if log.exists() else b""
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _extract(archive: bytes, dest: Path) -> Path:
    """The commit's files from its archive (the evaluator's fresh directory is made the same way)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _setup_node(target_dir: Path, job: Job, node_cache: Path | None,
                stop_event: threading.Event | None = None) -> EvalResult | None:
    """Point AUTORESEARCH_CACHE at this node's cache and run the target's setup there once."""
    spec = load_spec(target_dir / CONFIG_NAME)
    root = node_cache or Path(os.environ.get(NODE_CACHE_ENV)
                              or Path.home() / ".cache" / "autoresearch")
    key = hashlib.sha256(repr((spec.setup, sorted(job.locked.items()))).encode()).hexdigest()[:16]
    cache = root / key
    cache.mkdir(parents=True, exist_ok=True)
    job.env["AUTORESEARCH_CACHE"] = str(cache)
    if not spec.setup:
        return None
    done = cache / ".setup-done"
    with open(cache / ".setup-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # one setup per node; the others wait for it
        if done.exists():
            return None
        started = time.time()
        setup_log = cache / "setup.log"
        r = run_command(spec.setup, cwd=target_dir, env=command_env(job), log_path=setup_log,
                        timeout=spec.setup_timeout, append=False, header=f"$ {spec.setup}   # setup",
                        stop_event=stop_event)
        if not r.ok:
            why = ("was interrupted" if r.interrupted else "timed out" if r.timed_out
                   else f"exited with code {r.exit_code}")
            Path(job.log_path).write_text("\n".join(tail_lines(setup_log, 50)) + "\n")
            outcome = Outcome.INTERRUPTED if r.interrupted else Outcome.CRASH
            return EvalResult(outcome, f"setup on node {socket.gethostname()} {why}", None, {},
                              time.time() - started, r.peak_memory_mb, r.exit_code, job.log_path,
                              started=started, finished=time.time())
        done.write_text(f"{time.time()}\n")
    return None
