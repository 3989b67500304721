"""The driver's memory stays bounded on long runs: libgit2's caches and pack windows are capped,
a row held in memory is compact (slots, shared JSON keys), indexes and the near-duplicate index
keep only what their questions need, and a run loads only the policy it uses.

The figure itself (peak RSS at 10,000 experiments) is bench/scaling.py's; these tests pin the
mechanisms behind it."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch import ratchet as ratchet_mod
from autoresearch.config import NotesSettings
from autoresearch.experiment import Kind, Status
from autoresearch.ledger import MEASURED, Ledger, PackedJSON, dumps
from autoresearch.neardup import WINDOW, NearDuplicates
from autoresearch.policies.base import FIT_SPAN
from autoresearch.state import RunState

pygit2 = pytest.importorskip("pygit2")


def _repo(path: Path) -> Path:
    path.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=path, check=True)
    (path / "train.py").write_text("LR = 0.1\n")
    subprocess.run([*git, "add", "-A"], cwd=path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "base"], cwd=path, check=True)
    return path


@pytest.fixture
def libgit2_defaults(monkeypatch):
    """libgit2's settings are process-wide: start from its defaults, put back what was there."""
    s = pygit2.settings
    saved = (s.cached_memory[1], s.mwindow_size, s.mwindow_mapped_limit)
    monkeypatch.delenv(ratchet_mod.PLUMBING_ENV, raising=False)
    monkeypatch.setattr(ratchet_mod, "_libgit2_bounded", False)
    s.cache_max_size(256 * 2**20)
    s.mwindow_size = 2**30
    s.mwindow_mapped_limit = 8 * 2**30
    yield s
    s.cache_max_size(saved[0])
    s.mwindow_size, s.mwindow_mapped_limit = saved[1], saved[2]


def test_opening_a_ratchet_caps_libgit2s_object_cache_and_pack_windows(tmp_path, libgit2_defaults):
    repo = _repo(tmp_path / "repo")
    r = ratchet_mod.Ratchet(repo)
    assert r.in_process
    s = libgit2_defaults
    assert s.cached_memory[1] == ratchet_mod._LIBGIT2_CACHE == 2**20
    assert s.mwindow_size == ratchet_mod._LIBGIT2_WINDOW < 2**30
    assert s.mwindow_mapped_limit == ratchet_mod._LIBGIT2_MAPPED < 8 * 2**30
    # commits are still made in-process under the caps
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()
    made = r.make_commit(head, "m", files={"train.py": "LR = 0.2\n"})
    assert r.read_files(made.sha, ["train.py"]) == {"train.py": "LR = 0.2\n"}


def test_a_lower_libgit2_limit_set_by_the_embedding_program_is_kept(tmp_path, libgit2_defaults):
    s = libgit2_defaults
    s.cache_max_size(2**16)
    s.mwindow_mapped_limit = 2**24
    ratchet_mod.Ratchet(_repo(tmp_path / "repo"))
    assert s.cached_memory[1] == 2**16 and s.mwindow_mapped_limit == 2**24


