"""Reliability with real processes on 127.0.0.1: kill -9 of the hub loses no claim and no
verification (SQLite and PostgreSQL); a verifier that dies mid-run loses its lease to another;
clients reconnect with backoff to a hub that comes back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import build_target, cli_env, git, train_source
from hubkit import HubProcess, add_user, http, make_claim, stop_all, wait_for

from autoresearch.hub.client import HubClient

pytest.importorskip("fastapi")


@pytest.fixture(params=["sqlite", "postgres"])
def db(request) -> str | None:
    if request.param == "sqlite":
        return None
    import uuid
    cluster = request.getfixturevalue("postgres_cluster")
    return cluster.fresh_db("r" + uuid.uuid4().hex[:12])


def _claims(hub: HubProcess, key: str) -> dict[int, dict]:
    code, rows = http(hub.url + "/api/claims?limit=1000", key=key)
    assert code == 200, rows
    return {r["id"]: r for r in rows}


def test_kill_9_of_the_hub_loses_no_claim_and_no_verification(tmp_path, db):
    root = build_target(tmp_path)
    data = tmp_path / "hubdata"
    data.mkdir()
    admin = add_user(data, "root", "admin", db)
    hub = HubProcess(root, data, db, "--quorum", "2").start()
    try:
        keys = {}
        for name, role in (("alice", "contributor"), ("bob", "contributor"), ("v1", "verifier")):
            code, body = http(hub.url + "/api/users", "POST", {"name": name, "role": role}, admin)
            keys[name] = body["key"]
        base = git(root, "rev-parse", "HEAD")
        accepted: dict[int, str] = {}
        for i in range(3):
            sha, claim = make_claim(root, base, 5.0 + i)
            code, body = http(hub.url + "/api/claims", "POST", claim, keys["alice"])
            assert code == 201
            accepted[body["id"]] = sha
        code, lease = http(hub.url + "/api/leases", "POST", {"hardware": "cpu-test"}, keys["v1"])
        assert code == 200
        code, after = http(hub.url + f"/api/leases/{lease['verification_id']}/report", "POST",
                           {"outcome": "measured", "candidate_runs": [5.0, 5.1],
                            "best_runs": [10.0, 10.1], "seeds": [1, 2]}, keys["v1"])
        assert code == 200
        # bob floods claims from threads while the hub is killed in the middle
        claims = [make_claim(root, base, 50.0 + i) for i in range(12)]
        answered: list[tuple[int, str]] = []

        def send(i: int) -> None:
            try:
                code, body = http(hub.url + "/api/claims", "POST", claims[i][1], keys["bob"])
            except OSError:
                return
            if code == 201:
                answered.append((body["id"], claims[i][0]))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(12)]
        for t in threads[:6]:
            t.start()
        wait_for(lambda: len(answered) >= 2, 30, "some of bob's claims to be answered")
        for t in threads[6:]:
            t.start()
        hub.kill()
        for t in threads:
            t.join(30)
        hub.start()
        after_restart = _claims(hub, admin)
        for cid, sha in [*accepted.items(), *answered]:
            assert after_restart[cid]["commit"] == sha, f"claim #{cid} was lost"
        code, view = http(hub.url + f"/api/claims/{lease['claim_id']}", key=admin)
        done = [v for v in view["verifications"] if v["status"] == "done"]
        assert [v["candidate_runs"] for v in done] == [[5.0, 5.1]] and done[0]["verifier"] == "v1"
        # every recorded claim's code is in the repository; nothing unrecorded is pinned
        refs = git(data / "repo.git", "for-each-ref", "--format=%(objectname)", "refs/claims/")
        assert set(refs.split()) == {r["commit"] for r in after_restart.values()}
        assert not any((data / "quarantine").glob("*")) if (data / "quarantine").exists() else True
    finally:
        hub.stop()


def _hold_train(value: float, hold: Path) -> str:
    """train.py that waits while HOLD exists (a verifier's run we can catch in the middle)."""
    extra = (f"import os\nwhile os.path.exists({str(hold)!r}):\n    time.sleep(0.02)\n")
    return train_source(value, 0.0, extra)


def _verifier(hub: HubProcess, key: str, data: Path, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "autoresearch.cli", "verify", "--hub", hub.url, "--key", key,
         "--hardware", "cpu-test", "--data", str(data), "--poll", "0.1", *extra],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=cli_env(), start_new_session=True)


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="verify needs bubblewrap")
def test_a_dead_verifiers_lease_expires_and_another_verifier_finishes_through_a_hub_restart(
        tmp_path):
    root = build_target(tmp_path)
    data = tmp_path / "hubdata"
    data.mkdir()
    admin = add_user(data, "root", "admin")
    alice = add_user(data, "alice", "contributor")
    v1 = add_user(data, "v1", "verifier")
    v2 = add_user(data, "v2", "verifier")
    hub = HubProcess(root, data, None, "--quorum", "1", "--lease", "2", "--runs", "2").start()
    hold = tmp_path / "hold"
    hold.write_text("wait")
    procs: list[subprocess.Popen] = []
    try:
        base = git(root, "rev-parse", "HEAD")
        _sha, claim = make_claim(root, base, 8.0, files={"train.py": _hold_train(8.0, hold)})
        code, body = http(hub.url + "/api/claims", "POST", claim, alice)
        assert code == 201
        cid = body["id"]

        def leases() -> list[dict]:
            return http(hub.url + f"/api/claims/{cid}", key=admin)[1]["verifications"]

        first = _verifier(hub, v1, tmp_path / "v1", tmp_path / "v1.log")
        procs.append(first)
        wait_for(lambda: any(v["verifier"] == "v1" and v["status"] == "leased" for v in leases()),
                 60, "verifier v1 to lease the claim")
        wait_for(lambda: list((tmp_path / "v1" / "logs").glob(f"claim-{cid}-*.log")), 60,
                 "v1 to start running the claim")
        os.killpg(first.pid, signal.SIGKILL)      # the verifier dies mid-run, children and all
        first.wait(10)
        second = _verifier(hub, v2, tmp_path / "v2", tmp_path / "v2.log", "--max-claims", "1")
        procs.append(second)
        wait_for(lambda: any(v["verifier"] == "v2" and v["status"] == "leased" for v in leases()),
                 60, "the expired lease to go to verifier v2")
        assert any(v["verifier"] == "v1" and v["status"] == "expired" for v in leases())
        # the hub dies while v2 measures; v2's report waits for it with backoff
        hub.kill()
        hold.unlink()
        hub.start()
        assert second.wait(120) == 0, (tmp_path / "v2.log").read_text()
        view = http(hub.url + f"/api/claims/{cid}", key=admin)[1]
        assert view["status"] == "verified", json.dumps(view)[:2000]
        assert [v["verifier"] for v in view["verifications"] if v["status"] == "done"] == ["v2"]
        board = http(hub.url + "/api/leaderboard")[1]
        assert board["classes"][0]["chain"][0]["verifiers"] == ["v2"]
    finally:
        stop_all(procs, hub)


def test_clients_reconnect_with_backoff_to_a_hub_that_comes_back(tmp_path):
    root = build_target(tmp_path)
    data = tmp_path / "hubdata"
    data.mkdir()
    hub = HubProcess(root, data)
    retries: list[float] = []

    def on_retry(why: str, sleep: float) -> None:
        retries.append(sleep)
        if len(retries) == 2:
            threading.Thread(target=hub.start, daemon=True).start()

    client = HubClient(hub.url, retry_for=60, backoff=0.2, on_retry=on_retry)
    try:
        info = client.info()
        assert info["metric"] == "score" and len(retries) >= 2
        assert retries[1] > retries[0] * 0.9 or retries[1] >= 0.2   # it backs off, with jitter
    finally:
        wait_for(lambda: hub.proc is not None, 30, "the hub to start")
        hub.stop()


def test_an_unreachable_hub_is_one_clear_error(tmp_path):
    from autoresearch.hub.client import HubUnreachable

    with pytest.raises(HubUnreachable, match="hub serve"):
        HubClient("http://127.0.0.1:9", retry_for=0.3, backoff=0.05).info()
