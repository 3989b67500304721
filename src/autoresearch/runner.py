"""Run one shell command as one experiment step, and always get a RunResult back.

What a step is guaranteed, whatever the command does:
- It runs as `/bin/bash -c COMMAND` in its own session, stdin from /dev/null, stdout and stderr
  merged into one pipe. On Linux it runs under a long-lived child subreaper (`_reaper.py`, one
  per busy slot, started once and handed each command over a Unix socket): orphans of the step
  become the reaper's children, and when the command ends the reaper kills every process it left
  behind before it reports the exit status. The reaper dies with the harness and kills the step
  then (a kill -9 of the harness leaves nothing running); a reaper that died is replaced at the
  next step. Given a `wrap` (the sandbox), the wrapped command line is started instead, and gets
  SIGKILL if the harness dies.
- When it ends (exit, timeout, stop_event, or on_line asking to stop) no process it started is
  left behind: a command that is still running gets SIGTERM, then after a grace period SIGKILL,
  with its process group, every descendant seen while it ran (sampled every POLL_INTERVAL, so
  orphans reparented away are still known) and every process whose environment carries this
  run's RUN_TOKEN_ENV (that catches a `setsid cmd &` that was orphaned before we could see it,
  where no intact subreaper holds it).
- Its log holds at most about log_cap_bytes of output: the first half, a
  `[... N bytes omitted ...]` line and the last half, then a final `[autoresearch] exit=...` line.
  Memory stays bounded however much the command prints.
- Metrics are parsed from all of the output, including the part cut from the log.

Expected failures (a crash, a timeout, a missing cwd) are fields of RunResult, never exceptions.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import marshal
import os
import queue
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

from autoresearch.metrics import MetricParser

__all__ = ["RUN_TOKEN_ENV", "RunResult", "close_reapers", "kill_tree", "run_command"]

RUN_TOKEN_ENV = "AUTORESEARCH_RUN_TOKEN"  # set in every child's environment, unique per run
READ_CHUNK = 256 * 1024  # bytes per read of the output pipe
PIPE_SIZE = 2**20  # bytes of kernel pipe buffer asked for on Linux (fewer, larger reads)
MAX_LINE = 2**20  # bytes of one line kept for parsing; the rest of a longer line is skipped
POLL_INTERVAL = 0.1  # seconds between tree scans, memory samples and stop checks
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
DRAIN_TIMEOUT = 2.0  # seconds to keep reading the pipe once the process tree is gone
LOG_SYNC_INTERVAL = 10.0  # seconds between rewrites of the on-disk tail of an over-cap log
REAPER_REPLY_TIMEOUT = 10.0  # seconds a reaper may take to answer (start, or end once killed)

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# A line that may hold a metric: only these are decoded and parsed when no on_line needs them all.
_CANDIDATE_LINE = re.compile(rb"^[^\n:=]*[:=][^\n]*", re.MULTILINE)


@dataclass
class RunResult:
    """What happened when one command ran."""

    command: str
    exit_code: int | None = None  # None when we killed it or it never started
    timed_out: bool = False
    interrupted: bool = False  # stop_event was set
    stopped_reason: str | None = None  # on_line asked to stop (early stopping), and why
    wall_time: float = 0.0  # seconds
    peak_memory_mb: float = 0.0  # peak RSS summed over the whole process tree, sampled
    output_bytes: int = 0  # bytes the command wrote to stdout and stderr
    log_bytes: int = 0  # bytes this step added to the log
    truncated: bool = False  # the log omits part of the output
    error: str | None = None  # could not start at all, and why
    metrics: dict[str, float] = field(default_factory=dict)
    progress: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.exit_code == 0
            and not self.timed_out
            and not self.interrupted
            and self.stopped_reason is None
            and self.error is None
        )


def run_command(
    command: str,
    *,
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    timeout: float,
    log_cap_bytes: int = 16 * 2**20,
    on_line: Callable[[str], str | None] | None = None,
    stop_event: threading.Event | None = None,
    append: bool = True,
    header: str | None = None,
    on_start: Callable[[int], None] | None = None,
    run_token: str | None = None,
    wrap: Callable[[list[str]], list[str]] | None = None,
) -> RunResult:
    """Run `command` with exactly `env` (plus RUN_TOKEN_ENV) in `cwd`, logging to `log_path`.

    on_line gets every non-empty output line (decoded, without its newline); a non-empty
    string back stops the run with that reason. on_start gets the child's pid right after
    spawn (record it to clean up with kill_tree after a harness crash). run_token is the value
    of RUN_TOKEN_ENV for this run (a fresh one by default; pass your own to give it to
    kill_tree later). wrap turns `bash -c COMMAND` into the argv to start (the sandbox, whose
    PID namespace replaces the subreaper). An exception from on_line or on_start, or a
    KeyboardInterrupt, kills the process tree and is then re-raised.
    """
    started = time.monotonic()
    result = RunResult(command=command)
    token = run_token or uuid.uuid4().hex
    child_env = {**env, RUN_TOKEN_ENV: token}
    try:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log = _CappedLog(Path(log_path), log_cap_bytes, append)
    except OSError as exc:
        result.error = f"cannot open log {log_path}: {exc}"
        result.wall_time = time.monotonic() - started
        return result
    if header:
        log.write_text(header)

    wake = threading.Event()
    proc: subprocess.Popen[bytes] | _ServedStep
    try:
        if wrap is None and _served():
            proc = _ServedStep.start(command, cwd, child_env, wake)
        else:
            # the sandbox's bubblewrap (or a plain bash off Linux) gets SIGKILL at the
            # harness's death from a preexec_fn
            proc = subprocess.Popen(
                wrap(["/bin/bash", "-c", command]) if wrap else ["/bin/bash", "-c", command],
                cwd=cwd,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_pdeathsig_preexec(os.getpid()),
                bufsize=0,
            )
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        reason = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) else str(exc)
        result.error = f"could not start in {cwd}: {reason}"
        result.wall_time = time.monotonic() - started
        result.log_bytes = log.close(f"[autoresearch] {result.error}")
        return result

    assert proc.stdout is not None
    _grow_pipe(proc.stdout)
    parser = MetricParser()
    reader = _Reader(proc.stdout, log, parser, on_line, wake)
    reader.start()
    served = isinstance(proc, _ServedStep)
    tree = _Tree(proc.pid, outer=proc.reaper.pid if served else None)
    deadline = started + timeout
    try:
        if on_start is not None:
            on_start(proc.pid)
        while True:
            result.peak_memory_mb = max(result.peak_memory_mb, tree.sample_rss_mb())
            if proc.poll() is not None or reader.stop_reason or reader.error:
                break
            if stop_event is not None and stop_event.is_set():
                result.interrupted = True
                break
            now = time.monotonic()
            if now >= deadline:
                result.timed_out = True
                break
            wake.wait(min(POLL_INTERVAL, deadline - now))
            wake.clear()
        # Leftovers of a command that exited by itself are killed too: the step is over. An
        # intact subreaper has done it before it reported the exit.
        killed = proc.poll() is None
        if killed or not served or proc.lost:
            _terminate(tree.alive(), pgid=proc.pid, token=token, grace=KILL_GRACE, reap=proc.poll)
        proc.wait()
        if served and proc.lost:   # a reaper that died mid-step left its orphans to init
            _terminate(tree.alive(), pgid=proc.pid, token=token, grace=KILL_GRACE)
        reader.join(DRAIN_TIMEOUT)
    except BaseException:
        _terminate(tree.alive(), pgid=proc.pid, token=token, grace=KILL_GRACE, reap=proc.poll)
        if isinstance(proc, _ServedStep):
            proc.abandon()
        reader.halt()
        reader.join(DRAIN_TIMEOUT)
        log.close("[autoresearch] harness error: run aborted")
        raise
    reader.halt()  # a holder of the pipe that escaped every kill must not block us
    reader.join()
    proc.stdout.close()
    if reader.error is not None:
        log.close(f"[autoresearch] output reader failed: {reader.error!r}")
        raise reader.error

    result.exit_code = None if killed else proc.returncode
    result.stopped_reason = reader.stop_reason
    result.wall_time = time.monotonic() - started
    result.output_bytes = reader.output_bytes
    result.truncated = log.truncated
    result.metrics = dict(parser.values)
    result.progress = list(parser.progress_points)
    result.log_bytes = log.close(_final_line(result))
    return result


_FS_ENCODING = sys.getfilesystemencoding()   # what os.fsencode uses, with surrogateescape
_REAPER = Path(__file__).with_name("_reaper.py")
_REAPER_ARGV = [sys.executable, "-I", "-S", str(_REAPER)]


def _served() -> bool:
    """Steps run under the long-lived subreaper (Linux, where prctl offers it)."""
    return sys.platform.startswith("linux") and _REAPER.is_file()


class _ReaperLost(Exception):
    """The reaper died or stopped answering before it took the command."""


class _Reaper:
    """One long-lived subreaper (`_reaper.py`) and this process's end of its socket."""

    def __init__(self, harness: int | None = None) -> None:
        """Start one, for this process (`harness`: another pid it should die with, for tests)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                [*_REAPER_ARGV, str(theirs.fileno()), str(harness or os.getpid())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/", env={},
                start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.pid = self.proc.pid
        self._buf = b""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def start(self, command: str, cwd: Path, env: dict[str, str], out: int) -> int:
        """Hand the command over; its pid. OSError: it could not start (chdir or exec failed);
        _ReaperLost: this reaper is gone, and the command never ran."""
        payload = marshal.dumps((os.fsencode(command), os.fsencode(cwd),
                                 [f"{k}={v}".encode(_FS_ENCODING, "surrogateescape")
                                  for k, v in env.items()]))
        data = struct.pack(">I", len(payload)) + payload
        try:
            sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                               struct.pack("i", out))])
            if sent < len(data):
                self.sock.sendall(data[sent:])
        except OSError as exc:
            raise _ReaperLost(str(exc)) from None
        line = self._reply()
        if not line.startswith(b"S "):   # the command cannot have run: it waits for this line
            raise _ReaperLost(f"the reaper answered {line!r}")
        pid = int(line[2:])
        line = self._reply()
        if line.startswith(b"E "):
            stage, _, errno = line[2:].partition(b" ")
            code = int(errno or 0)
            raise OSError(code, os.strerror(code), str(cwd) if stage == b"chdir" else "/bin/bash")
        return pid   # b"R": running; b"": the reaper died meanwhile, and the watcher sees that

    def _reply(self) -> bytes:
        """The next line; b"" once the reaper is gone. One that is stopped (the command may
        SIGSTOP it once it runs) or silent past REAPER_REPLY_TIMEOUT is killed."""
        deadline = time.monotonic() + REAPER_REPLY_TIMEOUT
        while True:
            line = self.readline(0.05)
            if line is not None:
                return line
            if time.monotonic() >= deadline or _stopped(self.pid):
                self.kill()
                return b""

    def readline(self, timeout: float | None) -> bytes | None:
        """The next line from the reaper; b"" when it is gone, None if silent past timeout."""
        self.sock.settimeout(timeout)
        try:
            while b"\n" not in self._buf:
                data = self.sock.recv(256)
                if not data:
                    return b""
                self._buf += data
        except TimeoutError:
            return None
        except OSError:   # the socket shut by discard()
            return b""
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def kill(self) -> None:
        """SIGKILL it (a stopped or hung reaper): its command dies with it (PR_SET_PDEATHSIG);
        orphans it held are left to the caller's _terminate."""
        with contextlib.suppress(OSError):
            self.proc.kill()

    def discard(self) -> None:
        """End it: at end of file it kills everything it still holds, then exits."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        try:
            self.proc.wait(REAPER_REPLY_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()


def _stopped(pid: int) -> bool:
    """Stopped by a signal or a tracer (state T or t in /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2:][:1] in (b"T", b"t")


