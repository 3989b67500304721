"""The attack suite: every trust promise, attacked (autoresearch.testing.attacks).

Every attack runs with the default sandbox, and without it where its family is defended without
bubblewrap; the sandbox's own families also run with the harness as an unprivileged user (a user
namespace mapped to nobody, uid 65534, no capabilities). Each test asserts, for its attack: no
fake keep, no persisted write outside the worktree, no surviving process.

The attacks of one family run as consecutive proposals of one `autoresearch run` (one fresh
target per family and mode), so the suite costs one run per family, not one per attack; each is
still judged on its own experiment, victims and processes.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import RUNS_ALONE, alone

from autoresearch.testing.attacks import ATTACKS, Attack, AttackResult, run_attacks


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

# families the sandbox alone defends: also attacked with an unprivileged harness
UNPRIVILEGED = ("interpreter startup hooks", "git internals", "escaping the sandbox",
                "escaping the process tree", "the coding agent planting files")


@pytest.fixture(scope="session")
def outcomes(tmp_path_factory: pytest.TempPathFactory):
    """outcomes(attack, sandbox, user) -> its AttackResult; each family's batch runs once."""
    done: dict[tuple[str, bool, str], dict[str, AttackResult]] = {}

    def get(attack: Attack, sandbox: bool, user: str = "root") -> AttackResult:
        key = (attack.family, sandbox, user)
        if key not in done:
            batch = [a for a in ATTACKS if a.family == attack.family
                     and (sandbox or a.without_sandbox)]
            workdir = tmp_path_factory.mktemp("attacks")
            with alone(("test_attack_is_blocked_without_the_sandbox", attack.family)
                       in RUNS_ALONE and not sandbox):
                done[key] = run_attacks(batch, workdir, sandbox=sandbox, user=user)
        return done[key][attack.id]

    return get


@pytest.fixture(autouse=True)
def _no_extra_agent_rights(monkeypatch):
    monkeypatch.delenv("AUTORESEARCH_AGENT_WRITABLE", raising=False)


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
def test_attack_is_blocked_with_the_sandbox(attack, outcomes):
    result = outcomes(attack, True)
    assert result.blocked, result.summary()


@pytest.mark.parametrize("attack", [a for a in ATTACKS if a.without_sandbox], ids=lambda a: a.id)
def test_attack_is_blocked_without_the_sandbox(attack, outcomes):
    result = outcomes(attack, False)
    assert result.blocked, result.summary()


@needs_bwrap
@needs_userns
@pytest.mark.parametrize("attack", [a for a in ATTACKS if a.family in UNPRIVILEGED],
                         ids=lambda a: a.id)
def test_attack_is_blocked_for_an_unprivileged_harness(attack, outcomes):
    result = outcomes(attack, True, "nobody")
    assert result.blocked, result.summary()
