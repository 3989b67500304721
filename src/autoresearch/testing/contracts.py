"""Contract checks for plug-ins: run them against your own agent, policy or executor.

One check per plug-in interface. Each drives the implementation through its whole documented
surface and raises ContractViolation (an AssertionError, so pytest shows it as a failure) naming
the rule that was broken. The built-in agents, policies and executors are held to the same
checks in tests/test_contracts.py.

    from autoresearch.testing.contracts import check_agent, check_executor, check_policy

    def test_my_agent_keeps_the_agent_contract():
        check_agent(lambda: MyAgent(...), lambda: AgentContext(...))

check_agent(agent_factory, context_factory)       agents/base.py
    - propose returns a Proposal: a non-empty one-line description, and new files (only paths
      the context says are editable; None deletes) or a non-empty patch; the context it is
      given is left as it was
    - observe accepts an Outcome of every Status, and a duplicate (experiment_id None,
      duplicate_of set), without raising
    - resume accepts an empty history and a non-empty one, and the agent proposes after either
    - close may be called twice, also on an agent that never proposed
    - an agent with `concurrent = True` is asked for two proposals before either is observed,
      and hears the outcomes in the other order
    The factories are called several times; each call returns a fresh agent / context. The
    agent must be able to make AGENT_PROPOSALS proposals in all (a script needs that many lines;
    after a resume from the first agent's history, one more).

check_policy(policy)                              policies/base.py
    `policy` is a Policy or a zero-argument factory of one (fresh state per judgement).
    - baseline_runs(settings) is an int >= 1
    - for any stream of finite values and both directions, a judgement ends (KEEP or DISCARD)
      without the candidate being measured more than settings.max_runs times, and "more"
      always names whom to rerun
    - KEEP only when the candidate's mean is not worse than the best's (as estimate() reports
      it), with equal code size; a clearly better candidate is kept, a clearly worse one is
      discarded
    - direction is honoured both ways: the maximize decisions on -x are the minimize ones on x
    - every decision has a reason and JSON-serialisable evidence
    - estimate(incumbent) returns an Estimate with a finite mean within the incumbent's values

check_executor(executor_factory, target)          executors/base.py
    `target` is a Target or the directory of one inside a git repository. The check commits a
    small probe script on top of HEAD (a commit object only: no branch, checkout or working
    tree is touched) and submits Jobs that run it, so the target's own commands are not run.
    - submit(job, slot=...) returns a Future of an EvalResult
    - a job that prints its metric: outcome MEASURED, the metric and the other
      printed metrics, the log at job.log_path
    - a job that exits non-zero: outcome CRASH, no metric, its exit code
    - a slow job, then interrupt(): outcome INTERRUPTED within INTERRUPT_WITHIN seconds, and its
      process is gone
    - `slots` jobs submitted at once all run at the same time (they meet at a barrier in a
      temporary directory, so the workers must share this machine's file system)
    The factory is called once per case and must return a fresh executor with at least one
    slot; each is prepared and shut down by the check.
"""

from __future__ import annotations

import copy
import json
import math
import random
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..agents.base import Agent, AgentContext, AgentError, ProposalsExhausted
from ..config import PolicySettings, Target
from ..evaluation import EvalResult, Job
from ..evaluation import Outcome as EvalOutcome
from ..executors.base import Executor
from ..experiment import HistoryEntry, Outcome, Proposal, Status
from ..policies.base import Decision, Estimate, Policy, PolicyContext, Sample, Verdict

__all__ = ["AGENT_PROPOSALS", "INTERRUPT_WITHIN", "ContractViolation", "check_agent",
           "check_executor", "check_policy"]

#: proposals check_agent asks for in all (two agents: 2 + one per Status + 1 duplicate, then 1
#: after an empty resume and 1 after a resume from the first agent's history)
AGENT_PROPOSALS = 2 + len(Status) + 1 + 2
INTERRUPT_WITHIN = 10.0     # seconds from interrupt() to an INTERRUPTED result
RESULT_WITHIN = 120.0       # seconds a probe job may take to come back (cold Ray workers)


