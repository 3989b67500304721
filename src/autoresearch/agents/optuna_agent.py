"""`optuna`: the offline agent. Tunes parameters of any editable text file with TPE.

What it tunes (see `params.py` for the locators):
- without a `[search]` table: the numeric top-level `UPPER_CASE` and `_PRIVATE_CASE` constants of
  the editable Python files, each in a range around its current value;
- with one: exactly its entries, each a Python name (a constant, or a keyword default / class
  attribute by dotted path) or a span found by a regex, a `# ar: NAME` marker or a key path in a
  TOML, YAML or JSON file. Choices may be alternative texts for a span.

Values are rewritten in place, span by span, so formatting and comments survive. Optuna runs in
ask/tell mode with the baseline enqueued as its first trial.

Under the tree strategy (strategies.py) the operator decides what is sampled: `draft` (and the
ratchet, which names no operator) samples every parameter with TPE; `improve` keeps the parent
node's values, read from its files, and resamples one parameter (two, one time in three, when
there are several), chosen at random; `debug` resamples the values in which the crashed node
differs from the best (one at random when it differs in none). The kept values are fixed in the
trial (Optuna's `enqueue_trial`), so TPE samples the rest knowing every earlier result.

Failures are failures: a crash, timeout, invalid or agent-error outcome is told as a FAILED trial,
a pruned one as PRUNED, and a measured one that breaks a `constraints` entry is told with its
constraint values (Optuna's `set_constraint`), so TPE ranks it below every feasible trial. Nothing
that failed is ever told as a success. After a restart the study is rebuilt from the ledger with
the same rule, from the recorded metrics, so the agent's view is the same as before the restart.
"""

from __future__ import annotations

import math
import random
import threading
import warnings
from typing import Any

import optuna

