"""Tree search (`--strategy tree`, strategies.py): real runs on a two-step problem, resume after
kill -9, the operators, and the selection rule on a real ledger.

The two-step target: train.py holds NORM, LR and DROP; the locked evaluator scores them.
Normalising alone is worse (1.00 -> 1.15), raising the learning rate alone is worse (1.10),
both together are much better (0.80). A search that only ever improves the best cannot get
there one change at a time; a tree that keeps the worse node can.
"""

from __future__ import annotations

import difflib
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import ar, ar_popen, build_target, git, ledger_experiments, write_script

from autoresearch.agents.base import AgentContext
from autoresearch.agents.optuna_agent import OptunaAgent
from autoresearch.agents.prompt import build_prompt
from autoresearch.config import TargetSpec, load_spec
from autoresearch.errors import LedgerError
from autoresearch.experiment import HistoryEntry, Kind, Status
from autoresearch.ledger import Ledger
from autoresearch.state import RunState
from autoresearch.strategies import TreeStrategy

TRAIN = '''"""The training script (EDITABLE)."""
import time

NORM = 0
# normalisation of the inputs
#
#

LR = 0.1
# learning rate
#
#

DROP = 0.0
# dropout
#
#

SLEEP = 0.0
time.sleep(SLEEP)
open("out.txt", "w").write(f"{NORM} {LR} {DROP}")
'''

EVALUATE = '''"""The evaluator (LOCKED)."""
norm, lr, drop = open("out.txt").read().split()
norm, lr, drop = int(norm), float(lr), float(drop)
gain = {0.1: 0.0, 0.3: -0.35, 1.0: -0.6} if norm else {0.1: 0.0, 0.3: 0.1, 1.0: 0.5}
loss = 1.0 + 0.15 * norm + gain[lr] + {0.0: 0.0, 0.1: -0.02, 0.2: 0.01}[drop]
print(f"score: {loss:.6f}")
'''


def setting(changes: dict[str, tuple[str, str]], description: str, *,
            source: str = TRAIN) -> dict:
    """A script line that sets assignments (NAME: (old, new)) as a patch with one line of
    context, so that it applies to whichever node the strategy chose, and only where the old
    values stand."""
    after = source
    for name, (old, new) in changes.items():
        assert f"\n{name} = {old}\n" in after
        after = after.replace(f"\n{name} = {old}\n", f"\n{name} = {new}\n")
    diff = "".join(difflib.unified_diff(source.splitlines(True), after.splitlines(True),
                                        "a/train.py", "b/train.py", n=1))
    return {"description": description, "patch": diff}


NORMALISE = setting({"NORM": ("0", "1")}, "normalise the inputs (worse alone)")
RAISE_LR = setting({"LR": ("0.1", "0.3")}, "raise the learning rate (worse alone)")


def two_step_target(base: Path, name: str, extra_toml: str = "") -> Path:
    return build_target(base, name=name, files={"train.py": TRAIN, "evaluate.py": EVALUATE},
                        extra_toml=extra_toml)


def branch_file(root: Path, tag: str) -> str:
    return git(root, "show", f"autoresearch/{tag}:train.py")


