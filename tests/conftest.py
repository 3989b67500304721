"""Shared fixtures: tiny real targets in throwaway git repos, and ways to drive the CLI.

A tiny target is a git repo with autoresearch.toml, an editable train.py that writes its VALUE
to out.txt (after sleeping SLEEP seconds), and a locked evaluate.py that prints
`score: <value>`. An experiment costs two Python start-ups, so whole runs take seconds.

The suite runs in parallel (pytest-xdist, `-n auto` in pyproject.toml: two workers per core, at
most `MAX_WORKERS`, since the tests mostly wait on subprocesses). Each worker gets a TMPDIR of its
own under its pytest base directory, and its own PostgreSQL cluster; tests that look for
processes find them by a unique marker or token, never by a shared name; tests that share an
expensive fixture run on one worker (`_SHARED`, `--dist loadgroup`), and the few that write
shared places or measure time run alone (`RUNS_ALONE`, a file lock across the workers).

The longest work goes first (tests/durations.json: seconds per test from a whole run, written by
`python -m pytest --store-durations`; a test it does not know counts as a median one), so that no
long test or group starts last and holds the suite's end while the other workers sit idle.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

MAX_WORKERS = 4   # xdist workers for `-n auto` (the tests wait more than they compute)
SHARED_TMP_ENV = "AR_TESTS_SHARED_TMPDIR"   # the system's temp dir, for other users' files
GIT_ID = ["-c", "user.name=test", "-c", "user.email=test@localhost", "-c", "commit.gpgsign=false"]

EVALUATE_PY = '''"""The evaluator (LOCKED)."""
print(f"score: {float(open('out.txt').read())}")
'''


def train_source(value: float, sleep: float = 0.0, extra: str = "") -> str:
    """train.py for a tiny target: sleeps, then writes VALUE for the evaluator to read."""
    return (
        '"""The training script (EDITABLE)."""\n'
        "import time\n\n"
        f"VALUE = {value!r}\n"
        f"SLEEP = {sleep!r}\n\n"
        "time.sleep(SLEEP)\n"
        f"{extra}"
        "open('out.txt', 'w').write(str(VALUE))\n"
    )


def git(root: Path, *args: str, check: bool = True) -> str:
    p = subprocess.run(["git", *GIT_ID, *args], cwd=root, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {p.stderr}")
    return p.stdout.strip()


def commit_all(root: Path, message: str = "target") -> str:
    git(root, "add", "-A", ".")
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD")


def build_target(base: Path, *, name: str = "target", value: float = 10.0, sleep: float = 0.0,
                 files: dict[str, str] | None = None, extra_toml: str = "",
                 git_init: bool = True, **keys) -> Path:
    """Write and commit a tiny target under base/name; returns its root.

    Keys become autoresearch.toml entries (None drops a default one); `files` adds or replaces
    files before the commit; `git_init=False` leaves it outside any repository.
    """
    root = base / name
    root.mkdir(parents=True)
    cfg = {"editable": ["train.py"], "locked": ["evaluate.py"], "run": "python train.py",
           "evaluate": "python evaluate.py", "metric": "score", "direction": "minimize",
           "budget": 1, "timeout": 20, "artifacts": ["out.txt"]}
    cfg.update(keys)
    lines = [f"{k} = {json.dumps(v)}" for k, v in cfg.items() if v is not None]
    (root / "autoresearch.toml").write_text("\n".join(lines) + "\n" + extra_toml)
    (root / "train.py").write_text(train_source(value, sleep))
    (root / "evaluate.py").write_text(EVALUATE_PY)
    (root / "README.md").write_text("a tiny target\n")
    for rel, text in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    if git_init:
        git(root, "init", "-q", "-b", "main")
        commit_all(root, "tiny target")
    return root


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: PYTEST_XDIST_AUTO_NUM_WORKERS when set, else two workers per core, capped."""
    if (env := os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "")).isdigit():
        return int(env)
    return max(1, min(MAX_WORKERS, 2 * (os.cpu_count() or 1)))


#: expensive module- or session-scoped fixtures: under xdist, the tests that share one run on
#: one worker (`--dist loadgroup`), so the fixture is built once, not once per worker
_SHARED = {"cache": "nanochat", "trained": "nanochat", "prepare_mod": "nanochat",
           "honest": "nanochat-cheats", "finished_run": "cli-run", "run_root": "dashboard-run",
           "world": "hub-world", "replayed": "loop-replay", "local_ray": "ray"}


