"""The near-duplicate rules (neardup.py), the notes' bounds and themes (notes.py), and the
portfolio's shares (portfolio.py), as pure functions over hand-made versions."""

from __future__ import annotations

import pytest

from autoresearch.agents.base import Agent
from autoresearch.config import AgentEntry, NotesSettings
from autoresearch.errors import ConfigError
from autoresearch.neardup import NearDuplicates, fingerprint, within
from autoresearch.notes import add_entry, bound, themes_of
from autoresearch.portfolio import (
    Member,
    Portfolio,
    describe,
    entries_from_flags,
    parse_recorded,
    split_share,
)

TRAIN = '''"""Training (EDITABLE)."""
LR = 0.01          # step size
WIDTH = 64
DEPTH = 4


def step(x):
    return x * LR + WIDTH
'''


def index(versions: dict[str, tuple[str | None, dict[str, str]]], **settings):
    """A NearDuplicates over fake commits: name -> (parent, files)."""
    counter = {"n": 0}

    def read(commit: str):
        files = versions[commit][1]
        return {p: (f"{commit}:{p}:{hash(t)}", t) for p, t in files.items()}

    near = NearDuplicates(NotesSettings(**settings), read)
    ids = {}
    for name, (parent, _) in versions.items():
        if name.startswith("new"):
            continue
        counter["n"] += 1
        ids[name] = counter["n"]
        near.add(counter["n"], name, parent)
    return near, ids


def test_python_reformatted_and_recommented_is_a_near_duplicate():
    changed = TRAIN.replace("LR = 0.01", "LR = 0.02")
    reformatted = changed.replace("LR = 0.02          # step size", "LR=0.020  # a new comment") \
        .replace("return x * LR + WIDTH", "return (x*LR) + WIDTH") + "\n\n# trailing comment\n"
    near, ids = index({"base": (None, {"train.py": TRAIN}), "a": ("base", {"train.py": changed}),
                       "new": ("base", {"train.py": reformatted})})
    m = near.find("new", "base")
    assert m is not None and m.exp_id == ids["a"] and m.rule == "formatting"


def test_a_real_code_change_is_not_a_near_duplicate():
    changed = TRAIN.replace("LR = 0.01", "LR = 0.02")
    other = TRAIN.replace("return x * LR + WIDTH", "return x * LR - WIDTH")
    near, _ = index({"base": (None, {"train.py": TRAIN}), "a": ("base", {"train.py": changed}),
                     "new": ("base", {"train.py": other})}, similarity=0.99)
    assert near.find("new", "base") is None


def test_a_constant_within_the_tolerance_of_a_tried_value_is_a_near_duplicate():
    tried = TRAIN.replace("LR = 0.01", "LR = 0.02")
    close = TRAIN.replace("LR = 0.01", "LR = 0.0201")     # 0.5% away
    far = TRAIN.replace("LR = 0.01", "LR = 0.0205")       # 2.4% away
    near, ids = index({"base": (None, {"train.py": TRAIN}), "a": ("base", {"train.py": tried}),
                       "new-close": ("base", {"train.py": close}),
                       "new-far": ("base", {"train.py": far})}, similarity=1.0)
    m = near.find("new-close", "base")
    assert m is not None and m.exp_id == ids["a"] and m.rule == "constants"
    assert "0.0201 vs 0.02" in m.detail
    assert near.find("new-far", "base") is None


def test_the_constant_tolerance_is_configurable():
    tried = TRAIN.replace("WIDTH = 64", "WIDTH = 100")
    close = TRAIN.replace("WIDTH = 64", "WIDTH = 104")    # 3.8% away
    versions = {"base": (None, {"train.py": TRAIN}), "a": ("base", {"train.py": tried}),
                "new": ("base", {"train.py": close})}
    assert index(versions, similarity=1.0)[0].find("new", "base") is None
    assert index(versions, similarity=1.0, constant_tolerance=0.05)[0].find("new", "base") is not None


def test_every_changed_constant_must_be_within_tolerance():
    tried = TRAIN.replace("LR = 0.01", "LR = 0.02").replace("DEPTH = 4", "DEPTH = 8")
    one_off = TRAIN.replace("LR = 0.01", "LR = 0.0201").replace("DEPTH = 4", "DEPTH = 6")
    near, _ = index({"base": (None, {"train.py": TRAIN}), "a": ("base", {"train.py": tried}),
                     "new": ("base", {"train.py": one_off})}, similarity=1.0)
    assert near.find("new", "base") is None


