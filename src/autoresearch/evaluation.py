"""The evaluation protocol of one experiment, wherever it runs (local slot or Ray worker).

    run       the agent's code, under the budget, killed at the hard timeout; a run whose wall
              time passes the budget plus its allowance is `over-budget`, never kept
    (check)   the commit's files must be byte-for-byte what was committed, the locked ones at the
              run's pinned blob ids; the prepared data ($AUTORESEARCH_CACHE) must match its pin;
              protected places outside the worktree (git internals, interpreter startup hooks)
              must be as they were: otherwise `invalid`, and a planted file is removed
    evaluate  the locked evaluator, in a FRESH directory built from the commit (not the run's
              worktree) plus only the declared `artifacts`, copied as regular files; a fresh
              interpreter setup (no user site, no inherited PYTHONPATH or startup file, a bytecode
              cache made after the run step). When present it is the only source of the primary
              metric, so the agent's code cannot print its own score

    holdout   (when the job asks) the locked holdout command, after a successful evaluate, in the
              same fresh directory: a second metric on data the agent never sees. Its output goes
              to a log of its own (LOG.holdout), never into the experiment's metrics or log, and
              its failure is recorded as "no holdout value", not as a crash of the experiment.
              The holdout data (`job.holdout_paths`: $AUTORESEARCH_HOLDOUT and the declared
              `holdout_data`) is mounted, read-only, in this step's sandbox alone: the run and
              evaluate steps see an empty directory (or an empty file) in its place
With `job.sandbox` both steps run under bubblewrap (see sandbox.py): the run step can write its
worktree, a private TMPDIR and a compiler cache, nothing else, and sees no host process and no
network; the evaluate step can write only its fresh directory. Without the sandbox the checks
above still run, but a process of the same user can do anything that user can (README: trust).

Executors decide where and on which GPU; this module decides what happens and what it means.
Outcomes are data (`Outcome`), never exceptions.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import math
import os
import shutil
import site
import stat
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .lockcheck import PROCESS_HASHES, RACY_SECONDS
from .ratchet import git_blob_hash
from .runner import RunResult, run_command
from .sandbox import Sandbox, SandboxPolicy, remove_tree


class Outcome(str, enum.Enum):
    """What evaluating one commit came to. MEASURED: the policy decides what it becomes."""

    MEASURED = "measured"
    CRASH = "crash"
    TIMEOUT = "timeout"
    OVER_BUDGET = "over-budget"
    INVALID = "invalid"
    PRUNED = "pruned"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value


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
    links: dict[str, str] = field(default_factory=dict)   # tracked symlinks kept as links -> target
    sandbox: bool = False                 # run both steps under bubblewrap (sandbox.py)
    sandbox_writable: list[str] = field(default_factory=list)
    sandbox_cache: str | None = None      # a writable directory for compiler caches
    network: bool = False                 # the steps may use the network (sandbox only)
    hidden: list[str] = field(default_factory=list)   # harness state the steps must not see
    artifacts: list[str] = field(default_factory=list)  # run-step outputs the evaluator reads
    artifacts_max_bytes: int = 4 * 2**30
    budget_allowance: float | None = None  # seconds past the budget; None: max(30, budget/4)
    training_seconds_metric: str | None = "training_seconds"
    cache_pin: dict[str, list] | None = None  # pin_cache() of $AUTORESEARCH_CACHE after setup
    protected: list[str] = field(default_factory=list)  # files/dirs a step must not change
    scratch: str | None = None    # where private temp dirs go (emptied on resume); None: /tmp
    holdout: str | None = None            # the holdout command, when this job computes it
    holdout_metric: str | None = None     # the name it prints
    # only the holdout step may read these (the prepared holdout dir first, then the declared
    # holdout_data): hidden from the run and evaluate steps, read-only in the holdout step
    holdout_paths: list[str] = field(default_factory=list)


@dataclass
class EvalResult:
    outcome: Outcome
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


def allowance(job: Job) -> float:
    """Seconds a run step may take past the budget (start-up, compilation, saving)."""
    if job.budget_allowance is not None:
        return job.budget_allowance
    return max(30.0, 0.25 * job.budget)


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


# variables that make an interpreter run or import code the evaluator did not ask for
_STARTUP_VARS = ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONINSPECT",
                 "PYTHONBREAKPOINT", "PYTHONEXECUTABLE", "PYTHONPLATLIBDIR", "LD_PRELOAD",
                 "LD_LIBRARY_PATH", "LD_AUDIT", "BASH_ENV", "ENV", "PERL5OPT", "NODE_OPTIONS")


def evaluator_env(env: dict[str, str], job: Job) -> dict[str, str]:
    """The evaluate step's environment: the same variables, minus every startup hook (those set
    in autoresearch.toml's `env` are the target's own and kept). Its bytecode cache is the
    fresh directory's own __pycache__, made after the run step; installed packages' caches are
    read-only in the sandbox (a PYTHONPYCACHEPREFIX would recompile the whole standard library
    and torch at every evaluation)."""
    out = {k: v for k, v in env.items() if k not in _STARTUP_VARS or k in job.env}
    out["PYTHONNOUSERSITE"] = "1"
    out.pop("PYTHONPYCACHEPREFIX", None)
    return out


def locked_violations(target_dir: Path, locked: dict[str, str],
                      links: dict[str, str] | None = None,
                      seen: dict[str, tuple[int, ...]] | None = None) -> list[str]:
    """The paths whose files are not these blob ids: changed, missing, unreadable, symlinks or
    anything but a regular file; a path of `links` must instead be a symlink to that target.
    Ids come through the process's stat cache (lockcheck), streamed: an unchanged file (size,
    mtime, ctime, inode, device) is not read again, and a large one never sits in memory.
    `seen` collects every path's lstat key (lockcheck.violations)."""
    return PROCESS_HASHES.violations(target_dir, locked, links, seen)