class _ReaperPool:
    """Idle reapers of this process, reused step after step (one per slot that is busy at once).

    Reapers are started from one thread that lives as long as the process: PR_SET_PDEATHSIG
    fires when the thread that started a process ends, not only when the process does.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Reaper] = []
        self._spawns: queue.SimpleQueue = queue.SimpleQueue()
        self._spawner: threading.Thread | None = None

    def acquire(self) -> _Reaper:
        with self._lock:
            while self._idle:
                reaper = self._idle.pop()
                if reaper.alive():
                    return reaper
                reaper.discard()
            if self._spawner is None or not self._spawner.is_alive():
                self._spawner = threading.Thread(target=self._spawn_forever, daemon=True,
                                                 name="autoresearch-reaper-spawner")
                self._spawner.start()
        box: queue.SimpleQueue = queue.SimpleQueue()
        self._spawns.put(box)
        made = box.get()
        if isinstance(made, BaseException):
            raise made
        return made

    def release(self, reaper: _Reaper) -> None:
        with self._lock:
            self._idle.append(reaper)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for reaper in idle:
            reaper.discard()

    def forget(self) -> None:
        """In a forked child: the parent's reapers are not this process's to use."""
        for reaper in self._idle:
            with contextlib.suppress(OSError):
                reaper.sock.close()
        self.__init__()

    def _spawn_forever(self) -> None:
        while True:
            box = self._spawns.get()
            try:
                box.put(_Reaper())
            except BaseException as exc:
                box.put(exc)


_POOL = _ReaperPool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.forget)


def close_reapers() -> None:
    """End this process's idle subreapers (they also end with it). For tests and benchmarks
    that account for their CPU time, which is counted once they are waited for."""
    _POOL.close()


class _ServedStep:
    """A command running under a pooled subreaper, seen like a Popen: pid (the command, a
    session leader), stdout, poll(), wait(). `lost`: the reaper died before reporting."""

    def __init__(self, reaper: _Reaper, pid: int, stdout: IO[bytes],
                 wake: threading.Event) -> None:
        self.reaper = reaper
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None
        self.lost = False
        self._wake = wake
        self._done = threading.Event()
        threading.Thread(target=self._watch, daemon=True, name="autoresearch-reaper-watch").start()

    @classmethod
    def start(cls, command: str, cwd: Path, env: dict[str, str],
              wake: threading.Event) -> _ServedStep:
        for attempt in (1, 2):   # a reaper that died while idle is replaced once
            reaper = _POOL.acquire()
            read, write = os.pipe()
            try:
                pid = reaper.start(command, cwd, env, write)
            except _ReaperLost:
                os.close(read)
                reaper.discard()
                if attempt == 2:
                    raise OSError(0, "the subreaper did not answer", str(_REAPER)) from None
                continue
            except OSError:   # the command could not start: the reaper is fine
                os.close(read)
                _POOL.release(reaper)
                raise
            except BaseException:
                os.close(read)
                reaper.discard()
                raise
            finally:
                os.close(write)
            return cls(reaper, pid, open(read, "rb", buffering=0), wake)
        raise AssertionError("unreachable")

    def _watch(self) -> None:
        line = self.reaper.readline(None) or b""
        if line.startswith(b"X "):
            self.returncode = int(line[2:])
        else:
            self.lost = True
        self._done.set()
        self._wake.set()

    def poll(self) -> int | None:
        if not self._done.is_set():
            if _stopped(self.reaper.pid):   # the step stopped its reaper: it is replaced
                self.reaper.kill()
            return None
        if self.lost and self.returncode is None:
            self.returncode = self._end_lost()
        return self.returncode

    def wait(self) -> int:
        """The exit status, once the reaper has reported it; a reaper that is stopped (SIGSTOP)
        or silent past REAPER_REPLY_TIMEOUT is killed instead (and this step is `lost`)."""
        deadline = time.monotonic() + REAPER_REPLY_TIMEOUT
        while not self._done.wait(0.05):
            if time.monotonic() >= deadline or _stopped(self.reaper.pid):
                self.reaper.kill()
                self._done.wait()
        code = self.poll()
        assert code is not None
        if not self.lost:
            _POOL.release(self.reaper)
        return code

    def abandon(self) -> None:
        """After a harness error mid-step: the reaper kills the step and exits."""
        self.reaper.discard()
        self._done.wait()

    def _end_lost(self) -> int:
        """The reaper's own end, as Popen would report it (-N for signal N)."""
        try:
            self.reaper.discard()
        except OSError:
            pass
        return self.reaper.proc.returncode


