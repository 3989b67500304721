"""The attack suite: every trust promise, attacked (autoresearch.testing.attacks).

Each attack runs with the default sandbox, and without it where its family is defended without
bubblewrap; one attack per family also runs with the harness as an unprivileged user (a user
namespace mapped to nobody, no capabilities). Each asserts: no fake keep, no persisted write
outside the worktree, no surviving process.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from autoresearch.testing.attacks import ATTACKS, run_attack


def _bwrap_works() -> bool:
    if shutil.which("bwrap") is None:
        return False
    return subprocess.run(["bwrap", "--unshare-user", "--ro-bind", "/", "/", "true"],
                          capture_output=True).returncode == 0


def _userns_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--user", "--map-user=65534", "--map-group=65534", "true"],
                          capture_output=True).returncode == 0


needs_bwrap = pytest.mark.skipif(not _bwrap_works(), reason="bubblewrap is not usable here")
needs_userns = pytest.mark.skipif(not _userns_works(), reason="cannot create a user namespace")

_FIRST_OF_FAMILY = list({a.family: a for a in reversed(ATTACKS)}.values())


def test_the_suite_covers_every_family_with_at_least_30_attacks():
    families = {a.family for a in ATTACKS}
    assert len(ATTACKS) >= 30 and len({a.id for a in ATTACKS}) == len(ATTACKS)
    for family in ("locked-file rewrites", "interpreter startup hooks", "import shadowing",
                   "bytecode planting", "git internals", "writes to the ledger, logs or refs",
                   "escaping the process tree", "signalling the harness", "network",
                   "poisoning setup data", "budget overrun", "the coding agent planting files"):
        assert family in families, family


@needs_bwrap
@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.id)
def test_attack_is_blocked_with_the_sandbox(attack, tmp_path, monkeypatch):
    monkeypatch.delenv("AUTORESEARCH_AGENT_WRITABLE", raising=False)
    result = run_attack(attack, tmp_path, sandbox=True)
    assert result.blocked, result.summary()


@pytest.mark.parametrize("attack", [a for a in ATTACKS if a.without_sandbox], ids=lambda a: a.id)
def test_attack_is_blocked_without_the_sandbox(attack, tmp_path, monkeypatch):
    monkeypatch.delenv("AUTORESEARCH_AGENT_WRITABLE", raising=False)
    result = run_attack(attack, tmp_path, sandbox=False)
    assert result.blocked, result.summary()


@needs_bwrap
@needs_userns
@pytest.mark.parametrize("attack", _FIRST_OF_FAMILY, ids=lambda a: a.id)
def test_attack_is_blocked_for_an_unprivileged_harness(attack, tmp_path, monkeypatch):
    monkeypatch.delenv("AUTORESEARCH_AGENT_WRITABLE", raising=False)
    result = run_attack(attack, tmp_path, sandbox=True, user="nobody")
    assert result.blocked, result.summary()
