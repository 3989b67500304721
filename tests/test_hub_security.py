"""Attacks on the hub, each over real HTTP against a real `hub serve` process: every attempt
gets a clear HTTP error and leaves nothing behind (no claim, verification, user, ref, object or
quarantine file)."""

from __future__ import annotations

import base64
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import build_target, git, train_source
from hubkit import HubProcess, add_user, http, make_claim

pytest.importorskip("fastapi")


class World:
    def __init__(self, root: Path, data: Path, hub: HubProcess, keys: dict[str, str], base: str):
        self.root, self.data, self.hub, self.keys, self.base = root, data, hub, keys, base

    def user(self, name: str, role: str = "contributor") -> str:
        code, body = http(self.hub.url + "/api/users", "POST", {"name": name, "role": role},
                          self.keys["admin"])
        assert code == 201, body
        return body["key"]

    def snapshot(self) -> dict:
        db = sqlite3.connect(self.data / "hub.db")
        counts = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("claims", "verifications", "users", "best", "chain")}
        db.close()
        repo = self.data / "repo.git"
        refs = git(repo, "for-each-ref", "--format=%(refname) %(objectname)")
        objects = git(repo, "count-objects", "-v")
        quarantine = sorted(p.name for p in (self.data / "quarantine").glob("*")) \
            if (self.data / "quarantine").exists() else []
        return {"counts": counts, "refs": refs, "objects": objects, "quarantine": quarantine}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    base_dir = tmp_path_factory.mktemp("hubsec")
    root = build_target(base_dir)
    data = base_dir / "hubdata"
    data.mkdir()
    admin = add_user(data, "root", "admin")
    hub = HubProcess(root, data, None, "--rate-limit", "6").start()
    w = World(root, data, hub, {"admin": admin}, git(root, "rev-parse", "HEAD"))
    w.keys["alice"] = w.user("alice")
    w.keys["bob"] = w.user("bob")
    w.keys["ver"] = w.user("ver", "verifier")
    # one legitimate claim by alice, for the attacks that need one
    sha, claim = make_claim(root, w.base, 8.0)
    code, body = http(hub.url + "/api/claims", "POST", claim, w.keys["alice"])
    assert code == 201, body
    w.alice_claim = body["id"]
    w.alice_commit = sha
    w.alice_body = claim
    yield w
    hub.stop()


def attempt(world: World, method: str, path: str, body=None, key: str | None = None,
            **kw) -> tuple[int, str]:
    before = world.snapshot()
    code, answer = http(world.hub.url + path, method, body, key, **kw)
    assert isinstance(answer, dict) and isinstance(answer.get("detail"), str), answer
    assert world.snapshot() == before, f"{method} {path} left something behind"
    return code, answer["detail"]


def test_no_key_is_401_on_every_private_endpoint(world):
    for method, path, body in (("POST", "/api/claims", world.alice_body),
                               ("GET", f"/api/claims/{world.alice_claim}", None),
                               ("GET", "/api/claims", None),
                               ("GET", "/api/best?hardware=cpu-test", None),
                               ("POST", "/api/leases", {"hardware": "cpu-test"}),
                               ("POST", "/api/leases/1/report", {"outcome": "crash"}),
                               ("POST", "/api/users", {"name": "eve", "role": "admin"})):
        code, detail = attempt(world, method, path, body)
        assert code == 401 and "API key" in detail, (path, code, detail)
    code, detail = attempt(world, "GET", "/api/claims", key="arh_not-a-real-key")
    assert code == 401 and "unknown API key" in detail


def test_wrong_role_is_403(world):
    code, detail = attempt(world, "POST", "/api/leases", {"hardware": "cpu-test"},
                           world.keys["alice"])
    assert code == 403 and "verifier" in detail
    _sha, claim = make_claim(world.root, world.base, 7.5)
    code, detail = attempt(world, "POST", "/api/claims", claim, world.keys["ver"])
    assert code == 403 and "contributor" in detail
    code, detail = attempt(world, "POST", "/api/users", {"name": "eve", "role": "admin"},
                           world.keys["alice"])
    assert code == 403 and "admin" in detail


def test_another_users_claim_and_its_code_are_403(world):
    code, detail = attempt(world, "GET", f"/api/claims/{world.alice_claim}", key=world.keys["bob"])
    assert code == 403 and "another user" in detail
    code, detail = attempt(world, "GET", f"/api/git/bundle?want={world.alice_commit}",
                           key=world.keys["bob"])
    assert code == 403 and "another user" in detail
    # the owner may read both
    assert http(world.hub.url + f"/api/claims/{world.alice_claim}", key=world.keys["alice"])[0] == 200


def test_oversize_bundle_is_413_before_it_is_read(world):
    key = world.user("big")
    _sha, claim = make_claim(world.root, world.base, 7.0)
    claim["bundle"] = base64.b64encode(b"\0" * (50 * 2**20 + 1)).decode()
    code, detail = attempt(world, "POST", "/api/claims", claim, key)
    assert code == 413 and "bytes" in detail