def kill_tree(
    pid: int,
    *,
    grace: float = 2.0,
    create_time: float | None = None,
    run_token: str | None = None,
) -> None:
    """Kill what is left of a command started by run_command: its tree and its process group.

    Used on resume after a harness was SIGKILLed. When `create_time` (psutil's) is given and
    `pid` now belongs to another process, that process and its group are left alone. When
    `pid` is gone, its process group (same number, since the command was a session leader)
    can still hold orphans, and is killed. `run_token` additionally kills every process whose
    environment carries RUN_TOKEN_ENV=run_token.
    """
    procs: list[psutil.Process] = []
    pgid: int | None = pid if pid > 0 else None
    try:
        if pid <= 0:  # no pid recorded: only the token can find its processes
            raise psutil.NoSuchProcess(pid)
        root = psutil.Process(pid)
        if create_time is not None and abs(root.create_time() - create_time) > 0.01:
            pgid = None  # pid reused by an unrelated process
        else:
            procs = [root, *root.children(recursive=True)]
            if os.getpgid(pid) != pid:
                pgid = None
    except (psutil.Error, OSError):
        pass
    _terminate(procs, pgid=pgid, token=run_token, grace=grace)


# ---------------------------------------------------------------------------------------------
# Process tree: who belongs to the run, how much memory it uses, how to end it


