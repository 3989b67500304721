"""The hub's storage contract, run against every backend: SQLite (always) and PostgreSQL (a
throwaway cluster, where installed). Then the hub's rules on top of each backend: quorum,
disagreement, self-verification, compare-and-swap of the best, rebase and conflict."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from conftest import build_target, git, train_source
from hubkit import make_claim

from autoresearch.config import load_target
from autoresearch.errors import AutoresearchError
from autoresearch.hub.models import ClaimIn, ReportIn
from autoresearch.hub.service import Hub, HubError, HubSettings, welch_p
from autoresearch.hub.store import Conflict, HubStore, open_store


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> str | None:
    """None (SQLite in the data dir) or the URL of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.db'}"
    cluster = request.getfixturevalue("postgres_cluster")
    return cluster.fresh_db("t" + uuid.uuid4().hex[:12])


@pytest.fixture
def store(db_url, tmp_path) -> HubStore:
    s = open_store(db_url, tmp_path)
    yield s
    s.close()


def _claim_fields(**kw):
    base = dict(user_id=1, hardware="cpu-2core", kind="claim", parent="a" * 40,
                commit_sha=uuid.uuid4().hex + "00000000", tree_sha="t" * 40, status="queued",
                needed=2, claimed_metric=1.0, claimed_runs=[1.0, 1.1], flags=["x"])
    base.update(kw)
    return base


def test_users_are_found_by_key_hash_and_names_are_unique(store):
    u = store.add_user("alice", "contributor", "h" * 64)
    assert store.user_by_key_hash("h" * 64).name == "alice"
    assert store.user_by_key_hash("nope") is None
    with pytest.raises(AutoresearchError, match="already exists"):
        store.add_user("alice", "admin", "g" * 64)
    store.set_streak(u.id, 3)
    assert store.user(u.id).streak == 3


def test_claims_round_trip_with_json_fields_and_filters(store):
    c = store.add_claim(**_claim_fields())
    assert store.claim(c.id).claimed_runs == [1.0, 1.1] and store.claim(c.id).flags == ["x"]
    assert store.claim_by_commit(c.commit_sha).id == c.id
    assert store.claim_by_tree("t" * 40, "cpu-2core").id == c.id
    assert store.claim_by_tree("t" * 40, "H100-80GB") is None
    store.update_claim(c.id, status="verified", flags=["a", "b"])
    assert store.claim(c.id).status == "verified" and store.claim(c.id).flags == ["a", "b"]
    store.add_claim(**_claim_fields(user_id=2))
    assert [x.user_id for x in store.claims(user_id=2)] == [2]
    assert store.claims_since(1, 0) == 1
    assert store.count_claims() == {"verified": 1, "queued": 1}
    with pytest.raises(Conflict):   # the same commit cannot be claimed twice
        store.add_claim(**_claim_fields(commit_sha=c.commit_sha))
    assert len(store.claims()) == 2


def test_a_failed_transaction_leaves_nothing(store):
    with pytest.raises(RuntimeError):
        with store.atomic():
            store.add_claim(**_claim_fields())
            store.add_user("bob", "verifier", "b" * 64)
            raise RuntimeError("boom")
    assert store.claims() == [] and store.users() == []


def test_leases_expire(store):
    c = store.add_claim(**_claim_fields())
    v = store.add_verification(claim_id=c.id, verifier_id=5, against="a" * 40, status="leased",
                               expires=100.0)
    fresh = store.add_verification(claim_id=c.id, verifier_id=6, against="a" * 40,
                                   status="leased", expires=10_000.0)
    assert store.expire_leases(now=500.0) == [c.id]
    assert store.verification(v.id).status == "expired"
    assert store.verification(fresh.id).status == "leased"
    assert [x.id for x in store.active_leases()] == [fresh.id]


def test_best_moves_only_by_compare_and_swap(store):
    b = store.init_best("cpu-2core", "a" * 40)
    assert store.init_best("cpu-2core", "z" * 40).commit_sha == "a" * 40   # idempotent
    assert store.swap_best("cpu-2core", b.version, "b" * 40, 1, 0.5)
    assert not store.swap_best("cpu-2core", b.version, "c" * 40, 2, 0.4)  # stale version
    assert store.best("cpu-2core").commit_sha == "b" * 40
    assert store.best("cpu-2core").version == b.version + 1


