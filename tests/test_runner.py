"""The runner against real subprocesses: exit codes, environment, kills, log caps, stops, memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from autoresearch import runner
from autoresearch.runner import RUN_TOKEN_ENV, RunResult, kill_tree, run_command

PY = sys.executable
KIB = 1024


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


def _run(tmp_path: Path, command: str, **kwargs) -> RunResult:
    kwargs.setdefault("cwd", tmp_path)
    kwargs.setdefault("env", _env())
    kwargs.setdefault("log_path", tmp_path / "run.log")
    kwargs.setdefault("timeout", 20)
    return run_command(command, **kwargs)


def _gone(pid: int) -> bool:
    """Dead, or a zombie nobody reaps (PID 1 in some containers does not)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pid: int, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return _gone(pid)


def _pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()]


def _wait_pid_file(path: Path, timeout: float = 10.0) -> int:
    """The pid another process writes to `path`, once it is completely written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.endswith("\n"):
            return int(text)
        time.sleep(0.05)
    raise AssertionError(f"nobody wrote {path}")


def _with_token(token: str) -> list[int]:
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(RUN_TOKEN_ENV) == token and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except psutil.Error:
            continue
    return found


# --- plain runs ----------------------------------------------------------------------------------


def test_exit_code_metrics_and_log_lines(tmp_path: Path) -> None:
    r = _run(tmp_path, "echo hello; echo 'val_bpb: 0.5'; exit 3", header="$ train")
    assert r.exit_code == 3 and not r.ok
    assert r.metrics == {"val_bpb": 0.5}
    assert r.output_bytes == len(b"hello\nval_bpb: 0.5\n")
    log = (tmp_path / "run.log").read_text()
    assert log.startswith("$ train\nhello\nval_bpb: 0.5\n[autoresearch] exit=3 wall=")
    assert r.log_bytes == len(log.encode())


def test_success_is_ok(tmp_path: Path) -> None:
    r = _run(tmp_path, "true")
    assert r.exit_code == 0 and r.ok and r.error is None and not r.truncated


def test_env_is_exactly_what_the_caller_built(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "AUTORESEARCH_SEED": "42"}
    r = _run(tmp_path, 'echo "seed: $AUTORESEARCH_SEED"; echo "home=${HOME-unset}"', env=env)
    assert r.metrics == {"seed": 42.0}
    assert "home=unset" in (tmp_path / "run.log").read_text()


def test_cwd_is_honoured(tmp_path: Path) -> None:
    work = tmp_path / "work dir"
    work.mkdir()
    _run(tmp_path, "pwd", cwd=work)
    assert (tmp_path / "run.log").read_text().splitlines()[0] == str(work)


def test_bash_syntax_works(tmp_path: Path) -> None:
    r = _run(
        tmp_path, 'x=0; for i in 1 2 3; do x=$((x+i)); done; [[ $x -eq 6 ]] && echo "sum: $x" | cat'
    )
    assert r.exit_code == 0 and r.metrics == {"sum": 6.0}


def test_missing_command_is_exit_127_with_bash_message(tmp_path: Path) -> None:
    r = _run(tmp_path, "definitely-not-a-command-xyz")
    assert r.exit_code == 127 and r.error is None
    assert "definitely-not-a-command-xyz" in (tmp_path / "run.log").read_text()


def test_missing_cwd_is_an_error_not_an_exception(tmp_path: Path) -> None:
    r = _run(tmp_path, "true", cwd=tmp_path / "nope")
    assert r.exit_code is None and r.error is not None and "nope" in r.error and not r.ok
    assert "could not start" in (tmp_path / "run.log").read_text()


def test_log_appends_by_default_and_truncates_on_request(tmp_path: Path) -> None:
    _run(tmp_path, "echo first")
    _run(tmp_path, "echo second")
    log = (tmp_path / "run.log").read_text()
    assert log.index("first") < log.index("second")
    _run(tmp_path, "echo third", append=False)
    log = (tmp_path / "run.log").read_text()
    assert "first" not in log and log.startswith("third\n")


def test_on_start_gets_the_pid_that_owns_the_command(tmp_path: Path) -> None:
    # the recorded pid is bash's own: a session leader, so kill_tree can find its group later
    seen: list[int] = []
    _run(tmp_path, "echo $$ > pid; ps -o sid= -p $$ > sid", on_start=seen.append)
    assert seen == _pids(tmp_path / "pid") == _pids(tmp_path / "sid")


def test_carriage_return_progress_lines_are_parsed(tmp_path: Path) -> None:
    r = _run(tmp_path, r"printf 'progress: 0.1\rprogress: 0.2 loss: 3\rdone\n'")
    assert [p for p, _ in r.progress] == [0.1, 0.2]


def test_huge_line_without_newline_stays_bounded(tmp_path: Path) -> None:
    r = _run(
        tmp_path,
        "head -c 5000000 /dev/zero | tr '\\0' x; echo; echo 'a: 1'",
        log_cap_bytes=64 * KIB,
    )
    assert r.exit_code == 0 and r.metrics == {"a": 1.0} and r.output_bytes == 5_000_000 + 6


# --- killing the whole tree ----------------------------------------------------------------------


def test_timeout_kills_every_grandchild(tmp_path: Path) -> None:
    ignore_term = (
        "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(1000)"
    )
    command = f"""
        sleep 1000 & echo $! >> pids
        setsid sleep 1000 & echo $! >> pids
        nohup sleep 1000 >/dev/null 2>&1 & echo $! >> pids
        {PY} -c '{ignore_term}' & echo $! >> pids
        wait
    """
    started = time.monotonic()
    r = _run(tmp_path, command, timeout=1)
    elapsed = time.monotonic() - started
    assert r.timed_out and r.exit_code is None and not r.ok
    assert elapsed < 1 + 3.5
    pids = _pids(tmp_path / "pids")
    assert len(pids) == 4
    assert [pid for pid in pids if not _gone(pid)] == []
    assert "timed_out" in (tmp_path / "run.log").read_text()


def test_leftovers_are_killed_after_a_normal_exit(tmp_path: Path) -> None:
    # The first escapes the tree before any scan could see it; the second holds our pipe open.
    command = "setsid sleep 1000 >/dev/null 2>&1 & echo $! > pids; (sleep 1000 & echo $! >> pids); echo done"
    started = time.monotonic()
    r = _run(tmp_path, command, env=_env(), run_token="leftover-test")
    assert r.exit_code == 0 and time.monotonic() - started < 3
    assert [pid for pid in _pids(tmp_path / "pids") if not _gone(pid)] == []
    assert _with_token("leftover-test") == []


def test_on_line_reason_stops_the_run_and_kills_the_tree(tmp_path: Path) -> None:
    command = """
        sleep 1000 & echo $! > pids
        for i in $(seq 1 1000); do echo "progress: 0.$i loss: $i"; sleep 0.05; done
    """

    def prune(line: str) -> str | None:
        return "loss above 3" if line.endswith("loss: 4") else None

    started = time.monotonic()
    r = _run(tmp_path, command, on_line=prune)
    assert time.monotonic() - started < 3
    assert r.stopped_reason == "loss above 3" and r.exit_code is None and not r.ok
    assert r.metrics["loss"] >= 4
    assert _wait_gone(_pids(tmp_path / "pids")[0], timeout=0.5)
    assert "stopped: loss above 3" in (tmp_path / "run.log").read_text()


def test_on_line_exception_kills_the_tree_then_propagates(tmp_path: Path) -> None:
    def broken(line: str) -> str | None:
        raise ValueError("bug in pruner")

    with pytest.raises(ValueError, match="bug in pruner"):
        _run(tmp_path, "echo $$ > pid; echo hi; sleep 1000", on_line=broken)
    assert _gone(_pids(tmp_path / "pid")[0])


def test_stop_event_interrupts_within_a_second(tmp_path: Path) -> None:
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    r = _run(tmp_path, "sleep 1000 & echo $! > pids; wait", stop_event=stop)
    assert r.interrupted and r.exit_code is None and not r.ok
    assert time.monotonic() - started < 0.3 + 1.0
    assert _gone(_pids(tmp_path / "pids")[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the subreaper is Linux's")
def test_a_harness_killed_mid_step_takes_the_whole_step_with_it(tmp_path: Path) -> None:
    """A SIGKILLed harness: its step's subreaper kills the command, a background child and a
    setsid daemon before it exits, so nothing is left for resume to find."""
    script = f"""