class _Tree:
    """Every process seen in the tree of `pid`, including descendants orphaned since."""

    def __init__(self, pid: int, outer: int | None = None) -> None:
        """The tree of `pid`; given `outer` (the subreaper, whose every child belongs to this
        step), everything below `outer` is scanned too, without `outer` itself."""
        self.known: dict[int, psutil.Process] = {}
        self.outer: psutil.Process | None = None
        try:
            self.known[pid] = psutil.Process(pid)
            if outer is not None:
                self.outer = psutil.Process(outer)
        except psutil.Error:
            pass

    def alive(self) -> list[psutil.Process]:
        return [p for p in self.known.values() if _is_alive(p)]

    def sample_rss_mb(self) -> float:
        """Scan for new descendants, then return the summed RSS of the living ones in MB."""
        alive = self.alive()
        alive_pids = {p.pid for p in alive}
        if self.outer is not None and _is_alive(self.outer):
            alive_pids.add(self.outer.pid)
            alive = [self.outer, *alive]
        for p in alive:
            try:
                if p.ppid() in alive_pids:
                    continue  # its descendants come with its ancestor's scan
                below = _descendants(p)
            except psutil.Error:
                continue
            for pid in below:
                if pid not in self.known:
                    with contextlib.suppress(psutil.Error):
                        self.known[pid] = psutil.Process(pid)
        rss = 0
        for p in self.alive():
            try:
                rss += p.memory_info().rss
            except psutil.Error:
                continue
        return rss / 2**20


