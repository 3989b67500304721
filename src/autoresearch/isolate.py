"""Run untrusted model code in a separate, sandboxed process that sees inputs and returns outputs.

An evaluator that must execute the agent's model (nanochat's `prepare.py --evaluate`) cannot run
it in its own process: Python code there can walk the stack to the targets, replace the
evaluator's functions, or rewrite what it reads. This module starts the model in a *host*
process instead:

- the host is this file run as a script (`python -I isolate.py --host ...`), stdlib only until it
  imports the loader the evaluator names, so it needs neither this package nor its dependencies;
- on Linux with bubblewrap it runs in a sandbox (`sandbox_argv`): read-only root, every namespace
  unshared (no network, no view of host processes), uid/gid 65534 with no capabilities, a new
  session, private tmpfs `/tmp` and `/dev/shm`, killed with its parent; NVIDIA device nodes are
  bound when present. Without bubblewrap it is a plain `python -I` subprocess and a warning says
  so (isolated from the evaluator's memory, but not from the filesystem);
- the evaluator sends only inputs (an integer array per call) and reads only outputs (a float32
  array the host writes into a shared buffer it was handed, or a CUDA buffer shared by IPC when
  both ends are on the same GPU). Messages from the host are JSON headers checked against the
  buffer's capacity; nothing the host sends is unpickled.

Guarantees: the host never holds the evaluator's targets, functions or tables, so it can change
the score only through its outputs; the evaluator computes every metric from them. Two hosts
started from the same loader cannot talk to each other under bubblewrap (separate network, IPC,
PID namespaces and private temporary directories on a read-only root), which is what cross-checks
between them (nanochat's causality probes) rely on. A host that dies, hangs past the timeout or
answers malformed headers raises `IsolationError` with the tail of its log.
"""

from __future__ import annotations

import json
import mmap
import os
import select
import shutil
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

_HEADER = struct.Struct("<I")
_MAX_HEADER = 1 << 16
_DTYPES = {"float32": 4, "int32": 4, "int64": 8}


class IsolationError(RuntimeError):
    """The isolated process failed, hung or broke the protocol; the message says how."""


