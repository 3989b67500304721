"""A long-lived child subreaper: runs one shell command at a time, so nothing a step starts
outlives the step, without an interpreter start-up per step.

    python -I -S _reaper.py SOCKET_FD HARNESS_PID

The harness (runner.py) starts one per busy slot and keeps it while it lives. Over the Unix
stream socket SOCKET_FD it sends a request: a 4-byte big-endian length, then a marshalled
(command, cwd, environment entries) of bytes, with the write end of the step's output pipe
attached (SCM_RIGHTS). This process forks `/bin/bash -c COMMAND` in a new session, in cwd, with
exactly that environment, stdin from /dev/null, stdout and stderr on the pipe, SIGKILL at this
process's death (PR_SET_PDEATHSIG), default dispositions for the signals Python changes, and no
other file descriptor (this socket is never inherited). It answers one line per event:

    S <pid>\\n             forked (the command waits until this line is sent, so a command that
                          kills its reaper at once cannot hide that it ran)
    R\\n                   running (exec succeeded), or
    E <stage> <errno>\\n   could not start (stage: chdir or exec)
    X <code>\\n            the command exited with <code> (128+N for signal N), and every process
                          it left behind is dead

Guarantees, on Linux:
- prctl(PR_SET_CHILD_SUBREAPER) makes every orphaned descendant (a double fork, a setsid daemon)
  a child of this process instead of init. When the command ends, all descendants are SIGKILLed
  and reaped before `X` is sent, so a step's processes end with the step.
- SIGTERM, SIGINT and SIGHUP are passed on to the running command. Received while idle, they
  end this process.
- It dies with the harness, and takes the step with it: end of file on the socket (the harness's
  end is closed when it dies), PR_SET_PDEATHSIG (SIGTERM, when the thread that started it ends;
  the harness starts it from a thread that lives as long as the process), or a parent that is no
  longer HARNESS_PID each kill every descendant, then exit. Started after its harness died, it
  exits at once.
- Started with -I -S (no site, no user paths), once per slot: its start-up is not paid per step.
"""

import _signal as signal
import ctypes
import marshal
import os
import select
import socket
import struct
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
RESTORED = tuple(getattr(signal, n) for n in ("SIGPIPE", "SIGXFSZ", "SIGCHLD", "SIGTERM", "SIGINT",
                                              "SIGHUP") if hasattr(signal, n))
POLL_MS = 500  # milliseconds between checks for the command's end besides SIGCHLD
LEFTOVER_DEADLINE = 5.0  # seconds spent killing what a command left behind


class _Gone(Exception):
    """The harness is gone (end of file on the socket, or another parent)."""


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