from ..config import Constraint, SearchParam, TargetSpec
from ..errors import ConfigError
from ..experiment import HistoryEntry, Outcome, Proposal, Status
from .base import Agent, AgentContext, AgentError
from .params import (
    Constant,
    LocateError,
    Param,
    auto_params,
    find_constants,
    format_number,
    resolve,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

__all__ = ["OptunaAgent", "constraint_values", "default_range", "distribution", "find_constants"]

def default_range(c: Constant | int | float) -> SearchParam:
    """A search range around the current value when the toml gives none."""
    v = c.value if isinstance(c, Constant) else c
    if isinstance(v, int):
        if v <= 0:
            return SearchParam(low=0, high=max(8, abs(v) * 4), **{"int": True})
        low, high = max(1, v // 4), max(v * 4, v + 4)
        return SearchParam(low=low, high=high, log=high / low >= 8, **{"int": True})
    if 0 < v < 1:
        # fractions (momentum, dropout, betas) lose meaning at 1; learning rates stay far below it
        # (and a value already above 0.99, such as beta2 = 0.999, must stay inside its range)
        return SearchParam(low=v / 10, high=max(min(v * 10, 0.99), (1 + v) / 2), log=True)
    if v > 0:
        return SearchParam(low=v / 10, high=v * 10, log=True)
    if v < 0:
        return SearchParam(low=v * 10, high=v / 10)
    return SearchParam(low=0.0, high=1.0)


def distribution(p: SearchParam) -> optuna.distributions.BaseDistribution:
    if p.choices is not None:
        return optuna.distributions.CategoricalDistribution(p.choices)
    if p.int_:
        step = int(p.step) if p.step and not p.log else 1
        return optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log, step=step)
    return optuna.distributions.FloatDistribution(p.low, p.high, log=p.log,
                                                  step=None if p.log else p.step)


def constraint_values(constraints: list[Constraint], metrics: dict[str, float]) -> dict[str, float]:
    """Optuna's convention: <= 0 is feasible; the size of a violation when positive.

    A metric that was not recorded violates its constraint (by 1, as the loop discards it).
    """
    out: dict[str, float] = {}
    for c in constraints:
        v = metrics.get(c.metric)
        if v is None or not math.isfinite(v):
            out[str(c)] = 1.0
            continue
        if c.op in ("<=", "<"):
            gap = v - c.bound
        elif c.op in (">=", ">"):
            gap = c.bound - v
        elif c.op == "==":
            gap = abs(v - c.bound)
        else:
            gap = -1.0 if v != c.bound else 1.0
        if c.check({c.metric: v}) is not None:
            gap = max(gap, 1e-12)       # strict operators at the bound, == off by rounding
        else:
            gap = min(gap, 0.0)
        out[str(c)] = gap
    return out


def _short(value: Any) -> str:
    if isinstance(value, str):
        one = " ".join(value.split())
        return repr(one if len(one) <= 40 else one[:37] + "...")
    return format_number(value, False)


class OptunaAgent(Agent):
    name = "optuna"
    concurrent = True

    def __init__(self, spec: TargetSpec, files: dict[str, str], seed: int = 0):
        self.spec = spec
        self.constraints = spec.parsed_constraints
        if spec.search:
            self.params: dict[str, Param] = {n: resolve(n, e, files) for n, e in spec.search.items()}
            self.ranges = {n: (e if e.choices is not None or e.low is not None
                               else self._default(n)) for n, e in spec.search.items()}
        else:
            self.params = auto_params(files)
            self.ranges = {n: self._default(n) for n in self.params}
        if not self.ranges:
            raise ConfigError(
                "the optuna agent found no tunable constants: the editable files have no top-level "
                "UPPER_CASE = <number> assignments — add some, add a [search] table with locators "
                "(regex, marker or key; see the README), or use another --agent")
        self.distributions = {n: distribution(p) for n, p in self.ranges.items()}
        self.study = optuna.create_study(
            direction=spec.direction,
            sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True,
                                               n_startup_trials=min(10, 2 * len(self.ranges) + 2)))
        self._trials: dict[int, optuna.trial.Trial] = {}   # id(proposal) -> trial
        self._rng = random.Random(seed)       # which parameters an improve resamples
        self._lock = threading.Lock()         # an enqueued trial is the next ask's, no other's
        self._baseline = {n: p.value for n, p in self.params.items()
                          if self._in_range(n, p.value)}
        self._enqueued = False

    def _default(self, name: str) -> SearchParam:
        value = self.params[name].value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"autoresearch.toml: [search] {name}: its value is {value!r}, not a "
                              f"number — give choices = [...]")
        return default_range(value)

    def _in_range(self, name: str, value: Any) -> bool:
        try:
            return self.distributions[name]._contains(self.distributions[name].to_internal_repr(value))
        except Exception:
            return False

    # -- telling ---------------------------------------------------------------------------------
    def _verdict(self, status: Status, metric: float | None, metrics: dict[str, float]
                 ) -> tuple[optuna.trial.TrialState, float | None, dict[str, float]]:
        """How an outcome is told to TPE: failures fail, constraint breaches are infeasible."""
        if status == Status.PRUNED:
            return optuna.trial.TrialState.PRUNED, None, {}
        if status.failed or metric is None or not math.isfinite(metric):
            return optuna.trial.TrialState.FAIL, None, {}
        cons = constraint_values(self.constraints, metrics) if self.constraints else {}
        return optuna.trial.TrialState.COMPLETE, metric, cons

    def _tell(self, trial: optuna.trial.Trial, status: Status, metric: float | None,
              metrics: dict[str, float]) -> None:
        state, value, cons = self._verdict(status, metric, metrics)
        for key, v in cons.items():
            trial.set_constraint(key, v)
        if state == optuna.trial.TrialState.COMPLETE:
            self.study.tell(trial, value)
        else:
            self.study.tell(trial, state=state)

    def resume(self, history: list[HistoryEntry]) -> None:
        for h in history:
            # rebases and repeats re-measure an earlier proposal: one trial per proposal; a
            # near-duplicate was never measured (live, it was told its twin's value)
            if not h.params or h.candidate_of is not None or h.status in (
                    Status.PENDING, Status.RUNNING, Status.REPEAT, Status.INTERRUPTED,
                    Status.DUPLICATE):
                continue
            params = {k: v for k, v in h.params.items() if k in self.distributions
                      and self._in_range(k, v)}
            if len(params) != len(self.distributions):
                continue
            state, value, cons = self._verdict(h.status, h.metric, h.metrics)
            self.study.add_trial(optuna.trial.create_trial(
                params=params, distributions=self.distributions, state=state, value=value,
                constraints=cons or None))
        self._enqueued = True  # the baseline was measured in the earlier session

    def baseline_params(self) -> dict[str, Any]:
        return {n: p.value for n, p in self.params.items() if n in self.ranges}

    # -- asking ----------------------------------------------------------------------------------
    def propose(self, context: AgentContext) -> Proposal:
        with self._lock:
            if not self._enqueued and len(self._baseline) == len(self.ranges):
                # the baseline's own values as the first trial, so TPE knows where it started
                self.study.enqueue_trial(self._baseline)
                self._enqueued = True
                trial = self.study.ask(self.distributions)
                if not (trial.params == self._baseline and len(self.study.trials) == 1):
                    return self._proposal(context, trial)
                # that enqueued trial *is* the baseline; the harness measured it already
                self._tell_baseline(context, trial)
            fixed = self._fixed(context)
            if fixed:
                self.study.enqueue_trial(fixed)
            return self._proposal(context, self.study.ask(self.distributions))

    def _tell_baseline(self, context: AgentContext, trial: optuna.trial.Trial) -> None:
        base = next((h for h in context.history if h.seq == 1), None)
        if base is not None and base.metric is not None:
            self._tell(trial, base.status, base.metric, base.metrics)
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def _fixed(self, context: AgentContext) -> dict[str, Any]:
        """The parent node's values that a tree search's improve or debug keeps (none for a
        draft or the ratchet)."""
        if context.operator not in ("improve", "debug") or context.parent is None:
            return {}
        values: dict[str, Any] = {}
        for name, param in self.params.items():
            source = context.files.get(param.locator.path)
            if name not in self.distributions or source is None:
                continue
            try:
                value = param.locator.read(source)
            except LocateError:
                continue
            if self._in_range(name, value):
                values[name] = value
        names = sorted(self.distributions)
        best = context.best.params if context.best is not None and context.best.params else {}
        free = [n for n in names if context.operator == "debug" and n in values and n in best
                and values[n] != best[n]]
        if not free:
            k = 2 if len(names) > 2 and self._rng.random() < 1 / 3 else 1
            free = self._rng.sample(names, k)
        return {n: v for n, v in values.items() if n not in free}

    def _proposal(self, context: AgentContext, trial: optuna.trial.Trial) -> Proposal:
        values = trial.params
        files: dict[str, str] = {}
        changed = []
        for name, value in values.items():
            loc = self.params[name].locator
            source = files.get(loc.path, context.files.get(loc.path))
            if source is None:
                continue
            try:
                before = loc.read(source)
                files[loc.path] = loc.write(source, value)
            except LocateError as e:
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise AgentError(f"[search] {name}: {e}") from None
            if _short(before) != _short(value if not loc.is_int or isinstance(value, str)
                                        else int(round(value))):
                changed.append(f"{name}={_short(value)}")
        files = {p: s for p, s in files.items() if s != context.files.get(p)}
        description = "set " + ", ".join(changed) if changed else "re-sample the current values"
        proposal = Proposal(description=description, files=files, params=dict(values))
        self._trials[id(proposal)] = trial
        return proposal

    def observe(self, proposal: Proposal, outcome: Outcome) -> None:
        trial = self._trials.pop(id(proposal), None)
        if trial is None:
            return
        self._tell(trial, outcome.status, outcome.metric, outcome.metrics)