class ContractViolation(AssertionError):
    """A plug-in broke a rule of its interface; the message names the rule."""


def _require(ok: bool, rule: str) -> None:
    if not ok:
        raise ContractViolation(rule)


# == agents ========================================================================================
_MEASURED = (Status.RUNNING, Status.PENDING, Status.KEEP, Status.DISCARD, Status.REPEAT,
             Status.REBASED)


def _outcome(status: Status, n: int) -> Outcome:
    metric = 1.0 - 0.01 * n if status in _MEASURED else None
    return Outcome(experiment_id=100 + n, status=status, metric=metric, reason=f"contract: {status}")


def _propose(agent: Agent, context: AgentContext, what: str) -> Proposal:
    before = (copy.deepcopy(context.files), list(context.history))
    try:
        p = agent.propose(context)
    except (AgentError, ProposalsExhausted) as e:
        raise ContractViolation(f"{agent.name}: propose ({what}) raised {type(e).__name__}: {e} "
                                f"— the factories must give an agent able to make "
                                f"{AGENT_PROPOSALS} proposals") from e
    _require(isinstance(p, Proposal),
             f"{agent.name}: propose ({what}) returned {type(p).__name__}, not a Proposal")
    d = p.description
    _require(isinstance(d, str) and d.strip() != "" and len(d.strip().splitlines()) == 1
             and "\n" not in d and "\r" not in d,
             f"{agent.name}: propose ({what}) gave description {d!r}; it must be one non-empty line")
    _require(bool(p.files) or bool(p.patch),
             f"{agent.name}: propose ({what}) gave neither files nor a patch")
    if p.patch is not None:
        _require(isinstance(p.patch, str), f"{agent.name}: the patch must be a str")
    for path, text in (p.files or {}).items():
        _require(isinstance(path, str) and context.editable(path),
                 f"{agent.name}: propose ({what}) wrote {path!r}, which the context says is not "
                 f"editable")
        _require(text is None or isinstance(text, str),
                 f"{agent.name}: new contents of {path} must be a str (or None to delete it)")
    _require((context.files, list(context.history)) == before,
             f"{agent.name}: propose ({what}) changed the context it was given")
    return p


def _observe(agent: Agent, p: Proposal, outcome: Outcome, what: str) -> None:
    try:
        agent.observe(p, outcome)
    except Exception as e:
        raise ContractViolation(f"{agent.name}: observe raised {type(e).__name__}: {e} for "
                                f"{what}") from e


def _close_twice(agent: Agent, what: str) -> None:
    for n in (1, 2):
        try:
            agent.close()
        except Exception as e:
            raise ContractViolation(f"{agent.name}: close #{n} ({what}) raised "
                                    f"{type(e).__name__}: {e}; close must be idempotent") from e