import os, sys
from pathlib import Path
from autoresearch.runner import run_command
run_command("sleep 1000 & echo $! > {tmp_path}/grandchild; "
            "setsid sleep 1000 & echo $! > {tmp_path}/daemon; wait", cwd=Path({str(tmp_path)!r}),
            env=dict(os.environ), log_path=Path({str(tmp_path)!r}) / "h.log", timeout=100,
            on_start=lambda pid: Path({str(tmp_path)!r}, "child").write_text(f"{{pid}}\\n"))
"""
    harness = subprocess.Popen([PY, "-c", script])
    pids: list[int] = []
    try:
        pids = [_wait_pid_file(tmp_path / name) for name in ("grandchild", "daemon", "child")]
        assert not any(_gone(pid) for pid in pids)
        harness.kill()
        harness.wait()
        assert [pid for pid in pids if not _wait_gone(pid, 10)] == []
    finally:
        harness.kill()
        for pid in pids:
            kill_tree(pid, grace=0.5)


def test_kill_tree_cleans_the_orphans_of_a_dead_command(tmp_path: Path) -> None:
    """The command's pid is gone (a crash); its process group still holds an orphan."""
    proc = subprocess.Popen(["/bin/bash", "-c", "sleep 1000 & echo $! > grandchild; wait"],
                            cwd=tmp_path, start_new_session=True)
    grandchild = None
    try:
        grandchild = _wait_pid_file(tmp_path / "grandchild")
        proc.kill()
        proc.wait()
        assert not _gone(grandchild)
        kill_tree(proc.pid, grace=1.0)
        assert _wait_gone(grandchild, timeout=1.0)
    finally:
        if grandchild is not None:
            kill_tree(grandchild, grace=0.5)


