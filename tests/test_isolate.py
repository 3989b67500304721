"""autoresearch.isolate: a model host that receives inputs and returns outputs, sandboxed.

Real subprocesses and real bubblewrap; the host's loader is a module written here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("torch")

from autoresearch import isolate  # noqa: E402
from autoresearch.isolate import IsolationError, ModelProcess, sandbox_argv  # noqa: E402

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None or not sys.platform.startswith(
    "linux"), reason="bubblewrap is not installed")

LOADER = textwrap.dedent("""
    import json, os, socket
    def load(workdir, device, options):
        mode = options.get("mode", "double")
        if mode == "fail":
            raise RuntimeError("cannot build the model")
        def f(x):
            if mode == "double":
                return x.float().unsqueeze(-1).repeat(1, 1, 2) * 2
            if mode == "huge":
                return x.float().unsqueeze(-1).repeat(1, 1, 10**6)
            if mode == "hang":
                import time
                time.sleep(60)
            if mode == "probe":  # what can the host see and do?
                seen = {"uid": os.getuid()}
                try:
                    socket.create_connection(("127.0.0.1", options["port"]), timeout=1).close()
                    seen["loopback"] = 1
                except OSError:
                    seen["loopback"] = 0
                for key, path in options["paths"].items():
                    seen[key] = int(os.path.exists(path))
                try:
                    open(options["write"], "w").write("x")
                    seen["wrote"] = 1
                except OSError:
                    seen["wrote"] = 0
                out = [seen[k] for k in sorted(seen)]
                import torch
                return torch.tensor(out, dtype=torch.float32).view(1, 1, -1)
            raise ValueError(mode)
        return f
""")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    (d / "hostloader.py").write_text(LOADER)
    return d


def test_host_returns_outputs_of_the_inputs_it_is_sent(workdir):
    with ModelProcess("hostloader:load", workdir, out_capacity=1000) as host:
        out = host.call(np.arange(6, dtype=np.int32).reshape(2, 3))
        assert out.shape == (2, 3, 2)
        assert out[1, 2].tolist() == [10.0, 10.0]
        out = host.call(np.full((1, 4), 7, dtype=np.int64))
        assert out.tolist() == [[[14.0, 14.0]] * 4]


@needs_bwrap
def test_sandboxed_host_has_no_network_no_writes_and_cannot_see_hidden_dirs(workdir, tmp_path):
    import socket
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    secret_dir = Path.home() / f".autoresearch-isolate-test-{tmp_path.name}"
    secret_dir.mkdir()
    (secret_dir / "answers.npy").write_text("targets")
    try:
        options = {"mode": "probe", "port": server.getsockname()[1],
                   "write": str(workdir / "planted.py"),
                   "paths": {"answers": str(secret_dir / "answers.npy"),
                             "host_tmp": str(tmp_path / "work" / "hostloader.py")}}
        with ModelProcess("hostloader:load", workdir, out_capacity=100, options=options,
                          hidden=[str(secret_dir)]) as host:
            assert host.sandboxed
            out = host.call(np.zeros((1, 1), dtype=np.int32)).ravel().tolist()
        keys = sorted(["uid", "loopback", "answers", "host_tmp", "wrote"])
        seen = dict(zip(keys, out, strict=True))
        assert seen == {"uid": 65534, "loopback": 0, "answers": 0, "host_tmp": 1, "wrote": 0}
        assert not (workdir / "planted.py").exists()
    finally:
        server.close()
        shutil.rmtree(secret_dir)


def test_a_loader_that_fails_gives_its_reason(workdir):
    with pytest.raises(IsolationError, match="cannot build the model"):
        ModelProcess("hostloader:load", workdir, out_capacity=10,
                     options={"mode": "fail"}).start()


def test_outputs_larger_than_the_buffer_are_refused(workdir):
    with ModelProcess("hostloader:load", workdir, out_capacity=1000,
                      options={"mode": "huge"}) as host:
        with pytest.raises(IsolationError, match="exceeds the buffer"):
            host.call(np.zeros((1, 2), dtype=np.int32))


def test_a_hung_host_times_out_and_is_killed(workdir):
    host = ModelProcess("hostloader:load", workdir, out_capacity=10, options={"mode": "hang"},
                        timeout=3)
    host.start()
    try:
        with pytest.raises(IsolationError, match="no answer within 3s"):
            host.call(np.zeros((1, 1), dtype=np.int32))
        assert host.proc.wait(timeout=10) is not None
    finally:
        host.close()


def test_without_bubblewrap_the_host_runs_plain_with_a_warning(workdir, monkeypatch):
    monkeypatch.setattr(isolate.shutil, "which", lambda name: None)
    assert sandbox_argv(["true"], chdir="/") is None
    with pytest.warns(UserWarning, match="bubblewrap"):
        with ModelProcess("hostloader:load", workdir, out_capacity=100) as host:
            assert not host.sandboxed
            assert host.call(np.ones((1, 1), dtype=np.int32)).ravel().tolist() == [2.0, 2.0]


def test_sandbox_argv_drops_privileges_and_binds_gpu_nodes_present():
    argv = sandbox_argv(["python", "x.py"], chdir="/w", readable=["/r"], hidden=["/"],
                        env={"A": "1"})
    if argv is None:
        pytest.skip("bubblewrap is not installed")
    joined = " ".join(argv)
    for flag in ("--ro-bind / /", "--unshare-all", "--uid 65534", "--gid 65534",
                 "--cap-drop ALL", "--die-with-parent", "--new-session", "--tmpfs /tmp",
                 "--tmpfs /dev/shm", "--clearenv", "--setenv A 1", "--ro-bind /r /r",
                 "--chdir /w"):
        assert flag in joined
    nodes = sorted(str(p) for p in Path("/dev").glob("nvidia*"))
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--dev-bind"] == nodes
    assert argv[-3:] == ["--", "python", "x.py"]


@needs_bwrap
def test_isolate_works_from_inside_another_unprivileged_sandbox(workdir):
    """The evaluate step may itself run under bubblewrap as nobody: the nested host starts."""
    src = Path(isolate.__file__).parent.parent
    script = (f"import sys, numpy as np; sys.path.insert(0, {str(src)!r})\n"
              f"from autoresearch.isolate import ModelProcess\n"
              f"with ModelProcess('hostloader:load', {str(workdir)!r}, out_capacity=100,"
              f" log_path='/tmp/host.log') as h:\n"
              f"    print('sandboxed', h.sandboxed, h.call(np.ones((1, 2), dtype=np.int32))"
              f".ravel().tolist())\n")
    outer = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
             "--tmpfs", "/tmp", "--ro-bind", str(workdir), str(workdir), "--unshare-all",
             "--unshare-user", "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL",
             "--die-with-parent", "--new-session", "--", sys.executable, "-c", script]
    r = subprocess.run(outer, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sandboxed True [2.0, 2.0, 2.0, 2.0]" in r.stdout