def check_agent(agent_factory: Callable[[], Agent],
                context_factory: Callable[[], AgentContext]) -> None:
    """Check an Agent against the interface of agents/base.py (see the module docstring)."""
    seq = iter(range(2, 10_000))

    def ctx(history: list[HistoryEntry] | None = None) -> AgentContext:
        c = replace(context_factory(), experiment_seq=next(seq))
        return c if history is None else replace(c, history=list(history))

    agent = agent_factory()
    _require(isinstance(agent, Agent), f"the factory returned {type(agent).__name__}, not an Agent")
    _require(isinstance(agent.name, str) and agent.name != "", "an agent has a non-empty name")
    proposals: list[Proposal] = []
    try:
        first = _propose(agent, ctx(), "first")
        proposals.append(first)
        if agent.concurrent:
            second = _propose(agent, ctx(), "second, before the first was observed")
            proposals.append(second)
            _observe(agent, second, _outcome(Status.KEEP, 1), "the later proposal first")
            _observe(agent, first, _outcome(Status.DISCARD, 0), "the earlier proposal last")
        else:
            _observe(agent, first, _outcome(Status.DISCARD, 0), "the first proposal")
            second = _propose(agent, ctx(), "second")
            proposals.append(second)
            _observe(agent, second, _outcome(Status.KEEP, 1), "the second proposal")
        for n, status in enumerate(Status, start=2):
            p = _propose(agent, ctx(), f"to be told {status}")
            proposals.append(p)
            _observe(agent, p, _outcome(status, n), f"an outcome of status {status}")
        p = _propose(agent, ctx(), "to be told it is a duplicate")
        proposals.append(p)
        _observe(agent, p, Outcome(None, Status.DISCARD, 0.99, reason="duplicate", duplicate_of=3),
                 "a duplicate of an earlier experiment")
    finally:
        _close_twice(agent, "after proposing")

    fresh = agent_factory()
    _close_twice(fresh, "before any proposal")

    history = [HistoryEntry(id=1, seq=1, status=Status.KEEP, metric=1.0, description="baseline",
                            metrics={"other": 2.0}, commit="1" * 40)]
    for n, p in enumerate(proposals):
        status = list(Status)[n % len(Status)]
        history.append(HistoryEntry(
            id=n + 2, seq=n + 2, status=status, description=p.description,
            metric=1.0 - 0.01 * n if status in _MEASURED else None, params=p.params,
            commit=f"{n + 2:040x}", parent="1" * 40,
            candidate_of=2 if status == Status.REPEAT else None))
    for what, hist in (("an empty history", []), ("a history of every status", history)):
        a = agent_factory()
        try:
            try:
                a.resume(list(hist))
            except Exception as e:
                raise ContractViolation(f"{a.name}: resume raised {type(e).__name__}: {e} for "
                                        f"{what}") from e
            p = _propose(a, ctx(hist), f"after a resume from {what}")
            _observe(a, p, _outcome(Status.DISCARD, 50), f"a proposal after a resume from {what}")
        finally:
            _close_twice(a, f"after a resume from {what}")


# == policies ======================================================================================
def _settings_variants() -> list[PolicySettings]:
    return [PolicySettings(),
            PolicySettings(max_runs=1),
            PolicySettings(baseline_runs=1, max_runs=3, confirm_runs=5),
            PolicySettings(refresh_runs=0, noise_floor=0.1, min_effect=0.05),
            PolicySettings(baseline_runs=5, max_runs=10, alpha=0.01, min_effect_sigmas=0.5)]


def _streams(rng: random.Random) -> list[tuple[str, Callable[[], float], Callable[[], float]]]:
    """(name, draw a candidate run, draw an incumbent run), for minimize; lower is better."""
    def normal(mu: float, sd: float) -> Callable[[], float]:
        return lambda: rng.gauss(mu, sd)

    def const(x: float) -> Callable[[], float]:
        return lambda: x

    def wild() -> float:
        return rng.choice([-1e6, 1e6, 0.0, 1e-9, 3.0]) + rng.random()

    return [("equal noisy", normal(1.0, 0.1), normal(1.0, 0.1)),
            ("slightly better", normal(0.97, 0.1), normal(1.0, 0.1)),
            ("slightly worse", normal(1.03, 0.1), normal(1.0, 0.1)),
            ("clearly better", normal(0.0, 0.01), normal(1.0, 0.01)),
            ("clearly worse", normal(2.0, 0.01), normal(1.0, 0.01)),
            ("identical constants", const(1.0), const(1.0)),
            ("better constant", const(0.5), const(1.0)),
            ("worse constant", const(1.5), const(1.0)),
            ("tiny differences", normal(1.0 - 1e-12, 1e-12), normal(1.0, 1e-12)),
            ("wild", wild, wild),
            ("noisy candidate, exact best", normal(1.0, 0.5), const(1.0))]