class Server:
    def __init__(self, sock: socket.socket, harness: int) -> None:
        self.sock = sock
        self.harness = harness
        self.child: int | None = None      # the running command
        self.status: int | None = None     # its wait status, once reaped
        self.devnull = os.open(os.devnull, os.O_RDONLY)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        for sig in (signal.SIGCHLD, *FORWARDED):
            signal.signal(sig, _noted)
        self.buf = b""

    # -- the loop ---------------------------------------------------------------------------
    def serve(self) -> None:
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        try:
            while True:
                # while a command runs, its end is also looked for every POLL_MS: a step that
                # drains the wakeup pipe (it can open it through /proc) cannot hide it
                for fd, _ in poller.poll(POLL_MS if self.child is not None else None):
                    if fd == self.wake_r:
                        self._on_signals()
                    else:
                        self._on_request()
                if self.child is not None:
                    self._reap()
        except _Gone:
            pass
        finally:
            self._kill_leftovers()

    def _on_signals(self) -> None:
        try:
            got = os.read(self.wake_r, 512)
        except BlockingIOError:
            return
        for sig in got:
            if sig not in FORWARDED:
                continue
            if os.getppid() != self.harness:
                raise _Gone
            if self.child is None:
                raise _Gone   # idle: a termination signal ends this process
            try:
                os.kill(self.child, sig)
            except OSError:
                pass

    def _reap(self) -> None:
        """Reap every dead child; when the command is among them, finish its step."""
        self._collect()
        if self.status is not None:
            code = os.waitstatus_to_exitcode(self.status)
            self._kill_leftovers()
            self.child = self.status = None
            self._send(b"X %d\n" % (code if code >= 0 else 128 - code))

    def _collect(self) -> None:
        """Reap every child that has exited, keeping the command's status when it is one."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child:
                self.status = status

    def _kill_leftovers(self) -> None:
        if not os.path.isdir("/proc"):
            return
        me = os.getpid()
        deadline = time.monotonic() + LEFTOVER_DEADLINE
        while time.monotonic() < deadline:
            left = _descendants(me)
            if not left:
                return
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.002)
            self._collect()   # reap the orphans; the command's own status is kept

    # -- requests ---------------------------------------------------------------------------
    def _recv(self, n: int) -> tuple[bytes, list[int]]:
        """Exactly n bytes, and the file descriptors that came with them."""
        fds: list[int] = []
        while len(self.buf) < n:
            data, anc, _, _ = self.sock.recvmsg(max(n - len(self.buf), 4096),
                                                socket.CMSG_SPACE(4 * 4))
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds += struct.unpack(f"{len(raw) // 4}i", raw[:len(raw) - len(raw) % 4])
            if not data:
                for fd in fds:
                    os.close(fd)
                raise _Gone
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out, fds

    def _on_request(self) -> None:
        head, fds = self._recv(4)
        body, more = self._recv(struct.unpack(">I", head)[0])
        fds += more
        if self.child is not None or len(fds) != 1:   # not our harness's protocol
            raise _Gone
        command, cwd, env = marshal.loads(body)
        try:
            self._start(command, cwd, env, fds[0])
        finally:
            os.close(fds[0])

    def _start(self, command: bytes, cwd: bytes, env: list[bytes], out: int) -> None:
        err_r, err_w = os.pipe()   # close-on-exec: empty at exec, "stage errno" on failure
        go_r, go_w = os.pipe()     # the command waits for b"g": its pid is sent before it runs
        me = os.getpid()
        pid = os.fork()
        if pid == 0:
            stage = b"exec"
            try:
                _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)   # the command dies with its reaper
                if os.getppid() != me:
                    os._exit(127)
                signal.set_wakeup_fd(-1)
                for sig in RESTORED:
                    signal.signal(sig, signal.SIG_DFL)
                os.setsid()
                stage = b"chdir"
                os.chdir(cwd)
                stage = b"exec"
                os.dup2(self.devnull, 0)
                os.dup2(out, 1)
                os.dup2(out, 2)
                keep = sorted((go_r, err_w))
                os.closerange(3, keep[0])
                os.closerange(keep[0] + 1, keep[1])
                os.closerange(keep[1] + 1, 1 << 20)
                if os.read(go_r, 1) != b"g":   # the reaper died before it told the harness
                    os._exit(127)
                os.close(go_r)
                os.execve(b"/bin/bash", [b"/bin/bash", b"-c", command],
                          dict(e.split(b"=", 1) for e in env))
            except OSError as exc:
                os.write(err_w, b"%s %d" % (stage, exc.errno or 0))
            except BaseException:
                os.write(err_w, b"exec 0")
            os._exit(127)
        os.close(err_w)
        os.close(go_r)
        self.child = pid
        try:
            self._send(b"S %d\n" % pid)
            os.write(go_w, b"g")
        except OSError:
            pass   # it failed before it read: the error pipe says why
        finally:
            os.close(go_w)
            try:
                failed = os.read(err_r, 64)
            finally:
                os.close(err_r)
        if failed:
            os.waitpid(pid, 0)
            self.child = None
            self._send(b"E " + failed + b"\n")
        else:
            self._send(b"R\n")

    def _send(self, line: bytes) -> None:
        try:
            self.sock.sendall(line)
        except OSError:
            raise _Gone from None


def _noted(signum, frame) -> None:
    """Signals are read from the wakeup fd; the handler only makes them delivered."""


def main() -> int:
    fd, harness = int(sys.argv[1]), int(sys.argv[2])
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != harness:   # the harness died before prctl took effect
        return 1
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    sock = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    Server(sock, harness).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
