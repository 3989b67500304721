"""Contributor mode against a real hub process: the run starts from the hub's best, submits
every local keep as a claim, adopts a best another contributor moved meanwhile, and hears the
hub's verdicts on its claims."""

from __future__ import annotations

import pytest
from conftest import ar, ar_popen, build_target, git, ledger_experiments, proposal, write_script
from hubkit import HubProcess, add_user, http, make_claim, wait_for

pytest.importorskip("fastapi")


def test_run_with_hub_submits_keeps_adopts_the_moved_best_and_hears_verdicts(tmp_path):
    root = build_target(tmp_path)
    data = tmp_path / "hubdata"
    data.mkdir()
    keys = {n: add_user(data, n, r) for n, r in (("alice", "contributor"), ("bob", "contributor"),
                                                 ("ver", "verifier"))}
    hub = HubProcess(root, data, None, "--quorum", "1").start()
    try:
        base = git(root, "rev-parse", "HEAD")
        # alice's agent: two improvements, each proposal taking a while
        script = write_script(tmp_path / "a.jsonl", [proposal(v, 0.8) for v in (
            9.0, 8.0, 7.0, 6.5, 4.0, 3.0)])
        run = ar_popen(root, "run", "--hub", hub.url, "--key", keys["alice"], "--hardware",
                       "cpu-test", "--agent", f"script:{script}", "--policy", "greedy",
                       "--max-experiments", "10", "--hub-sync", "0.2", "--tag", "a")
        first = wait_for(lambda: [c for c in http(hub.url + "/api/claims", key=keys["alice"])[1]],
                         60, "alice's first claim")[0]
        assert first["parent"] == base and first["claimed"] == 9.0 and first["agent"].startswith("script")
        # bob's claim becomes the best while alice's run goes on; alice's claim is rejected
        bob_sha, claim = make_claim(root, base, 5.0, files={"train.py": (
            git(root, "show", f"{base}:train.py") + "\n").replace("(EDITABLE).", "(EDITABLE), bob.")})
        code, body = http(hub.url + "/api/claims", "POST", claim, keys["bob"])
        assert code == 201, body
        for _ in range(6):   # alice's claims are rejected (no gain), bob's verified
            code, lease = http(hub.url + "/api/leases", "POST", {"hardware": "cpu-test"}, keys["ver"])
            if code == 204:
                break
            assert code == 200, lease
            gain = lease["claim_id"] == body["id"]
            code, _ = http(hub.url + f"/api/leases/{lease['verification_id']}/report", "POST",
                           {"outcome": "measured", "candidate_runs": [5.0, 5.0] if gain else [10.0, 10.0],
                            "best_runs": [10.0, 10.0]}, keys["ver"])
            assert code == 200
        assert http(hub.url + "/api/best?hardware=cpu-test", key=keys["alice"])[1]["commit_sha"] == bob_sha
        out, _ = run.communicate(timeout=120)
        assert run.returncode == 0, out
        exps = ledger_experiments(root, "a")
        adopted = [e for e in exps if e.agent == "hub"]
        assert adopted and adopted[0].commit_sha == bob_sha and adopted[0].kind == "baseline", out
        assert f"claim #{first['id']} rejected" in out and "not verified" in out
        later = [e for e in exps if e.kind in ("candidate", "rebase") and e.id > adopted[0].id]
        assert any(e.parent == bob_sha for e in later), [(e.seq, e.kind, e.parent) for e in exps]
        assert git(root, "rev-parse", "autoresearch/a") != base
        # a restarted run of the same tag keeps its chain; a fresh tag starts from the hub's best
        exps2 = ledger_experiments(root, "a")
        assert len(exps2) == len(exps)
        p = ar(root, "run", "--hub", hub.url, "--key", keys["alice"], "--hardware", "cpu-test",
               "--agent", f"script:{write_script(tmp_path / 'b.jsonl', [])}", "--tag", "b",
               "--max-experiments", "1", "--policy", "greedy")
        assert p.returncode == 0, p.stdout + p.stderr
        assert ledger_experiments(root, "b")[0].commit_sha == bob_sha
    finally:
        hub.stop()


def test_run_with_hub_but_no_key_is_one_clear_error(tmp_path):
    root = build_target(tmp_path)
    p = ar(root, "run", "--hub", "http://127.0.0.1:9", "--max-experiments", "1")
    assert p.returncode == 1 and "--hub needs --key KEY" in p.stderr
    p = ar(root, "run", "--hub", "ftp://x", "--key", "k", "--max-experiments", "1")
    assert p.returncode == 1 and "is not a URL" in p.stderr
