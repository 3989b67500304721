"""The sandbox: the one place that builds a bubblewrap command line.

Every step the harness runs on the agent's behalf (the run step, the evaluate step, the coding
agent's CLI) goes through `wrap(policy, argv)`. What a sandboxed process gets, by construction:

- a user namespace that maps it to an unprivileged uid/gid (65534, "nobody"), even when the
  harness runs as root, with every capability dropped and no further user namespaces: it cannot
  remount the read-only filesystem, and files it creates are owned by the harness's user outside;
- its own PID namespace (bubblewrap's init is its PID 1: when the step's command ends, every
  process left in the namespace is killed by the kernel; no subreaper to kill, no view of host
  processes, nothing outside to signal), its own IPC namespace and a new session (no TIOCSTI);
- the whole filesystem read-only; writable are only `policy.writable` (the experiment's own
  directory, a compiler cache) and a private temp directory (`TMPDIR`) that `Sandbox` removes
  when the step ends; `policy.hidden` paths (the harness's state: ledger, logs, other slots; the
  holdout data outside the holdout step) are replaced by an empty tmpfs (a file: by an empty
  one), with `policy.readonly` re-exposed read-only inside them;
- a fresh `/dev` with a private tmpfs `/dev/shm`, plus the GPU devices (`gpu_devices()`);
- no network unless `policy.network` (the coding agent needs its API; steps opt in with
  `network = true`).

Where bubblewrap is missing or cannot start, `check()` raises SandboxUnavailable with one line
that gives the fix. macOS has no bubblewrap: there the sandbox is refused unless `sandbox = false`.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import AutoresearchError

__all__ = ["NOBODY", "AgentSandbox", "Sandbox", "SandboxPolicy", "SandboxUnavailable", "check",
           "gpu_devices", "remove_tree", "wrap"]

NOBODY = 65534  # uid and gid of the process inside the sandbox
INSTALL_HINT = "install bubblewrap (apt-get install bubblewrap) or set sandbox = false"

# device nodes a CUDA / ROCm / DRM program opens; matched against the names in /dev
_GPU_PREFIXES = ("nvidia", "kfd", "dxg")
_GPU_DIRS = ("nvidia-caps", "dri")


class SandboxUnavailable(AutoresearchError):
    """The sandbox is asked for but cannot run here; the message gives the fix."""


@dataclass(frozen=True)
class SandboxPolicy:
    """What one sandboxed process may touch. Paths are absolute."""

    cwd: Path
    writable: tuple[Path, ...] = ()          # bound read-write (created if missing)
    readonly: tuple[Path, ...] = ()          # re-exposed read-only (inside a hidden path)
    hidden: tuple[Path, ...] = ()            # replaced by an empty tmpfs (files: /dev/null)
    network: bool = False
    gpu: bool = True                         # pass the GPU device nodes through
    uid: int = NOBODY
    gid: int = NOBODY
    tmpdir: Path | None = None               # the private TMPDIR, bound read-write
    # may create one more user namespace: only for locked code (the evaluator) that itself
    # sandboxes the agent's model code (autoresearch.isolate); the agent's own steps may not
    nested_sandbox: bool = False
    dev_listing: tuple[str, ...] | None = field(default=None, compare=False)  # tests: fake /dev


def gpu_devices(names: Iterable[str], dev: str = "/dev") -> list[str]:
    """The GPU device paths among `names` (the entries of /dev): /dev/nvidia0, /dev/nvidiactl,
    /dev/nvidia-uvm, /dev/nvidia-caps, /dev/dri, /dev/kfd (ROCm), /dev/dxg (WSL)."""
    found = []
    for name in sorted(set(names)):
        if name in _GPU_DIRS or name.startswith(_GPU_PREFIXES):
            found.append(f"{dev}/{name}")
    return found


def _dev_names() -> list[str]:
    try:
        return os.listdir("/dev")
    except OSError:
        return []


@functools.lru_cache(maxsize=1)
def _supports_disable_userns() -> bool:
    """bubblewrap >= 0.8 can forbid nested user namespaces."""
    try:
        p = subprocess.run(["bwrap", "--unshare-user", "--disable-userns", "--ro-bind", "/", "/",
                            "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return p.returncode == 0


def wrap(policy: SandboxPolicy, argv: Sequence[str]) -> list[str]:
    """The bubblewrap command line that runs argv under policy."""
    args = ["bwrap", "--unshare-user", "--uid", str(policy.uid), "--gid", str(policy.gid)]
    if not policy.nested_sandbox and _supports_disable_userns():
        args.append("--disable-userns")
    args += ["--cap-drop", "ALL", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
             "--unshare-cgroup-try", "--new-session", "--die-with-parent"]
    if not policy.network:
        args.append("--unshare-net")
    args += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm"]
    if policy.gpu:
        listing = policy.dev_listing if policy.dev_listing is not None else _dev_names()
        for path in gpu_devices(listing):
            args += ["--dev-bind", path, path]
    # parents before children, so a hidden state dir inside a writable path stays hidden and a
    # worktree inside the hidden state dir is mounted on top of its tmpfs
    mounts = [(Path(p), "--tmpfs" if os.path.isdir(p) else "--hide-file")
              for p in policy.hidden if os.path.exists(p)]
    mounts += [(Path(p), "--ro-bind") for p in policy.readonly if os.path.exists(p)]
    mounts += [(Path(p), "--bind") for p in (*policy.writable, *([policy.tmpdir] if policy.tmpdir else []))]
    for path, kind in sorted(mounts, key=lambda m: len(m[0].parts)):
        if kind == "--tmpfs":
            args += [kind, str(path)]
        elif kind == "--hide-file":       # a hidden file reads as empty
            args += ["--ro-bind", "/dev/null", str(path)]
        else:
            args += [kind, str(path), str(path)]
    args += ["--chdir", str(policy.cwd), "--", *argv]
    return args


def check(platform: str | None = None) -> None:
    """Raise SandboxUnavailable (one line, with the fix) unless bubblewrap can run here."""
    platform = platform or sys.platform
    if platform == "darwin":
        raise SandboxUnavailable("the sandbox needs Linux (bubblewrap); on macOS set sandbox = false "
                                 "in autoresearch.toml to run without it")
    if not platform.startswith("linux"):
        raise SandboxUnavailable(f"the sandbox needs Linux (bubblewrap), not {platform}; set "
                                 f"sandbox = false in autoresearch.toml to run without it")
    if shutil.which("bwrap") is None:
        raise SandboxUnavailable(f"sandbox = true needs bubblewrap, which is not on PATH — "
                                 f"{INSTALL_HINT}")
    _probe()


@functools.lru_cache(maxsize=1)
def _probe() -> None:
    try:
        p = subprocess.run(["bwrap", "--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY),
                            "--cap-drop", "ALL", "--unshare-pid", "--ro-bind", "/", "/",
                            "--proc", "/proc", "--dev", "/dev", "true"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        raise SandboxUnavailable(f"bubblewrap cannot start ({e}) — {INSTALL_HINT}") from None
    if p.returncode != 0:
        why = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        raise SandboxUnavailable(f"bubblewrap cannot create its namespaces here ({why}) — allow "
                                 f"unprivileged user namespaces (sysctl "
                                 f"kernel.unprivileged_userns_clone=1) or set sandbox = false")


class Sandbox:
    """A policy plus its private TMPDIR: created on enter, removed (whatever is in it) on exit.

        with Sandbox(policy_without_tmp, env) as sb:
            run_command(shlex.join(sb.argv(["bash", "-c", cmd])), env=sb.env, ...)
    """

    def __init__(self, policy: SandboxPolicy, env: dict[str, str], *, tmp_root: str | None = None):
        self._base = policy
        self._tmp_root = tmp_root
        self.env = dict(env)
        self.policy = policy
        self.tmpdir: Path | None = None

    def __enter__(self) -> Sandbox:
        self.tmpdir = Path(tempfile.mkdtemp(prefix="ar-sandbox-tmp-", dir=self._tmp_root))
        self.tmpdir.chmod(0o700)
        for path in self._base.writable:
            Path(path).mkdir(parents=True, exist_ok=True)
        self.policy = replace(self._base, tmpdir=self.tmpdir)
        for var in ("TMPDIR", "TMP", "TEMP"):
            self.env[var] = str(self.tmpdir)
        return self

    def argv(self, argv: Sequence[str]) -> list[str]:
        return wrap(self.policy, argv)

    def __exit__(self, *exc: object) -> None:
        if self.tmpdir is not None:
            remove_tree(self.tmpdir)
            self.tmpdir = None


def remove_tree(path: Path) -> None:
    """rm -rf that also removes what a step made unreadable to its owner (chmod 000 dirs)."""
    def fix(func, p, _exc):  # noqa: ANN001 - shutil's onerror signature
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)


# what a coding-agent CLI keeps in HOME (credentials, settings), copied into its private HOME;
# session histories and caches are left behind
AGENT_HOME_ENTRIES = (".claude", ".claude.json", ".codex", ".config/claude", ".aider.conf.yml",
                      ".gitconfig", ".config/git", ".npmrc")
_AGENT_HOME_SKIP = ("projects", "sessions", "logs", "log", "todos", "shell-snapshots", "statsig",
                    "cache", "node_modules")


class AgentSandbox(Sandbox):
    """The coding agent's sandbox: the network (for its API), its scratch checkout writable,
    and a private HOME holding a copy of its configuration; nothing else it writes persists.

    The harness's state directory (ledger, logs, other slots) is hidden from it, and so are
    `hidden` paths (the declared holdout data).
    """

    def __init__(self, workspace: Path, env: dict[str, str], *, state_dir: Path | None = None,
                 writable: tuple[Path, ...] = (), home: Path | None = None,
                 hidden: tuple[Path, ...] = ()):
        policy = SandboxPolicy(cwd=workspace, writable=(workspace, *writable), network=True,
                               gpu=False, hidden=((state_dir,) if state_dir else ()) + hidden)
        super().__init__(policy, env)
        self._home = Path(home or os.path.expanduser("~"))

    def __enter__(self) -> AgentSandbox:
        super().__enter__()
        assert self.tmpdir is not None
        home = self.tmpdir / "home"
        home.mkdir()
        for rel in AGENT_HOME_ENTRIES:
            src = self._home / rel
            dst = home / rel
            try:
                if src.is_dir() and not src.is_symlink():
                    shutil.copytree(src, dst, symlinks=True,
                                    ignore=shutil.ignore_patterns(*_AGENT_HOME_SKIP))
                elif src.is_file():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
            except OSError:
                continue
        self.env["HOME"] = str(home)
        self.env.pop("XDG_CONFIG_HOME", None)
        return self