def test_a_row_in_memory_has_no_per_instance_dict_and_shares_its_json_keys(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    s = RunState(ledger, ledger.create_run("t", "c0", "score", "minimize", "a", "p", {}))
    a, b = (s.add(kind=Kind.CANDIDATE, status=Status.RUNNING, tree_sha=f"t{i}") for i in range(2))
    for e, v in ((a, 1.0), (b, 2.0)):
        s.update(e, status=Status.DISCARD, metric=v, metrics={"val_loss": v},
                 decision={"verdict": "discard", "evidence": {"candidate": v}})
    assert not hasattr(a, "__dict__") and not hasattr(a.history_entry(), "__dict__")
    (ka,), (kb,) = a.metrics.keys(), b.metrics.keys()
    assert ka == kb == "val_loss" and ka is kb
    assert [k for k in a.decision if k == "evidence"][0] is [k for k in b.decision
                                                            if k == "evidence"][0]
    # a row read back from the ledger (a resume) shares them too, and equals the written one
    again = RunState.load(ledger, s.run)
    assert again.get(a.id) == a and next(iter(again.get(b.id).metrics)) is ka


def test_a_decision_record_is_held_packed_and_reads_as_the_dict_written(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    s = RunState(ledger, ledger.create_run("t", "c0", "score", "minimize", "a", "p", {}))
    record = {"verdict": "keep", "at": 3, "evidence": {"runs": 2, "shrink": 0.25,
                                                      "first_run": {"effect": -1.5}}}
    e = s.add(kind=Kind.CANDIDATE, status=Status.RUNNING, tree_sha="t0")
    s.update(e, status=Status.KEEP, metric=1.0, decision=record)
    for row in (e, RunState.load(ledger, s.run).get(e.id), ledger.get(e.id)):
        assert isinstance(row.decision, PackedJSON)         # packed, not a decoded dict
        assert row.decision == record and dict(row.decision) == record
        assert row.decision["evidence"]["first_run"] == {"effect": -1.5}
        assert row.decision.get("at") == 3 and row.decision.get("missing", 7) == 7
        assert {**row.decision, "holdout_alarm": 1}["verdict"] == "keep"
        assert json.loads(dumps(row))["decision"] == record   # the one encoder writes the dict
    # written back (a later update of the same row), the record is stored unchanged
    s.update(e, notes="again")
    assert ledger.get(e.id).decision == record
    empty = s.add(kind=Kind.CANDIDATE, status=Status.RUNNING, tree_sha="t1")
    s.update(empty, status=Status.DISCARD, decision={})
    assert not (ledger.get(empty.id).decision or {}) and (empty.decision or {}) == {}


def test_a_default_policy_decision_is_held_in_a_fifth_of_its_text(tmp_path):
    """The default policy's record, as the judge writes it after a real decision, is held
    packed: far smaller than its text, and read back exactly."""
    import random

    from autoresearch.config import PolicySettings
    from autoresearch.policies import PolicyContext, Sample
    from autoresearch.policies.posterior import PosteriorPolicy

    rng = random.Random(7)
    best = Sample([1.0 + rng.gauss(0, 0.01) for _ in range(5)], lines=100)
    cand = Sample([0.995 + rng.gauss(0, 0.01)], lines=101)
    ctx = PolicyContext(direction="minimize", settings=PolicySettings(),
                        replicate_groups=[best.values])
    d = PosteriorPolicy().decide(cand, best, ctx)
    record = {"verdict": d.verdict.value, "reason": d.reason, "evidence": d.evidence,
              "at": 1796040748.25 + rng.random(), "against": 3}
    text = dumps(record)
    packed = PackedJSON(text)
    assert packed.text == text and dict(packed) == json.loads(text)
    assert len(text) > 800 and len(packed._packed) < len(text) / 4


def test_replicate_groups_follow_every_write_as_a_rebuild_from_the_rows_would(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    s = RunState(ledger, ledger.create_run("t", "c0", "score", "minimize", "a", "p", {}))

    def rebuilt() -> list[list[float]]:
        groups: dict[str, list[float]] = {}
        for r in s.rows.values():
            if r.tree_sha and r.metric is not None and r.status in MEASURED:
                groups.setdefault(r.tree_sha, []).append(r.metric)
        return sorted(sorted(v) for v in groups.values() if len(v) >= 2)

    def held() -> list[list[float]]:
        return sorted(sorted(g) for g in s.replicate_groups())

    rows = [s.add(kind=Kind.CANDIDATE, status=Status.RUNNING, tree_sha=f"t{i % 3}")
            for i in range(7)]
    steps = [(0, Status.PENDING, 1.0), (3, Status.REPEAT, 1.5), (1, Status.DISCARD, 2.0),
             (6, Status.REPEAT, 1.25), (3, Status.INVALID, None),       # a group of 3 loses one
             (4, Status.DISCARD, 2.5), (0, Status.RUNNING, None),       # t0 falls to one value
             (0, Status.KEEP, 0.75), (1, Status.CRASH, None),           # t0 back to two; t1 to one
             (4, Status.DISCARD, 3.0)]                                  # re-measured, still one
    for i, status, metric in steps:
        s.update(rows[i], status=status, metric=metric)
        assert held() == rebuilt()
    assert held() == [[0.75, 1.25]]
    assert sorted(sorted(g) for g in RunState.load(ledger, s.run).replicate_groups()) == held()


def test_the_policy_sees_the_latest_replicate_groups_the_ledger_lists(tmp_path, monkeypatch):
    """Past RECENT_GROUPS groups the run state passes the latest ones, by first measurement,
    exactly as the end of the ledger's list (what `status` reads): the same groups, in the same
    order, with their values by id, through re-measurements of old trees and status changes."""
    import autoresearch.state as state_mod
    monkeypatch.setattr(state_mod, "RECENT_GROUPS", 5)
    ledger = Ledger(tmp_path / "ledger.db")
    s = RunState(ledger, ledger.create_run("t", "c0", "score", "minimize", "a", "p", {}))
    rng = random.Random(11)
    rows = []
    for i in range(60):
        tree = f"t{rng.randrange(14)}" if rows and rng.random() < 0.6 else f"n{i}"
        e = s.add(kind=Kind.CANDIDATE, status=Status.RUNNING, tree_sha=tree)
        rows.append(e)
        s.update(e, status=rng.choice([Status.DISCARD, Status.REPEAT, Status.KEEP]),
                 metric=round(rng.uniform(0, 10), 3))
        if rng.random() < 0.2:   # an earlier row changes: invalidated, or measured again
            old = rng.choice(rows)
            if rng.random() < 0.5:
                s.update(old, status=Status.INVALID, metric=None)
            else:
                s.update(old, status=Status.DISCARD, metric=round(rng.uniform(0, 10), 3))
        listed = ledger.replicate_groups("t")
        assert s.replicate_groups() == listed[-5:]
        # the seeded ones: the same, but those measured over more than FIT_SPAN experiments
        runs: dict[str, list[tuple[int, float]]] = {}
        for r in ledger.iter_experiments("t"):
            if r.metric is not None and r.status in MEASURED:
                runs.setdefault(r.tree_sha, []).append((r.seq, r.metric))
        span = {tuple(m for _, m in v): v[-1][0] - v[0][0] for v in runs.values() if len(v) >= 2}
        assert [list(g.values) for g in s.seeded_groups()] == \
            [g for g in listed[-5:] if span[tuple(g)] <= FIT_SPAN]
    assert len(ledger.replicate_groups("t")) > 5
    again = RunState.load(ledger, s.run)
    assert again.replicate_groups() == ledger.replicate_groups("t")[-5:]


def test_the_near_duplicate_index_keeps_changes_only_for_the_window_it_compares(tmp_path):
    files = {"base": {"train.py": "A = 1\n"}}
    for i in range(WINDOW + 50):
        files[f"c{i}"] = {"train.py": f"A = 1\nB_{i} = {i}\nC_{i} = 0\n"}
    near = NearDuplicates(NotesSettings(), lambda c: {p: (f"{c}:{p}", t)
                                                      for p, t in files[c].items()})
    files["new"] = {"train.py": "A = 1\nB_x = 0\nC_x = 0\n"}    # like none of them (4 of 8 lines)
    near.add(1, "base", None)
    for i in range(WINDOW + 50):
        near.add(i + 2, f"c{i}", "base")
        if i % 10 == 9:   # proposals checked as the run goes: the window moves on
            assert near.find("new", "base") is None
    held = [k for ks in near._skeleton.values() for k in ks if k.change is not None]
    assert len(held) == WINDOW and min(k.exp_id for k in held) == 52
    # a change like one inside the window is still found
    files["again"] = {"train.py": f"A = 1\nB_{WINDOW + 49} = {WINDOW + 49}\nC_{WINDOW + 49} = 0\n"
                                  f"# {WINDOW + 49}\n"}
    m = near.find("again", "base")
    assert m is not None and m.exp_id == WINDOW + 51


def test_a_greedy_run_does_not_load_the_statistical_policies_libraries():
    code = ("import sys; from autoresearch.policies import make_policy; make_policy('greedy'); "
            "print(sorted(m for m in ('scipy', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    code = code.replace("'greedy'", "'noise-aware'").replace("('scipy', 'numpy')",
                                                             "('scipy', 'numpy', 'scipy.stats')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # the default policy needs numpy and scipy.special, not scipy.stats (45 MB more)
    assert out.stdout.strip() == "['numpy', 'scipy']"