def test_text_files_compare_whitespace_normalised():
    cfg = "lr: 0.01\nwidth: 64\n"
    tried = "lr: 0.02\nwidth: 64\n"
    spaced = "lr:    0.02\n\n\nwidth:  64   \n"
    near, ids = index({"base": (None, {"c.yaml": cfg}), "a": ("base", {"c.yaml": tried}),
                       "new": ("base", {"c.yaml": spaced})})
    m = near.find("new", "base")
    assert m is not None and m.exp_id == ids["a"] and m.rule == "formatting"
    # numbers in text files follow the constant rule too
    near, _ = index({"base": (None, {"c.yaml": cfg}), "a": ("base", {"c.yaml": tried}),
                     "new": ("base", {"c.yaml": "lr: 0.02001\nwidth: 64\n"})}, similarity=1.0)
    assert near.find("new", "base").rule == "constants"


def test_a_similar_diff_against_the_same_best_is_a_near_duplicate_but_not_against_another():
    base_src = TRAIN + "\n".join(f"line_{i} = {i}" for i in range(40)) + "\n"
    steps = "".join(f"    x = x * {k} + LR\n" for k in range(2, 12))       # ten new lines
    tried = base_src.replace("    return x * LR + WIDTH\n", steps + "    return x\n")
    similar = base_src.replace("    return x * LR + WIDTH\n", steps + "    x = -x\n    return x\n")
    other_base = base_src.replace("line_3 = 3", "line_3 = 33")
    elsewhere = other_base.replace("    return x * LR + WIDTH\n", steps + "    x = -x\n    return x\n")
    versions = {"base": (None, {"train.py": base_src}), "a": ("base", {"train.py": tried}),
                "b": ("base", {"train.py": other_base}),
                "new": ("base", {"train.py": similar}),
                "new-elsewhere": ("b", {"train.py": elsewhere})}
    near, ids = index(versions)                  # 12 changed lines, 11 shared: 0.92 >= 0.9
    m = near.find("new", "base")
    assert m is not None and m.exp_id == ids["a"] and m.rule == "similar"
    assert "92% similar" in m.detail
    assert near.find("new-elsewhere", "b") is None       # another best: a new experiment
    strict, _ = index(versions, similarity=0.95)
    assert strict.find("new", "base") is None


def test_a_syntax_error_falls_back_to_text_comparison():
    broken = "def f(:\n    return 1\n"
    fp1, fp2 = fingerprint("x.py", broken), fingerprint("x.py", "def f(:\n\n    return   1\n")
    assert fp1.canon == fp2.canon


def test_within_is_relative_and_exact_for_zero():
    assert within(100, 100.5, 0.01) and not within(100, 102, 0.01)
    assert within(0.0, 0.0, 0.01) and not within(0.0, 1e-9, 0.01)


# == notes ========================================================================================
def test_notes_are_bounded_by_dropping_the_oldest_lines():
    notes = "\n".join(f"- line {i}" for i in range(100))
    text, cut = bound(notes, 200)
    assert cut and len(text) <= 200
    assert text.startswith("[older notes dropped") and text.endswith("- line 99")
    assert "- line 0\n" not in text


def test_a_note_entry_is_signed_with_its_experiment_and_agent():
    text, cut = add_entry("- #2 (optuna): old", "  higher LR\n helps ", seq=5, who="claude",
                          max_chars=1000)
    assert text == "- #2 (optuna): old\n- #5 (claude): higher LR helps" and not cut


def test_themes_name_constants_code_and_files():
    after = TRAIN.replace("LR = 0.01", "LR = 0.02").replace("DEPTH = 4", "DEPTH = 5")
    assert themes_of({"train.py": TRAIN}, {"train.py": after}) == ["train.py: DEPTH",
                                                                   "train.py: LR"]
    code = TRAIN.replace("return x * LR + WIDTH", "return x * LR")
    assert themes_of({"train.py": TRAIN}, {"train.py": code}) == ["train.py (code)"]
    assert themes_of({"train.py": TRAIN, "c.yaml": "a: 1\n"},
                     {"train.py": TRAIN, "c.yaml": "a: 2\n", "new.py": "X = 1\n"}) == [
        "c.yaml", "new.py (new file)"]


# == portfolio ====================================================================================
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