def test_kill_tree_leaves_a_reused_pid_alone(tmp_path: Path) -> None:
    proc = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        real = psutil.Process(proc.pid).create_time()
        kill_tree(proc.pid, create_time=real - 100, grace=0.5)
        assert proc.poll() is None
        kill_tree(proc.pid, create_time=real, grace=0.5)
        assert proc.wait(timeout=2) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()


# --- output volume -------------------------------------------------------------------------------


def test_flood_keeps_log_under_cap_with_marker_and_tail(tmp_path: Path) -> None:
    log_path = tmp_path / "run.log"
    log_path.write_bytes(b"previous step\n")
    base = log_path.stat().st_size
    cap = 1 * 2**20
    biggest = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal biggest
        while not done.is_set():
            biggest = max(biggest, log_path.stat().st_size)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        r = _run(
            tmp_path,
            "yes | head -c 200000000; echo 'val_bpb: 0.25'",
            log_cap_bytes=cap,
            header="$ flood",
        )
    finally:
        done.set()
        watcher.join()
    size = log_path.stat().st_size
    assert r.exit_code == 0 and r.truncated and r.output_bytes == 200_000_000 + 14
    assert r.metrics == {"val_bpb": 0.25}
    assert size - base <= cap + KIB and biggest - base <= cap + KIB and r.log_bytes == size - base
    data = log_path.read_bytes()
    assert data.startswith(b"previous step\n$ flood\ny\ny\n")
    omitted = 200_000_000 + 14 - cap
    assert f"\n[... {omitted} bytes omitted ...]\ny\n".encode() in data
    last_lines = data.split(b"\n")[-3:]
    assert last_lines[0] == b"val_bpb: 0.25" and last_lines[2] == b""
    assert last_lines[1].startswith(b"[autoresearch] exit=0") and b"log truncated" in last_lines[1]


def test_live_tail_never_exceeds_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "LOG_SYNC_INTERVAL", 0.0)  # rewrite the tail on every chunk
    log_path = tmp_path / "run.log"
    cap = 4 * KIB
    sizes: list[int] = []

    def on_line(line: str) -> None:
        sizes.append(log_path.stat().st_size)

    r = _run(
        tmp_path,
        'for i in $(seq 1 3000); do echo "line $i"; done',
        log_cap_bytes=cap,
        on_line=on_line,
    )
    assert r.truncated and max(sizes) <= cap + KIB
    text = log_path.read_text()
    assert (
        "bytes omitted ...]" in text and "line 3000\n[autoresearch]" in text and "line 1\n" in text
    )


# --- memory --------------------------------------------------------------------------------------


