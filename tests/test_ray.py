"""The Ray executor: the loop on a local Ray instance (CPU only), and workers that die.

One Ray instance serves the whole module (it takes seconds to start). The node-setup rule is
tested without Ray, through evaluate_on_node, which is what a Ray task runs.
"""

from __future__ import annotations

import argparse
import io
import signal
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from conftest import ledger_experiments, processes_with, proposal, write_script

ray = pytest.importorskip("ray")

from autoresearch.cli import build_loop  # noqa: E402
from autoresearch.config import load_target  # noqa: E402
from autoresearch.evaluation import Job, Outcome  # noqa: E402
from autoresearch.executors.ray_executor import RayExecutor, evaluate_on_node  # noqa: E402
from autoresearch.experiment import Status  # noqa: E402


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    cache = tmp_path_factory.mktemp("node-cache")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"AUTORESEARCH_NODE_CACHE": str(cache)}})
    yield
    ray.shutdown()


def ray_loop(root: Path, tag: str, script: Path, workers: int = 2):
    args = argparse.Namespace(workers=workers, policy="greedy", executor="ray",
                              agent=f"script:{script}")
    return build_loop(load_target(root), args, tag)


# == a loop on Ray =============================================================================
def test_a_loop_runs_its_experiments_as_ray_tasks(local_ray, make_target, tmp_path):
    root = make_target(tmp_path, value=10.0)
    script = write_script(tmp_path / "p.jsonl", [proposal(9.0 - i, sleep=2.0) for i in range(4)])
    loop = ray_loop(root, "ray", script)
    assert isinstance(loop.executor, RayExecutor)
    assert loop.run_forever() == "the agent has no more proposals"
    loop.ledger.close()
    assert ray.is_initialized()   # a Ray it did not start is left running
    exps = ledger_experiments(root, "ray")
    cands = [e for e in exps if e.kind == "candidate"]
    assert sorted(e.metric for e in cands) == [6.0, 7.0, 8.0, 9.0]
    assert all(e.status in (Status.KEEP, Status.DISCARD, Status.REBASED) for e in cands)
    assert any(a.started < b.finished and b.started < a.finished
               for a in cands for b in cands if a is not b)   # two slots at once
    for e in exps:
        log = Path(e.log_path).read_text()        # the worker's log, written on the driver
        assert "# run step" in log and f"score: {e.metric}" in log
        assert e.pid is None
    assert (root / "results.tsv").read_text().count("\n") == len(exps) + 1


def _ray_worker_of(marker: str, seq: int) -> psutil.Process | None:
    """The Ray worker process running experiment seq (the parent of its command)."""
    for p in processes_with(marker):
        try:
            if p.environ().get("AUTORESEARCH_EXPERIMENT") != str(seq):
                continue
            for parent in p.parents():
                if parent.name().startswith("ray::") or "default_worker" in " ".join(
                        parent.cmdline()):
                    return parent
        except psutil.Error:
            continue
    return None


def _kill_worker_of(marker: str, seq: int, not_pid: int | None = None, wait: float = 60) -> int:
    deadline = time.time() + wait
    while time.time() < deadline:
        w = _ray_worker_of(marker, seq)
        if w is not None and w.pid != not_pid:
            w.send_signal(signal.SIGKILL)
            return w.pid
        time.sleep(0.1)
    raise AssertionError(f"no Ray worker ran experiment #{seq} within {wait}s")


def test_a_dead_worker_is_retried_or_recorded_never_lost(local_ray, make_target, tmp_path,
                                                         marker):
    root = make_target(tmp_path, value=10.0, run=f"python train.py {marker}")
    script = write_script(tmp_path / "p.jsonl", [
        proposal(9.0, sleep=4.0, description="killed twice"),
        proposal(8.0, sleep=4.0, description="killed once"),
        proposal(7.0, sleep=0.2, description="untouched")])
    loop = ray_loop(root, "die", script)
    loop.executor.retries = 1
    outcome: dict = {}
    t = threading.Thread(target=lambda: outcome.update(why=loop.run_forever()), daemon=True)
    t.start()
    try:
        first = _kill_worker_of(marker, 2)
        _kill_worker_of(marker, 3)                    # retried once, then measured
        _kill_worker_of(marker, 2, not_pid=first)     # the retry dies too: no retries left
        t.join(90)
    finally:
        loop.ledger.close() if not t.is_alive() else None
    assert not t.is_alive() and outcome["why"] == "the agent has no more proposals"
    by_desc = {e.description: e for e in ledger_experiments(root, "die")}
    twice, once = by_desc["killed twice"], by_desc["killed once"]
    assert twice.status == Status.CRASH and twice.reason.startswith("worker died"), twice.reason
    assert once.status in (Status.KEEP, Status.DISCARD) and once.metric == 8.0
    assert by_desc["untouched"].metric == 7.0
    assert all(e.status.finished for e in by_desc.values())


