"""A throwaway PostgreSQL cluster for the hub's database tests: initdb + pg_ctl in a temporary
directory, on a free port of 127.0.0.1, run as a non-root user (PostgreSQL refuses root).
`postgres_url()` returns None when PostgreSQL or psycopg is not installed, so tests skip."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path


def _bindir() -> Path | None:
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin"):
        for d in sorted(glob.glob(pattern), reverse=True):
            if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
                return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class Cluster:
    def __init__(self) -> None:
        self.bindir = _bindir()
        self.dir: Path | None = None
        self.url: str | None = None
        self.user: str | None = None
        self.why = ""

    def _as_user(self, *args: str) -> subprocess.CompletedProcess:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", self.user or "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    def start(self) -> str | None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            self.why = "psycopg is not installed"
            return None
        if self.bindir is None:
            self.why = "PostgreSQL is not installed"
            return None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    pwd.getpwnam(name)
                    self.user = name
                    break
                except KeyError:
                    continue
            if self.user is None or shutil.which("runuser") is None:
                self.why = "running as root without a postgres user or runuser"
                return None
        from hubkit import free_port

        # not under a test worker's private TMPDIR: the postgres user must be able to enter it
        self.dir = Path(tempfile.mkdtemp(prefix="ar-pg-", dir=os.environ.get(
            "AR_TESTS_SHARED_TMPDIR")))
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        data = self.dir / "data"
        p = self._as_user(str(self.bindir / "initdb"), "-D", str(data), "-A", "trust", "-U",
                          "hub", "--no-sync", "-E", "UTF8")
        if p.returncode != 0:
            self.why = f"initdb failed: {p.stderr.strip()[-300:]}"
            return None
        port = free_port()
        opts = f"-p {port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        p = self._as_user(str(self.bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l",
                          str(self.dir / "log"), "-w", "-t", "60", "start")
        if p.returncode != 0:
            self.why = f"pg_ctl start failed: {p.stderr.strip()[-300:]}"
            return None
        self.url = f"postgresql://hub@127.0.0.1:{port}/postgres"
        return self.url

    def fresh_db(self, name: str) -> str:
        """A new empty database in the cluster; its URL."""
        import psycopg
        assert self.url
        with psycopg.connect(self.url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}"')
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        if self.dir is None:
            return
        if self.url:
            self._as_user(str(self.bindir / "pg_ctl"), "-D", str(self.dir / "data"), "-m",
                          "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
