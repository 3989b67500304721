"""Helpers for the hub tests: a real `autoresearch hub serve` process on 127.0.0.1, users,
claims built as real commits and git bundles, and plain HTTP calls."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import cli_env, train_source

from autoresearch.hub.repo import local
from autoresearch.ratchet import Ratchet


def stop_all(procs: list[subprocess.Popen], hub: HubProcess) -> None:
    """A test's teardown: kill the process group of every client still running, then the hub."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
    hub.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout: float, what: str, interval: float = 0.05):
    """Poll cond() until it returns something truthy; fail after timeout naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http(url: str, method: str = "GET", body: Any = None, key: str | None = None,
         raw: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    h = {"Content-Type": "application/json", **(headers or {})}
    if key:
        h["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            payload = r.read()
            code = r.status
    except urllib.error.HTTPError as e:
        payload, code = e.read(), e.code
    try:
        return code, json.loads(payload) if payload else None
    except ValueError:
        return code, payload


class HubProcess:
    """`autoresearch hub serve` as a real process; kill() is kill -9."""

    def __init__(self, target: Path, data: Path, db: str | None = None, *extra: str):
        self.target, self.data, self.db, self.extra = target, data, db, list(extra)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> HubProcess:
        args = [sys.executable, "-m", "autoresearch.cli", "hub", "serve", "--target",
                str(self.target), "--port", str(self.port), "--data", str(self.data), *self.extra]
        if self.db:
            args += ["--db", self.db]
        self.log = open(self.data.parent / f"hub-{self.port}.log", "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=cli_env())

        def up():
            assert self.proc.poll() is None, self.output()
            try:
                return http(self.url + "/api/health")[0] == 200
            except OSError:
                return False
        wait_for(up, 30, "the hub to answer")
        return self

    def output(self) -> str:
        return (self.data.parent / f"hub-{self.port}.log").read_text(errors="replace")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def add_user(data: Path, name: str, role: str, db: str | None = None) -> str:
    """`autoresearch hub add-user`, the CLI itself: returns the key it printed."""
    args = [sys.executable, "-m", "autoresearch.cli", "hub", "add-user", name, "--role", role,
            "--data", str(data)]
    if db:
        args += ["--db", db]
    p = subprocess.run(args, capture_output=True, text=True, env=cli_env(), timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    key = p.stdout.strip().splitlines()[-1]
    assert key.startswith("arh_"), p.stdout
    return key


def make_claim(root: Path, parent: str, value: float, *, files: dict[str, str] | None = None,
               hardware: str = "cpu-test", metric: float | None = None,
               description: str | None = None) -> tuple[str, dict]:
    """A real commit on top of parent (train.py writing VALUE, or these files) and its claim."""
    r = Ratchet(root)
    cr = r.make_commit(parent, description or f"value {value}",
                       files=files or {"train.py": train_source(value)})
    bundle = local(r).bundle(cr.sha, [parent])
    return cr.sha, {"bundle": base64.b64encode(bundle).decode(), "parent": parent,
                    "hardware": hardware, "metric": value if metric is None else metric,
                    "runs": [value if metric is None else metric], "agent": "test",
                    "description": description or f"value {value}"}