def test_peak_memory_counts_a_grandchild(tmp_path: Path) -> None:
    alloc = "import time; b = b'x' * 200_000_000; time.sleep(1)"
    r = _run(tmp_path, f'{PY} -c "{alloc}" & wait')
    assert r.exit_code == 0 and r.peak_memory_mb > 150


# --- the subreaper's own death with the harness ---------------------------------------------------


def test_the_subreaper_runs_nothing_when_its_harness_is_already_gone(tmp_path: Path) -> None:
    """The subreaper arms PR_SET_PDEATHSIG itself; a harness that died before it did (its parent
    is not the pid it was given) means: exit, run nothing."""
    flag = tmp_path / "ran"
    orphaned = runner._Reaper(harness=os.getpid() + 10**6)
    assert orphaned.proc.wait(timeout=20) == 1
    read, write = os.pipe()
    try:
        with pytest.raises(runner._ReaperLost):
            orphaned.start(f"touch {flag}", tmp_path, _env(), write)
    finally:
        os.close(read)
        os.close(write)
        orphaned.discard()
    assert not flag.exists()
    assert _run(tmp_path, f"touch {flag}").exit_code == 0 and flag.exists()


def _harness(tmp_path: Path, command: str, then: str = "") -> subprocess.Popen:
    """A harness process that runs `command` as a step in tmp_path, then the Python in `then`."""
    return subprocess.Popen([PY, "-c", (
        "import os, time\n"
        "from pathlib import Path\n"
        "from autoresearch.runner import run_command\n"
        f"run_command({command!r}, cwd=Path({str(tmp_path)!r}),\n"
        f"            env=dict(os.environ), log_path=Path({str(tmp_path / 'h.log')!r}),\n"
        "            timeout=60)\n" + then)])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_subreaper_and_its_command_die_with_the_harness(tmp_path: Path) -> None:
    """A harness killed with SIGKILL mid-step takes the step's subreaper and command with it."""
    harness = _harness(tmp_path, "echo $PPID > reaper; echo $$ > command; sleep 60")
    try:
        reaper = _wait_pid_file(tmp_path / "reaper", timeout=20)
        command = _wait_pid_file(tmp_path / "command", timeout=20)
        harness.kill()
        harness.wait(timeout=10)
        assert _wait_gone(reaper, 10) and _wait_gone(command, 10)
    finally:
        harness.kill()


# --- the long-lived subreaper: what a step may try against it -----------------------------------

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the long-lived subreaper is Linux's")


def _reaper_of(tmp_path: Path, name: str = "reaper") -> int:
    return _pids(tmp_path / name)[0]


@linux_only
def test_steps_reuse_one_reaper_and_concurrent_steps_get_their_own(tmp_path: Path) -> None:
    assert _run(tmp_path, "echo $PPID > a").exit_code == 0
    assert _run(tmp_path, "echo $PPID > b").exit_code == 0
    assert _reaper_of(tmp_path, "a") == _reaper_of(tmp_path, "b")   # no start-up per step
    both = threading.Barrier(2, timeout=20)
    results: list[RunResult] = []

    def step(name: str) -> None:
        results.append(_run(tmp_path, f"echo $PPID > {name}; sleep 0.3",
                            on_start=lambda pid: both.wait(), log_path=tmp_path / f"{name}.log"))

    threads = [threading.Thread(target=step, args=(n,)) for n in ("c", "d")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.exit_code for r in results] == [0, 0]
    assert _reaper_of(tmp_path, "c") != _reaper_of(tmp_path, "d")


@linux_only
def test_a_step_that_kills_its_reaper_leaves_nothing_and_the_next_step_gets_a_new_one(
        tmp_path: Path) -> None:
    command = ("echo $PPID > reaper; setsid sleep 1000 & echo $! >> pids; "
               "sleep 1000 & echo $! >> pids; kill -9 $PPID; sleep 1000")
    started = time.monotonic()
    r = _run(tmp_path, command, run_token="kills-its-reaper")
    assert r.exit_code == -signal.SIGKILL and not r.ok and time.monotonic() - started < 10
    assert _wait_gone(_reaper_of(tmp_path))
    assert [pid for pid in _pids(tmp_path / "pids") if not _wait_gone(pid)] == []
    assert _with_token("kills-its-reaper") == []
    r = _run(tmp_path, "echo $PPID > next; echo fine")
    assert r.exit_code == 0 and _reaper_of(tmp_path, "next") != _reaper_of(tmp_path)