# == setup outputs: pinned by hash ==================================================================
def pin_cache(cache_dir: Path) -> dict[str, list]:
    """rel path -> [size, mtime_ns, ctime_ns, inode, sha256] of every file under cache_dir
    (symlinks as "->target"). Taken once after setup; checked after every run step."""
    pin: dict[str, list] = {}
    if not cache_dir.is_dir():
        return pin
    for dirpath, dirnames, filenames in os.walk(cache_dir):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, cache_dir)
            pin[rel] = _pin_entry(p)
    return pin


def _pin_entry(p: str) -> list:
    st = os.lstat(p)
    if stat.S_ISLNK(st.st_mode):
        digest = "->" + os.readlink(p)
    else:
        with open(p, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest() if hasattr(hashlib, "file_digest") \
                else _sha256(f)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, digest]


def _sha256(f) -> str:  # noqa: ANN001 - Python 3.10 has no hashlib.file_digest
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(2**20), b""):
        h.update(chunk)
    return h.hexdigest()


def cache_changes(cache_dir: Path, pin: dict[str, list]) -> list[str]:
    """Paths under cache_dir that differ from the pin: stat first, a rehash only on a change
    (ctime cannot be set by a process, so an unchanged stat means unchanged bytes)."""
    now: set[str] = set()
    changed: list[str] = []
    if cache_dir.is_dir():
        for dirpath, dirnames, filenames in os.walk(cache_dir):
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                p = os.path.join(dirpath, name)
                rel = os.path.relpath(p, cache_dir)
                now.add(rel)
                old = pin.get(rel)
                if old is None:
                    changed.append(rel)
                    continue
                try:
                    st = os.lstat(p)
                    if [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino] == old[:4]:
                        continue
                    if _pin_entry(p)[4] != old[4]:
                        changed.append(rel)
                except OSError:
                    changed.append(rel)
    changed += [rel for rel in pin if rel not in now]
    return sorted(changed)