def test_malformed_and_truncated_bundles_are_400(world):
    key = world.user("mal")
    sha, claim = make_claim(world.root, world.base, 7.1)
    good = base64.b64decode(claim["bundle"])
    for payload, words in ((b"this is not a bundle", "not a git bundle"),
                           (good[: len(good) - 40], "object checks"),
                           (good.replace(b"# v2 git bundle", b"# v2 git bundle\n@filter=blob:none"),
                            "")):
        bad = dict(claim, bundle=base64.b64encode(payload).decode())
        code, detail = attempt(world, "POST", "/api/claims", bad, key)
        assert code == 400 and words in detail, (code, detail)
    code, detail = attempt(world, "POST", "/api/claims", dict(claim, bundle="!!not base64!!"), key)
    assert code == 400 and "base64" in detail


def test_bundle_touching_a_locked_file_is_422(world):
    key = world.user("locker")
    _sha, claim = make_claim(world.root, world.base, 1.0, files={
        "train.py": train_source(1.0), "evaluate.py": "print('score: 0.0')\n"})
    code, detail = attempt(world, "POST", "/api/claims", claim, key)
    assert code == 422 and "locked file(s) evaluate.py" in detail
    for path in ("README.md", "autoresearch.toml", "program.md"):
        _sha, claim = make_claim(world.root, world.base, 1.0, files={path: "changed\n"})
        code, detail = attempt(world, "POST", "/api/claims", claim, key)
        assert code == 422 and path in detail


def test_symlink_in_place_of_an_editable_file_is_422(world):
    key = world.user("linker")
    r = git(world.root, "rev-parse", "HEAD")
    blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=world.root,
                          input=b"/etc/passwd", capture_output=True).stdout.decode().strip()
    tree_entries = git(world.root, "ls-tree", r).splitlines()
    lines = [e if not e.endswith("\ttrain.py") else f"120000 blob {blob}\ttrain.py" for e in tree_entries]
    tree = subprocess.run(["git", "mktree"], cwd=world.root, input="\n".join(lines) + "\n",
                          capture_output=True, text=True).stdout.strip()
    commit = git(world.root, "-c", "user.name=x", "-c", "user.email=x@x", "commit-tree", tree,
                 "-p", r, "-m", "symlink")
    from autoresearch.hub.repo import local
    from autoresearch.ratchet import Ratchet
    bundle = local(Ratchet(world.root)).bundle(commit, [r])
    claim = {"bundle": base64.b64encode(bundle).decode(), "parent": r, "hardware": "cpu-test",
             "metric": 1.0, "runs": [1.0]}
    code, detail = attempt(world, "POST", "/api/claims", claim, key)
    assert code == 422 and "only regular files" in detail


def test_faked_claim_of_the_baseline_code_is_refused(world):
    """The code is the baseline's, the claim says 10% better: nothing changed, nothing to run."""
    key = world.user("faker")
    base_train = git(world.root, "show", f"{world.base}:train.py") + "\n"
    _sha, claim = make_claim(world.root, world.base, 9.0, files={"train.py": base_train},
                             metric=9.0)
    code, detail = attempt(world, "POST", "/api/claims", claim, key)
    assert code == 422 and "changes nothing" in detail


def test_self_verification_is_impossible(world):
    """An admin (who may both claim and verify) never gets a lease on its own claim, and no
    verifier can report on a lease it does not hold."""
    admin = world.keys["admin"]
    _sha, claim = make_claim(world.root, world.base, 6.0, hardware="cpu-self")
    code, body = http(world.hub.url + "/api/claims", "POST", claim, admin)
    assert code == 201, body
    before = world.snapshot()
    code, _ = http(world.hub.url + "/api/leases", "POST", {"hardware": "cpu-self"}, admin)
    assert code == 204 and world.snapshot() == before
    code, lease = http(world.hub.url + "/api/leases", "POST", {"hardware": "cpu-self"},
                       world.keys["ver"])
    assert code == 200 and lease["claim_id"] == body["id"]
    code, detail = attempt(world, "POST", f"/api/leases/{lease['verification_id']}/report",
                           {"outcome": "measured", "candidate_runs": [1, 1.1],
                            "best_runs": [9, 9.1]}, admin)
    assert code == 403 and "another verifier" in detail


def test_replaying_an_old_claim_is_409(world):
    code, detail = attempt(world, "POST", "/api/claims", world.alice_body, world.keys["alice"])
    assert code == 409 and "already claimed" in detail
    code, detail = attempt(world, "POST", "/api/claims", world.alice_body, world.keys["bob"])
    assert code == 409 and "already claimed" in detail


def test_flooding_past_the_rate_limit_is_429(world):
    key = world.user("flood")
    codes = []
    for i in range(6):
        _sha, claim = make_claim(world.root, world.base, 100.0 + i)
        codes.append(http(world.hub.url + "/api/claims", "POST", claim, key)[0])
    assert codes == [201] * 6
    _sha, claim = make_claim(world.root, world.base, 200.0)
    code, detail = attempt(world, "POST", "/api/claims", claim, key)
    assert code == 429 and "rate limit" in detail


def test_bad_input_names_the_field(world):
    key = world.user("typo")
    _sha, claim = make_claim(world.root, world.base, 5.5)
    for bad, field in ((dict(claim, metric="NaN"), "metric"),
                       (dict(claim, hardware="../../etc"), "hardware"),
                       (dict(claim, parent="HEAD"), "parent"),
                       (dict(claim, admin=True), "admin")):
        code, detail = attempt(world, "POST", "/api/claims", bad, key)
        assert code == 422 and field in detail, (field, detail)