@linux_only
def test_a_reaper_killed_while_idle_is_replaced_at_the_next_step(tmp_path: Path) -> None:
    assert _run(tmp_path, "echo $PPID > reaper").exit_code == 0
    os.kill(_reaper_of(tmp_path), signal.SIGKILL)   # not waited for: the pool may not know yet
    r = _run(tmp_path, "echo $PPID > next; echo ran >> runs")
    assert r.exit_code == 0 and r.error is None
    assert _reaper_of(tmp_path, "next") != _reaper_of(tmp_path)
    assert (tmp_path / "runs").read_text() == "ran\n"   # handed over once, run once


@linux_only
def test_a_step_that_stops_its_reaper_is_killed_with_it_and_leaves_nothing(
        tmp_path: Path) -> None:
    command = "echo $PPID > reaper; sleep 1000 & echo $! > pids; kill -STOP $PPID; sleep 1000"
    started = time.monotonic()
    r = _run(tmp_path, command, timeout=30)
    assert r.exit_code == -signal.SIGKILL and not r.timed_out and not r.ok
    assert time.monotonic() - started < 10
    assert _wait_gone(_reaper_of(tmp_path)) and _wait_gone(_pids(tmp_path / "pids")[0])
    assert _run(tmp_path, "echo fine").exit_code == 0


@linux_only
def test_a_termination_signal_to_the_reaper_is_passed_on_to_the_command(tmp_path: Path) -> None:
    r = _run(tmp_path, "echo $PPID > reaper; kill -TERM $PPID; sleep 1000")
    assert r.exit_code == 128 + signal.SIGTERM
    r = _run(tmp_path, "echo $PPID > again")
    assert r.exit_code == 0 and _reaper_of(tmp_path, "again") == _reaper_of(tmp_path)


@linux_only
def test_a_step_cannot_reach_the_reapers_socket_to_forge_its_exit(tmp_path: Path) -> None:
    """No descriptor of the reaper's socket is inherited, and the one in the reaper cannot be
    opened through /proc: a step cannot report an exit status of its own choosing."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os\n"
        "mine = [os.readlink(f'/proc/self/fd/{n}') for n in os.listdir('/proc/self/fd')\n"
        "        if os.path.exists(f'/proc/self/fd/{n}')]\n"
        "print('own sockets:', sum(x.startswith('socket:') for x in mine))\n"
        "opened = 0\n"
        "for n in os.listdir(f'/proc/{os.getppid()}/fd'):\n"
        "    try:\n"
        "        fd = os.open(f'/proc/{os.getppid()}/fd/{n}', os.O_RDWR)\n"
        "    except OSError:\n"
        "        continue\n"
        "    try:\n"
        "        os.write(fd, b'X 0\\n')\n"
        "        opened += 1\n"
        "    except OSError:\n"
        "        pass\n"
        "print('opened:', opened)\n"
        "raise SystemExit(3)\n")
    r = _run(tmp_path, f"exec {PY} {probe}")   # the probe replaces bash: the reaper's child
    log = (tmp_path / "run.log").read_text()
    assert "own sockets: 0" in log and "opened:" in log
    assert r.exit_code == 3   # not the forged 0
    assert _run(tmp_path, "echo $PPID > reaper").exit_code == 0


@linux_only
def test_an_idle_reaper_dies_with_a_harness_killed_between_steps(tmp_path: Path) -> None:
    harness = _harness(tmp_path, "echo $PPID > reaper",
                       then=f"Path({str(tmp_path / 'done')!r}).write_text('1\\n')\n"
                            "time.sleep(60)\n")
    try:
        _wait_pid_file(tmp_path / "done", timeout=20)
        reaper = _reaper_of(tmp_path)
        assert not _gone(reaper)
        harness.kill()
        harness.wait(timeout=10)
        assert _wait_gone(reaper, 10)
    finally:
        harness.kill()


def test_close_reapers_ends_the_idle_ones(tmp_path: Path) -> None:
    assert _run(tmp_path, "echo $PPID > reaper").exit_code == 0
    runner.close_reapers()
    if sys.platform.startswith("linux"):
        assert _wait_gone(_reaper_of(tmp_path))
    assert _run(tmp_path, "echo again").exit_code == 0