def test_concurrent_swaps_from_two_connections_have_one_winner(db_url, tmp_path):
    stores = [open_store(db_url, tmp_path) for _ in range(2)]
    try:
        b = stores[0].init_best("cpu-2core", "a" * 40)
        wins = []
        barrier = threading.Barrier(8)

        def swap(i: int) -> None:
            barrier.wait()
            if stores[i % 2].swap_best("cpu-2core", b.version, f"{i:040d}", i, float(i)):
                wins.append(i)

        threads = [threading.Thread(target=swap, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1
        assert stores[1].best("cpu-2core").commit_sha == f"{wins[0]:040d}"
    finally:
        for s in stores:
            s.close()


def test_committed_rows_survive_reopening(db_url, tmp_path):
    s = open_store(db_url, tmp_path)
    c = s.add_claim(**_claim_fields())
    s.close()
    s = open_store(db_url, tmp_path)
    assert s.claim(c.id).commit_sha == c.commit_sha
    s.close()


def test_bad_database_urls_say_what_to_use(tmp_path):
    with pytest.raises(AutoresearchError, match="sqlite:///PATH or postgresql://"):
        open_store("mysql://x", tmp_path)
    with pytest.raises(AutoresearchError, match="cannot connect"):
        open_store("postgresql://nobody@127.0.0.1:1/none", tmp_path)


# == the rules, on each backend =================================================================
def _hub(tmp_path: Path, db_url: str, **settings) -> tuple[Hub, Path]:
    root = build_target(tmp_path)
    store = open_store(db_url, tmp_path)
    return Hub.open(load_target(root), store, tmp_path / "hubdata",
                    HubSettings(**settings)), root


def _submit(hub: Hub, user, root: Path, parent: str, value: float, **kw):
    _sha, body = make_claim(root, parent, value, **kw)
    return hub.submit(user, ClaimIn(**body))


def _measured(cand, best):
    return ReportIn(outcome="measured", candidate_runs=cand, best_runs=best)


def test_a_claim_needs_the_quorum_and_nobody_verifies_their_own(db_url, tmp_path):
    hub, root = _hub(tmp_path, db_url)
    alice = hub.store.add_user("alice", "admin", "1" * 64)
    v1 = hub.store.add_user("v1", "verifier", "2" * 64)
    v2 = hub.store.add_user("v2", "verifier", "3" * 64)
    c = _submit(hub, alice, root, hub.base, 8.0)
    assert hub.lease(alice, "cpu-test") is None          # her own claim
    l1 = hub.lease(v1, "cpu-test")
    assert l1.claim_id == c.id and hub.lease(v1, "cpu-test") is None  # one result per verifier
    claim = hub.report(v1, l1.verification_id, _measured([8.0, 8.1, 7.9], [10.0, 10.1, 9.9]))
    assert claim.status == "queued" and hub.best("cpu-test").commit_sha == hub.base
    l2 = hub.lease(v2, "cpu-test")
    claim = hub.report(v2, l2.verification_id, _measured([8.0, 8.05, 7.95], [10.0, 10.1, 9.9]))
    assert claim.status == "verified" and claim.p_value < 0.01
    best = hub.best("cpu-test")
    assert best.commit_sha == c.commit_sha and best.claim_id == c.id
    assert [link.claim_id for link in hub.store.chain("cpu-test")] == [c.id]
    assert hub.store.user(alice.id).streak == 1
    assert hub.repo.resolve("refs/best/cpu-test") == c.commit_sha


def test_disagreement_brings_another_verifier_and_no_gain_is_rejected(db_url, tmp_path):
    hub, root = _hub(tmp_path, db_url)
    alice = hub.store.add_user("alice", "contributor", "1" * 64)
    vs = [hub.store.add_user(f"v{i}", "verifier", f"{i}" * 64) for i in range(2, 6)]
    c = _submit(hub, alice, root, hub.base, 5.0)
    hub.report(vs[0], hub.lease(vs[0], "cpu-test").verification_id,
               _measured([9.0, 9.2, 9.1], [10.0, 10.1, 9.9]))
    claim = hub.report(vs[1], hub.lease(vs[1], "cpu-test").verification_id,
                       _measured([10.3, 10.2, 10.4], [10.0, 10.1, 9.9]))
    assert claim.status == "queued" and claim.needed == 3
    assert any("disagree" in f for f in claim.flags)
    claim = hub.report(vs[2], hub.lease(vs[2], "cpu-test").verification_id,
                       _measured([10.1, 10.0, 10.2], [10.0, 10.1, 9.9]))
    assert claim.status == "rejected" and "p =" in claim.reason and "claimed 5" in claim.reason
    assert hub.best("cpu-test").commit_sha == hub.base
    assert hub.store.chain("cpu-test") == [] and c.id == claim.id


def test_a_disagreement_no_new_verifier_comes_for_is_decided_after_a_lease_period(db_url,
                                                                                  tmp_path):
    from hubkit import wait_for

    hub, root = _hub(tmp_path, db_url, lease_seconds=0.3)
    alice = hub.store.add_user("alice", "contributor", "1" * 64)
    v1 = hub.store.add_user("v1", "verifier", "2" * 64)
    v2 = hub.store.add_user("v2", "verifier", "3" * 64)
    c = _submit(hub, alice, root, hub.base, 5.0)
    hub.report(v1, hub.lease(v1, "cpu-test").verification_id,
               _measured([9.0, 9.2, 9.1], [10.0, 10.1, 9.9]))
    claim = hub.report(v2, hub.lease(v2, "cpu-test").verification_id,
                       _measured([10.3, 10.2, 10.4], [10.0, 10.1, 9.9]))
    assert claim.status == "queued" and claim.needed == 3
    # only v1 and v2 exist; each lease attempt looks for stalled claims
    wait_for(lambda: hub.lease(v1, "cpu-test") is None and
             hub.store.claim(c.id).status not in ("queued", "verifying"), 10,
             "the stalled claim to be decided")
    assert hub.store.claim(c.id).status == "rejected"   # a 1-1 split is no majority for a gain


def test_a_claim_against_an_older_best_is_rebased_or_refused_on_conflict(db_url, tmp_path):
    hub, root = _hub(tmp_path, db_url, quorum=1)
    alice = hub.store.add_user("alice", "contributor", "1" * 64)
    bob = hub.store.add_user("bob", "contributor", "2" * 64)
    v = hub.store.add_user("v", "verifier", "3" * 64)
    base_train = git(root, "show", f"{hub.base}:train.py") + "\n"
    first = _submit(hub, alice, root, hub.base, 8.0)
    # bob changes another line of train.py (merges cleanly) and then the same line (conflicts)
    clean = _submit(hub, bob, root, hub.base, 9.0, files={
        "train.py": base_train.replace("(EDITABLE).", "(EDITABLE), by bob.")})
    conflict = _submit(hub, bob, root, hub.base, 7.0)
    lease = hub.lease(v, "cpu-test")
    assert lease.claim_id == first.id
    hub.report(v, lease.verification_id, _measured([8.0, 8.01, 7.99], [10.0, 10.01, 9.99]))
    assert hub.best("cpu-test").commit_sha == first.commit_sha
    lease = hub.lease(v, "cpu-test")      # the next open claims were made against the old best
    assert hub.store.claim(clean.id).status == "rebased"
    assert hub.store.claim(conflict.id).status == "conflict"
    assert "conflicts with the new best" in hub.store.claim(conflict.id).reason
    rebased = hub.store.claim(lease.claim_id)
    assert rebased.rebased_from == clean.id and rebased.parent == first.commit_sha
    assert "VALUE = 8.0" in hub.repo.read_files(rebased.commit_sha, ["train.py"])["train.py"]


def test_the_best_moving_during_verification_rebases_the_winner(db_url, tmp_path):
    hub, root = _hub(tmp_path, db_url, quorum=1)
    alice = hub.store.add_user("alice", "contributor", "1" * 64)
    bob = hub.store.add_user("bob", "contributor", "2" * 64)
    v1 = hub.store.add_user("v1", "verifier", "3" * 64)
    v2 = hub.store.add_user("v2", "verifier", "4" * 64)
    base_train = git(root, "show", f"{hub.base}:train.py") + "\n"
    a = _submit(hub, alice, root, hub.base, 8.0)
    b = _submit(hub, bob, root, hub.base, 9.0, files={
        "train.py": base_train.replace("(EDITABLE).", "(EDITABLE), by bob.")})
    la, lb = hub.lease(v1, "cpu-test"), hub.lease(v2, "cpu-test")
    assert {la.claim_id, lb.claim_id} == {a.id, b.id}
    hub.report(v1, la.verification_id, _measured([8.0, 8.01, 7.99], [10.0, 10.01, 9.99]))
    # b is being verified against its parent: a lease now leaves it alone (no rebase yet)
    v3 = hub.store.add_user("v3", "verifier", "5" * 64)
    assert hub.lease(v3, "cpu-test") is None
    assert hub.store.claim(b.id).status == "verifying"
    claim = hub.report(v2, lb.verification_id, _measured([9.0, 9.01, 8.99], [10.0, 10.01, 9.99]))
    assert claim.status == "rebased" and "best moved" in claim.reason
    assert hub.best("cpu-test").commit_sha == a.commit_sha   # the CAS let exactly one in


def test_trusted_contributors_need_one_verifier_with_spot_checks(db_url, tmp_path):
    hub, root = _hub(tmp_path, db_url, trust_after=1, spot_check=0.0)
    alice = hub.store.add_user("alice", "contributor", "1" * 64)
    assert _submit(hub, alice, root, hub.base, 8.0).needed == 2
    hub.store.set_streak(alice.id, 1)
    assert _submit(hub, alice, root, hub.base, 7.0).needed == 1
    hub.settings.spot_check = 1.0
    c = _submit(hub, alice, root, hub.base, 6.0)
    assert c.needed == 2 and any("spot check" in f for f in c.flags)


def test_implausible_gains_are_flagged_and_verified_first(db_url, tmp_path):
    hub, root = _hub(tmp_path, db_url, quorum=1)
    alice = hub.store.add_user("alice", "contributor", "1" * 64)
    v = hub.store.add_user("v", "verifier", "2" * 64)
    hub.store.swap_best("cpu-test", hub.best("cpu-test").version, hub.base, None, 10.0)
    modest = _submit(hub, alice, root, hub.base, 9.5)
    wild = _submit(hub, alice, root, hub.base, 5.0)
    assert modest.flags == [] and "implausible" in wild.flags[0]
    assert hub.lease(v, "cpu-test").claim_id == wild.id


def test_duplicates_are_linked_and_near_duplicates_flagged(db_url, tmp_path):
    hub, root = _hub(tmp_path, db_url)
    alice = hub.store.add_user("alice", "contributor", "1" * 64)
    bob = hub.store.add_user("bob", "contributor", "2" * 64)
    first = _submit(hub, alice, root, hub.base, 8.0)
    dup = _submit(hub, bob, root, hub.base, 8.0, description="the same code, other words")
    assert dup.status == "duplicate" and dup.duplicate_of == first.id
    big = "".join(f"X{i} = {i}\n" for i in range(40))
    near_a = _submit(hub, alice, root, hub.base, 7.0, files={"train.py": train_source(7.0, extra=big)})
    near_b = _submit(hub, bob, root, hub.base, 7.1, files={"train.py": train_source(7.1, extra=big)})
    assert near_a.flags == []
    assert any(f.startswith(f"near-duplicate of #{near_a.id}") for f in near_b.flags)


def test_welch_p_is_one_sided_and_respects_min_effect():
    assert welch_p([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], "minimize", 0.0) < 0.01
    assert welch_p([2.0, 2.1, 1.9], [1.0, 1.1, 0.9], "minimize", 0.0) > 0.99
    assert welch_p([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], "maximize", 0.0) > 0.99
    assert welch_p([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], "minimize", 1.5) > 0.5
    assert welch_p([1.0, 1.0], [2.0, 2.0], "minimize", 0.0) == 0.0   # exact metric
    assert welch_p([1.0], [2.0, 2.1], "minimize", 0.0) == 1.0        # too few runs


def test_hub_errors_carry_a_status():
    assert HubError(409, "x").status == 409
