"""Isolation: the sandbox's command line, the evaluator's fresh directory and its artifacts, the
budget, pinned setup outputs, and the bad input of the trust keys."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ar, cli_env, commit_all, ledger_rows, train_source

from autoresearch.evaluation import cache_changes, pin_cache
from autoresearch.sandbox import (
    NOBODY,
    SandboxPolicy,
    SandboxUnavailable,
    check,
    gpu_devices,
    wrap,
)


def _bwrap_works() -> bool:
    return shutil.which("bwrap") is not None and subprocess.run(
        ["bwrap", "--unshare-user", "--ro-bind", "/", "/", "true"], capture_output=True).returncode == 0


needs_bwrap = pytest.mark.skipif(not _bwrap_works(), reason="bubblewrap is not usable here")


def _run(root: Path, n: int = 2, env: dict | None = None) -> list[dict]:
    p = subprocess.run([sys.executable, "-m", "autoresearch.cli", "run", "--tag", "t", "--policy",
                        "greedy", "--max-experiments", str(n)], cwd=root, capture_output=True,
                       text=True, timeout=120, env={**cli_env(), **(env or {})})
    assert p.returncode in (0, 1), p.stderr
    return ledger_rows(root, "t")


# == the command line ==============================================================================
DEV = ["null", "zero", "nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools",
       "nvidia-modeset", "nvidia-caps", "dri", "kfd", "sda", "tty0", "shm", "dxg"]


def test_gpu_devices_are_found_in_a_dev_listing():
    assert gpu_devices(DEV) == ["/dev/dri", "/dev/dxg", "/dev/kfd", "/dev/nvidia-caps",
                                "/dev/nvidia-modeset", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
                                "/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl"]


def test_the_command_line_binds_gpus_and_drops_every_privilege():
    argv = wrap(SandboxPolicy(cwd=Path("/w"), writable=(Path("/w"),), dev_listing=tuple(DEV)),
                ["python", "train.py"])
    text = " ".join(argv)
    for dev in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-caps", "/dev/dri"):
        assert f"--dev-bind {dev} {dev}" in text
    assert "/dev/sda" not in text and "/dev/tty0" not in text
    for flag in ("--unshare-user", f"--uid {NOBODY}", f"--gid {NOBODY}", "--cap-drop ALL",
                 "--unshare-pid", "--unshare-ipc", "--new-session", "--die-with-parent",
                 "--unshare-net", "--ro-bind / /", "--tmpfs /dev/shm", "--bind /w /w"):
        assert flag in text, flag
    assert argv[-3:] == ["--", "python", "train.py"]
    # devices come after the fresh /dev, or they would be hidden by it
    assert text.index("--dev /dev") < text.index("--dev-bind /dev/nvidia0")


def test_network_and_gpus_are_switches():
    argv = wrap(SandboxPolicy(cwd=Path("/w"), network=True, gpu=False, dev_listing=tuple(DEV)), ["x"])
    assert "--unshare-net" not in argv and "/dev/nvidia0" not in argv


def test_mounts_go_parents_first(tmp_path):
    state = tmp_path / ".autoresearch"
    slot = state / "worktrees" / "slot-0"
    cache = state / "cache"
    for d in (slot, cache):
        d.mkdir(parents=True)
    argv = wrap(SandboxPolicy(cwd=slot, writable=(slot, tmp_path), hidden=(state,),
                              readonly=(cache,), dev_listing=()), ["x"])
    text = " ".join(argv)
    # the writable parent first, the hidden state dir over it, then what shows through it
    assert text.index(f"--bind {tmp_path} ") < text.index(f"--tmpfs {state}") \
        < text.index(f"--ro-bind {cache}") and text.index(f"--tmpfs {state}") < text.index(
            f"--bind {slot}")


def test_macos_and_other_systems_are_refused_with_the_opt_out():
    with pytest.raises(SandboxUnavailable, match="macOS set sandbox = false"):
        check("darwin")
    with pytest.raises(SandboxUnavailable, match="set sandbox = false"):
        check("win32")


# == steps in the sandbox ==========================================================================
@needs_bwrap
def test_a_sandboxed_step_is_nobody_sees_no_host_process_and_leaves_no_temp_dir(tmp_path, make_target):
    probe = ("import os, tempfile\n"
             "open(os.path.join(tempfile.gettempdir(), 'x'), 'w').write('x')\n"
             "open('/dev/shm/ar-probe', 'w').write('x')\n"
             "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
             "print(f'uid: {os.getuid()}')\nprint(f'visible_pids: {len(pids)}')\n")
    root = make_target(tmp_path, files={"train.py": train_source(5.0, 0.0, probe)}, sandbox=True)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    rows = _run(root, 1, {"TMPDIR": str(tmp)})
    assert rows[0]["status"] == "keep", rows
    assert rows[0]["metrics"]["uid"] == 65534
    assert rows[0]["metrics"]["visible_pids"] <= 4          # bwrap's init, bash, python
    scratch = root / ".autoresearch" / "scratch"   # private TMPDIRs and evaluator dirs go here
    assert scratch.is_dir() and list(scratch.iterdir()) == [], list(scratch.iterdir())
    assert list(tmp.iterdir()) == [] and not Path("/dev/shm/ar-probe").exists()


# == the evaluator's directory and its artifacts ===================================================
SEES = '''import os
print("score:", float(open("out.txt").read()))
print("saw_secret:", int(os.path.exists("secret.txt")))
print("saw_pythonpath:", int("PYTHONPATH" in os.environ))
print("nousersite:", int(os.environ.get("PYTHONNOUSERSITE") == "1"))
'''


@pytest.mark.parametrize("sandbox", [True, False], ids=["sandbox", "no-sandbox"])
def test_the_evaluator_sees_only_the_commit_and_the_declared_artifacts(tmp_path, make_target,
                                                                        sandbox):
    if sandbox and not _bwrap_works():
        pytest.skip("bubblewrap is not usable here")
    extra = "open('secret.txt', 'w').write('x')\n"
    root = make_target(tmp_path, files={"train.py": train_source(5.0, 0.0, extra),
                                        "evaluate.py": SEES}, sandbox=sandbox)
    rows = _run(root, 1, {"PYTHONPATH": str(tmp_path)})
    m = rows[0]["metrics"]
    assert rows[0]["status"] == "keep" and rows[0]["metric"] == 5.0, rows
    assert m["saw_secret"] == 0 and m["saw_pythonpath"] == 0 and m["nousersite"] == 1


@pytest.mark.parametrize(("extra", "says"), [
    ("import os; os.remove('out.txt')\n", "the run step did not write the declared artifact out.txt"),
    ("import os; os.rename('out.txt', 'real.txt'); os.symlink('real.txt', 'out.txt')\n",
     "artifact out.txt is a symlink"),
    ("open('out.txt', 'a').write(' ' * 3000)\n", "artifacts exceed artifacts_max_mb"),
])
def test_a_bad_artifact_is_a_crash_that_says_why(tmp_path, make_target, extra, says):
    root = make_target(tmp_path, files={"train.py": "V = 5.0\nopen('out.txt', 'w').write(str(V))\n" + extra},
                       sandbox=False, artifacts_max_mb=0.001)
    rows = _run(root, 1)
    assert rows[0]["status"] == "crash" and says in rows[0]["reason"], rows


# == the budget ====================================================================================
def test_a_run_past_budget_and_allowance_is_over_budget_and_never_kept(tmp_path, make_target):
    # a 2.5 s limit leaves the baseline (no sleep) room under load; the candidate sleeps 4 s
    root = make_target(tmp_path, sandbox=False, budget=2, budget_allowance=0.5)
    (tmp_path / "s.jsonl").write_text(json.dumps(
        {"description": "slow but good", "files": {"train.py": train_source(1.0, 4.0)}}) + "\n")
    p = ar(root, "run", "--tag", "t", "--policy", "greedy", "--agent", f"script:{tmp_path / 's.jsonl'}",
           "--max-experiments", "2")
    rows = ledger_rows(root, "t")
    assert rows[1]["status"] == "over-budget", (rows, p.stderr)
    assert "past the budget of 2s plus the allowance of 0.5s" in rows[1]["reason"]
    assert rows[0]["status"] == "keep"


def test_a_reported_training_time_past_the_budget_is_over_budget(tmp_path, make_target):
    root = make_target(tmp_path, sandbox=False, files={
        "train.py": train_source(5.0, 0.0, "print('training_seconds: 99.0')\n")})
    rows = _run(root, 1)
    assert rows[0]["status"] == "over-budget" and "training_seconds = 99" in rows[0]["reason"], rows


# == setup outputs =================================================================================
def test_a_changed_setup_output_makes_the_experiment_invalid(tmp_path, make_target):
    setup = "echo 1.0 > $AUTORESEARCH_CACHE/scale.txt"
    root = make_target(tmp_path, sandbox=False, setup=setup)
    evil = "import os; open(os.environ['AUTORESEARCH_CACHE'] + '/scale.txt', 'w').write('0.1')\n"
    (tmp_path / "s.jsonl").write_text(json.dumps(
        {"description": "poison", "files": {"train.py": train_source(20.0, 0.0, evil)}}) + "\n")
    ar(root, "run", "--tag", "t", "--policy", "greedy", "--agent", f"script:{tmp_path / 's.jsonl'}",
       "--max-experiments", "2")
    rows = ledger_rows(root, "t")
    assert rows[1]["status"] == "invalid" and "scale.txt" in rows[1]["reason"], rows


def test_the_cache_pin_rehashes_only_what_changed(tmp_path, monkeypatch):
    (tmp_path / "a.bin").write_bytes(b"a" * 100)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.bin").write_bytes(b"b")
    pin = pin_cache(tmp_path)
    import autoresearch.evaluation as ev
    hashed = []
    real = ev._pin_entry
    monkeypatch.setattr(ev, "_pin_entry", lambda p: hashed.append(p) or real(p))
    assert cache_changes(tmp_path, pin) == [] and hashed == []          # stat only
    os.utime(tmp_path / "a.bin")                                         # touched, same bytes
    assert cache_changes(tmp_path, pin) == [] and len(hashed) == 1
    (tmp_path / "d" / "b.bin").write_bytes(b"c")
    (tmp_path / "new").write_text("x")
    (tmp_path / "a.bin").unlink()
    assert cache_changes(tmp_path, pin) == ["a.bin", "d/b.bin", "new"]


# == bad input =====================================================================================
@pytest.mark.parametrize(("line", "says"), [
    ("netwrok = true", "unknown key 'netwrok' — did you mean 'network'?"),
    ('artifact = ["out.txt"]', "unknown key 'artifact' — did you mean 'artifacts'?"),
    ('sandbox_writeable = ["x"]', "unknown key 'sandbox_writeable' — did you mean 'sandbox_writable'?"),
    ('artifacts = ["../model.npz"]', "must be a file path inside the target"),
    ("network = \"maybe\"", "key 'network'"),
])
def test_a_bad_trust_key_is_one_error_line_that_names_it(tmp_path, make_target, line, says):
    root = make_target(tmp_path, artifacts=None)
    toml = root / "autoresearch.toml"
    toml.write_text(toml.read_text() + line + "\n")
    commit_all(root, "bad key")
    p = ar(root, "run", "--tag", "t", "--max-experiments", "1")
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 1 and len(err) == 1 and says in err[0], p.stderr


def test_sandbox_false_prints_a_warning(tmp_path, make_target):
    root = make_target(tmp_path, sandbox=False)
    p = ar(root, "run", "--tag", "t", "--max-experiments", "1")
    assert "warning: sandbox = false" in p.stdout + p.stderr


def test_the_sandbox_is_on_by_default_on_linux(tmp_path, make_target):
    from autoresearch.config import load_spec

    root = make_target(tmp_path)
    assert load_spec(root / "autoresearch.toml").sandbox is (os.uname().sysname == "Linux")


def test_a_ledger_forged_without_the_sandbox_stops_the_run_and_blocks_resume(tmp_path, make_target):
    forge = ("import sqlite3, pathlib\n"
             "db = [d for d in pathlib.Path.cwd().parents if d.name == '.autoresearch'][0]\n"
             "c = sqlite3.connect(db / 'ledger.db')\n"
             "c.execute(\"UPDATE experiments SET metric = 0.5\"); c.commit()\n")
    root = make_target(tmp_path, sandbox=False)
    (tmp_path / "s.jsonl").write_text(json.dumps(
        {"description": "forge", "files": {"train.py": train_source(20.0, 0.0, forge)}}) + "\n")
    p = ar(root, "run", "--tag", "t", "--policy", "greedy", "--agent", f"script:{tmp_path / 's.jsonl'}",
           "--max-experiments", "3")
    assert p.returncode == 1 and "written by another process while experiment #2 ran" in p.stderr
    branch = subprocess.run(["git", "rev-parse", "autoresearch/t", "main"], cwd=root,
                            capture_output=True, text=True).stdout.split()
    assert branch[0] == branch[1]                       # the forged best was never acted on
    again = ar(root, "run", "--tag", "t", "--max-experiments", "3")
    assert again.returncode == 1 and "is not resumed" in again.stderr


@pytest.mark.skipif(shutil.which("bwrap") is None or shutil.which("unshare") is None,
                    reason="needs bubblewrap and unshare")
@pytest.mark.parametrize("nested", [False, True])
def test_a_nested_user_namespace_cannot_make_the_read_only_filesystem_writable(tmp_path, nested):
    """The locked evaluate step may nest one sandbox (for autoresearch.isolate); code that takes
    that namespace to become root in it still cannot remount the read-only tree and write."""
    work = tmp_path / "work"
    work.mkdir()
    victim = tmp_path / "victim"
    script = (f"unshare -Urm true && echo NESTED; unshare -Urm sh -c "
              f"'mount -o remount,bind,rw / ; mount -o remount,bind,rw {tmp_path} ; "
              f"echo x > {victim}'; echo done")
    argv = wrap(SandboxPolicy(cwd=work, writable=(work,), nested_sandbox=nested),
                ["/bin/sh", "-c", script])
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert "done" in p.stdout, p.stderr
    # the namespace is created only where allowed, and the write fails either way
    assert ("NESTED" in p.stdout) == nested, (p.stdout, p.stderr)
    assert not victim.exists()


@needs_bwrap
def test_a_hidden_file_reads_empty_and_a_hidden_folder_is_empty(tmp_path):
    """How the holdout data is kept from every step but the holdout step: a hidden folder is
    an empty tmpfs, a hidden file an empty file, whatever path reaches them."""
    work, folder = tmp_path / "work", tmp_path / "heldout"
    work.mkdir()
    folder.mkdir()
    (folder / "a.txt").write_text("SECRET-A")
    (tmp_path / "b.txt").write_text("SECRET-B")
    script = (f"cat {folder}/a.txt {tmp_path}/b.txt /proc/self/root{tmp_path}/b.txt; "
              f"ls -A {folder}; echo done")
    argv = wrap(SandboxPolicy(cwd=work, writable=(work,),
                              hidden=(folder, tmp_path / "b.txt")), ["/bin/sh", "-c", script])
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert "done" in p.stdout, p.stderr
    assert "SECRET" not in p.stdout + p.stderr
    # and shown again, read-only, where the policy re-exposes them
    argv = wrap(SandboxPolicy(cwd=work, writable=(work,), hidden=(tmp_path / "b.txt",),
                              readonly=(folder,)), ["/bin/sh", "-c", script])
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert "SECRET-A" in p.stdout and "SECRET-B" not in p.stdout


@needs_bwrap
def test_the_coding_agent_sees_neither_the_state_dir_nor_the_declared_holdout_data(tmp_path):
    from autoresearch.agents.cli import agent_sandbox

    root = tmp_path / "target"
    ws = root / ".autoresearch" / "agent" / "scratch"
    ws.mkdir(parents=True)
    (root / ".autoresearch" / "holdout").mkdir()
    (root / ".autoresearch" / "holdout" / "h.txt").write_text("SECRET-PREPARED")
    (root / "heldout").mkdir()
    (root / "heldout" / "h.txt").write_text("SECRET-DECLARED")
    script = (f"cat {root}/.autoresearch/holdout/h.txt {root}/heldout/h.txt; "
              f"grep -r SECRET {root} ; echo done")
    with agent_sandbox(ws, [], ["heldout"]) as box:
        p = subprocess.run(box.argv(["/bin/sh", "-c", script]), capture_output=True, text=True,
                           timeout=60, env=box.env)
    assert "done" in p.stdout, p.stderr
    assert "SECRET" not in p.stdout