# == places outside the worktree a step must not change ===========================================
_HOOK_NAMES = ("sitecustomize", "usercustomize")


def startup_hook_dirs() -> list[str]:
    """Where an interpreter picks up startup code: site-packages (.pth files, sitecustomize),
    the user site, and the standard library's directory (sitecustomize.py there runs too)."""
    dirs = list(site.getsitepackages()) + [site.getusersitepackages()]
    paths = sysconfig.get_paths()
    for key in ("purelib", "platlib", "stdlib"):
        dirs.append(paths.get(key, ""))
    dirs += [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    return sorted({d for d in dirs if d})


def _stat_key(path: str) -> tuple[int, ...] | None:
    """What a change to path changes (ctime cannot be set back); None when it is missing."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def _is_hook(name: str) -> bool:
    stem = name.split(".", 1)[0]
    return name.endswith(".pth") or stem in _HOOK_NAMES


class _Guard:
    """Protected files and the startup hooks of site directories, as first seen by this process;
    `restore()` puts back what changed since (removing what was planted) and names it.

    One baseline per process, not per step: with several slots, a snapshot taken while another
    step's plant is in place must not become the state to restore. A file whose stat key (mode,
    size, mtime, ctime, inode, device) is the one it had when last seen equal to the baseline,
    and that had settled then (its ctime `RACY_SECONDS` old, as in lockcheck), is not read again.
    """

    _lock = threading.Lock()
    _baseline: dict[str, bytes | None] = {}
    _roots: set[tuple[str, bool]] = set()
    _same: dict[str, tuple[int, ...]] = {}   # path -> stat key when last seen equal to baseline

    def __init__(self, protected: list[str]) -> None:
        self.roots = [(r, True) for r in protected] + [(r, False) for r in startup_hook_dirs()]
        with self._lock:
            for root in self.roots:
                if root not in self._roots:
                    self._roots.add(root)
                    for path in self._walk(*root):
                        self._baseline[path] = self._read(path)

    @staticmethod
    def _walk(root: str, all_entries: bool) -> list[str]:
        if os.path.islink(root) or os.path.isfile(root):
            return [root]
        if not os.path.isdir(root):
            return [root] if all_entries else []
        out = []
        if not all_entries:
            try:
                names = _Guard._hooks_in(root)
            except OSError:
                return []
            for name in names:
                p = os.path.join(root, name)
                out += (_Guard._walk(p, True) if os.path.isdir(p) and not os.path.islink(p)
                        else [p])
            pyc = os.path.join(root, "__pycache__")
            if os.path.isdir(pyc):
                with contextlib.suppress(OSError):
                    out += [os.path.join(pyc, n) for n in _Guard._hooks_in(pyc)]
            return out
        for dirpath, dirnames, filenames in os.walk(root):
            out += [os.path.join(dirpath, n) for n in filenames]
            out += [os.path.join(dirpath, d) for d in dirnames
                    if os.path.islink(os.path.join(dirpath, d))]
        return out

    _listings: dict[str, tuple[tuple[int, ...], list[str]]] = {}

    @staticmethod
    def _hooks_in(directory: str) -> list[str]:
        """The startup-hook names in a directory. A site-packages holds thousands of entries;
        its listing is reused while the directory's stat key (an entry added, removed or
        renamed changes its mtime and ctime) is the one it had, settled, when listed."""
        key = _stat_key(directory)
        hit = _Guard._listings.get(directory)
        if key is not None and hit is not None and hit[0] == key:
            return hit[1]
        names = [n for n in os.listdir(directory) if _is_hook(n)]
        if key is not None and key == _stat_key(directory) \
                and time.time() - key[3] / 1e9 > RACY_SECONDS:
            _Guard._listings[directory] = (key, names)
        return names

    @staticmethod
    def _read(path: str) -> bytes | None:
        try:
            if os.path.islink(path):
                return b"->" + os.readlink(path).encode()
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            return None

    def _current(self, path: str) -> bytes | None:
        """path's bytes now, unread when its stat key says it is still the baseline's."""
        key = _stat_key(path)
        if key is not None and self._same.get(path) == key:
            return self._baseline.get(path)
        data = self._read(path)
        if key is None or data != self._baseline.get(path) or key != _stat_key(path):
            self._same.pop(path, None)
        elif time.time() - key[3] / 1e9 > RACY_SECONDS:
            self._same[path] = key
        return data

    def _root_of(self, path: str) -> bool | None:
        """True under a protected root, False under a site directory, None elsewhere."""
        for root, all_entries in self.roots:
            if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
                return all_entries
        return None

    def restore(self) -> list[str]:
        """Undo every change under the protected roots (a startup hook that was removed is
        not re-created); the paths that had changed."""
        changed = []
        with self._lock:
            now = {path: self._current(path) for root in self.roots for path in self._walk(*root)}
            mine = {p for p in self._baseline if self._root_of(p) is not None}
            for path in sorted(set(now) | mine):
                before, after = self._baseline.get(path), now.get(path)
                if before == after:
                    continue
                if after is None and self._root_of(path) is False:
                    # a startup hook that went away is not put back: site directories are
                    # shared with other processes, and this baseline may hold their plant
                    continue
                changed.append(path)
                _put_back(path, before)
        return changed


def _put_back(path: str, before: bytes | None) -> None:
    try:
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
        elif os.path.isdir(path):
            remove_tree(Path(path))
        if before is not None and before.startswith(b"->"):
            os.symlink(before[2:].decode(), path)
        elif before is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(before)
    except OSError:
        pass


# == the evaluator's directory ===================================================================
def _copy_verified(src_dir: Path, dest: Path, tracked: dict[str, str],
                   links: dict[str, str]) -> list[str]:
    """Write the commit's files into dest from the bytes in src_dir whose blob id matches (a
    path of links: a symlink with that target, written as one); returns the paths that did not
    match (then nothing of them is written)."""
    bad = []
    for rel, oid in tracked.items():
        src = src_dir / rel
        if rel in links:
            try:
                ok = src.is_symlink() and os.readlink(src) == links[rel]
            except OSError:
                ok = False
            if not ok:
                bad.append(rel)
                continue
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(links[rel], dest / rel)
            continue
        try:
            if src.is_symlink():
                raise OSError
            data = src.read_bytes()
        except OSError:
            bad.append(rel)
            continue
        if git_blob_hash(data) != oid:
            bad.append(rel)
            continue
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        if os.access(src, os.X_OK):
            out.chmod(0o755)
    return bad


def copy_artifacts(run_dir: Path, eval_dir: Path, names: list[str], cap: int) -> str | None:
    """Copy the declared artifacts as regular files; None, or why the experiment failed."""
    total = 0
    root = os.path.realpath(run_dir)
    for name in names:
        src = run_dir / name
        if os.path.islink(src) or os.path.realpath(src) != os.path.join(root, os.path.normpath(name)):
            return f"artifact {name} is a symlink (or lies behind one): artifacts must be regular files"
        try:
            fd = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            return f"the run step did not write the declared artifact {name}"
        except OSError as e:
            return f"artifact {name} cannot be read: {e.strerror}"
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return f"artifact {name} is not a regular file"
            total += st.st_size
            if total > cap:
                return (f"artifacts exceed artifacts_max_mb ({cap / 2**20:g} MiB) at {name} "
                        f"({st.st_size / 2**20:.1f} MiB)")
            out = eval_dir / name
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "wb") as g:
                shutil.copyfileobj(f, g, 2**20)
    return None


def _policy(job: Job, step: str, cwd: Path, writable: list[Path],
            env: dict[str, str]) -> SandboxPolicy:
    cache = env.get("AUTORESEARCH_CACHE")
    readonly = [Path(p) for p in [cache] if p]
    hidden = [Path(h) for h in job.hidden]
    if step == "holdout":    # the one step that reads the holdout data
        readonly += [Path(p) for p in job.holdout_paths]
    else:
        hidden += [Path(p) for p in job.holdout_paths]
    return SandboxPolicy(cwd=cwd, writable=tuple(writable), network=job.network,
                         hidden=tuple(h for h in hidden if os.path.exists(h)),
                         readonly=tuple(readonly),
                         # the evaluate and holdout steps run locked code, which may sandbox
                         # the model code again (autoresearch.isolate)
                         nested_sandbox=step != "run")


def _compiler_cache(job: Job, step: str, env: dict[str, str]) -> list[Path]:
    """Run and evaluate steps get separate compiler caches: a run step must not plant a
    compiled kernel that the evaluator would load."""
    if not job.sandbox_cache:
        return []
    base = Path(job.sandbox_cache) / step
    for var in ("XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        env[var] = str(base / var.lower())
    return [base]


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


def _step(name: str, command: str, cwd: Path, env: dict[str, str], writable: list[Path],
          job: Job, log: Path, *, on_line: Callable[[str], str | None] | None = None,
          stop_event: threading.Event | None = None,
          on_start: Callable[[int], None] | None = None) -> RunResult:
    """One step, sandboxed when the job says so; its private TMPDIR is gone when it returns."""
    header = f"$ {command}   # {name} step" + (", sandboxed" if job.sandbox else "")
    common = dict(log_path=log, timeout=job.timeout, log_cap_bytes=job.log_cap_bytes,
                  on_line=on_line, stop_event=stop_event, header=header, on_start=on_start,
                  run_token=job.token)
    if not job.sandbox:
        return run_command(command, cwd=cwd, env=env, **common)
    policy = _policy(job, name, cwd, writable, env)
    with Sandbox(policy, env, tmp_root=_scratch(job)) as sb:
        return run_command(command, cwd=cwd, env=sb.env, wrap=sb.argv, **common)


def _failure(name: str, r: RunResult, job: Job, log: Path) -> tuple[Outcome, str] | None:
    if r.interrupted:
        return Outcome.INTERRUPTED, f"interrupted during the {name} step"
    if r.timed_out:
        return Outcome.TIMEOUT, f"{name} step killed at the hard timeout of {job.timeout:g}s"
    if r.stopped_reason:
        return Outcome.PRUNED, r.stopped_reason
    if r.error:
        return Outcome.CRASH, f"{name} step could not start: {r.error}"
    if r.exit_code != 0:
        hint = " (command not found)" if r.exit_code == 127 else ""
        last = _last_words(log)
        return Outcome.CRASH, (f"{name} step exited with code {r.exit_code}{hint}"
                               + (f": {last}" if last else ""))
    return None


def evaluate(target_dir: Path, job: Job, *, stop_event: threading.Event | None = None,
             should_stop: Callable[[float, float], str | None] | None = None,
             on_start: Callable[[int], None] | None = None,
             materialize: Callable[[Path], Path] | None = None,
             checked: Callable[[dict[str, tuple[int, ...]]], None] | None = None,
             changed: Callable[[str], set[str] | None] | None = None) -> EvalResult:
    """Run and evaluate the commit checked out in target_dir. Never raises for outcomes.

    materialize(dest) writes the commit's files from the object store into dest and returns
    the target's directory in it (the evaluator's fresh directory); without it the commit's
    files are copied from target_dir, each checked against its blob id.

    checked(keys) is given the lstat key of every tracked file as the check after the run step
    saw it (target-relative path -> lockcheck.stat_key), when that check ran and no step that
    could write target_dir ran after it (an evaluate step outside the sandbox, a holdout step
    in target_dir): the ratchet's next checkout of this slot then need not lstat them again.
    The run step's processes are all dead by then (runner.py); one that escaped the kill could
    change a file after the check, which is the same risk as changing it after the checkout's
    own walk: the next run's check still sees the change, so it is never kept.

    changed(commit), where the slot's worktree has the kernel's notice of changes (the ratchet's
    treewatch), names the tracked paths that the check after the run step must look at: those
    something may have changed since the checkout made the worktree that commit. None from it:
    look at every one. When it names them, checked is not called (the next checkout asks the
    same notice).
    """
    started = time.time()
    env = command_env(job)
    log = Path(job.log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    curve: list[list[float]] = []
    results: list[RunResult] = []
    metrics: dict[str, float] = {}

    def finish(outcome: Outcome, reason: str, metric: float | None = None) -> EvalResult:
        return EvalResult(
            outcome=outcome, reason=reason, metric=metric, metrics=metrics,
            wall_time=time.time() - started,
            peak_memory_mb=max((r.peak_memory_mb for r in results), default=0.0),
            exit_code=results[-1].exit_code if results else None, log_path=str(log),
            curve=curve, started=started, finished=time.time())

    if bad := locked_violations(target_dir, job.locked):
        return finish(Outcome.INVALID, f"locked file changed before the run: {', '.join(bad)}")

    # -- run ------------------------------------------------------------------------------------
    guard = None if job.sandbox else _Guard(job.protected)   # the sandbox makes them read-only
    run_env = dict(env)
    writable = [target_dir, *_compiler_cache(job, "run", run_env), *_extra_writable(job, target_dir)]
    r = _step("run", job.run, target_dir, run_env, writable, job, log,
              on_line=_progress_hook(job, curve, should_stop), stop_event=stop_event,
              on_start=on_start)
    results.append(r)
    # the primary metric must come from the evaluator alone when there is one
    metrics.update({k: v for k, v in r.metrics.items() if not (job.evaluate and k == job.metric)})
    if guard is not None and (planted := guard.restore()):
        return finish(Outcome.INVALID, f"the run step changed protected file(s) outside its "
                      f"worktree: {', '.join(planted[:5])} (restored)")
    if failed := _failure("run", r, job, log):
        return finish(*failed)
    limit = job.budget + allowance(job)
    if r.wall_time > limit:
        return finish(Outcome.OVER_BUDGET, f"the run step took {r.wall_time:.1f}s, past the budget "
                      f"of {job.budget:g}s plus the allowance of {allowance(job):g}s")
    cache = job.env.get("AUTORESEARCH_CACHE")
    if cache and job.cache_pin is not None and (altered := cache_changes(Path(cache), job.cache_pin)):
        return finish(Outcome.INVALID, f"the prepared data changed after setup: "
                      f"{', '.join(altered[:5])} (setup outputs are pinned by hash)")
    # what is kept must be what was evaluated: the commit's files, untouched
    keys: dict[str, tuple[int, ...]] | None = {}
    tracked, locked, links = job.tracked, job.locked, job.links
    if changed is not None and (only := changed(job.commit)) is not None:
        only.update(p for p in locked if p not in tracked)   # not the commit's: never written
        tracked = {p: tracked[p] for p in only if p in tracked}
        locked = {p: locked[p] for p in only if p in locked}
        links = {p: links[p] for p in only if p in links}
        keys = None   # the next checkout asks the notice, not these keys
    bad = locked_violations(target_dir, {**tracked, **locked}, links, keys)
    if job.evaluate and not job.sandbox:
        keys = None   # the evaluate step, unconfined, could write here after the check
    if job.holdout and not job.evaluate:
        keys = None   # the holdout step runs here, after the check
    if keys is not None and checked is not None:
        checked(keys)
    if bad:
        locked = [p for p in bad if p in job.locked]
        kind, names = ("locked", locked) if locked else ("tracked", bad)
        return finish(Outcome.INVALID, f"the run step modified {kind} file(s): {', '.join(names)}")

    # -- evaluate (and holdout) in a fresh directory --------------------------------------------
    work = Path(tempfile.mkdtemp(prefix="ar-eval-", dir=_scratch(job))) if job.evaluate else None
    here: dict = {"dir": target_dir, "env": env}     # where the holdout runs
    try:
        if work is not None and (failed := _evaluate_step(
                target_dir, work, job, env, log, results, metrics, stop_event=stop_event,
                on_start=on_start, materialize=materialize, here=here)):
            return finish(*failed)
        value = metrics.get(job.metric)
        if value is None:
            from .metrics import missing_metric_reason
            src = "evaluate" if job.evaluate else "run"
            return finish(Outcome.CRASH, missing_metric_reason(job.metric, metrics, src))
        if not math.isfinite(value):
            return finish(Outcome.CRASH, f"metric {job.metric} is {value}")
        trained = metrics.get(job.training_seconds_metric or "")
        if trained is not None and trained > limit:
            return finish(Outcome.OVER_BUDGET, f"the target reports {job.training_seconds_metric} = "
                          f"{trained:g}, past the budget of {job.budget:g}s plus the allowance of "
                          f"{allowance(job):g}s")
        result = finish(Outcome.MEASURED, "measured", value)
        if job.holdout:
            result.holdout = _holdout(here["dir"], job, here["env"], stop_event)
            result.finished = time.time()
        return result
    finally:
        if work is not None:
            remove_tree(work)


def _holdout(where: Path, job: Job, env: dict[str, str],
             stop_event: threading.Event | None) -> float | None:
    """The holdout step: its metric, or None when it fails. Its output stays in its own log."""
    assert job.holdout
    env = dict(env)
    if job.holdout_paths:
        env["AUTORESEARCH_HOLDOUT"] = job.holdout_paths[0]
    r = _step("holdout", job.holdout, where, env, [where], job,
              Path(job.log_path + ".holdout"), stop_event=stop_event)
    value = r.metrics.get(job.holdout_metric or job.metric) if r.ok else None
    return value if value is not None and math.isfinite(value) else None


def _scratch(job: Job) -> str | None:
    if job.scratch is None:
        return None
    os.makedirs(job.scratch, exist_ok=True)
    return job.scratch


def _extra_writable(job: Job, target_dir: Path) -> list[Path]:
    return [Path(p) if os.path.isabs(p) else target_dir / p for p in job.sandbox_writable]


def _evaluate_step(run_dir: Path, work: Path, job: Job, env: dict[str, str], log: Path,
                   results: list[RunResult], metrics: dict[str, float], *,
                   stop_event: threading.Event | None, on_start: Callable[[int], None] | None,
                   materialize: Callable[[Path], Path] | None,
                   here: dict) -> tuple[Outcome, str] | None:
    """Build the evaluator's fresh directory under work and run the evaluate step there."""
    tree = work / "tree"
    tree.mkdir()
    if materialize is not None:
        eval_dir = materialize(tree)
    else:
        eval_dir = tree
        if bad := _copy_verified(run_dir, eval_dir, job.tracked, job.links):
            return Outcome.INVALID, f"the run step modified tracked file(s): {', '.join(bad)}"
    if bad := locked_violations(eval_dir, job.locked):
        return Outcome.INVALID, f"the evaluator's copy of locked file(s) differs: {', '.join(bad)}"
    if why := copy_artifacts(run_dir, eval_dir, job.artifacts, job.artifacts_max_bytes):
        return Outcome.CRASH, why
    eval_env = evaluator_env(env, job)
    here.update(dir=eval_dir, env=eval_env)
    writable = [eval_dir, *_compiler_cache(job, "evaluate", eval_env)]
    r = _step("evaluate", job.evaluate or "", eval_dir, eval_env, writable, job, log,
              stop_event=stop_event, on_start=on_start)
    results.append(r)
    metrics.update(r.metrics)
    if failed := _failure("evaluate", r, job, log):
        if failed[0] == Outcome.CRASH and not job.artifacts:
            failed = (failed[0], failed[1] + " — the evaluator sees only the commit's files and "
                      "the declared artifacts: list what the run step writes for it in "
                      "autoresearch.toml, e.g. artifacts = [\"model.pt\"]")
        return failed
    return None