@pytest.hookimpl(tryfirst=True)   # before xdist's own hook, which reads the groups set here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = next((g for f, g in _SHARED.items() if f in item.fixturenames), None)
        if "outcomes" in item.fixturenames:   # the attack batches: one per family (or template)
            params = getattr(item, "callspec", None)
            params = params.params if params is not None else {}
            key = params.get("template") or getattr(params.get("attack"), "family", "")
            group = f"{item.path.stem}::{item.originalname}::{key}"
            if (item.originalname, key) in RUNS_ALONE:
                item.add_marker(pytest.mark.alone_batch)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    # what runs alone goes first, while the other workers' tests are still short ones (taking the
    # exclusive lock waits for every test running elsewhere to end); then the rest, longest
    # first (a group of tests that share a worker counts as one piece of work, and stays whole)
    known = _stored_durations()
    typical = sorted(known.values())[len(known) // 2] if known else 1.0
    unit = {item: next((m.args[0] for m in item.iter_markers("xdist_group")), item.nodeid)
            for item in items}
    seconds: dict[str, float] = {}
    for item in items:
        seconds[unit[item]] = seconds.get(unit[item], 0.0) + known.get(item.nodeid, typical)

    def rank(item: pytest.Item) -> tuple[int, float]:
        alone = item.get_closest_marker("runs_alone") or item.get_closest_marker("alone_batch")
        return (0 if alone else 1, -seconds[unit[item]])

    items.sort(key=rank)   # stable: the collection order within a unit


DURATIONS = Path(__file__).with_name("durations.json")


def _stored_durations() -> dict[str, float]:
    try:
        return {k: float(v) for k, v in json.loads(DURATIONS.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--store-durations", action="store_true",
                     help=f"write each test's seconds (setup, call and teardown) to {DURATIONS}, "
                          "which orders the next runs longest first")


_measured: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    test = re.sub(r"@[^\]/:]*$", "", report.nodeid)   # less loadgroup's "@group" suffix
    _measured[test] = _measured.get(test, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if config.getoption("--store-durations") and not hasattr(config, "workerinput"):
        merged = {**_stored_durations(), **{k: round(v, 2) for k, v in _measured.items()}}
        DURATIONS.write_text(json.dumps(dict(sorted(merged.items())), indent=0) + "\n")


@pytest.fixture(autouse=True, scope="session")
def _private_tmpdir_per_worker():
    """Under xdist, everything a test or the code under test puts in the temp directory goes
    to a directory of this worker's own (tests that look at temp files see only their own). It
    sits right in the system's temp directory: Unix socket paths under it (Ray's) stay short."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        yield
        return
    shared = os.environ.setdefault(SHARED_TMP_ENV, tempfile.gettempdir())
    tmp = tempfile.mkdtemp(prefix=f"ar-{worker}-", dir=shared)
    for var in ("TMPDIR", "TMP", "TEMP"):
        os.environ[var] = tmp
    tempfile.tempdir = None   # recomputed from TMPDIR on the next gettempdir()
    yield
    shutil.rmtree(tmp, ignore_errors=True)


#: attack batches that run alone under xdist: the unsandboxed families that plant files in the
#: interpreter's shared site directories (an unsandboxed step elsewhere would rightly see the
#: plant as its own and come back invalid). The timed templates' batches (latency, kernel) run
#: beside the others: their carriers wait so long that no load makes them look better
RUNS_ALONE = {("test_attack_is_blocked_without_the_sandbox", "interpreter startup hooks"),
               ("test_attack_is_blocked_without_the_sandbox", "the coding agent planting files"),
               ("test_attack_is_blocked_without_the_sandbox", "bytecode planting")}


@contextlib.contextmanager
def _xdist_lock(exclusive: bool) -> Iterator[None]:
    """Under xdist: the lock shared by every running test, exclusively or shared. A turnstile
    lock taken first keeps a waiting exclusive holder from being starved by a stream of others.
    Outside xdist: nothing."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run:
        yield
        return
    if _held:   # the test already holds it: waiting for the exclusive lock would never end
        raise RuntimeError("conftest.alone() called from a test holding the shared lock: mark "
                           "its group `alone_batch` (RUNS_ALONE)")
    base = os.path.join(os.environ.get(SHARED_TMP_ENV, tempfile.gettempdir()), f"ar-alone-{run}")
    with open(base + ".turnstile", "a") as turn, open(base + ".lock", "a") as lock:
        fcntl.flock(turn, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        if not exclusive:
            fcntl.flock(turn, fcntl.LOCK_UN)
        _held.append(exclusive)
        try:
            yield
        finally:
            _held.pop()
            fcntl.flock(lock, fcntl.LOCK_UN)
            fcntl.flock(turn, fcntl.LOCK_UN)


_held: list[bool] = []   # this worker's hold on the lock (at most one)


def alone(needed: bool = True) -> contextlib.AbstractContextManager[None]:
    """For a shared fixture's expensive part that must run with no other test running (an
    `alone_batch` group's attack batch): the exclusive lock, held only while it runs. The tests
    that then read its results hold no lock (taking it per test would stop every worker once per
    test)."""
    return _xdist_lock(exclusive=True) if needed else contextlib.nullcontext()


@pytest.fixture(autouse=True)
def _runs_alone_lock(request: pytest.FixtureRequest):
    """Under xdist: a shared lock for every test, an exclusive one for `runs_alone` tests, none
    for an `alone_batch` test (its batch takes the exclusive lock itself, through `alone`)."""
    if request.node.get_closest_marker("alone_batch") is not None:
        yield
        return
    with _xdist_lock(request.node.get_closest_marker("runs_alone") is not None):
        yield


@pytest.fixture(autouse=True, scope="session")
def _fake_agents_may_keep_state(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The fake coding-agent CLI keeps its step counter beside its script, under the test's
    tmp_path; the coding agent's sandbox lets it write there (attack tests take this away)."""
    os.environ["AUTORESEARCH_AGENT_WRITABLE"] = str(tmp_path_factory.getbasetemp())


@pytest.fixture
def make_target() -> Callable[..., Path]:
    """make_target(tmp_path, value=10.0, sleep=0.0, **toml_keys) -> a committed tiny target."""
    return build_target


def write_script(path: Path, proposals: list[dict]) -> Path:
    """A JSON Lines proposal file for `--agent script:PATH`."""
    path.write_text("".join(json.dumps(p) + "\n" for p in proposals))
    return path


def proposal(value: float, sleep: float = 0.0, description: str | None = None,
             extra: str = "") -> dict:
    return {"description": description or f"value {value}",
            "files": {"train.py": train_source(value, sleep, extra)}}


def ledger_experiments(root: Path, tag: str) -> list:
    """Every experiment of a run, read from the ledger like `status` does (read-only)."""
    from autoresearch.ledger import Ledger

    ledger = Ledger(root / ".autoresearch" / "ledger.db", readonly=True)
    try:
        return ledger.experiments(tag)
    finally:
        ledger.close()


#: the fake coding-agent CLI that ships in autoresearch.testing, as a shell command
FAKE_AGENT_CLI = f"{sys.executable} -m autoresearch.testing.fake_agent_cli"


def fake_agent_binary(tmp_path: Path, name: str, script: Path) -> Path:
    """An executable NAME in tmp_path/bin that runs the fake coding-agent CLI on SCRIPT; put
    tmp_path/bin first on PATH to stand it in for `claude` or `codex`."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    exe = bindir / name
    exe.write_text(f'#!/bin/sh\nexec {FAKE_AGENT_CLI} --script {script} "$@"\n')
    exe.chmod(0o755)
    return exe


def cli_env(columns: int | None = 1000) -> dict[str, str]:
    """The environment of a CLI subprocess; columns=None is what a pipe or a log file gets."""
    env = dict(os.environ)
    env.pop("COLUMNS", None)
    if columns:
        env["COLUMNS"] = str(columns)
    env.pop("AUTORESEARCH_RUN_TOKEN", None)
    return env


def ar(root: Path, *args: str, timeout: float = 120, check: bool = False,
       columns: int | None = 1000) -> subprocess.CompletedProcess:
    """`python -m autoresearch.cli ARGS` in root; returns the completed process (text)."""
    p = subprocess.run([sys.executable, "-m", "autoresearch.cli", *args], cwd=root,
                       capture_output=True, text=True, timeout=timeout, env=cli_env(columns))
    if check and p.returncode != 0:
        raise AssertionError(f"autoresearch {' '.join(args)} exited {p.returncode}:\n"
                             f"{p.stdout}\n{p.stderr}")
    return p


def ar_popen(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autoresearch.cli", *args], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=cli_env())


def ledger_rows(root: Path, tag: str) -> list[dict]:
    """The run's experiments as `log --json` reports them."""
    p = ar(root, "log", "--tag", tag, "--json", check=True)
    return json.loads(p.stdout)


def processes_with(marker: str) -> list[psutil.Process]:
    """Live processes whose command line mentions marker (zombies excluded)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if marker in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def marker() -> str:
    """A unique word to put in a target's command line and find its processes by."""
    return f"armark{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def postgres_cluster():
    """A throwaway PostgreSQL cluster for the whole session (skips where it cannot start)."""
    from pgcluster import Cluster

    cluster = Cluster()
    if cluster.start() is None:
        cluster.stop()
        pytest.skip(f"no PostgreSQL for the hub's database tests: {cluster.why}")
    yield cluster
    cluster.stop()
