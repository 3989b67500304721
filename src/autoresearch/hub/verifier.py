"""`autoresearch verify`: a worker of the trusted verification pool.

Each worker leases a claim of its hardware class, fetches the claim and the best it is judged
against as git bundles, and runs both `runs` times with fresh random seeds, alternating, under
the target's locked protocol (`evaluation.evaluate`) with the sandbox forced on: contributed
code runs only inside bubblewrap, and a verifier refuses to start without it. It renews its
lease while it works and reports every measurement; the hub decides. A worker that dies stops
renewing, its lease expires, and another verifier takes the claim.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import subprocess
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ..config import CONFIG_NAME, TargetSpec, tomllib
from ..errors import AutoresearchError, ConfigError
from ..evaluation import EvalResult, Job, Outcome, evaluate
from ..globs import matches
from ..runner import run_command
from .client import HubClient, HubRefused
from .repo import HubRepo, init_repo


def check_sandbox() -> None:
    """Contributed code never runs outside bubblewrap: refuse to verify without it."""
    if shutil.which("bwrap") is None:
        raise AutoresearchError("verify runs contributed code only under bubblewrap, which is not "
                                "installed — apt-get install bubblewrap")
    p = subprocess.run(["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "true"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise AutoresearchError(f"bubblewrap cannot run here ({p.stderr.strip() or p.returncode}) "
                                f"— allow user namespaces; verify never runs contributed code "
                                f"unsandboxed")


def run_once(target_dir: Path, job: Job, repo: HubRepo) -> EvalResult:
    """The one call into the evaluation protocol: the evaluator runs in a fresh directory
    written from the hub's object store (plus the declared artifacts), as in a local run."""
    return evaluate(target_dir, job, materialize=lambda dest: repo.materialize(job.commit, dest))


@dataclass
class VerifyOptions:
    hardware: str
    workers: int = 1
    gpus: list[str] | None = None
    data: Path | None = None
    poll: float = 5.0               # seconds between lease attempts when there is no work
    max_claims: int | None = None   # stop after this many reports (all workers together)