def _judge(policy: Policy, s: PolicySettings, direction: str, draw_c: Callable[[], float],
           draw_i: Callable[[], float], *, selection: int, where: str
           ) -> tuple[Decision, Sample, Sample, PolicyContext, list[str]]:
    sign = 1.0 if direction == "minimize" else -1.0
    n_inc = policy.baseline_runs(s) + selection
    inc = Sample([sign * draw_i() for _ in range(n_inc)], lines=10, selection=selection)
    cand = Sample([sign * draw_c()], lines=10)
    limit = 2 * s.max_runs + s.refresh_runs + n_inc + 2
    trail: list[str] = []
    for _ in range(limit):
        groups = [list(inc.values)] if inc.n >= 2 else []
        ctx = PolicyContext(direction=direction, settings=s, replicate_groups=groups)  # type: ignore[arg-type]
        d = policy.decide(Sample(list(cand.values), cand.lines, cand.selection),
                          Sample(list(inc.values), inc.lines, inc.selection), ctx)
        _require(isinstance(d, Decision) and isinstance(d.verdict, Verdict),
                 f"{policy.name}: decide returned {d!r}, not a Decision ({where})")
        _require(isinstance(d.reason, str) and d.reason.strip() != "",
                 f"{policy.name}: a decision needs a reason ({where})")
        try:
            json.dumps(d.evidence)
        except (TypeError, ValueError) as e:
            raise ContractViolation(f"{policy.name}: evidence is not JSON-serialisable ({e}): "
                                    f"{d.evidence!r} ({where})") from e
        _require(isinstance(d.evidence, dict), f"{policy.name}: evidence must be a dict ({where})")
        trail.append(f"{d.verdict.value}:{d.rerun}")
        if d.verdict is not Verdict.MORE:
            return d, cand, inc, ctx, trail
        _require(d.rerun in ("candidate", "incumbent"),
                 f"{policy.name}: 'more' must say whom to rerun, got {d.rerun!r} ({where})")
        if d.rerun == "candidate":
            _require(cand.n < s.max_runs,
                     f"{policy.name}: asked for run {cand.n + 1} of a candidate with "
                     f"max_runs={s.max_runs} ({where})")
            cand.values.append(sign * draw_c())
        else:
            inc.values.append(sign * draw_i())
    raise ContractViolation(f"{policy.name}: no decision after {limit} calls ({where}): "
                            f"{' '.join(trail)}")


def _estimate_mean(policy: Policy, inc: Sample, ctx: PolicyContext, where: str) -> float:
    est = policy.estimate(Sample(list(inc.values), inc.lines, inc.selection), ctx)
    _require(isinstance(est, Estimate),
             f"{policy.name}: estimate must return an Estimate, got {est!r} ({where})")
    m = est.mean
    _require(isinstance(m, (int, float)) and math.isfinite(m)
             and min(inc.values) - 1e-9 * (1 + abs(m)) <= m <= max(inc.values) + 1e-9 * (1 + abs(m)),
             f"{policy.name}: estimate's mean {m!r} is not a mean of the runs {inc.values} "
             f"({where})")
    try:
        json.dumps(est.to_dict())
    except (TypeError, ValueError) as e:
        raise ContractViolation(f"{policy.name}: estimate is not JSON-serialisable ({e})") from e
    return float(m)


def check_policy(policy: Policy | Callable[[], Policy], *, seed: int = 0) -> None:
    """Check a Policy against the interface of policies/base.py (see the module docstring)."""
    make: Callable[[], Policy] = (lambda: policy) if isinstance(policy, Policy) else policy
    name = make().name
    for s in _settings_variants():
        b = make().baseline_runs(s)
        _require(isinstance(b, int) and b >= 1,
                 f"{name}: baseline_runs must be an int >= 1, got {b!r} for {s!r}")

    for k, s in enumerate(_settings_variants()):
        for stream in range(len(_streams(random.Random(0)))):
            for selection in (0, 2):
                trails = {}
                for direction in ("minimize", "maximize"):
                    # the same draws both ways, mirrored: the maximize run sees -x
                    rng = random.Random(seed * 1_000_003 + k * 1009 + stream * 31 + selection)
                    sname, draw_c, draw_i = _streams(rng)[stream]
                    where = (f"{sname}, {direction}, settings #{k}, {selection} selection runs "
                             f"of the best")
                    d, cand, inc, ctx, trail = _judge(make(), s, direction, draw_c, draw_i,
                                                      selection=selection, where=where)
                    trails[direction] = trail
                    best = _estimate_mean(make(), inc, ctx, where)
                    if d.verdict is Verdict.KEEP:
                        worse = cand.mean > best if direction == "minimize" else cand.mean < best
                        _require(not worse, f"{name}: kept a candidate whose mean {cand.mean!r} is "
                                            f"worse than the best's {best!r} ({where})")
                    if s == PolicySettings() and selection == 0:
                        if sname.startswith("clearly better") or sname == "better constant":
                            _require(d.verdict is Verdict.KEEP,
                                     f"{name}: discarded a clearly better candidate ({where})")
                        if sname.startswith("clearly worse") or sname == "worse constant":
                            _require(d.verdict is Verdict.DISCARD,
                                     f"{name}: kept a clearly worse candidate ({where})")
                _require(trails["minimize"] == trails["maximize"],
                         f"{name}: decisions differ between minimize on x and maximize on -x "
                         f"({sname}, settings #{k}): {trails['minimize']} vs {trails['maximize']}")

    for values, selection in (([1.0], 0), ([1.0, 2.0, 3.0], 0), ([0.5, 1.0, 2.0, 3.0], 1)):
        inc = Sample(values, lines=1, selection=selection)
        for direction in ("minimize", "maximize"):
            ctx = PolicyContext(direction=direction, settings=PolicySettings(),  # type: ignore[arg-type]
                                replicate_groups=[values] if len(values) > 1 else [])
            _estimate_mean(make(), inc, ctx, f"estimate of {values}, {direction}")


