"""The optuna agent: finding constants, rewriting them in place, search ranges, resuming."""

from __future__ import annotations

import ast

import optuna
import pytest

from autoresearch.agents.base import AgentContext
from autoresearch.agents.optuna_agent import OptunaAgent, default_range, find_constants
from autoresearch.agents.params import PyName
from autoresearch.config import TargetSpec
from autoresearch.errors import ConfigError
from autoresearch.experiment import HistoryEntry, Outcome, Status

SOURCE = '''"""A training script."""
import os

LR = 3e-4  # learning rate (keep this comment)
N_LAYER: int = 4
WD = -0.5
MOMENTUM = 0.9
lower = 3
FLAG = True
NAME = "gpt"
EXPR = 2 * 3
if os.environ.get("X"):
    NESTED = 5


def f():
    INNER = 3
'''


def spec(**extra) -> TargetSpec:
    return TargetSpec.model_validate(
        {"editable": ["train.py"], "run": "python train.py", "metric": "loss", **extra})


def context(agent_spec: TargetSpec, files: dict[str, str], history=()) -> AgentContext:
    return AgentContext(program="", files=files, history=list(history), best=None,
                        spec=agent_spec, base_commit="0" * 40, experiment_seq=len(history) + 1)


def rewrite(source: str, values: dict[str, object]) -> str:
    """Set constants the way the agent does: each literal in place, read back after writing."""
    for name, value in values.items():
        loc = PyName(name, "train.py")
        loc.is_int = isinstance(loc.read(source), int)
        source = loc.write(source, value)
    return source


def values_in(source: str) -> dict[str, object]:
    return {c.name: c.value for c in find_constants("train.py", source)}


def test_find_constants_takes_top_level_upper_case_numbers_only():
    found = {c.name: c.value for c in find_constants("train.py", SOURCE)}
    assert found == {"LR": 3e-4, "N_LAYER": 4, "WD": -0.5, "MOMENTUM": 0.9}
    assert isinstance(found["N_LAYER"], int) and isinstance(found["LR"], float)


def test_find_constants_of_a_file_that_does_not_parse_is_empty():
    assert find_constants("train.py", "LR = (\n") == []


def test_rewrite_touches_only_the_literals():
    out = rewrite(SOURCE, {"LR": 0.001, "N_LAYER": 7, "WD": -0.25})
    expected = (SOURCE.replace("LR = 3e-4  #", "LR = 0.001  #")
                .replace("N_LAYER: int = 4", "N_LAYER: int = 7")
                .replace("WD = -0.5", "WD = -0.25"))
    assert out == expected
    ast.parse(out)


def test_rewrite_keeps_ints_ints_and_floats_floats():
    out = rewrite(SOURCE, {"N_LAYER": 6.7, "MOMENTUM": 1})
    assert values_in(out)["N_LAYER"] == 7
    assert "MOMENTUM = 1\n" in out or "MOMENTUM = 1.0\n" in out
    assert isinstance(values_in(out)["MOMENTUM"], (int, float))


def test_default_range_for_fractions_stays_below_one():
    for v in (0.1, 0.5, 0.9, 0.95, 0.999):
        c = find_constants("train.py", f"BETA = {v}\n")[0]
        r = default_range(c)
        assert r.high < 1, v
        assert r.low <= v <= r.high, v  # the baseline itself is a point of the range


def test_default_ranges_of_ints_and_negatives():
    n = default_range(find_constants("t.py", "N = 4\n")[0])
    assert n.int_ and n.low >= 1 and n.high >= 8
    neg = default_range(find_constants("t.py", "WD = -0.5\n")[0])
    assert neg.low <= -0.5 <= neg.high < 0


def test_no_constants_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="no tunable constants"):
        OptunaAgent(spec(), {"train.py": "lr = 0.1\n", "data.txt": "X = 1\n"})


def test_search_table_names_must_exist():
    with pytest.raises(ConfigError) as info:
        OptunaAgent(spec(search={"LRR": {"low": 1e-5, "high": 1e-2}}), {"train.py": SOURCE})
    assert "LRR" in str(info.value)
    assert "[search]" in str(info.value)


