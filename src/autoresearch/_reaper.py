"""Runs one shell command as a child subreaper, so nothing it starts can outlive it.

    python -I -S _reaper.py COMMAND [HARNESS_PID]

On Linux, prctl(PR_SET_CHILD_SUBREAPER) makes every orphaned descendant (a double fork, a setsid
daemon) a child of this process instead of init. When the command ends, whatever it left behind
is killed before this process exits with the command's exit status, so a step's processes end
with the step. Termination signals are passed on to the command. Elsewhere it only runs the
command. With HARNESS_PID it is SIGKILLed when its parent dies (PR_SET_PDEATHSIG), and exits at
once when its parent is already not HARNESS_PID. Started with -I -S, it imports nothing outside
the standard library's core (`_signal`, not `signal`, whose enums cost milliseconds per step).
"""

import _signal as signal
import ctypes
import os
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1


def _prctl(option: int, arg: int) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _children(pid: int) -> list[int] | None:
    """Direct children from /proc/PID/task/*/children (one small read); None if unsupported."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                kids += [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return None
        except OSError:
            continue
    return kids


def _descendants(root: int) -> list[int]:
    """Every process below root, read from /proc (no third-party modules here)."""
    found, frontier = [], [root]
    while frontier:
        kids = _children(frontier.pop())
        if kids is None:
            return _descendants_by_scan(root)
        found += kids
        frontier += kids
    return found


def _descendants_by_scan(root: int) -> list[int]:
    parent_of: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            parent_of[int(name)] = int(data[data.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent_of.items() if pp == p]
        found += kids
        frontier += kids
    return found


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill_leftovers() -> None:
    if not os.path.isdir("/proc"):
        return
    me = os.getpid()
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        left = _descendants(me)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)
        _reap()


def main() -> int:
    command = sys.argv[1]
    if len(sys.argv) > 2:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != int(sys.argv[2]):   # the harness died before prctl took effect
            return 128 + signal.SIGKILL
    subreaper = _prctl(PR_SET_CHILD_SUBREAPER, 1)
    child = os.fork()
    if child == 0:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the command dies with its reaper
        # Python ignores SIGPIPE and SIGXFSZ; ignored signals survive exec, so restore them
        for name in ("SIGPIPE", "SIGXFSZ"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_DFL)
        os.execv("/bin/bash", ["/bin/bash", "-c", command])

    def forward(signum, frame):
        try:
            os.kill(child, signum)
        except OSError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        pid, status = os.waitpid(child, 0)
        if pid == child:
            break
    code = os.waitstatus_to_exitcode(status)
    if subreaper:
        _kill_leftovers()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
