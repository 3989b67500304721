"""The evaluation protocol of one experiment, wherever it runs (local slot or Ray worker).

    run       the agent's code, under the budget, killed at the hard timeout
    (check)   the locked files must be byte-for-byte what they were at the start: a run that
              rewrote the evaluator is `invalid`
    evaluate  the locked evaluator in a fresh process; when present it is the only source of the
              primary metric, so the agent's code cannot print its own score
    holdout   (when the job asks) the locked holdout command, after a successful evaluate: a
              second metric on data the agent never sees. Its output goes to a log of its own
              (LOG.holdout), never into the experiment's metrics or log, and its failure is
              recorded as "no holdout value", not as a crash of the experiment

Executors decide where and on which GPU; this module decides what happens and what it means.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .experiment import Status
from .ratchet import git_blob_hash
from .runner import RunResult, run_command


@dataclass
class Job:
    """Everything needed to evaluate one commit; plain data so it can travel to a Ray worker."""

    experiment_id: int
    seq: int
    commit: str
    run: str
    evaluate: str | None
    metric: str
    budget: float
    timeout: float
    seed: int
    log_path: str
    env: dict[str, str] = field(default_factory=dict)   # extra variables (spec.env, cache dir)
    locked: dict[str, str] = field(default_factory=dict)  # target-relative path -> blob id
    log_cap_bytes: int = 16 * 2**20
    gpu: str | None = None
    prune_metric: str | None = None
    token: str | None = None      # marks every process of this experiment (runner.RUN_TOKEN_ENV)
    tracked: dict[str, str] = field(default_factory=dict)  # every file of the commit -> blob id
    sandbox: bool = False                 # run both steps under bubblewrap (see sandboxed())
    sandbox_writable: list[str] = field(default_factory=list)
    sandbox_cache: str | None = None      # a writable directory for compiler caches
    holdout: str | None = None            # the holdout command, when this job computes it
    holdout_metric: str | None = None     # the name it prints


@dataclass
class EvalResult:
    status: Status            # RUNNING means "measured": the policy decides what it becomes
    reason: str
    metric: float | None
    metrics: dict[str, float]
    wall_time: float
    peak_memory_mb: float
    exit_code: int | None
    log_path: str
    curve: list[list[float]] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    host: str | None = None
    holdout: float | None = None     # the holdout metric, when the job computed it


def command_env(job: Job) -> dict[str, str]:
    env = dict(os.environ)
    env.update(job.env)
    env["AUTORESEARCH_BUDGET_SECONDS"] = f"{job.budget:g}"
    env["AUTORESEARCH_SEED"] = str(job.seed)
    env["AUTORESEARCH_EXPERIMENT"] = str(job.seq)
    env["PYTHONUNBUFFERED"] = "1"
    # `python` in a command means the interpreter running autoresearch (its venv, its torch)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    if job.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = job.gpu
    return env


def sandboxed(command: str, target_dir: Path, job: Job, env: dict[str, str]) -> str:
    """The command under bubblewrap: the whole filesystem read-only except the experiment's own
    directory, a private TMPDIR and a compiler cache; devices (GPUs) and the network as they are.

    The prepared data ($AUTORESEARCH_CACHE), the user's checkout, other slots and the ledger
    cannot be written from inside, whatever the agent's code tries.
    """
    scratch = tempfile.mkdtemp(prefix="ar-sandbox-tmp-")   # not a tmpfs on /tmp: targets live there
    env["TMPDIR"] = scratch
    binds = ["--ro-bind", "/", "/", "--dev-bind", "/dev", "/dev", "--proc", "/proc",
             "--bind", scratch, scratch, "--bind", str(target_dir), str(target_dir)]
    if job.sandbox_cache:
        Path(job.sandbox_cache).mkdir(parents=True, exist_ok=True)
        binds += ["--bind", job.sandbox_cache, job.sandbox_cache]
        for var in ("XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
            env[var] = os.path.join(job.sandbox_cache, var.lower())
    for extra in job.sandbox_writable:
        path = Path(extra) if os.path.isabs(extra) else target_dir / extra
        path.mkdir(parents=True, exist_ok=True)
        binds += ["--bind", str(path), str(path)]
    return shlex.join(["bwrap", *binds, "--die-with-parent", "--chdir", str(target_dir),
                       "/bin/bash", "-c", command])


def locked_violations(target_dir: Path, locked: dict[str, str]) -> list[str]:
    bad = []
    for rel, oid in locked.items():
        p = target_dir / rel
        try:
            if git_blob_hash(p.read_bytes()) != oid:
                bad.append(rel)
        except OSError:
            bad.append(rel)
    return bad


# files that Python (or the dynamic loader) would pick up from the evaluator's directory
_IMPORTABLE = (".py", ".pyc", ".pyo", ".pyd", ".so", ".pth")


def _files(target_dir: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(target_dir):
        dirnames[:] = [d for d in dirnames if d not in (".git", "__pycache__")]
        rel = os.path.relpath(dirpath, target_dir)
        for name in filenames:
            out.add(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
    return out


def planted_modules(target_dir: Path, before: set[str]) -> list[str]:
    """New importable files the run step left beside the evaluator (they could shadow its
    imports: a json.py next to evaluate.py is imported instead of the standard library's)."""
    return sorted(p for p in _files(target_dir) - before if p.endswith(_IMPORTABLE))


def _progress_hook(job: Job, curve: list[list[float]],
                   should_stop: Callable[[float, float], str | None] | None):
    from .metrics import parse_line

    def on_line(line: str) -> str | None:
        if "progress" not in line:
            return None
        pairs = parse_line(line)
        if "progress" not in pairs:
            return None
        p = pairs.pop("progress")
        name = job.prune_metric or next(iter(pairs), None)
        if name is None or name not in pairs or not math.isfinite(pairs[name]):
            return None
        curve.append([p, pairs[name]])
        return should_stop(p, pairs[name]) if should_stop else None

    return on_line


def _last_words(log: Path) -> str:
    """The last line the command printed (usually the error), for the crash reason."""
    from .metrics import tail_lines

    for line in reversed(tail_lines(log, 8)):
        line = line.strip()
        if line and not line.startswith("[autoresearch]") and not line.startswith("$ "):
            return line[:200]
    return ""


def evaluate(target_dir: Path, job: Job, *, stop_event: threading.Event | None = None,
             should_stop: Callable[[float, float], str | None] | None = None,
             on_start: Callable[[int], None] | None = None) -> EvalResult:
    """Run and evaluate the checked-out commit in target_dir. Never raises for outcomes."""
    started = time.time()
    env = command_env(job)
    log = Path(job.log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    curve: list[list[float]] = []
    results: list[RunResult] = []

    def finish(status: Status, reason: str, metric: float | None, metrics: dict[str, float]):
        return EvalResult(
            status=status, reason=reason, metric=metric, metrics=metrics,
            wall_time=time.time() - started,
            peak_memory_mb=max((r.peak_memory_mb for r in results), default=0.0),
            exit_code=results[-1].exit_code if results else None, log_path=str(log),
            curve=curve, started=started, finished=time.time())

    if bad := locked_violations(target_dir, job.locked):
        return finish(Status.INVALID, f"locked file changed before the run: {', '.join(bad)}", None, {})
    before = _files(target_dir) if job.evaluate else set()

    steps = [("run", job.run)] + ([("evaluate", job.evaluate)] if job.evaluate else [])
    metrics: dict[str, float] = {}
    pycache = tempfile.TemporaryDirectory(prefix="ar-pycache-")
    eval_env = {**env, "PYTHONPYCACHEPREFIX": pycache.name}
    for name, command in steps:
        hook = _progress_hook(job, curve, should_stop) if name == "run" else None
        step_env = env if name == "run" else eval_env
        if job.sandbox:
            step_env = dict(step_env)
            command = sandboxed(command, target_dir, job, step_env)
        r = run_command(command, cwd=target_dir, env=step_env,
                        log_path=log, timeout=job.timeout,
                        log_cap_bytes=job.log_cap_bytes, on_line=hook, stop_event=stop_event,
                        header=f"$ {command}   # {name} step", on_start=on_start,
                        run_token=job.token)
        results.append(r)
        if r.interrupted:
            return finish(Status.INTERRUPTED, f"interrupted during the {name} step", None, metrics)
        if r.timed_out:
            return finish(Status.TIMEOUT, f"{name} step killed at the hard timeout of {job.timeout:g}s",
                          None, metrics)
        if r.stopped_reason:
            return finish(Status.PRUNED, r.stopped_reason, None, {**metrics, **r.metrics})
        if r.error:
            return finish(Status.CRASH, f"{name} step could not start: {r.error}", None, metrics)
        if r.exit_code != 0:
            hint = " (command not found)" if r.exit_code == 127 else ""
            last = _last_words(log)
            return finish(Status.CRASH, f"{name} step exited with code {r.exit_code}{hint}"
                          + (f": {last}" if last else ""), None, {**metrics, **r.metrics})
        if name == "run" and job.evaluate:
            # the primary metric must come from the evaluator alone
            run_metrics = {k: v for k, v in r.metrics.items() if k != job.metric}
            metrics.update(run_metrics)
            # what is kept must be what was evaluated: the commit's files, untouched (the
            # locked ones are among them; they are named as such)
            if bad := locked_violations(target_dir, {**job.tracked, **job.locked}):
                locked = [p for p in bad if p in job.locked]
                kind, names = ("locked", locked) if locked else ("tracked", bad)
                return finish(Status.INVALID, f"the run step modified {kind} file(s): "
                              f"{', '.join(names)}", None, metrics)
            if bad := planted_modules(target_dir, before):
                return finish(Status.INVALID, f"the run step created importable file(s) beside the "
                              f"evaluator: {', '.join(bad[:5])} — write outputs with other names", None,
                              metrics)
        else:
            metrics.update(r.metrics)

    value = metrics.get(job.metric)
    if value is None:
        from .metrics import missing_metric_reason
        src = "evaluate" if job.evaluate else "run"
        return finish(Status.CRASH, missing_metric_reason(job.metric, metrics, src), None, metrics)
    if not math.isfinite(value):
        return finish(Status.CRASH, f"metric {job.metric} is {value}", None, metrics)
    result = finish(Status.RUNNING, "measured", value, metrics)
    if job.holdout:
        result.holdout = _holdout(target_dir, job, eval_env, stop_event)
        result.finished = time.time()
    return result


def _holdout(target_dir: Path, job: Job, env: dict[str, str],
             stop_event: threading.Event | None) -> float | None:
    """The holdout step: its metric, or None when it fails. Its output stays in its own log."""
    assert job.holdout
    command = job.holdout
    step_env = dict(env)
    if job.sandbox:
        command = sandboxed(command, target_dir, job, step_env)
    r = run_command(command, cwd=target_dir, env=step_env, log_path=Path(job.log_path + ".holdout"),
                    timeout=job.timeout, log_cap_bytes=job.log_cap_bytes, stop_event=stop_event,
                    header=f"$ {command}   # holdout step", run_token=job.token)
    value = r.metrics.get(job.holdout_metric or job.metric) if r.ok else None
    return value if value is not None and math.isfinite(value) else None