def sandbox_argv(argv: list[str], *, chdir: str, readable: list[str] = (),
                 writable: list[str] = (), hidden: list[str] = (),
                 env: dict[str, str] | None = None, mount_proc: bool = True) -> list[str] | None:
    """A bubblewrap command line that runs `argv` sandboxed, or None without bubblewrap.

    The root is bound read-only; `readable` paths are bound read-only again after the private
    `/tmp` is mounted (so paths under /tmp stay visible), `writable` ones read-write, and
    `hidden` directories are covered by an empty tmpfs (the answers an evaluator keeps). The
    environment is cleared and set to `env`. `mount_proc=False` binds the current /proc instead
    of mounting a new one: needed inside another sandbox, whose /proc (with read-only parts
    mounted over it) the kernel refuses to mount again; processes outside that outer sandbox
    stay invisible there anyway.
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None or not sys.platform.startswith("linux"):
        return None
    proc = ["--proc", "/proc"] if mount_proc else ["--ro-bind", "/proc", "/proc"]
    args = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", *proc,
            "--tmpfs", "/tmp", "--tmpfs", "/dev/shm",
            "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534",
            "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--clearenv"]
    for node in sorted(Path("/dev").glob("nvidia*")):
        args += ["--dev-bind", str(node), str(node)]
    for path in hidden:
        if os.path.isdir(path):
            args += ["--tmpfs", str(path)]
    for path in readable:
        args += ["--ro-bind", str(path), str(path)]
    for path in writable:
        args += ["--bind", str(path), str(path)]
    for key, value in (env or {}).items():
        args += ["--setenv", key, value]
    return args + ["--chdir", chdir, "--", *argv]


def _write_msg(fd: int, header: dict, payload: bytes = b"") -> None:
    data = json.dumps(header).encode()
    buf = _HEADER.pack(len(data)) + data + payload
    view = memoryview(buf)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _read_msg(fd: int, deadline: float | None = None) -> tuple[dict, int]:
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    if size > _MAX_HEADER:
        raise ValueError(f"header of {size} bytes")
    header = json.loads(_read_exact(fd, size, deadline))
    if not isinstance(header, dict):
        raise ValueError("header is not an object")
    return header, size


class ModelProcess:
    """One isolated host running `loader(workdir, device, options)`, which returns a callable
    from an integer tensor of inputs to a float tensor of outputs.

    `loader` is "module:function", imported with `workdir` first on sys.path. `out_capacity` is
    the most float32 values one call may return. `hidden` directories (say, where the evaluator
    keeps its answers) are empty inside the sandbox. Use as a context manager; `call(inputs)` returns
    a read-only numpy view of the outputs valid until the next call. `start_timeout` bounds the
    start and the loader, `timeout` each call.
    """

    def __init__(self, loader: str, workdir: Path | str, *, device: str = "cpu",
                 out_capacity: int, options: dict[str, Any] | None = None,
                 log_path: Path | str | None = None, timeout: float = 1800.0,
                 start_timeout: float = 600.0,
                 sandbox: bool = True, env: dict[str, str] | None = None,
                 readable: list[str] = (), hidden: list[str] = (),
                 python: str | None = None):
        self.loader, self.workdir = loader, Path(workdir).resolve()
        self.device, self.out_capacity = device, int(out_capacity)
        self.options, self.timeout = dict(options or {}), timeout
        self.start_timeout = start_timeout
        self.log_path = Path(log_path) if log_path else self.workdir / "isolate_host.log"
        self.sandbox, self.env, self.readable = sandbox, dict(env or {}), list(readable)
        self.hidden = list(hidden)
        self.python = python or sys.executable
        self.proc: subprocess.Popen | None = None
        self.sandboxed = False
        self.transport = "shm"
        self._cuda_buf = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> ModelProcess:
        nbytes = max(4, self.out_capacity * 4)
        if hasattr(os, "memfd_create"):
            self._memfd = os.memfd_create("autoresearch-isolate", 0)
        else:  # macOS: an unlinked temporary file serves as the shared buffer
            import tempfile
            self._memfd, path = tempfile.mkstemp(prefix="autoresearch-isolate-")
            os.unlink(path)
        os.ftruncate(self._memfd, nbytes)
        self._mm = mmap.mmap(self._memfd, nbytes)
        req_r, self._req_w = os.pipe()
        self._resp_r, resp_w = os.pipe()
        fds = (req_r, resp_w, self._memfd)
        argv = [self.python, "-I", "-B", os.path.abspath(__file__), "--host",
                str(req_r), str(resp_w), str(self._memfd), str(nbytes)]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", **self.env}
        for key in ("CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "OMP_NUM_THREADS"):
            if key in os.environ and key not in env:
                env[key] = os.environ[key]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        mount_proc = True
        while True:
            start = self.log_path.stat().st_size
            cmd = self._command(argv, env, mount_proc)
            self.proc = subprocess.Popen(cmd or argv, cwd=self.workdir, env=None if cmd else env,
                                         stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT, pass_fds=fds,
                                         start_new_session=cmd is None)
            # the host says hello before anything else; bubblewrap fails before that. Our copy
            # of the host's write end stays open for a retry, so watch the process as well.
            deadline = time.monotonic() + self.start_timeout
            while (self.proc.poll() is None and time.monotonic() < deadline
                   and not select.select([self._resp_r], [], [], 0.05)[0]):
                pass
            try:
                if self.proc.poll() is not None:
                    raise EOFError
                _read_msg(self._resp_r, deadline)
                break
            except (EOFError, OSError, TimeoutError, ValueError):
                if self.proc.poll() is None:
                    self.proc.kill()
                self.proc.wait()
                with open(self.log_path, "rb") as f:
                    f.seek(start)
                    said = f.read().decode("utf-8", "replace")
                if cmd and mount_proc and "proc" in said:
                    mount_proc = False  # nested in another sandbox: bind its /proc instead
                    continue
                for fd in fds[:2]:
                    os.close(fd)
                raise self._failure("the model process did not start") from None
        os.close(req_r)
        os.close(resp_w)
        init = {"op": "init", "loader": self.loader, "workdir": str(self.workdir),
                "device": self.device, "options": self.options}
        ipc = self._cuda_ipc_offer()
        if ipc is not None:
            init["cuda_ipc"] = ipc
        self._send(init)
        header = self._receive(self.start_timeout)
        if header.get("transport") == "cuda" and ipc is not None:
            self.transport = "cuda"
        else:
            self._cuda_buf = None
        return self

    def _command(self, argv: list[str], env: dict[str, str], mount_proc: bool) -> list | None:
        if not self.sandbox:
            return None
        # the private /tmp hides what lives there: bind what the host reads again
        readable = [str(self.workdir), os.path.dirname(os.path.abspath(__file__)),
                    *self.readable]
        cmd = sandbox_argv(argv, chdir=str(self.workdir), readable=readable, env=env,
                           hidden=self.hidden, mount_proc=mount_proc)
        if cmd is None:
            warnings.warn("bubblewrap (bwrap) is not installed: the model runs in a plain "
                          "isolated subprocess, which does not confine its filesystem; "
                          "install it with `apt-get install bubblewrap`", stacklevel=3)
        self.sandboxed = cmd is not None
        return cmd

    def _cuda_ipc_offer(self) -> str | None:
        """On CUDA, a GPU output buffer shared by IPC (base64 of the rebuild arguments): the
        outputs then never leave the GPU. The host falls back to shared host memory when it
        cannot open it (for example inside a PID namespace); AUTORESEARCH_ISOLATE_CUDA_IPC=0
        turns it off."""
        if not self.device.startswith("cuda") or os.environ.get(
                "AUTORESEARCH_ISOLATE_CUDA_IPC", "").strip() == "0":
            return None
        try:
            import base64
            import pickle

            import torch
            from torch.multiprocessing.reductions import reduce_tensor
            # its own allocation, used only for outputs: nothing else lives in this segment
            self._cuda_buf = torch.empty(self.out_capacity, dtype=torch.float32,
                                         device=self.device)
            _, args = reduce_tensor(self._cuda_buf)
            return base64.b64encode(pickle.dumps(args)).decode()
        except Exception as e:  # noqa: BLE001 - any failure means: use host memory
            print(f"isolate: CUDA IPC unavailable ({type(e).__name__}: {e}); using host memory",
                  file=sys.stderr)
            self._cuda_buf = None
            return None

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            _write_msg(self._req_w, {"op": "exit"})
        except OSError:
            pass
        for fd in (self._req_w, self._resp_r):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        try:
            self._mm.close()
        except BufferError:  # a caller still holds an output view; the mapping goes with it
            pass
        os.close(self._memfd)
        self._cuda_buf = None
        self.proc = None

    def __enter__(self) -> ModelProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- calls ------------------------------------------------------------------------------

    def _send(self, header: dict, payload: bytes = b"") -> None:
        try:
            _write_msg(self._req_w, header, payload)
        except OSError as e:
            raise self._failure(f"cannot send to the model process ({e})") from None

    def _receive(self, timeout: float | None = None) -> dict:
        timeout = self.timeout if timeout is None else timeout
        try:
            header, _ = _read_msg(self._resp_r, time.monotonic() + timeout)
        except TimeoutError:
            self.proc.kill()
            raise self._failure(f"no answer within {timeout:g}s") from None
        except (EOFError, OSError):
            raise self._failure("the model process exited") from None
        except ValueError as e:
            raise self._failure(f"malformed answer ({e})") from None
        if not header.get("ok"):
            raise self._failure(str(header.get("error", "unknown error"))[:2000])
        return header

    def _failure(self, what: str) -> IsolationError:
        try:
            self._log.flush()
            tail = self.log_path.read_bytes()[-1500:].decode("utf-8", "replace").strip()
        except OSError:
            tail = ""
        return IsolationError(what + (f"; its output ends: {tail}" if tail else ""))

    def submit(self, inputs) -> None:
        """Send one input array (numpy, int32/int64); `collect` returns its outputs."""
        import numpy as np
        arr = np.ascontiguousarray(inputs)
        dtype = str(arr.dtype)
        if dtype not in ("int32", "int64"):
            raise TypeError(f"inputs must be int32 or int64, not {dtype}")
        self._send({"op": "call", "shape": list(arr.shape), "dtype": dtype}, arr.tobytes())

    def collect(self):
        """The outputs of the last `submit`: a numpy float32 array (shm) or a CUDA tensor view
        (IPC), valid until the next submit."""
        header = self._receive()
        shape = header.get("shape")
        if (not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape)
                or header.get("dtype") != "float32"):
            raise self._failure(f"malformed answer header {header!r}"[:300])
        n = 1
        for s in shape:
            n *= s
        if n > self.out_capacity:
            raise self._failure(f"answer of {n} values exceeds the buffer ({self.out_capacity})")
        if self.transport == "cuda":
            return self._cuda_buf[:n].view(shape)
        import numpy as np
        return np.frombuffer(self._mm, dtype=np.float32, count=n).reshape(shape)

    def call(self, inputs):
        self.submit(inputs)
        return self.collect()


# ---------------------------------------------------------------------------------------------
# The host side: runs inside the sandbox. Stdlib only until the loader is imported.
# ---------------------------------------------------------------------------------------------


def _host(req_fd: int, resp_fd: int, mem_fd: int, nbytes: int) -> int:
    import importlib

    _write_msg(resp_fd, {"ok": True, "hello": 1})

    def fail(msg: str) -> int:
        try:
            _write_msg(resp_fd, {"ok": False, "error": msg})
        except OSError:
            pass
        return 1

    try:
        init, _ = _read_msg(req_fd)
    except (EOFError, ValueError) as e:
        return fail(f"bad init ({e})")
    workdir, device = init["workdir"], init["device"]
    sys.path.insert(0, workdir)
    os.chdir(workdir)
    mm = mmap.mmap(mem_fd, nbytes)
    try:
        import numpy as np
        import torch
        module_name, func_name = init["loader"].split(":")
        fn = getattr(importlib.import_module(module_name), func_name)(
            Path(workdir), device, init.get("options") or {})
    except BaseException as e:  # noqa: BLE001 - the reason goes back to the evaluator
        import traceback
        traceback.print_exc()
        return fail(f"loading the model failed: {type(e).__name__}: {e}")
    shm = torch.frombuffer(mm, dtype=torch.float32, count=nbytes // 4)
    transport, cuda_out = "shm", None
    if init.get("cuda_ipc"):
        try:
            import base64
            import pickle

            from torch.multiprocessing.reductions import rebuild_cuda_tensor
            cuda_out = rebuild_cuda_tensor(*pickle.loads(base64.b64decode(init["cuda_ipc"])))
            transport = "cuda"
        except Exception as e:  # noqa: BLE001
            print(f"isolate host: CUDA IPC failed ({type(e).__name__}: {e}); host memory",
                  file=sys.stderr, flush=True)
    _write_msg(resp_fd, {"ok": True, "transport": transport})
    with torch.no_grad():
        while True:
            try:
                req, _ = _read_msg(req_fd)
            except (EOFError, OSError):
                return 0
            if req.get("op") != "call":
                return 0
            shape, dtype = req["shape"], req["dtype"]
            count = 1
            for s in shape:
                count *= s
            raw = _read_exact(req_fd, count * _DTYPES[dtype], None)
            try:
                x = torch.from_numpy(np.frombuffer(raw, dtype=dtype).reshape(shape).copy())
                out = fn(x.to(device).long())
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"the model returned {type(out).__name__}, not a tensor")
                n = out.numel()
                if n * 4 > nbytes:
                    raise ValueError(f"output of shape {tuple(out.shape)} exceeds the buffer")
                if transport == "cuda":
                    cuda_out[:n].view(out.shape).copy_(out)
                    torch.cuda.synchronize()
                else:
                    shm[:n].view(out.shape).copy_(out)
            except BaseException as e:  # noqa: BLE001
                import traceback
                traceback.print_exc()
                return fail(f"{type(e).__name__}: {e}")
            _write_msg(resp_fd, {"ok": True, "shape": list(out.shape), "dtype": "float32"})


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--host":
    sys.exit(_host(*(int(a) for a in sys.argv[2:])))