def best_row(rows):
    return max((e for e in rows if e.status == Status.KEEP), key=lambda e: e.seq)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same two proposals under each strategy: tree by the toml key, ratchet by default."""
    base = tmp_path_factory.mktemp("two-step")
    script = write_script(base / "script.jsonl", [NORMALISE, RAISE_LR])
    tree = two_step_target(base, "tree", 'strategy = "tree"\n[tree]\ndrafts = 1\n')
    ratchet = two_step_target(base, "ratchet")
    for root in (tree, ratchet):
        ar(root, "run", "--tag", "t", "--agent", f"script:{script}", check=True, timeout=180)
    return tree, ratchet


def test_tree_reaches_the_two_step_optimum_and_the_ratchet_does_not(two_runs):
    tree, ratchet = two_runs
    t_rows, r_rows = ledger_experiments(tree, "t"), ledger_experiments(ratchet, "t")
    assert best_row(r_rows).kind == Kind.BASELINE and best_row(r_rows).metric == 1.0
    assert "NORM = 0" in branch_file(ratchet, "t")
    best = best_row(t_rows)
    assert best.metric == pytest.approx(0.8)
    assert "NORM = 1" in branch_file(tree, "t") and "LR = 0.3" in branch_file(tree, "t")
    # the winner was proposed from the worse node, not from the best
    worse = next(e for e in t_rows if e.description.startswith("normalise"))
    assert worse.status == Status.DISCARD and worse.metric == pytest.approx(1.15)
    assert (worse.operator, best.operator) == ("draft", "improve")
    assert best.node_parent == worse.id and best.parent == worse.commit_sha
    # under the ratchet the second proposal started from the best, where it is worse alone
    second = next(e for e in r_rows if e.description.startswith("raise"))
    assert second.status == Status.DISCARD and second.metric == pytest.approx(1.1)
    assert second.node_parent is None and second.operator is None


def test_status_reports_the_strategy_and_what_each_operator_yielded(two_runs):
    tree, ratchet = two_runs
    out = ar(tree, "status", "--tag", "t", check=True).stdout
    assert "strategy tree" in out and "1 draft (0 kept), 1 improve (1 kept)" in out
    out = ar(ratchet, "status", "--tag", "t", check=True).stdout
    assert "strategy ratchet" in out and "tree " not in out


def test_the_branch_only_ever_holds_verified_bests_under_tree_search(two_runs):
    tree, _ = two_runs
    rows = ledger_experiments(tree, "t")
    kept = {e.commit_sha for e in rows if e.status == Status.KEEP}
    chain = git(tree, "rev-list", "--first-parent", "autoresearch/t").split()
    base = next(e for e in rows if e.kind == Kind.BASELINE).commit_sha
    assert chain[-1] == base and set(chain) <= kept
    for e in rows:
        if e.status == Status.KEEP and e.kind == Kind.CANDIDATE:
            assert e.decision["verdict"] == "keep"     # the policy's verdict against the best
    worse = next(e for e in rows if e.description.startswith("normalise"))
    trees = {git(tree, "rev-parse", f"{c}^{{tree}}") for c in chain}
    assert worse.tree_sha not in trees
    # every node is pinned, the discarded one too
    assert git(tree, "rev-parse", f"refs/autoresearch/t/{worse.seq:05d}") == worse.commit_sha


def _wait_for(predicate, timeout: float = 90.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _rows_so_far(root: Path, tag: str) -> list:
    """The run's rows while it starts: none until its ledger has its tables."""
    try:
        return ledger_experiments(root, tag)
    except (LedgerError, sqlite3.OperationalError):
        return []


