"""`optuna`: the offline agent. Tunes the numeric constants of the editable files with TPE.

The tunable constants are the top-level `UPPER_CASE = <int or float literal>` assignments of the
editable Python files, or exactly the names of the toml's `[search]` table when it has one (with
ranges, log scale, integer flags, steps or choices). Values are rewritten in place, literal by
literal, so formatting and comments survive. Optuna runs in ask/tell mode with the baseline
enqueued as its first trial; after a restart the study is rebuilt from the ledger.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from typing import Any

import optuna

from ..config import SearchParam, TargetSpec
from ..errors import ConfigError
from ..experiment import HistoryEntry, Outcome, Proposal, Status
from .base import Agent, AgentContext

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class Constant:
    name: str
    path: str
    value: int | float
    line: int          # 1-based
    col: int           # start column of the literal (including a leading minus)
    end_col: int

    @property
    def is_int(self) -> bool:
        return isinstance(self.value, int)


def _literal(node: ast.AST) -> int | float | None:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float)):
        return -node.operand.value
    return None


def find_constants(path: str, source: str) -> list[Constant]:
    """Top-level UPPER_CASE assignments of int/float literals (single-line ones)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if not (isinstance(target, ast.Name) and target.id.isupper() and target.id[0].isalpha()):
            continue
        lit = _literal(value)
        if lit is None or value.lineno != value.end_lineno or isinstance(lit, bool):
            continue
        found.append(Constant(target.id, path, lit, value.lineno, value.col_offset, value.end_col_offset))
    return found


def default_range(c: Constant) -> SearchParam:
    """A search range around the current value when the toml gives none."""
    v = c.value
    if c.is_int:
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


def format_value(value: Any, was_int: bool) -> str:
    if isinstance(value, bool) or isinstance(value, str):
        return repr(value)
    if was_int or isinstance(value, int):
        return str(int(round(value)))
    if value == 0:
        return "0.0"
    text = f"{value:.4g}"
    if "e" not in text and "." not in text:
        text += ".0"
    return text


def rewrite(source: str, constants: list[Constant], values: dict[str, Any]) -> str:
    lines = source.splitlines(keepends=True)
    for c in sorted(constants, key=lambda c: (c.line, c.col), reverse=True):
        if c.name not in values:
            continue
        line = lines[c.line - 1]
        raw = line.encode("utf-8")  # ast offsets are in bytes
        new = format_value(values[c.name], c.is_int).encode()
        lines[c.line - 1] = (raw[: c.col] + new + raw[c.end_col:]).decode("utf-8")
    return "".join(lines)


class OptunaAgent(Agent):
    name = "optuna"
    concurrent = True

    def __init__(self, spec: TargetSpec, files: dict[str, str], seed: int = 0):
        self.spec = spec
        self.constants: dict[str, Constant] = {}
        for path in sorted(files):
            if not path.endswith(".py"):
                continue
            for c in find_constants(path, files[path]):
                self.constants.setdefault(c.name, c)
        if spec.search:
            missing = [n for n in spec.search if n not in self.constants]
            if missing:
                raise ConfigError(
                    f"autoresearch.toml: [search] names {', '.join(missing)}, which no editable file "
                    f"assigns as a top-level numeric constant — fix the name or the file")
            self.ranges = {n: spec.search[n] for n in spec.search}
        else:
            self.ranges = {n: default_range(c) for n, c in self.constants.items()}
        if not self.ranges:
            raise ConfigError(
                "the optuna agent found no tunable constants: the editable files have no top-level "
                "UPPER_CASE = <number> assignments — add some, add a [search] table, or use another --agent")
        self.distributions = {n: distribution(p) for n, p in self.ranges.items()}
        self.study = optuna.create_study(
            direction=spec.direction,
            sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True,
                                               n_startup_trials=min(10, 2 * len(self.ranges) + 2)))
        self._trials: dict[int, optuna.trial.Trial] = {}   # id(proposal) -> trial
        self._baseline = {n: self.constants[n].value for n in self.ranges
                          if self._in_range(n, self.constants[n].value)}
        self._enqueued = False

    def _in_range(self, name: str, value: Any) -> bool:
        try:
            return self.distributions[name]._contains(self.distributions[name].to_internal_repr(value))
        except Exception:
            return False

    def resume(self, history: list[HistoryEntry]) -> None:
        for h in history:
            # rebases and repeats re-measure an earlier proposal: one trial per proposal
            if not h.params or h.candidate_of is not None or h.status in (
                    Status.PENDING, Status.RUNNING, Status.REPEAT):
                continue
            params = {k: v for k, v in h.params.items() if k in self.distributions
                      and self._in_range(k, v)}
            if len(params) != len(self.distributions):
                continue
            state = (optuna.trial.TrialState.COMPLETE if h.metric is not None and math.isfinite(h.metric)
                     else optuna.trial.TrialState.FAIL)
            self.study.add_trial(optuna.trial.create_trial(
                params=params, distributions=self.distributions, state=state,
                value=h.metric if state == optuna.trial.TrialState.COMPLETE else None))
        self._enqueued = True  # the baseline was measured in the earlier session

    def baseline_params(self) -> dict[str, Any]:
        return {n: self.constants[n].value for n in self.ranges}

    def propose(self, context: AgentContext) -> Proposal:
        if not self._enqueued and len(self._baseline) == len(self.ranges):
            # the baseline's own values as the first trial, so TPE knows where it started
            self.study.enqueue_trial(self._baseline)
            self._enqueued = True
        trial = self.study.ask(self.distributions)
        if trial.params == self._baseline and len(self.study.trials) == 1:
            # that enqueued trial *is* the baseline; the harness measured it already
            self._trials[-1] = trial
            return self._tell_baseline_and_retry(context, trial)
        return self._proposal(context, trial)

    def _tell_baseline_and_retry(self, context: AgentContext, trial: optuna.trial.Trial) -> Proposal:
        base = next((h for h in context.history if h.seq == 1 and h.metric is not None), None)
        if base is not None:
            self.study.tell(trial, base.metric)
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return self._proposal(context, self.study.ask(self.distributions))

    def _proposal(self, context: AgentContext, trial: optuna.trial.Trial) -> Proposal:
        values = trial.params
        current = {}
        by_file: dict[str, list[Constant]] = {}
        for name in values:
            c = self.constants[name]
            by_file.setdefault(c.path, []).append(c)
        files = {}
        for path, consts in by_file.items():
            source = context.files.get(path)
            if source is None:
                continue
            # positions may have moved since the baseline (another kept change): re-find them
            fresh = {c.name: c for c in find_constants(path, source)}
            live = [fresh[c.name] for c in consts if c.name in fresh]
            current.update({c.name: c.value for c in live})
            files[path] = rewrite(source, live, values)
        changed = [f"{n}={format_value(values[n], self.constants[n].is_int)}"
                   for n in values if n in current and format_value(values[n], self.constants[n].is_int)
                   != format_value(current[n], self.constants[n].is_int)]
        description = "set " + ", ".join(changed) if changed else "re-sample the current values"
        proposal = Proposal(description=description, files=files, params=dict(values))
        self._trials[id(proposal)] = trial
        return proposal

    def observe(self, proposal: Proposal, outcome: Outcome) -> None:
        trial = self._trials.pop(id(proposal), None)
        if trial is None:
            return
        if outcome.metric is not None and math.isfinite(outcome.metric):
            self.study.tell(trial, outcome.metric)
        elif outcome.status == Status.PRUNED:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