# == executors =====================================================================================
PROBE = "_autoresearch_contract_probe.py"
PROBE_SOURCE = '''"""A probe for autoresearch.testing.contracts.check_executor."""
import os
import sys
import time
from pathlib import Path

mode = sys.argv[1]
if mode == "measure":
    print("contract_metric: 1.25")
    print("contract_other: 7")
elif mode == "crash":
    print("the probe fails on purpose", flush=True)
    sys.exit(3)
elif mode == "slow":
    Path(sys.argv[2]).write_text(str(os.getpid()))
    print("sleeping", flush=True)
    time.sleep(float(sys.argv[3]))
    print("contract_metric: 1.0")
elif mode == "barrier":
    here, want = Path(sys.argv[2]), int(sys.argv[3])
    (here / f"{os.getpid()}.started").write_text("")
    deadline = time.time() + float(sys.argv[4])
    while len(list(here.glob("*.started"))) < want and time.time() < deadline:
        time.sleep(0.05)
    print(f"contract_metric: {len(list(here.glob('*.started')))}")
'''


def _probe_commit(target: Target | Path | str) -> str:
    from ..ratchet import Ratchet

    root = target.root if isinstance(target, Target) else Path(target)
    ratchet = Ratchet(root)
    return ratchet.make_commit(ratchet.head(), "autoresearch contract probe",
                               files={PROBE: PROBE_SOURCE}).sha


def _job(commit: str, seq: int, command: str, logs: Path, timeout: float = 120) -> Job:
    return Job(experiment_id=seq, seq=seq, commit=commit, run=f"python {PROBE} {command}",
               evaluate=None, metric="contract_metric", budget=1, timeout=timeout, seed=0,
               log_path=str(logs / f"{seq:05d}.log"))


def _result(fut: Any, within: float, what: str) -> EvalResult:
    _require(isinstance(fut, Future), f"submit ({what}) returned {type(fut).__name__}, not a Future")
    try:
        res = fut.result(timeout=within)
    except TimeoutError as e:
        raise ContractViolation(f"no result for {what} within {within:g} s") from e
    except Exception as e:
        raise ContractViolation(f"the future for {what} raised {type(e).__name__}: {e}; "
                                f"outcomes must come back as an EvalResult") from e
    _require(isinstance(res, EvalResult), f"{what}: the future gave {type(res).__name__}, "
                                          f"not an EvalResult")
    return res


def _with(executor_factory: Callable[[], Executor], body: Callable[[Executor], None]) -> None:
    ex = executor_factory()
    _require(isinstance(ex, Executor), f"the factory returned {type(ex).__name__}, not an Executor")
    _require(isinstance(ex.slots, int) and ex.slots >= 1, f"slots must be an int >= 1: {ex.slots!r}")
    try:
        ex.prepare()
        body(ex)
    finally:
        ex.shutdown()


