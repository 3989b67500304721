"""The near-duplicate rules (neardup.py) and the notes' bounds and themes (notes.py), as pure
functions over hand-made versions of the files."""

from __future__ import annotations

from autoresearch.config import NotesSettings
from autoresearch.neardup import NearDuplicates, fingerprint, within
from autoresearch.notes import add_entry, bound, themes_of

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


def test_the_summary_groups_outcomes_by_theme_with_the_best_effect(tmp_path):
    from autoresearch.experiment import Kind, Status
    from autoresearch.ledger import Ledger
    from autoresearch.notes import Tried

    commits = {"base": TRAIN, "lr": TRAIN.replace("LR = 0.01", "LR = 0.02"),
               "lr2": TRAIN.replace("LR = 0.01", "LR = 0.05"),
               "code": TRAIN.replace("return x * LR + WIDTH", "return x * LR"),
               "both": TRAIN.replace("LR = 0.01", "LR = 0.03").replace("WIDTH = 64", "WIDTH = 8")}
    ledger = Ledger(tmp_path / "l.db")
    rows = [ledger.add_experiment("t", kind=Kind.BASELINE, status=Status.KEEP, commit_sha="base",
                                  metric=1.0, decision={"holdout": 0.123456})]
    for commit, status, metric in [("lr", Status.DISCARD, 1.1), ("lr2", Status.KEEP, 0.9),
                                   ("code", Status.CRASH, None), ("both", Status.DUPLICATE, None)]:
        rows.append(ledger.add_experiment("t", kind=Kind.CANDIDATE, status=status, parent="base",
                                          commit_sha=commit, metric=metric))
    by_commit = {e.commit_sha: e for e in rows}
    tried = Tried(lambda c: {"train.py": commits[c]}, "minimize", max_chars=2000,
                  commit_row=by_commit.get)
    for e in rows:
        tried.note(e)
    text = tried.render()
    lines = {ln.split(" | ")[0].strip("| "): ln for ln in text.splitlines() if ln.startswith("| train")}
    assert lines["train.py: LR"] == "| train.py: LR | 3 | 1 | 1 | 0 | 1 | +0.1 (#3) |"
    assert lines["train.py: WIDTH"] == "| train.py: WIDTH | 1 | 0 | 0 | 0 | 1 | - |"
    assert lines["train.py (code)"] == "| train.py (code) | 1 | 0 | 0 | 1 | 0 | - |"
    assert "0.1235" not in text and "0.123456" not in text       # never the holdout
    short = Tried(tried.read, "minimize", max_chars=330, commit_row=by_commit.get)
    for e in rows:
        short.note(e)
    cut = short.render()
    assert len(cut) <= 330 and "rarer themes not shown" in cut
    assert "train.py: LR" in cut                                 # the most tried first
    # a row that changes is counted again where it now belongs (a keep the holdout reverted)
    ledger.update(rows[2].id, status=Status.DISCARD)
    rows[2].status = Status.DISCARD
    tried.observe(rows[2])
    lr = next(ln for ln in tried.render().splitlines() if ln.startswith("| train.py: LR "))
    assert lr == "| train.py: LR | 3 | 0 | 2 | 0 | 1 | +0.1 (#3) |"
    ledger.close()


def test_the_constants_rule_over_hundreds_of_experiments_matches_it_one_by_one() -> None:
    """Rule 2 compares with all of the latest WINDOW experiments of a skeleton at once; it must
    name the same (latest) match as the rule applied to each in turn, NaN, infinities, huge
    values and the window's edge included."""
    import random

    from autoresearch import neardup

    settings = NotesSettings()
    rng = random.Random(7)
    values = [0.0, 1.0, 1.005, 1.02, -1.0, float("nan"), float("inf"), -float("inf"), 1e308,
              -1e308, 100.0, 100.5, 3.0]

    def one_by_one(mine, known):
        for k in reversed(known[-neardup.WINDOW:]):
            pairs = [(a, b) for a, b in zip(mine, k.numbers, strict=True) if a != b]
            if pairs and all(within(a, b, settings.constant_tolerance) for a, b in pairs):
                return k
        return None

    checked = matched = 0
    for trial in range(40):
        width = trial % 4
        near = NearDuplicates(settings, lambda commit: {})
        skeleton = None
        for i in range(neardup.WINDOW + 80 if trial == 0 else 40):
            numbers = tuple(rng.choice(values) for _ in range(width))
            version = neardup.Version((("train.py", neardup.FileFingerprint("c", "s", numbers)),))
            skeleton = version.skeleton
            if i and rng.random() < 0.3:
                expected = one_by_one(numbers, near._skeleton[skeleton])
                assert near._same_constants(version) is expected
                checked += 1
                matched += expected is not None
            near._skeleton.setdefault(skeleton, []).append(neardup._Known(i, numbers, None, "c"))
    assert checked > 300 and 0 < matched < checked