def _descendants(p: psutil.Process) -> list[int]:
    """Pids below p, from /proc/PID/task/*/children (a few small reads, where psutil would read
    every process's stat file); psutil where the kernel does not offer them."""
    found, frontier = [], [p.pid]
    while frontier:
        pid = frontier.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                    kids = [int(x) for x in fh.read().split()]
            except FileNotFoundError:
                if os.path.isdir(f"/proc/{pid}/task/{tid}"):   # no children files: old kernel
                    return [c.pid for c in p.children(recursive=True)]
                continue
            except OSError:
                continue
            found += kids
            frontier += kids
    return found


def _is_alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _members(pgid: int | None, token: str | None) -> list[psutil.Process]:
    """Processes in group `pgid` or carrying `token` in their environment."""
    if os.path.isdir("/proc/self"):
        return _members_from_proc(pgid, token)
    found = []
    for p in psutil.process_iter():
        try:
            if pgid is not None and os.getpgid(p.pid) == pgid:
                found.append(p)
            elif token is not None and p.environ().get(RUN_TOKEN_ENV) == token:
                found.append(p)
        except (psutil.Error, OSError):
            continue
    return found


def _members_from_proc(pgid: int | None, token: str | None) -> list[psutil.Process]:
    """_members read straight from /proc: the raw environment block is searched for the token's
    whole entry, without decoding every process's environment (the check after every step)."""
    entry = f"{RUN_TOKEN_ENV}={token}".encode() if token is not None else None
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            hit = pgid is not None and os.getpgid(pid) == pgid
            if not hit and entry is not None:
                with open(f"/proc/{name}/environ", "rb") as fh:
                    block = fh.read()
                hit = block.startswith(entry + b"\0") or b"\0" + entry + b"\0" in block \
                    or block == entry or block.endswith(b"\0" + entry)
            if hit:
                found.append(psutil.Process(pid))
        except (psutil.Error, OSError):
            continue
    return found


