"""The session: one driver per target, the run opened or resumed, and repaired after a kill.

Guarantees:
- One driver per target: `driver.lock` is held (flock) from `open` until `close` or the
  process's death; a second `run` on the same target fails with one line naming the holder.
- On open the branch, the pins and the ledger are brought into agreement, the ledger winning:
  every commit of a row is pinned under refs/autoresearch/TAG/SEQ; the branch points at the
  ledger's best; every experiment left running or interrupted (and a failed baseline) is killed
  if a process of it survived, reset to `running` and queued again, in its own row.
- The toml this process read and the locked files at the branch are the ones hashed when the
  run began, or the run does not start.
- The ledger is written by this process alone: a write by another process while an experiment
  ran (its code, possible with sandbox = false) stops the run and leaves a TAMPERED-TAG mark;
  a run with the mark is not resumed until the user has looked and deleted it.
- Private temp dirs a kill -9 left under .autoresearch/scratch are removed on open; the cache
  the setup filled is pinned after setup and checked after every run step (evaluation.py).
- results.tsv is rewritten whole when the loop has opened the run and on close (kept rows, and
  every row of the original format, at their reported values); in between the loop appends.
- A new run starts from the branch if it exists, else from `start()` when given (a hub's best,
  contributor mode), else from HEAD.
- A job computes the holdout (when the toml has one) for the baseline and for every
  `holdout_every`-th candidate or rebase; never for a repeat. Every job carries the holdout
  data's paths (the prepared .autoresearch/holdout and the declared `holdout_data`) so that only
  its holdout step can read them; declared data tracked by git is refused when the run opens.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

import psutil

from .config import CONFIG_NAME, Target, holdout_data_paths
from .evaluation import Job, command_env, pin_cache
from .experiment import Kind, Status
from .export import write_results_tsv
from .globs import matches
from .judge import RunStopped
from .ledger import Experiment, Ledger, Run
from .lockcheck import FileHashes
from .metrics import tail_lines
from .ratchet import Ratchet
from .runner import kill_tree, run_command
from .sandbox import SandboxUnavailable, remove_tree
from .sandbox import check as check_sandbox
from .state import RunState

_EDITABLE_PATHS = 200_000   # paths whose editable verdict is remembered, at most


class Session:
    def __init__(self, target: Target, ledger: Ledger, ratchet: Ratchet, tag: str, *,
                 agent_name: str, policy_name: str, budget: float | None, seed: int,
                 results_format: str = "native", say: Callable[[str], None] | None = None,
                 scale: str | None = None, source: str | None = None, strategy: str = "ratchet",
                 org: str | None = None):
        self.target = target
        self.scale = scale       # the [scales] entry target.spec is at (recorded on the run)
        self.source = source     # a promotion's source run (promote.py)
        self.org = org           # the organisation a new run is tagged with (compare.py)
        self.spec = target.spec
        self.ledger = ledger
        self.ratchet = ratchet
        self.tag = tag
        self.agent_name = agent_name
        self.policy_name = policy_name
        self.strategy = strategy                         # recorded with the run (strategies.py)
        self.seed = seed
        self.original = results_format == "original"    # results.tsv in the original's format
        self.say = say
        self.cache_pin: dict[str, list] | None = None    # pin_cache() after setup
        self._ledger_version: int | None = None
        self.resumed = False     # set by open: the run had experiments beyond its baseline
        self.budget = budget if budget is not None else self.spec.budget
        self.timeout = self.spec.timeout if self.spec.timeout is not None else 2 * self.budget + 60
        self.log_dir = target.state_dir / "logs" / tag
        self.cache_dir = target.state_dir / "cache"
        self.hashes = FileHashes(target.state_dir / "hash-cache.json")
        self.run: Run | None = None
        self._lock_file: IO[str] | None = None
        self._editable: dict[str, bool] = {}

    def editable(self, rel: str) -> bool:
        """Does the spec let the agent change rel? Remembered per path: each proposal asks it
        of every file of the commit (5,000 glob matches on a large tree)."""
        known = self._editable.get(rel)
        if known is None:
            if len(self._editable) > _EDITABLE_PATHS:
                self._editable.clear()
            known = self._editable[rel] = (matches(rel, self.spec.editable)
                                           and not matches(rel, self.spec.locked_globs))
        return known

    def editable_files(self, files: dict[str, str]) -> dict[str, str]:
        """The entries of files (path -> blob id) that `editable` allows, in bulk: once every
        path's verdict is remembered, one lookup each and no call per path."""
        verdicts = list(map(self._editable.get, files))
        if None in verdicts:
            verdicts = list(map(self.editable, files))
        return dict(itertools.compress(files.items(), verdicts))

    # -- the driver lock ------------------------------------------------------------------
    def _take_lock(self) -> None:
        """One driver per target: two would write the same ledger, worktrees and branch."""
        path = self.target.state_dir / "driver.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunStopped(f"{self.target.root} is already driven by {holder} — stop that "
                             f"'autoresearch run' first (the lock is {path})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"autoresearch pid {os.getpid()} (tag {self.tag})\n")
        fh.flush()
        self._lock_file = fh   # held until this process ends; the OS releases it on kill -9

    def close(self, state: RunState | None, values: dict[int, float] | None = None) -> None:
        """Rewrite results.tsv in seq order (`values`: reported values by experiment id) and
        release the driver lock."""
        if state is not None:
            self.write_results(state, values or {})
        self.hashes.save()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- open, resume, repair ---------------------------------------------------------------
    def open(self, baseline_params: Callable[[], dict | None],
             code_lines: Callable[[str], int],
             start: Callable[[], str] | None = None) -> tuple[RunState, list[Experiment]]:
        """Create the run for this tag, or resume it; returns the run state and the rows to
        measure (again), oldest first. `start`: the commit a new run starts from (a hub's)."""
        self._take_lock()
        self.ratchet.ensure_ignored()
        run = self.ledger.get_run(self.tag)
        if run is None:
            base = self.ratchet.branch_commit(self.tag) or (start() if start else
                                                            self.ratchet.head())
            files = self.ratchet.list_files(base)
            locked = {p: oid for p, oid in files.items() if matches(p, self.spec.locked_globs)}
            run = self.ledger.create_run(self.tag, base, self.spec.metric, self.spec.direction,
                                         self.agent_name, self.policy_name, locked,
                                         scale=self.scale, source=self.source,
                                         strategy=self.strategy, org=self.org)
            if self.ratchet.branch_commit(self.tag) is None:
                self.ratchet.set_branch(self.tag, base)
        elif run.scale != self.scale:
            at = f"at scale '{run.scale}'" if run.scale else "without a scale"
            raise RunStopped(f"run '{self.tag}' was made {at} — resume it the same way "
                             f"(--scale {run.scale or '...'} as it was), or start a new --tag")
        elif (run.strategy or "ratchet") != self.strategy:   # resumed with another --strategy
            self.ledger.update_run(self.tag, strategy=self.strategy)
            run.strategy = self.strategy
        self.run = run
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        if (self.target.state_dir / "scratch").exists():   # temp dirs a kill -9 left behind
            remove_tree(self.target.state_dir / "scratch")
        self._check_sandbox()
        self._check_locked_unchanged()
        self._check_holdout_data(run.base_commit)
        state = RunState.load(self.ledger, run)
        self.resumed = state.count > 1
        queue = []
        for e in state.open_rows():
            if e.status == Status.PENDING:
                continue
            # leftovers of a kill -9: the recorded tree, and anything carrying its token
            kill_tree(e.pid or 0, create_time=e.pid_started, run_token=self.token(e.id))
            state.update(e, status=Status.RUNNING, reason="", pid=None, metric=None,
                         decision=None)
            queue.append(e)
        self._repin(state)
        self._check_not_tampered()
        best = state.incumbent.commit_sha if state.incumbent else run.base_commit
        if self.ratchet.branch_commit(self.tag) != best:
            self.ratchet.set_branch(self.tag, best)
        if not state.rows:
            queue.append(self._add_baseline(state, baseline_params, code_lines))
        self._ledger_version = self.ledger.data_version()
        return state, queue

    def _repin(self, state: RunState) -> None:
        """A kill between a ledger write and its pin leaves the ref behind: the ledger wins."""
        pins = self.ratchet.pins(self.tag)
        missing = {e.seq: e.commit_sha for e in state.rows.values()
                   if e.commit_sha and pins.get(e.seq) != e.commit_sha}
        if missing:
            self.ratchet.pin_many(self.tag, missing)

    def _add_baseline(self, state: RunState, params: Callable[[], dict | None],
                      code_lines: Callable[[str], int]) -> Experiment:
        assert self.run is not None
        base = self.run.base_commit
        e = state.add(kind=Kind.BASELINE, parent=None, commit_sha=base,
                      tree_sha=self.ratchet.tree_of(base), agent=self.agent_name,
                      description="baseline", status=Status.RUNNING, seed=self.seed,
                      code_lines=code_lines(base), params=params())
        self.ratchet.pin(self.tag, e.seq, base)
        return e

    def _check_sandbox(self) -> None:
        if not self.spec.sandbox:
            warning = ("warning: sandbox = false — the agent's code runs with your user's rights: "
                       "it can reach the network, other processes and every file you can write")
            if self.say is not None:
                self.say(warning)
            else:
                print(warning, file=sys.stderr)
            return
        try:
            check_sandbox()
        except SandboxUnavailable as e:
            raise RunStopped(f"autoresearch.toml: {e}") from None

    def _check_holdout_data(self, base: str) -> None:
        """The declared holdout data must exist, outside git (or every worktree and the agent's
        checkout would hold it) and outside the target's own folder tree above it."""
        self.target.holdout_dir.mkdir(parents=True, exist_ok=True)
        files = self.ratchet.list_files(base) if self.spec.holdout_data else {}
        root = self.target.root.resolve()
        for entry, path in zip(self.spec.holdout_data,
                               holdout_data_paths(self.spec, self.target.root), strict=True):
            where = f"{self.target.config_path}: holdout_data entry {entry!r}"
            if not path.exists():
                raise RunStopped(f"{where}: {path} does not exist — write the holdout data there "
                                 f"first, or prepare it with holdout_setup into $AUTORESEARCH_HOLDOUT")
            if path == root or path in root.parents:
                raise RunStopped(f"{where} holds the whole target — name the holdout data's own "
                                 f"file or folder")
            if path.is_relative_to(root):
                rel = path.relative_to(root).as_posix()
                if any(f == rel or f.startswith(rel + "/") for f in files):
                    raise RunStopped(
                        f"{where} is committed to git, so every worktree and the agent's checkout "
                        f"hold it — untrack it (git rm -r --cached {rel}, and add it to "
                        f".gitignore), commit, and start a new --tag")

    # -- the ledger is written by this process alone ------------------------------------------
    def _tamper_mark(self) -> Path:
        return self.target.state_dir / f"TAMPERED-{self.tag}"

    def _check_not_tampered(self) -> None:
        if self._tamper_mark().exists():
            why = self._tamper_mark().read_text().strip()
            raise RunStopped(f"run '{self.tag}' is not resumed: {why} — check "
                             f"{self.ledger.path} (its results may be forged), then delete "
                             f"{self._tamper_mark()} to resume, or start a new --tag")

    def check_ledger_untouched(self, e: Experiment) -> None:
        """A write to the ledger by another process while e ran came from its code (possible
        with sandbox = false): stop, and refuse to resume until the user has looked."""
        now = self.ledger.data_version()
        if self._ledger_version is not None and now != self._ledger_version:
            self._tamper_mark().write_text(f"the ledger was written by another process while "
                                           f"experiment #{e.seq} ran\n")
            self._check_not_tampered()
        self._ledger_version = now

    def _check_locked_unchanged(self) -> None:
        """The locked files at the branch must be the ones hashed when the run began, and the
        toml this process read must be that locked one (a run step or an agent may have
        rewritten the checkout's copy)."""
        assert self.run is not None
        recorded = self.run.locked.get(CONFIG_NAME)
        if recorded is None:
            raise RunStopped(f"{self.target.config_path} is not committed — commit it first: it is "
                             f"locked, and the run must use exactly the committed version")
        # a promotion checks the toml itself: it may differ in [scales] only (promote.py)
        if self.source is None and self.hashes.blob_id(self.target.config_path) != recorded:
            raise RunStopped(
                f"{self.target.config_path} differs from the version run '{self.tag}' started with — "
                f"restore it (git checkout -- {CONFIG_NAME}), or commit the change and start a new "
                f"run with another --tag")
        head = self.ratchet.branch_commit(self.tag) or self.run.base_commit
        now = self.ratchet.list_files(head)
        changed = [p for p, oid in self.run.locked.items() if now.get(p) != oid]
        if changed:
            raise RunStopped(f"locked file(s) {', '.join(changed)} differ from when run '{self.tag}' "
                             f"started — restore them, or start a new run with another --tag")

    # -- setup and jobs -----------------------------------------------------------------------
    def setup(self, stop_event, reporter) -> None:
        """Run the toml's setup command, then its holdout_setup, once per run, before the
        baseline. holdout_setup alone is told $AUTORESEARCH_HOLDOUT; its log is its own."""
        assert self.run is not None
        steps = [(cmd, name, env) for cmd, name, env in (
            (self.spec.setup, "setup", {}),
            (self.spec.holdout_setup, "holdout-setup",
             {"AUTORESEARCH_HOLDOUT": str(self.target.holdout_dir)})) if cmd]
        if not steps or self.run.setup_done:
            return
        wt = self.ratchet.worktree("slot-0")
        target_dir = self.ratchet.checkout(wt, self.run.base_commit)
        for command, name, extra in steps:
            log = self.log_dir / f"{name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            if reporter:
                reporter.message(f"{name}: {command}  (log: {log})")
            r = run_command(command, cwd=target_dir, env={**command_env(self.job()), **extra},
                            log_path=log, timeout=self.spec.setup_timeout,
                            stop_event=stop_event, header=f"$ {command}   # {name}")
            if r.interrupted:
                raise KeyboardInterrupt
            if not r.ok:
                why = "timed out" if r.timed_out else f"exited with code {r.exit_code}"
                tail = "\n".join(tail_lines(log, 20))
                raise RunStopped(f"{name} command {command!r} {why} — see {log}\n{tail}")
        self.ledger.update_run(self.tag, setup_done=1)
        self.run.setup_done = True

    def pin_cache(self) -> None:
        """Pin what the setup left in the cache; every run step is checked against it."""
        self.cache_pin = pin_cache(self.cache_dir)

    def job(self, e: Experiment | None = None, seed: int = 0) -> Job:
        """The job that evaluates e (the setup's stand-in without e)."""
        assert self.run is not None
        env = dict(self.spec.env)
        env["AUTORESEARCH_CACHE"] = str(self.cache_dir)
        env["AUTORESEARCH_TAG"] = self.tag
        holdout = self.spec.holdout if e is not None and self._holdout_of(e) else None
        return Job(
            holdout=holdout, holdout_metric=self.spec.holdout_metric if holdout else None,
            holdout_paths=[str(p) for p in self.target.holdout_paths()] if self.spec.holdout else [],
            experiment_id=e.id if e else 0, seq=e.seq if e else 0,
            commit=(e.commit_sha if e else self.run.base_commit) or "", run=self.spec.run,
            evaluate=self.spec.evaluate, metric=self.spec.metric, budget=self.budget,
            timeout=self.timeout, seed=seed, env=env, locked=self.run.locked,
            log_path=str(self.log_dir / (f"{e.seq:05d}.log" if e else "setup.log")),
            log_cap_bytes=int(self.spec.log_cap_mb * 2**20), prune_metric=self.spec.prune.metric,
            token=self.token(e.id) if e else None,
            tracked=self.ratchet.list_files(e.commit_sha) if e and e.commit_sha else {},
            links=self.ratchet.links(e.commit_sha) if e and e.commit_sha else {},
            sandbox=self.spec.sandbox, sandbox_writable=list(self.spec.sandbox_writable),
            sandbox_cache=str(self.target.state_dir / "sandbox-cache"), network=self.spec.network,
            hidden=[str(self.target.state_dir)], artifacts=list(self.spec.artifacts),
            artifacts_max_bytes=int(self.spec.artifacts_max_mb * 2**20),
            budget_allowance=self.spec.budget_allowance,
            training_seconds_metric=self.spec.training_seconds_metric, cache_pin=self.cache_pin,
            protected=[str(self.ratchet.common_dir / n) for n in ("config", "hooks", "info")],
            scratch=str(self.target.state_dir / "scratch"))

    def _holdout_of(self, e: Experiment) -> bool:
        """Does e's job compute the holdout? The baseline's (a hub best adopted too) and every
        `holdout_every`-th candidate's or rebase's."""
        return e.kind == Kind.BASELINE or (e.kind in (Kind.CANDIDATE, Kind.REBASE)
                                           and e.seq % self.spec.holdout_every == 0)

    def record_pids(self, state: RunState, updates: list[tuple[Experiment, int]]) -> None:
        """Write the process ids the slot threads reported (with their start times, so a
        resumed run kills only these processes, never a recycled id); drains `updates`."""
        while updates:
            e, pid = updates.pop()
            try:
                created = psutil.Process(pid).create_time()
            except psutil.Error:
                created = None
            if e.status == Status.RUNNING:
                state.update(e, pid=pid, pid_started=created)

    def token(self, exp_id: int) -> str:
        """Stable per experiment, so a resumed run can find processes that escaped with setsid."""
        where = hashlib.sha1(str(self.target.root).encode()).hexdigest()[:10]
        return f"autoresearch-{where}-{self.tag}-{exp_id}"

    def write_results(self, state: RunState, values: dict[int, float]) -> None:
        """results.tsv, whole, from memory; `values`: reported values by experiment id."""
        write_results_tsv(self.ledger, self.tag, self.spec, self.target.results_path,
                          rows=list(state.rows.values()), values=values, original=self.original)