def _gone(pid: int, within: float) -> bool:
    import psutil

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _kill(pid: int) -> None:
    import psutil

    try:
        psutil.Process(pid).kill()
    except psutil.Error:
        pass


def check_executor(executor_factory: Callable[[], Executor], target: Target | Path | str) -> None:
    """Check an Executor against the interface of executors/base.py (see the module docstring)."""
    commit = _probe_commit(target)
    with tempfile.TemporaryDirectory(prefix="ar-contract-") as tmp:
        work = Path(tmp)
        logs = work / "logs"

        def measured(ex: Executor) -> None:
            info = ex.slot_info(0)
            _require(info.slot == 0, f"slot_info(0) describes slot {info.slot}")
            job = _job(commit, 1, "measure", logs)
            res = _result(ex.submit(job, slot=0), RESULT_WITHIN, "a measured job")
            _require(res.outcome == EvalOutcome.MEASURED and res.metric == 1.25,
                     f"a job that printed its metric came back {res.outcome} with metric "
                     f"{res.metric!r} ({res.reason}); expected measured with 1.25")
            _require(res.metrics.get("contract_other") == 7.0,
                     f"the other printed metrics are missing: {res.metrics}")
            _require(res.log_path == job.log_path and Path(job.log_path).is_file()
                     and "contract_metric" in Path(job.log_path).read_text(errors="replace"),
                     f"the command's output is not in the log at job.log_path {job.log_path} "
                     f"(result's log_path: {res.log_path})")

        def crashing(ex: Executor) -> None:
            res = _result(ex.submit(_job(commit, 2, "crash", logs), slot=0), RESULT_WITHIN,
                          "a crashing job")
            _require(res.outcome == EvalOutcome.CRASH and res.metric is None,
                     f"a job that exited 3 came back {res.outcome} ({res.reason}); expected crash")
            _require(res.exit_code == 3, f"a job that exited 3 reports exit code {res.exit_code}")

        def interrupted(ex: Executor) -> None:
            started = work / "slow.pid"
            fut = ex.submit(_job(commit, 3, f"slow {started} 60", logs), slot=0)
            deadline = time.monotonic() + RESULT_WITHIN
            while not (started.exists() and started.read_text()) and time.monotonic() < deadline:
                if fut.done():
                    res = fut.result()
                    raise ContractViolation(f"the slow job ended before it started: {res.outcome} "
                                            f"({res.reason})")
                time.sleep(0.05)
            _require(started.exists(), f"the slow job did not start within {RESULT_WITHIN:g} s")
            pid = int(started.read_text())
            t0 = time.monotonic()
            ex.interrupt()
            try:
                res = _result(fut, INTERRUPT_WITHIN, "an interrupted job")
            except ContractViolation:
                _kill(pid)   # the executor did not: do not leave the probe behind
                raise
            took = time.monotonic() - t0
            _require(res.outcome == EvalOutcome.INTERRUPTED,
                     f"an interrupted job came back {res.outcome} ({res.reason})")
            _require(took <= INTERRUPT_WITHIN,
                     f"interrupt() took {took:.1f} s (at most {INTERRUPT_WITHIN:g})")
            _require(_gone(pid, max(1.0, INTERRUPT_WITHIN - took)),
                     f"the interrupted job's process {pid} is still running")

        def concurrent(ex: Executor) -> None:
            meet = work / "barrier"
            meet.mkdir()
            wait = 30.0
            futs = [ex.submit(_job(commit, 10 + s, f"barrier {meet} {ex.slots} {wait:g}", logs),
                              slot=s) for s in range(ex.slots)]
            for s, fut in enumerate(futs):
                res = _result(fut, RESULT_WITHIN + wait, f"job {s + 1} of {ex.slots} at once")
                _require(res.outcome == EvalOutcome.MEASURED and res.metric == ex.slots,
                         f"{ex.slots} slots, but the job in slot {s} saw {res.metric} running at "
                         f"once ({res.outcome}: {res.reason})")

        for case in (measured, crashing, interrupted, concurrent):
            _with(executor_factory, case)