def _terminate(
    procs: Iterable[psutil.Process],
    *,
    pgid: int | None,
    token: str | None,
    grace: float,
    reap: Callable[[], object] | None = None,
) -> None:
    """SIGTERM `procs`, group `pgid` and token carriers; SIGKILL whatever survives `grace`."""
    own = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    if pgid is not None and (pgid in own or pgid == os.getpgrp()):
        pgid = None  # never signal the harness's own group
    targets = {p.pid: p for p in [*procs, *_members(pgid, token)] if p.pid not in own}
    if not targets:
        return
    _signal_all(targets.values(), pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while True:
        if reap is not None:
            reap()  # reap our direct child as soon as it dies
        survivors = [p for p in targets.values() if _is_alive(p)]
        if not survivors or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if not survivors:
        return
    # Survivors may have forked while dying; take their children and any new group members too.
    for p in survivors:
        try:
            for child in p.children(recursive=True):
                targets.setdefault(child.pid, child)
        except psutil.Error:
            continue
    for p in _members(pgid, token):
        if p.pid not in own:
            targets.setdefault(p.pid, p)
    _signal_all(targets.values(), pgid, signal.SIGKILL)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        if not any(_is_alive(p) for p in targets.values()):
            break
        time.sleep(0.02)


def _signal_all(procs: Iterable[psutil.Process], pgid: int | None, sig: int) -> None:
    if pgid is not None:
        try:
            os.killpg(pgid, sig)
        except OSError:
            pass
    for p in procs:
        try:
            p.send_signal(sig)  # psutil refuses if the pid was reused meanwhile
        except psutil.Error:
            continue


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()  # resolved here, not in the forked child


def _pdeathsig_preexec(harness_pid: int) -> Callable[[], None] | None:
    """A preexec_fn that gives the child SIGKILL when the harness dies (Linux only, else None).

    Linux sends it when the *thread* that spawned the child exits; run_command blocks that
    thread until the child is gone, so this only fires when the harness itself dies.
    """
    prctl = _PRCTL
    if prctl is None:
        return None
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if os.getppid() != harness_pid:  # the harness died before prctl took effect
            os.kill(os.getpid(), sigkill)

    return preexec


def _grow_pipe(stream: IO[bytes]) -> None:
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (ImportError, AttributeError, OSError):
        pass  # not Linux, or above /proc/sys/fs/pipe-max-size: the default works, only slower


# ---------------------------------------------------------------------------------------------
# Output: read the pipe, split lines, parse metrics, keep a capped log


class _Reader(threading.Thread):
    """Drains the pipe into the log, the metric parser and on_line."""

    def __init__(
        self,
        stream: IO[bytes],
        log: _CappedLog,
        parser: MetricParser,
        on_line: Callable[[str], str | None] | None,
        wake: threading.Event,
    ) -> None:
        super().__init__(name="autoresearch-output-reader", daemon=True)
        self._stream = stream
        self._log = log
        self._parser = parser
        self._on_line = on_line
        self._wake = wake
        self._halted = threading.Event()
        self._pending = bytearray()  # start of an unfinished line, at most MAX_LINE bytes
        self.output_bytes = 0
        self.stop_reason: str | None = None
        self.error: BaseException | None = None

    def halt(self) -> None:
        self._halted.set()

    def run(self) -> None:
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(self._stream.fileno(), selectors.EVENT_READ)
                while not self._halted.is_set():
                    if not sel.select(POLL_INTERVAL):
                        continue
                    chunk = os.read(self._stream.fileno(), READ_CHUNK)
                    if not chunk:
                        break
                    self.output_bytes += len(chunk)
                    self._log.write(chunk)
                    self._handle(self._complete_lines(chunk))
            if self._pending:
                self._handle(bytes(self._pending) + b"\n")
        except BaseException as exc:  # surfaced by run_command once the tree is dead
            self.error = exc
        finally:
            self._wake.set()

    def _complete_lines(self, chunk: bytes) -> bytes:
        """The complete lines that `chunk` finishes, newline-terminated; keeps the rest."""
        chunk = chunk.replace(b"\r", b"\n")  # progress bars redraw with \r: each is a line
        last = chunk.rfind(b"\n")
        if last < 0:
            room = MAX_LINE - len(self._pending)
            if room > 0:
                self._pending += chunk[:room]
            return b""
        first = chunk.find(b"\n")
        head = (bytes(self._pending) + chunk[:first])[:MAX_LINE] + b"\n"
        self._pending = bytearray(chunk[last + 1 : last + 1 + MAX_LINE])
        return head + chunk[first + 1 : last + 1]

    def _handle(self, block: bytes) -> None:
        if not block:
            return
        if self._on_line is None or self.stop_reason is not None:
            if b":" in block or b"=" in block:
                for match in _CANDIDATE_LINE.finditer(block):
                    self._parser.feed(match.group().decode("utf-8", errors="replace"))
            return
        for raw in block.split(b"\n"):
            if not raw:
                continue
            line = raw.decode("utf-8", errors="replace")
            self._parser.feed(line)
            if self._on_line is None or self.stop_reason is not None:
                continue
            try:
                reason = self._on_line(line)
            except Exception as exc:
                self.error = exc
                self._on_line = None
                self._wake.set()
                continue
            if reason:
                self.stop_reason = str(reason)
                self._wake.set()


class _CappedLog:
    """This step's part of a log file: all output up to the cap, else head + marker + tail.

    Output goes straight to disk until it would pass `cap`. Then the file is cut back to the
    first cap/2 bytes of output and the last cap/2 bytes are kept in a ring buffer, written
    after a `[... N bytes omitted ...]` line every LOG_SYNC_INTERVAL and at close.
    """

    def __init__(self, path: Path, cap: int, append: bool) -> None:
        self._f = open(path, "ab", buffering=0)  # append mode: writes land at the end
        if not append:
            self._f.truncate(0)
        self._base = self._f.seek(0, os.SEEK_END)
        self._end = self._base  # file size
        self._head_cap = cap // 2
        self._tail_cap = cap - self._head_cap
        self._cap = cap
        self._content_start: int | None = None  # file offset of the first output byte
        self._content = 0  # output bytes received
        self._head_end: int | None = None  # set once over the cap
        self._head_newline = True
        self._ring: collections.deque[bytes] = collections.deque()
        self._ring_size = 0
        self._last_sync = 0.0
        self._last_byte = b"\n"
        self._failed = False  # e.g. disk full: stop logging, keep running

    @property
    def truncated(self) -> bool:
        return self._head_end is not None

    def write_text(self, text: str) -> None:
        """A line of ours (header), outside the capped output."""
        self._append(_as_line(text, self._last_byte))

    def write(self, data: bytes) -> None:
        if self._content_start is None:
            self._content_start = self._end
        if self._head_end is None:
            if self._content + len(data) <= self._cap:
                self._content += len(data)
                self._append(data)
                return
            fill = max(0, self._head_cap - self._content)
            if fill:
                self._content += fill
                self._append(data[:fill])
                data = data[fill:]
            self._start_tail()
        self._content += len(data)
        self._ring.append(data)
        self._ring_size += len(data)
        while len(self._ring) > 1 and self._ring_size - len(self._ring[0]) >= self._tail_cap:
            self._ring_size -= len(self._ring.popleft())
        excess = self._ring_size - self._tail_cap
        if excess > 0:
            self._ring[0] = self._ring[0][excess:]
            self._ring_size -= excess
        self._last_byte = data[-1:]
        if time.monotonic() - self._last_sync >= LOG_SYNC_INTERVAL:
            self._sync()

    def close(self, final_line: str) -> int:
        """Write the tail and `final_line`, close, and return the bytes this step added."""
        if self._head_end is not None:
            self._sync()
        self._append(_as_line(final_line, self._last_byte))
        self._f.close()
        return self._end - self._base

    def _start_tail(self) -> None:
        assert self._content_start is not None
        self._head_end = self._content_start + self._head_cap
        try:
            with open(self._f.name, "rb") as f:
                f.seek(self._head_end - 1)
                self._head_newline = f.read(1) == b"\n"
                kept = f.read(max(0, self._end - self._head_end))
            self._f.truncate(self._head_end)
            self._end = self._head_end
        except (OSError, ValueError):
            self._failed = True
            kept = b""
        self._ring.append(kept)
        self._ring_size = len(kept)
        self._last_sync = time.monotonic()

    def _sync(self) -> None:
        assert self._head_end is not None
        self._last_sync = time.monotonic()
        if self._failed:
            return
        omitted = self._content - self._head_cap - self._ring_size
        marker = f"{'' if self._head_newline else chr(10)}[... {omitted} bytes omitted ...]\n"
        try:
            self._f.truncate(self._head_end)
            self._end = self._head_end
        except OSError:
            self._failed = True
            return
        self._append(marker.encode())
        for piece in self._ring:
            self._append(piece)

    def _append(self, data: bytes) -> None:
        if self._failed or not data:
            return
        try:
            self._f.write(data)
        except OSError:
            self._failed = True
            return
        self._end += len(data)
        self._last_byte = data[-1:]


def _as_line(text: str, last_byte: bytes) -> bytes:
    prefix = "" if last_byte == b"\n" else "\n"
    return (prefix + text.rstrip("\n") + "\n").encode("utf-8", errors="replace")


def _final_line(r: RunResult) -> str:
    exit_text = "killed" if r.exit_code is None else str(r.exit_code)
    line = (
        f"[autoresearch] exit={exit_text} wall={r.wall_time:.2f}s peak_mem={r.peak_memory_mb:.1f}MB"
    )
    if r.timed_out:
        line += " timed_out"
    if r.interrupted:
        line += " interrupted"
    if r.stopped_reason:
        line += f" stopped: {r.stopped_reason}"
    if r.truncated:
        line += f" output={r.output_bytes}B (log truncated)"
    return line