def test_resume_after_kill_9_rebuilds_the_tree_and_goes_on_from_its_nodes(tmp_path):
    """Killed while a child of the worse node runs; the resumed run must still know that node
    and its child, or the last proposal would start from the root and lose the two-step gain."""
    root = two_step_target(tmp_path, "target")
    slow_drop = setting({"DROP": ("0.0", "0.1"), "SLEEP": ("0.0", "2.0")},
                        "a little dropout, slowly")
    script = write_script(tmp_path / "script.jsonl", [NORMALISE, slow_drop, RAISE_LR])
    (root / "autoresearch.toml").write_text((root / "autoresearch.toml").read_text()
                                            + "[tree]\ndrafts = 1\n")
    git(root, "commit", "-qam", "tree settings")
    proc = ar_popen(root, "run", "--tag", "k", "--agent", f"script:{script}",
                    "--strategy", "tree")
    try:
        _wait_for(lambda: any(e.description.startswith("a little") and e.status == Status.RUNNING
                              and e.pid for e in _rows_so_far(root, "k")),
                  what="the slow child to start")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = ledger_experiments(root, "k")
    worse = next(e for e in rows if e.description.startswith("normalise"))
    child = next(e for e in rows if e.description.startswith("a little"))
    assert child.node_parent == worse.id and child.status == Status.RUNNING
    # every commit is pinned, so the tree survives the kill
    for e in rows:
        if e.commit_sha:
            assert git(root, "rev-parse", f"refs/autoresearch/k/{e.seq:05d}") == e.commit_sha
    # the tree as a resumed run rebuilds it from the ledger
    ledger = Ledger(root / ".autoresearch" / "ledger.db")
    try:
        state = RunState.load(ledger, ledger.get_run("k"))
        tree = TreeStrategy(state, load_spec(root / "autoresearch.toml"), lambda: None)
        assert set(tree.population) == {rows[0].id, worse.id}
        assert child.id in tree.children[worse.id]
    finally:
        ledger.close()
    p = ar(root, "run", "--tag", "k", "--agent", f"script:{script}", "--strategy", "tree",
           timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = ledger_experiments(root, "k")
    best = best_row(rows)
    assert best.description.startswith("raise") and best.metric == pytest.approx(0.78)
    assert best.node_parent == child.id        # the slow child, measured again after the kill
    assert "NORM = 1" in branch_file(root, "k") and "LR = 0.3" in branch_file(root, "k")


def test_a_crashed_node_is_debugged_from_its_own_commit(tmp_path):
    """The fix is a patch that applies only where the crash stands: run from anywhere else it
    would be an agent error."""
    root = two_step_target(tmp_path, "target",
                           'strategy = "tree"\n[tree]\ndrafts = 1\ndebug_prob = 1.0\n')
    crash = setting({"NORM": ("0", "int('one')")}, "normalise, with a typo")
    crashed = TRAIN.replace("NORM = 0\n", "NORM = int('one')\n")
    fix = setting({"NORM": ("int('one')", "1")}, "fix the typo", source=crashed)
    script = write_script(tmp_path / "script.jsonl", [crash, fix])
    ar(root, "run", "--tag", "d", "--agent", f"script:{script}", check=True, timeout=180)
    rows = ledger_experiments(root, "d")
    broken = next(e for e in rows if e.description.startswith("normalise"))
    fixed = next(e for e in rows if e.description.startswith("fix"))
    assert broken.status == Status.CRASH
    assert (fixed.operator, fixed.node_parent) == ("debug", broken.id)
    assert fixed.status == Status.DISCARD and fixed.metric == pytest.approx(1.15)


def test_attack_a_refused_proposal_is_never_a_node_to_start_from(tmp_path):
    """A proposal that rewrites the locked evaluator is refused and never runs, but its commit
    is pinned. Were it a node (say, one to debug), a child would carry the forged evaluator
    while its own diff touches train.py only."""
    root = two_step_target(tmp_path, "target",
                           'strategy = "tree"\n[tree]\ndrafts = 1\ndebug_prob = 1.0\n')
    forged = {"description": "normalise, and score everything 0",
              "files": {"train.py": TRAIN.replace("NORM = 0\n", "NORM = 1\n"),
                        "evaluate.py": 'print("score: 0.0")\n'}}
    script = write_script(tmp_path / "script.jsonl", [forged, RAISE_LR, NORMALISE])
    ar(root, "run", "--tag", "a", "--agent", f"script:{script}", check=True, timeout=180)
    rows = ledger_experiments(root, "a")
    refused = next(e for e in rows if e.description.startswith("normalise, and"))
    assert refused.status == Status.INVALID and refused.commit_sha
    later = [e for e in rows if e.seq > refused.seq and e.kind == Kind.CANDIDATE]
    assert len(later) == 2 and all(e.node_parent != refused.id for e in later)
    assert all(e.operator != "debug" for e in later)
    for e in later:
        assert git(root, "show", f"{e.commit_sha}:evaluate.py") == EVALUATE.rstrip("\n")
        assert e.metric is not None and e.metric > 0.5
    assert git(root, "show", "autoresearch/a:evaluate.py") == EVALUATE.rstrip("\n")


def test_the_optuna_agent_improves_a_node_from_that_nodes_values(tmp_path):
    """Under tree search every `improve` keeps its parent's values but one or two."""
    train = TRAIN.replace("SLEEP = 0.0\n", "SLEEP = 0.0\nA = 3.0\nB = 2.0\nC = 5.0\n").replace(
        'f"{NORM} {LR} {DROP}"', 'f"{(A - 1) ** 2 + (B - 4) ** 2 + (C - 5) ** 2}"')
    root = build_target(tmp_path, files={"train.py": train}, extra_toml=(
        'strategy = "tree"\n[tree]\ndrafts = 2\n[search]\nA = { low = 0.0, high = 6.0 }\n'
        'B = { low = 0.0, high = 6.0 }\nC = { low = 0.0, high = 6.0 }\n'))
    ar(root, "run", "--tag", "o", "--max-experiments", "14", "--policy", "greedy", check=True,
       timeout=240)
    rows = ledger_experiments(root, "o")
    by_id = {e.id: e for e in rows}
    improves = [e for e in rows if e.operator == "improve" and e.params]
    assert [e.operator for e in rows if e.operator][:2] == ["draft", "draft"]
    assert improves, [(e.seq, e.operator, e.status) for e in rows]
    for e in improves:
        mine = git(root, "show", f"{e.commit_sha}:train.py").splitlines()
        theirs = git(root, "show", f"{by_id[e.node_parent].commit_sha}:train.py").splitlines()
        assert len(mine) == len(theirs)
        changed = [a for a, b in zip(mine, theirs, strict=True) if a != b]
        assert 1 <= len(changed) <= 2, (changed, e.description)


def test_the_optuna_agent_keeps_the_parents_values_not_its_own_baseline():
    spec = TargetSpec.model_validate({"editable": ["train.py"], "run": "python train.py",
                                      "metric": "loss", "search": {
                                          n: {"low": 0.0, "high": 10.0} for n in "ABCD"}})
    base = "A = 1.0\nB = 1.0\nC = 1.0\nD = 1.0\n"
    node = "A = 7.0\nB = 8.0\nC = 9.0\nD = 6.0\n"
    agent = OptunaAgent(spec, {"train.py": base}, seed=3)
    parent = HistoryEntry(id=5, seq=5, status=Status.DISCARD, metric=2.0, description="node")
    for _ in range(6):
        ctx = AgentContext(program="", files={"train.py": node}, history=[], best=None,
                           spec=spec, base_commit="0" * 40, experiment_seq=6,
                           operator="improve", parent=parent, parent_values=[2.0])
        p = agent.propose(ctx)
        kept = [n for n, v in zip("ABCD", (7.0, 8.0, 9.0, 6.0), strict=True) if p.params[n] == v]
        assert 2 <= len(kept) <= 3, p.params


def test_the_prompt_names_the_operator_and_the_node_with_its_diff():
    spec = TargetSpec.model_validate({"editable": ["train.py"], "run": "python train.py",
                                      "metric": "loss"})
    best = HistoryEntry(id=4, seq=4, status=Status.KEEP, metric=0.9, description="the best")
    node = HistoryEntry(id=7, seq=7, status=Status.DISCARD, metric=1.15,
                        description="normalise the inputs")
    ctx = AgentContext(program="", files={"train.py": "NORM = 1\n"}, history=[best, node],
                       best=best, spec=spec, base_commit="a" * 40, experiment_seq=9,
                       operator="improve", parent=node, parent_values=[1.15, 1.16],
                       parent_diff="-NORM = 0\n+NORM = 1\n")
    text = build_prompt(ctx, max_chars=20_000, history_rows=10)
    assert "# Operator: improve (tree search)" in text and "node #7" in text
    assert "1.15, 1.16" in text and "+NORM = 1" in text and "against the best #4" in text
    assert "# Editable files at node #7" in text
    ratchet = AgentContext(program="", files={"train.py": "NORM = 0\n"}, history=[best],
                           best=best, spec=spec, base_commit="a" * 40, experiment_seq=9)
    text = build_prompt(ratchet, max_chars=20_000, history_rows=10)
    assert "Operator" not in text and "# Editable files at the best commit" in text


def test_a_bad_strategy_is_one_clear_line(tmp_path):
    root = two_step_target(tmp_path, "flag")
    p = ar(root, "run", "--tag", "x", "--strategy", "forest")
    assert p.returncode == 1 and "unknown --strategy 'forest'" in p.stderr + p.stdout
    assert not (root / ".autoresearch" / "ledger.db").exists()
    root = two_step_target(tmp_path, "toml", 'strategy = "forest"\n')
    p = ar(root, "run", "--tag", "x")
    assert p.returncode == 1 and "'strategy'" in p.stderr + p.stdout
    assert "ratchet" in p.stderr + p.stdout
    root = two_step_target(tmp_path, "typo", '[tree]\npopulaton = 4\n')
    p = ar(root, "run", "--tag", "x")
    assert p.returncode == 1 and "did you mean 'population'" in p.stderr + p.stdout


def test_an_older_ledger_gains_the_tree_columns_and_keeps_its_rows(tmp_path):
    from autoresearch import ledger as ledger_module

    # the schema as it stood before tree search: its three columns taken out
    lines = [ln for ln in ledger_module._SCHEMA.splitlines()
             if not re.match(r"\s*(strategy|node_parent|operator) ", ln)]
    old = re.sub(r",(\s*--[^\n]*)?\n\);", r"\1\n);", "\n".join(lines))
    assert "node_parent" not in old and "strategy" not in old
    path = tmp_path / "ledger.db"
    db = sqlite3.connect(path)
    db.executescript(old)
    db.execute("INSERT INTO runs (tag, created, base_commit, metric, direction) "
               "VALUES ('r', 0, 'abc', 'loss', 'minimize')")
    db.execute("INSERT INTO experiments (tag, seq, kind, status, metric) "
               "VALUES ('r', 1, 'baseline', 'keep', 1.5)")
    db.commit()
    db.close()
    ro = Ledger(path, readonly=True)           # `status` on an old ledger, before any run
    assert ro.experiments("r")[0].node_parent is None
    ro.close()
    ledger = Ledger(path)
    try:
        assert ledger.get_run("r").strategy is None
        (e,) = ledger.experiments("r")
        assert (e.metric, e.node_parent, e.operator) == (1.5, None, None)
        ledger.update(e.id, node_parent=e.id, operator="improve")
        assert ledger.get(e.id).operator == "improve"
    finally:
        ledger.close()


# -- the selection rule, on a real ledger (no processes) -------------------------------------

def _state(tmp_path, values: dict[str, list[float]]):
    """A run whose baseline and candidates have these runs (first name: the baseline)."""
    ledger = Ledger(tmp_path / "ledger.db")
    run = ledger.create_run("s", "base", "loss", "minimize", "script", "noise-aware", {},
                            strategy="tree")
    state = RunState(ledger, run)
    rows = {}
    for i, (name, runs) in enumerate(values.items()):
        kind = Kind.BASELINE if i == 0 else Kind.CANDIDATE
        e = state.add(kind=kind, status=Status.KEEP if i == 0 else Status.DISCARD,
                      metric=runs[0], commit_sha=f"c{i}", tree_sha=f"t{i}", description=name,
                      started=1.0, node_parent=None if i == 0 else rows[next(iter(rows))].id,
                      operator=None if i == 0 else "draft")
        for v in runs[1:]:
            state.add(kind=Kind.REPEAT, status=Status.REPEAT, metric=v, tree_sha=f"t{i}",
                      candidate_of=e.id, commit_sha=f"c{i}")
        rows[name] = e
    state.incumbent = rows[next(iter(rows))]
    return ledger, state, rows


def _spec(**tree) -> TargetSpec:
    return TargetSpec.model_validate({"editable": ["train.py"], "run": "python train.py",
                                      "metric": "loss", "tree": tree})


def test_a_node_measured_once_is_not_trusted_beyond_its_noise(tmp_path):
    """Population 2: the root, and one of two others. X looks better in its one run; Y is a
    little worse over four runs. With sigma 0.05 Y's lower bound is higher: X leaves."""
    ledger, state, rows = _state(tmp_path, {"root": [1.0, 1.0], "Y": [0.93, 0.91, 0.92, 0.92],
                                            "X": [0.90]})
    tree = TreeStrategy(state, _spec(population=2, drafts=0), lambda: 0.05)
    assert set(tree.population) == {rows["root"].id, rows["Y"].id}
    exact = TreeStrategy(state, _spec(population=2, drafts=0), lambda: None)
    assert set(exact.population) == {rows["root"].id, rows["X"].id}
    ledger.close()


def test_a_childs_reward_is_its_chance_of_beating_its_parent_under_the_noise(tmp_path):
    ledger, state, rows = _state(tmp_path, {"root": [1.0], "near": [0.99], "far": [0.5],
                                            "worse": [1.5]})
    tree = TreeStrategy(state, _spec(), lambda: 0.05)
    root = rows["root"]
    assert tree.reward(root, rows["near"], 0.05) == pytest.approx(0.556, abs=0.01)
    assert tree.reward(root, rows["far"], 0.05) > 0.999
    assert tree.reward(root, rows["worse"], 0.05) < 0.001
    assert tree.reward(root, rows["near"], None) == 1.0      # exact comparisons without noise
    ledger.close()


def test_drafts_come_first_then_ucb_and_parallel_slots_spread_out(tmp_path):
    ledger, state, rows = _state(tmp_path, {"root": [1.0], "A": [1.1], "B": [1.1]})
    tree = TreeStrategy(state, _spec(drafts=3), lambda: None)
    first = tree.choose()
    assert (first.parent.id, first.operator) == (rows["root"].id, "draft")   # 2 of 3 drafts
    tree = TreeStrategy(state, _spec(drafts=2), lambda: None)
    one = tree.choose()
    assert one.operator == "improve" and one.parent.id in (rows["A"].id, rows["B"].id)
    two = tree.choose(busy=[one.parent])
    assert two.operator == "improve" and {one.parent.id, two.parent.id} == {rows["A"].id,
                                                                            rows["B"].id}
    ledger.close()


def test_the_best_and_the_root_are_always_in_the_population(tmp_path):
    """A holdout revert can make an evicted node the best again: it is taken back in (and
    another node leaves, so the population stays bounded)."""
    ledger, state, rows = _state(tmp_path, {"root": [1.0], "A": [1.2], "B": [0.9]})
    tree = TreeStrategy(state, _spec(population=2, drafts=0), lambda: None)
    assert set(tree.population) == {rows["root"].id, rows["B"].id}
    state.incumbent = rows["A"]
    tree.choose()
    assert set(tree.population) == {rows["root"].id, rows["A"].id}
    ledger.close()


def test_a_walk_downhill_stops_after_max_steps_back(tmp_path):
    """root 1.0 -> A 1.1 -> B 1.2 -> C 1.3, each worse than its parent: with max_steps_back 2,
    A and B may still be proposed from (a step back can set up a gain), C may not."""
    ledger = Ledger(tmp_path / "ledger.db")
    run = ledger.create_run("w", "base", "loss", "minimize", "script", "greedy", {},
                            strategy="tree")
    state = RunState(ledger, run)
    parent = None
    rows = []
    for i, v in enumerate((1.0, 1.1, 1.2, 1.3)):
        e = state.add(kind=Kind.BASELINE if i == 0 else Kind.CANDIDATE,
                      status=Status.KEEP if i == 0 else Status.DISCARD, metric=v,
                      commit_sha=f"c{i}", tree_sha=f"t{i}", description=f"n{i}", started=1.0,
                      node_parent=parent, operator=None if i == 0 else "improve")
        parent = e.id
        rows.append(e)
    state.incumbent = rows[0]
    tree = TreeStrategy(state, _spec(drafts=0, max_steps_back=2), lambda: None)
    assert set(tree.population) == {rows[0].id, rows[1].id, rows[2].id}
    assert tree.steps_back[rows[3].id] == 3
    ledger.close()


def test_a_node_that_improved_on_its_parent_is_expanded_before_one_that_did_not(tmp_path):
    ledger, state, rows = _state(tmp_path, {"root": [1.0], "worse": [1.1], "better": [0.9]})
    tree = TreeStrategy(state, _spec(drafts=0), lambda: None)
    assert tree.choose().parent.id == rows["better"].id
    ledger.close()