class Verifier:
    def __init__(self, client: HubClient, options: VerifyOptions, say=print):
        self.client = client
        self.opt = options
        self.say = say
        self.stop = threading.Event()
        self.reports = 0
        self._lock = threading.Lock()
        self._git_lock = threading.Lock()
        where = urllib.parse.urlsplit(client.url).netloc.replace(":", "_")
        self.data = options.data or Path.home() / ".cache" / "autoresearch" / "verify" / where
        self.data = Path(self.data).resolve()

    # -- setup -----------------------------------------------------------------------------------
    def prepare(self) -> None:
        check_sandbox()
        info = self.client.info()
        self.info = info
        self.base = info["base_commit"]
        self.subdir = info.get("subdir", "")
        path = self.data / "repo"
        if not (path / ".git").exists():
            init_repo(path)
        self.repo = HubRepo(path, self.subdir)
        self.repo.worktrees_dir = self.data / "worktrees"
        self._fetch(self.base)
        self.repo.set_ref("HEAD", self.base)
        text = self.repo.read_files(self.base, [CONFIG_NAME]).get(CONFIG_NAME)
        if text is None:
            raise ConfigError(f"the hub's base commit has no {CONFIG_NAME}")
        try:
            data = tomllib.loads(text)
            self.spec = TargetSpec.model_validate(data)
        except Exception as e:  # noqa: BLE001 - one line for the user
            raise ConfigError(f"the hub's {CONFIG_NAME} cannot be read: {e}") from None
        files = self.repo.list_files(self.base)
        self.locked = {p: o for p, o in files.items() if matches(p, self.spec.locked_globs)}
        self.cache = self.data / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)
        self._setup()

    def _fetch(self, commit: str) -> None:
        with self._git_lock:
            if self.repo.has_commit(commit):
                return
            haves = [self.base] if self.repo.has_commit(self.base) else []
            haves += list(self.repo.refs("refs/hub/").values())[-30:]
            data = self.client.bundle(commit, haves)
            self.repo.fetch_bundle(data, commit, f"refs/hub/c/{commit}")

    def _setup(self) -> None:
        """The target's setup, once per base commit: it is the locked, trusted code."""
        if not self.spec.setup:
            return
        stamp = self.cache / f"setup-{hashlib.sha1((self.base + self.spec.setup).encode()).hexdigest()[:12]}.done"
        if stamp.exists():
            return
        wt = self._checkout("setup", self.base)
        log = self.data / "logs" / "setup.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        r = run_command(self.spec.setup, cwd=wt, env=self._env(), log_path=log,
                        timeout=self.spec.setup_timeout, header=f"$ {self.spec.setup}   # setup")
        if not r.ok:
            raise AutoresearchError(f"the target's setup failed on this verifier — see {log}")
        stamp.write_text("ok\n")

    def _env(self) -> dict[str, str]:
        import os
        return {**os.environ, **self.spec.env, "AUTORESEARCH_CACHE": str(self.cache)}

    def _checkout(self, name: str, commit: str) -> Path:
        with self._git_lock:
            wt = self.repo.worktree(name)
            return self.repo.checkout(wt, commit)

    # -- work ------------------------------------------------------------------------------------
    def run(self) -> int:
        """Work until stopped or max_claims; returns the number of reports sent."""
        self.prepare()
        self.say(f"verifying for {self.client.url} as hardware class {self.opt.hardware} with "
                 f"{self.opt.workers} worker(s); sandbox: bubblewrap")
        threads = [threading.Thread(target=self._worker, args=(k,), daemon=True, name=f"verify-{k}")
                   for k in range(self.opt.workers)]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.2)
        except KeyboardInterrupt:
            self.stop.set()
            raise
        return self.reports

    def _done(self) -> bool:
        with self._lock:
            return self.stop.is_set() or (self.opt.max_claims is not None
                                          and self.reports >= self.opt.max_claims)

    def _worker(self, slot: int) -> None:
        gpu = self.opt.gpus[slot] if self.opt.gpus else None
        while not self._done():
            try:
                lease = self.client.lease(self.opt.hardware)
            except HubRefused as e:
                self.say(f"worker {slot}: {e}")
                self.stop.set()
                return
            if lease is None:
                self.stop.wait(self.opt.poll)
                continue
            self._verify(slot, gpu, lease)

    def _verify(self, slot: int, gpu: str | None, lease: dict) -> None:
        vid = lease["verification_id"]
        beat_stop = threading.Event()

        def heartbeat() -> None:
            while not beat_stop.wait(max(0.5, lease["lease_seconds"] / 3)):
                try:
                    self.client.renew(vid)
                except AutoresearchError:
                    return

        beat = threading.Thread(target=heartbeat, daemon=True)
        beat.start()
        try:
            report = self._measure(slot, gpu, lease)
        except AutoresearchError as e:
            report = {"outcome": "error", "reason": f"verifier error: {e}"[:1900]}
        finally:
            beat_stop.set()
        try:
            claim = self.client.report(vid, report)
        except HubRefused as e:
            self.say(f"claim #{lease['claim_id']}: report refused: {e.detail}")
            return
        with self._lock:
            self.reports += 1
        self.say(f"claim #{claim['id']}: {report['outcome']} -> {claim['status']}"
                 + (f" ({claim['reason']})" if claim.get("reason") else ""))

    def _measure(self, slot: int, gpu: str | None, lease: dict) -> dict:
        cand, best = lease["commit"], lease["against"]
        self._fetch(cand)
        self._fetch(best)
        runs = {"candidate": [], "best": []}
        seeds = []
        for i in range(int(lease["runs"])):
            seed = secrets.randbelow(2**31 - 1)
            seeds.append(seed)
            for side, commit in (("best", best), ("candidate", cand)) if i % 2 else \
                    (("candidate", cand), ("best", best)):
                target_dir = self._checkout(f"slot-{slot}", commit)
                res = run_once(target_dir, self._job(lease, commit, seed, gpu, side, i), self.repo)
                if res.outcome != Outcome.MEASURED or res.metric is None:
                    if side == "best":
                        return {"outcome": "error", "seeds": seeds,
                                "reason": f"the best failed here: {res.reason}"[:1900]}
                    return {"outcome": "crash", "seeds": seeds,
                            "reason": f"{res.outcome.value}: {res.reason}"[:1900]}
                runs[side].append(res.metric)
        return {"outcome": "measured", "candidate_runs": runs["candidate"],
                "best_runs": runs["best"], "seeds": seeds}

    def _job(self, lease: dict, commit: str, seed: int, gpu: str | None, side: str, i: int) -> Job:
        spec = self.spec
        log = self.data / "logs" / f"claim-{lease['claim_id']}-{side}-{i}.log"
        log.unlink(missing_ok=True)
        return Job(
            experiment_id=lease["claim_id"], seq=lease["claim_id"], commit=commit, run=spec.run,
            evaluate=spec.evaluate, metric=spec.metric, budget=spec.budget,
            timeout=spec.hard_timeout, seed=seed,
            env={**spec.env, "AUTORESEARCH_CACHE": str(self.cache)}, locked=self.locked,
            log_path=str(log), log_cap_bytes=int(spec.log_cap_mb * 2**20), gpu=gpu,
            tracked=self.repo.list_files(commit), links=self.repo.links(commit),
            sandbox=True,   # forced: contributed code runs only in the sandbox
            sandbox_writable=list(spec.sandbox_writable),
            sandbox_cache=str(self.data / "sandbox-cache"), network=spec.network,
            hidden=[str(self.data)], artifacts=list(spec.artifacts),
            artifacts_max_bytes=int(spec.artifacts_max_mb * 2**20),
            budget_allowance=spec.budget_allowance,
            training_seconds_metric=spec.training_seconds_metric,
            scratch=str(self.data / "scratch"))
