"""The portfolio's shares and names (portfolio.py) and the yield by agent (summary.py), as pure
functions."""

from __future__ import annotations

import pytest

from autoresearch.agents.base import Agent
from autoresearch.config import AgentEntry
from autoresearch.errors import ConfigError
from autoresearch.experiment import Kind, Status
from autoresearch.ledger import Ledger
from autoresearch.portfolio import (
    Member,
    Portfolio,
    describe,
    entries_from_flags,
    parse_recorded,
    split_share,
)
from autoresearch.summary import agent_yield, yield_by_agent


class _Idle(Agent):
    def propose(self, context):  # pragma: no cover - never asked here
        raise AssertionError


def test_a_trailing_number_is_a_share_only_where_it_cannot_be_the_spec():
    assert split_share("claude:3") == ("claude", 3)
    assert split_share("script:steps.jsonl:2") == ("script:steps.jsonl", 2)
    assert split_share("openai:qwen:7") == ("openai:qwen", 7)
    assert split_share("openai:7") == ("openai:7", None)         # a model named 7
    assert split_share("openai:llama3:8b") == ("openai:llama3:8b", None)
    assert split_share("optuna") == ("optuna", None)
    with pytest.raises(ConfigError, match="at least 1"):
        split_share("claude:0")
    with pytest.raises(ConfigError, match="given twice"):
        entries_from_flags(["optuna", "optuna:2"])


def test_a_recorded_portfolio_parses_back_to_its_flags():
    entries = [AgentEntry(agent="claude", slots=3, role="explorer"), AgentEntry(agent="optuna")]
    text = describe(entries)
    assert text == "claude:3 (explorer) + optuna:1"
    assert parse_recorded(text) == ["claude:3", "optuna:1"]
    assert describe([AgentEntry(agent="optuna")]) == "optuna"


def test_on_one_slot_proposals_follow_the_shares():
    claude, optuna = Member("claude", _Idle(), slots=3), Member("optuna", _Idle(), slots=1)
    p = Portfolio([claude, optuna])
    order = []
    for _ in range(40):
        m = p.choose({}, {})
        m.asked += 1
        order.append(m.spec)
    assert order.count("claude") == 30 and order.count("optuna") == 10


def test_with_slots_in_use_the_member_below_its_share_is_asked():
    claude, optuna = Member("claude", _Idle(), slots=3), Member("optuna", _Idle(), slots=1)
    p = Portfolio([claude, optuna])
    assert p.choose({claude: 3, optuna: 0}, {}) is optuna
    assert p.choose({claude: 2, optuna: 1}, {}) is claude
    claude.exhausted = True
    assert p.choose({claude: 0, optuna: 5}, {}) is optuna
    optuna.exhausted = True
    assert p.choose({}, {}) is None and p.exhausted


def test_an_agent_that_works_one_at_a_time_is_not_asked_while_it_is_busy():
    class OneAtATime(_Idle):
        concurrent = False

    slow, other = Member("slow", OneAtATime(), slots=5), Member("other", _Idle(), slots=1)
    p = Portfolio([slow, other])
    assert p.choose({slow: 1, other: 3}, {slow: 1}) is other


def test_the_yield_credits_each_step_of_the_kept_chain_to_its_proposer(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    add = ledger.add_experiment

    def row(kind, status, agent, role=None, tree=None, metric=None, cost=0.0, at=None, **kw):
        decision = {"at": at} if at is not None else None
        return add("t", kind=kind, status=status, agent=agent, role=role, tree_sha=tree,
                   metric=metric, cost_usd=cost, decision=decision, **kw)

    row(Kind.BASELINE, Status.KEEP, "claude:3 + optuna:1", tree="b", metric=1.0, at=1)
    row(Kind.REPEAT, Status.REPEAT, "claude:3 + optuna:1", tree="b", metric=1.2)   # mean 1.1
    c1 = row(Kind.CANDIDATE, Status.KEEP, "claude", "explorer", tree="c1", metric=0.8, cost=0.5,
             at=2)
    row(Kind.REPEAT, Status.REPEAT, "claude", "explorer", tree="c1", metric=0.9,
        candidate_of=c1.id)                                                        # mean 0.85
    row(Kind.CANDIDATE, Status.DISCARD, "optuna", "tuner", tree="o1", metric=0.95)
    row(Kind.CANDIDATE, Status.KEEP, "optuna", "tuner", tree="o2", metric=0.75, at=3)
    row(Kind.CANDIDATE, Status.CRASH, "claude", "explorer", cost=0.25)
    row(Kind.CANDIDATE, Status.DUPLICATE, "claude", "explorer", cost=0.25)
    ys = {y.agent: y for y in yield_by_agent(ledger.experiments("t"), "minimize")}
    ledger.close()
    assert set(ys) == {"claude", "optuna"}          # the baseline is nobody's proposal
    claude, optuna = ys["claude"], ys["optuna"]
    assert (claude.role, claude.proposals, claude.kept) == ("explorer", 3, 1)
    assert claude.improvement == pytest.approx(1.1 - 0.85) and claude.cost_usd == pytest.approx(1.0)
    assert claude.keep_rate == pytest.approx(1 / 3)
    assert (optuna.proposals, optuna.kept) == (2, 1)
    assert optuna.improvement == pytest.approx(0.85 - 0.75) and optuna.keep_rate == 0.5
    again = Ledger(tmp_path / "l.db")
    maxi = {y.agent: y for y in yield_by_agent(again.experiments("t"), "maximize")}
    assert maxi["claude"].improvement == pytest.approx(-(1.1 - 0.85))   # direction counts
    # what `status` reads (an SQL aggregate and the kept rows only) is the same answer
    for direction in ("minimize", "maximize"):
        assert agent_yield(again, "t", direction) == yield_by_agent(again.experiments("t"),
                                                                    direction)
    again.close()
