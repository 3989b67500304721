"""End to end with real processes on 127.0.0.1: one hub, two contributors and two verifiers on
the quickstart target (budget 0.3 s). One contributor is honest (`autoresearch run --hub`); the
other submits faked claims (a change that gains nothing, claimed far better). The honest chain
advances and the faked claims never do; the page is checked in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import ar, cli_env, git
from hubkit import HubProcess, add_user, http, stop_all, wait_for

pytest.importorskip("fastapi")
pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="verify needs bubblewrap")

HW = "cpu-e2e"

FAKER = r'''
import base64, sys, time
from autoresearch.hub.client import HubClient, HubRefused
from autoresearch.hub.repo import local
from autoresearch.ratchet import Ratchet
url, key, root, hw = sys.argv[1:5]
client = HubClient(url, key)
r = Ratchet(root)
deadline = time.monotonic() + 120
while client.best(hw)["metric"] is None:   # until verifiers measured the base
    assert time.monotonic() < deadline
    time.sleep(0.1)
best = client.best(hw)
claimed = best["metric"] * 0.9 if best["claim_id"] is None else best["metric"] * 0.5
train = r.read_files(best["commit_sha"], ["train.py"])["train.py"]
for i, new in enumerate((train, train + "\nUNUSED = 0  # the secret sauce\n")):
    # the first: the parent's code itself, claimed 10% better; the second: a change that gains
    # nothing, claimed far better
    cr = r.make_commit(best["commit_sha"], f"faked {i}", files={"train.py": new})
    bundle = local(r).bundle(cr.sha, [best["commit_sha"]])
    body = {"bundle": base64.b64encode(bundle).decode(), "parent": best["commit_sha"],
            "hardware": hw, "metric": claimed if i == 0 else claimed * 0.5,
            "runs": [claimed] * 3, "agent": "faker", "description": f"faked claim {i}"}
    try:
        claim = client.submit(body)
        print("submitted", claim["id"], claim["status"], claim["flags"], flush=True)
    except HubRefused as e:
        print("refused", e.status, e.detail, flush=True)
'''


def _proposals(root: Path, path: Path) -> Path:
    """Two real improvements, each clear over the noise of a 0.3 s budget."""
    train = (root / "train.py").read_text()
    a = train.replace("LEARNING_RATE = 0.002 ", "LEARNING_RATE = 0.1 ").replace(
        "MOMENTUM = 0.5 ", "MOMENTUM = 0.9 ")
    b = a.replace("WEIGHT_DECAY = 0.01 ", "WEIGHT_DECAY = 0.0 ")
    assert train != a != b
    path.write_text(json.dumps({"description": "learning rate 0.1, momentum 0.9",
                                "files": {"train.py": a}}) + "\n"
                    + json.dumps({"description": "no weight decay", "files": {"train.py": b}})
                    + "\n")
    return path


def _popen(args: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, env=cli_env(), start_new_session=True)


def test_honest_chain_advances_and_faked_claims_never_do(tmp_path):
    ar(tmp_path, "init", "--template", "quickstart", str(tmp_path / "qs"), check=True)
    root = tmp_path / "qs"
    toml = (root / "autoresearch.toml").read_text()
    toml = toml.replace("budget = 1.5", "budget = 0.3").replace("timeout = 30", "timeout = 20")
    (root / "autoresearch.toml").write_text(toml)
    git(root, "commit", "-qam", "a fast budget for the test")
    data = tmp_path / "hubdata"
    data.mkdir()
    keys = {name: add_user(data, name, role) for name, role in (
        ("honest", "contributor"), ("faker", "contributor"), ("vera", "verifier"),
        ("victor", "verifier"), ("root", "admin"))}
    hub = HubProcess(root, data, None, "--runs", "2").start()
    procs: list[subprocess.Popen] = []
    try:
        for name in ("vera", "victor"):
            procs.append(_popen(["-m", "autoresearch.cli", "verify", "--hub", hub.url, "--key",
                                 keys[name], "--hardware", HW, "--data", str(tmp_path / name),
                                 "--poll", "0.2"], tmp_path / f"{name}.log"))
        script = _proposals(root, tmp_path / "honest.jsonl")
        honest = _popen(["-m", "autoresearch.cli", "run", "--hub", hub.url, "--key",
                         keys["honest"], "--hardware", HW, "--agent", f"script:{script}",
                         "--policy", "greedy", "--max-experiments", "3", "--hub-sync", "0.5",
                         "--tag", "honest"], tmp_path / "honest.log", cwd=root)
        procs.append(honest)
        faker = _popen(["-c", FAKER, hub.url, keys["faker"], str(root), HW], tmp_path / "faker.log")
        procs.append(faker)
        assert faker.wait(60) == 0, (tmp_path / "faker.log").read_text()
        assert honest.wait(120) == 0, (tmp_path / "honest.log").read_text()

        def settled():
            rows = http(hub.url + "/api/claims?limit=100", key=keys["root"])[1]
            honest_n = sum(1 for r in rows if r["contributor"] == "honest")
            if len(rows) < 3 or honest_n < 2:
                return None
            return rows if all(r["status"] not in ("queued", "verifying") for r in rows) else None

        try:
            rows = wait_for(settled, 180, "every claim to be decided", interval=0.3)
        except AssertionError:
            logs = "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in tmp_path.glob("*.log"))
            raise AssertionError(logs) from None
        faker_log = (tmp_path / "faker.log").read_text()
        assert "refused 422 the claim changes nothing" in faker_log   # the baseline's own code
        faked = [r for r in rows if r["contributor"] == "faker"]
        # one claim, perhaps rebased onto a newer best (then verified again as a new claim)
        assert faked and {r["status"] for r in faked} <= {"rejected", "rebased"}, faked
        final = [r for r in faked if r["status"] == "rejected"]
        assert len(final) == 1 and "not verified" in final[0]["reason"], faked
        assert all(any("implausible" in f for f in r["flags"]) for r in faked)
        board = json.loads(ar(root, "hub", "leaderboard", "--hub", hub.url, "--json",
                              check=True).stdout)
        (cls,) = board["classes"]
        assert cls["hardware"] == HW and cls["chain"], "the honest chain did not advance"
        assert {link["contributor"] for link in cls["chain"]} == {"honest"}
        assert cls["best"]["commit"] == cls["chain"][-1]["commit"] != board["base_commit"]
        for link in cls["chain"]:
            assert link["p_value"] < 0.01 and len(link["verifiers"]) == 2
            assert set(link["verifiers"]) == {"vera", "victor"}
            assert link["verified"] < link["best_metric"] and "LEARNING_RATE" in link["diff"]
        assert [r["contributor"] for r in cls["leaderboard"]] == ["honest"]
        # the contributor heard the verdicts
        assert "hub: claim #" in (tmp_path / "honest.log").read_text()
        text = ar(root, "hub", "leaderboard", "--hub", hub.url, check=True).stdout
        assert "honest" in text and "faker" not in text
        if shutil.which("chromium"):
            dom = _dump_dom(hub.url + "/")
            assert "learning rate 0.1, momentum 0.9" in dom and "vera" in dom and "victor" in dom
            assert "faked claim 1" in dom and "not verified" in dom
            assert dom.count('class="link"') == len(cls["chain"])
    finally:
        stop_all(procs, hub)


def _dump_dom(url: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        p = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=3000", "--dump-dom", url],
            capture_output=True, text=True, timeout=60)
    assert "<title>autoresearch hub</title>" in p.stdout, p.stderr[-2000:]
    return p.stdout
