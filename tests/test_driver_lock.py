"""One driver per target: a second `autoresearch run` on the same target is refused with one
line while the first runs, and works once it has stopped (also after a kill -9)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from conftest import ar, cli_env


def test_a_second_driver_is_refused_while_the_first_runs(tmp_path, make_target):
    root = make_target(tmp_path, sleep=0.5)
    first = subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "run", "--tag", "a",
                              "--policy", "greedy"], cwd=root, env=cli_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = root / ".autoresearch" / "driver.lock"
        deadline = time.time() + 20
        while time.time() < deadline and not (lock.exists() and "pid" in lock.read_text()):
            time.sleep(0.05)
        second = ar(root, "run", "--tag", "b", "--max-experiments", "1")
        assert second.returncode == 1
        errors = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert len(errors) == 1 and "already driven by autoresearch pid" in errors[0], second.stderr
        assert str(first.pid) in errors[0]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    # the kernel dropped the lock with the killed process: the run resumes
    again = ar(root, "run", "--tag", "a", "--policy", "greedy", "--max-experiments", "2")
    assert again.returncode == 0, again.stderr
