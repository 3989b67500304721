"""A run request: everything `run`, `start`, `try` and `demo` ask of the loop, typed.

`RunRequest.build(target)` checks every value first (bad input leaves nothing behind: no
ledger, no branch), then builds the loop with its ledger, ratchet, agent, policy and executor.
The CLI only turns its flags into a request (`RunRequest.from_namespace`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .agents import Agent
from .config import PROGRAM_NAME, AgentEntry, Target, check_globs
from .errors import ConfigError
from .globs import matches
from .ledger import Ledger
from .loop import Loop, LoopOptions
from .portfolio import Member, Portfolio, entries_from_flags, parse_recorded
from .strategies import STRATEGIES


@dataclass
class RunRequest:
    tag: str
    agent: str | None = None            # one --agent value (same as agents=[agent])
    agents: list[str] | None = None     # --agent repeated: a portfolio (portfolio.py); None: the
                                        # toml's [[agents]], else the run's recorded agents, else optuna
    policy: str | None = None           # None: the run's recorded policy, else the default
    max_experiments: int | None = None
    max_time: float | None = None
    budget: float | None = None
    max_cost: float | None = None
    prune: bool = False
    workers: int = 1
    gpus: str | None = None             # "0,1,2,3"
    executor: str = "local"
    address: str | None = None
    ahead: int | None = None
    seed: int = 0
    results_format: str = "native"      # results.tsv: native or original (export.py)
    scale: str | None = None            # a [scales] entry; None: the run's recorded one, if any
    strategy: str | None = None         # None: the run's recorded strategy, else the toml's
    org: str | None = None              # a new run's organisation (`compare`, compare.py)

    @classmethod
    def from_namespace(cls, args: Any, tag: str, **overrides: Any) -> RunRequest:
        """The request in parsed flags (argparse or any object with these attributes); the
        fields it lacks keep their defaults, None values too."""
        given = vars(args)
        names = {f.name for f in dataclasses.fields(cls)} - {"tag"}
        values = {k: given[k] for k in names if given.get(k) is not None}
        return cls(tag=tag, **{**values, **overrides})

    def check(self) -> None:
        for flag, value, low in (("--workers", self.workers, 1),
                                 ("--max-experiments", self.max_experiments, 1),
                                 ("--max-time", self.max_time, 0),
                                 ("--budget", self.budget, 0),
                                 ("--max-cost", self.max_cost, 0)):
            if value is not None and (value < low or (low == 0 and value <= 0)):
                raise ConfigError(f"{flag} must be {'at least 1' if low else 'above 0'} "
                                  f"(got {value:g})")
        if self.strategy is not None and self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown --strategy '{self.strategy}' — use "
                              f"{' or '.join(STRATEGIES)}")
        if self.executor not in ("local", "ray"):
            raise ConfigError(f"unknown --executor '{self.executor}' — use local or ray")
        self._flag_entries()

    def _flag_entries(self) -> list[AgentEntry]:
        return entries_from_flags([*(self.agents or []), *([self.agent] if self.agent else [])])

    def build(self, target: Target, *, agent: Agent | None = None, agent_name: str | None = None,
              reporter: Any | None = None) -> Loop:
        """The loop this request describes. `agent` replaces the named one (start, try, tests);
        `agent_name` is what the ledger records for it."""
        from .executors import LocalExecutor
        from .policies import DEFAULT_POLICY, make_policy
        from .ratchet import Ratchet

        self.check()   # flags first: bad input must not leave anything behind
        ratchet = Ratchet(target.root)
        base = ratchet.branch_commit(self.tag) or ratchet.head()
        files = ratchet.list_files(base)
        check_globs(target.spec, target.root, target.config_path, files=list(files))
        for e in ([] if agent is not None or self._flag_entries() else target.spec.agents):
            if e.program and e.program not in files:
                raise ConfigError(f"{target.config_path}: [[agents]] {e.agent} has program = "
                                  f"{e.program!r}, which is not committed in the target — add "
                                  f"and commit it, or remove the key")
        if self.scale:
            target.spec.at_scale(self.scale, target.config_path)   # an unknown name: one error
        ledger = Ledger(target.state_dir / "ledger.db")
        run = ledger.get_run(self.tag)
        if run is not None and run.source:
            raise ConfigError(f"'{self.tag}' is a promotion of run '{run.source}', not a loop — "
                              f"resume it with autoresearch promote --from {run.source} --scale "
                              f"{run.scale}, or give run another --tag")
        scale = self.scale or (run.scale if run else None)
        if run is not None and self.scale and run.scale != self.scale:
            at = f"at scale '{run.scale}'" if run.scale else "without a scale"
            raise ConfigError(f"run '{self.tag}' was made {at}, not at --scale {self.scale} — "
                              f"resume it without --scale, or start a new --tag")
        target = dataclasses.replace(target, spec=target.spec.at_scale(scale, target.config_path))
        policy = make_policy(self.policy or (run.policy if run and run.policy else DEFAULT_POLICY))
        if agent is not None:
            portfolio = Portfolio.single(agent_name or self.agent or (
                run.agent if run and run.agent else "optuna"), agent)
        else:
            portfolio = self._portfolio(target, ratchet, base, run.agent if run else None)
            portfolio.check()   # fail fast: an unreachable endpoint or a rejected key is one line
        name = agent_name or portfolio.name
        gpus = [g.strip() for g in self.gpus.split(",")] if self.gpus else None
        if self.executor == "ray":
            try:
                from .executors.ray_executor import RayExecutor
            except ImportError as e:
                raise ConfigError(f"--executor ray needs Ray: pip install 'autoresearch[ray]' "
                                  f"({e})") from None
            executor = RayExecutor(ratchet, workers=self.workers, address=self.address,
                                   gpus=bool(gpus))
        else:
            executor = LocalExecutor(ratchet, workers=self.workers, gpus=gpus)
        options = LoopOptions(
            tag=self.tag, agent_name=name, max_experiments=self.max_experiments,
            max_time=self.max_time, budget=self.budget, prune=self.prune,
            max_cost=self.max_cost, seed=self.seed, ahead=self.ahead,
            results_format=self.results_format, scale=scale, org=self.org,
            strategy=self.strategy or (run.strategy if run and run.strategy else target.spec.strategy))
        return Loop(target, ledger, ratchet, portfolio, policy, executor, options, reporter)

    def _portfolio(self, target: Target, ratchet: Any, base: str,
                   recorded: str | None) -> Portfolio:
        """The agents: --agent flags, else [[agents]], else the run's recorded ones, else optuna
        (each member's seed is --seed plus its place, so two optuna members differ)."""
        from .agents import make_agent

        spec = target.spec
        entries = (self._flag_entries() or spec.agents or
                   entries_from_flags(parse_recorded(recorded) if recorded else ["optuna"]))
        files = ratchet.list_files(base)
        editable = [p for p in files if matches(p, spec.editable) and not matches(p, spec.locked_globs)]
        texts = ratchet.read_files(base, editable)
        members = [Member(e.agent, make_agent(e.agent, target, files=texts, seed=self.seed + i),
                          e.slots, e.role, e.program or PROGRAM_NAME)
                   for i, e in enumerate(entries)]
        return Portfolio(members)