def test_search_table_ranges_are_honoured():
    s = spec(search={"LR": {"low": 1e-5, "high": 1e-2, "log": True},
                     "N_LAYER": {"low": 2, "high": 8, "int": True},
                     "MOMENTUM": {"choices": [0.8, 0.9, 0.95]}})
    agent = OptunaAgent(s, {"train.py": SOURCE}, seed=3)
    d = agent.distributions
    assert set(d) == {"LR", "N_LAYER", "MOMENTUM"}  # only the [search] names are tuned
    assert isinstance(d["LR"], optuna.distributions.FloatDistribution) and d["LR"].log
    assert isinstance(d["N_LAYER"], optuna.distributions.IntDistribution)
    assert isinstance(d["MOMENTUM"], optuna.distributions.CategoricalDistribution)
    base = HistoryEntry(id=1, seq=1, status=Status.KEEP, metric=2.0, description="baseline")
    for i in range(12):
        p = agent.propose(context(s, {"train.py": SOURCE}, [base]))
        got = values_in(p.files["train.py"])
        assert 1e-5 <= got["LR"] <= 1e-2
        assert isinstance(got["N_LAYER"], int) and 2 <= got["N_LAYER"] <= 8
        assert got["MOMENTUM"] in (0.8, 0.9, 0.95)
        assert got["WD"] == -0.5  # not in [search]: untouched
        agent.observe(p, Outcome(i + 2, Status.DISCARD, 2.0 + i))


def test_the_baseline_is_the_first_trial_and_is_not_proposed_again():
    s = spec()
    agent = OptunaAgent(s, {"train.py": SOURCE}, seed=0)
    base = HistoryEntry(id=1, seq=1, status=Status.KEEP, metric=1.5, description="baseline",
                        params=agent.baseline_params())
    p = agent.propose(context(s, {"train.py": SOURCE}, [base]))
    assert p.files["train.py"] != SOURCE
    assert p.params != agent.baseline_params()
    first = agent.study.trials[0]
    assert first.params == agent.baseline_params()
    assert first.state == optuna.trial.TrialState.COMPLETE and first.value == 1.5
    assert p.description.startswith("set ")


def test_observe_tells_the_study():
    s = spec()
    agent = OptunaAgent(s, {"train.py": SOURCE}, seed=0)
    base = HistoryEntry(id=1, seq=1, status=Status.KEEP, metric=1.5, description="baseline")
    ctx = context(s, {"train.py": SOURCE}, [base])
    a, b = agent.propose(ctx), agent.propose(ctx)
    agent.observe(a, Outcome(2, Status.DISCARD, 1.7))
    agent.observe(b, Outcome(3, Status.CRASH, None))
    states = [t.state for t in agent.study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.COMPLETE,
                      optuna.trial.TrialState.FAIL]
    assert agent.study.trials[1].value == 1.7


def test_resume_rebuilds_the_study_from_history():
    s = spec()
    agent = OptunaAgent(s, {"train.py": SOURCE}, seed=0)
    base = agent.baseline_params()
    other = {**base, "LR": 1e-3}
    history = [
        HistoryEntry(id=1, seq=1, status=Status.KEEP, metric=1.5, description="baseline", params=base),
        HistoryEntry(id=2, seq=2, status=Status.DISCARD, metric=1.8, description="a", params=other),
        HistoryEntry(id=3, seq=3, status=Status.CRASH, metric=None, description="b",
                     params={**base, "N_LAYER": 9}),
        HistoryEntry(id=4, seq=4, status=Status.REPEAT, metric=1.4, description="repeat", params=base),
        HistoryEntry(id=5, seq=5, status=Status.DISCARD, metric=1.6, description="no params"),
    ]
    agent.resume(history)
    trials = agent.study.trials
    assert [(t.state, t.value) for t in trials] == [
        (optuna.trial.TrialState.COMPLETE, 1.5), (optuna.trial.TrialState.COMPLETE, 1.8),
        (optuna.trial.TrialState.FAIL, None)]
    assert trials[1].params == other
    # after a resume the baseline is not enqueued again
    p = agent.propose(context(s, {"train.py": SOURCE}, history))
    assert len(agent.study.trials) == 4
    assert p.params != base