def test_an_interrupted_job_stops_on_its_worker_and_sends_back_its_log(local_ray, make_target,
                                                                       tmp_path):
    """interrupt() reaches the worker through the executor's stop board, not by an exception
    thrown into the worker's thread: the step is stopped there, its processes are dead before
    the result comes back, and the log of what it printed reaches the driver."""
    from autoresearch.ratchet import Ratchet

    started = tmp_path / "started"
    run = (f"echo before the interrupt; echo $$ > {started}; "
           "python -c 'import time; time.sleep(120)'")
    root = make_target(tmp_path, run=run)
    ex = RayExecutor(Ratchet(root), workers=1)
    ex.prepare()
    try:
        commit = Ratchet(root).head()
        job = Job(experiment_id=1, seq=1, commit=commit, run=run, evaluate=None, metric="score",
                  budget=1, timeout=120, seed=0, log_path=str(tmp_path / "logs" / "1.log"))
        fut = ex.submit(job, slot=0)
        deadline = time.monotonic() + 60
        while not (started.exists() and started.read_text().strip()):
            assert time.monotonic() < deadline and not fut.done(), "the job did not start"
            time.sleep(0.05)
        shell = psutil.Process(int(started.read_text()))
        tree = [shell, *shell.children(recursive=True)]
        ex.interrupt()
        res = fut.result(timeout=30)
        assert res.outcome == Outcome.INTERRUPTED, (res.outcome, res.reason)
        # stopped by its own evaluation, not by Ray's cancel (whose reason names Ray)
        assert "Ray" not in res.reason, res.reason
        alive = [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"the step's processes {alive} outlived its result"
        log = Path(job.log_path).read_text()
        assert "before the interrupt" in log and "interrupted" in log, log
    finally:
        ex.shutdown()


# == node setup, without Ray ===================================================================
def _archive(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in root.iterdir():
            if p.name != ".git":
                tar.add(p, arcname=p.name)
    return buf.getvalue()


def _job(tmp_path: Path, seq: int, run: str = "python train.py") -> Job:
    return Job(experiment_id=seq, seq=seq, commit="c", run=run,
               evaluate="python evaluate.py", metric="score", budget=1, timeout=20, seed=0,
               log_path=str(tmp_path / "driver" / f"{seq}.log"),
               env={"AUTORESEARCH_CACHE": "/nonexistent/driver/cache"}, artifacts=["out.txt"])


def test_setup_runs_once_per_node_and_points_the_cache_there(make_target, tmp_path):
    setup = "sleep 0.5; echo ran >> $AUTORESEARCH_CACHE/setups"
    run = "cat $AUTORESEARCH_CACHE/setups && python train.py"
    root = make_target(tmp_path, value=4.0, setup=setup, run=run)
    archive, node = _archive(root), tmp_path / "node"
    with ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(lambda s: evaluate_on_node(archive, _job(tmp_path, s, run),
                                                        node_cache=node), [1, 2, 3]))
    for res, log in outs:
        assert res.outcome == Outcome.MEASURED and res.metric == 4.0, res.reason
        assert log.decode().count("ran\n") == 1
    (cache,) = [d for d in node.iterdir() if d.is_dir()]
    assert (cache / "setups").read_text() == "ran\n"


def test_a_failing_node_setup_is_a_crash_with_its_log(make_target, tmp_path):
    root = make_target(tmp_path, setup="echo no data here; exit 3")
    res, log = evaluate_on_node(_archive(root), _job(tmp_path, 1), node_cache=tmp_path / "node")
    assert res.outcome == Outcome.CRASH and "setup on node" in res.reason
    assert "exited with code 3" in res.reason and b"no data here" in log
