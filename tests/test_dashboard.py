"""The live dashboard over real HTTP: a real run on a tiny target, the app served by uvicorn on
127.0.0.1 in a background thread, queried with urllib (and a headless Chromium when present)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ar, ar_popen, build_target, proposal, write_script

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from autoresearch.config import load_target  # noqa: E402
from autoresearch.dashboard import create_app  # noqa: E402
from autoresearch.errors import AutoresearchError  # noqa: E402
from autoresearch.ledger import Ledger  # noqa: E402
from autoresearch.summary import run_summary  # noqa: E402

EVIL = "<script>document.title='pwned'</script> bigger batch"


class Served:
    """create_app(target, tag) behind a real uvicorn server on a free port of 127.0.0.1."""

    def __init__(self, root: Path, tag: str | None = None):
        config = uvicorn.Config(create_app(load_target(root), tag), host="127.0.0.1", port=0,
                                log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def json(self, path: str, status: int = 200):
        code, body = self.get(path)
        assert code == status, (path, code, body)
        return json.loads(body)


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    """A finished 4-experiment greedy run (tag t): baseline 10, then 9, 11 (the <script> one), 8."""
    base = tmp_path_factory.mktemp("dash")
    root = build_target(base)
    script = write_script(base / "p.jsonl", [proposal(9.0, description="lower the learning rate"),
                                             proposal(11.0, description=EVIL),
                                             proposal(8.0, description="add QK-norm")])
    ar(root, "run", "--tag", "t", "--agent", f"script:{script}", "--policy", "greedy",
       "--max-experiments", "4", check=True)
    return root


@pytest.fixture(scope="module")
def dash(run_root) -> Iterator[Served]:
    with Served(run_root) as s:
        yield s


def test_status_is_the_ledgers_run_summary(dash, run_root):
    got = dash.json("/api/status")
    ledger = Ledger(run_root / ".autoresearch" / "ledger.db", readonly=True)
    want = json.loads(json.dumps(run_summary(ledger, "t", load_target(run_root).spec.policy)))
    ledger.close()
    got.pop("updated"), want.pop("updated")
    assert got == want
    assert got["experiments"] == 4 and got["counts"] == {"keep": 3, "discard": 1}
    assert got["best"]["seq"] == 4 and got["best"]["metric"] == 8.0 and got["baseline"] == 10.0
    assert dash.json("/api/status?tag=t")["tag"] == "t"


def test_experiments_list_and_incremental_since(dash):
    rows = dash.json("/api/experiments")["rows"]
    assert [(r["seq"], r["status"], r["metric"]) for r in rows] == [
        (1, "keep", 10.0), (2, "keep", 9.0), (3, "discard", 11.0), (4, "keep", 8.0)]
    assert rows[2]["description"] == EVIL and rows[2]["decision"]["verdict"] == "discard"
    assert [r["seq"] for r in dash.json("/api/experiments?tag=t&since=2")["rows"]] == [3, 4]
    assert dash.json("/api/experiments?since=4")["rows"] == []


def test_runs_lists_every_run_and_the_one_followed(dash):
    got = dash.json("/api/runs")
    assert [(r["tag"], r["experiments"]) for r in got["runs"]] == [("t", 4)]
    assert got["latest"] == got["following"] == "t"


def test_detail_has_the_diff_against_its_parent_and_the_log_tail(dash):
    d = dash.json("/api/experiments/3")
    assert d["seq"] == 3 and d["status"] == "discard"
    assert "-VALUE = 9.0" in d["diff"] and "+VALUE = 11.0" in d["diff"]
    assert d["log_tail"] and any("score: 11.0" in ln for ln in d["log_tail"])
    assert d["repeats"] == [] and d["candidate_seq"] is None


def test_unknown_experiment_or_run_is_a_json_404(dash):
    assert "no experiment #99" in dash.json("/api/experiments/99", 404)["detail"]
    assert "no run with tag 'nope'" in dash.json("/api/status?tag=nope", 404)["detail"]


def test_page_is_self_contained_and_escapes_descriptions(dash):
    code, page = dash.get("/")
    assert code == 200 and "<svg" not in page.split("<script")[0]  # drawn client-side
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"""url\(\s*["']?(https?:)?//""", page, re.I)
    assert "<link" not in page and "<script src" not in page
    # the first state rides in a JSON script block: the agent's </script> must not end it
    assert EVIL not in page and "document.title='pwned'" in page
    assert page.count("</script>") == 2


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium to run the page's JS")
def test_browser_renders_the_table_with_descriptions_as_text(dash):
    with tempfile.TemporaryDirectory() as profile:
        p = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=3000", "--dump-dom",
             dash.url + "/"], capture_output=True, text=True, timeout=60)
    dom = p.stdout
    assert "<title>autoresearch t</title>" in dom, p.stderr[-2000:]
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt; bigger batch" in dom
    assert "add QK-norm" in dom and 'class="dot"' in dom  # table and chart were drawn


def test_dashboard_sees_new_rows_while_a_run_is_in_progress(tmp_path):
    root = build_target(tmp_path, sleep=0.6)
    script = write_script(tmp_path / "p.jsonl", [proposal(v, 0.6) for v in (9.0, 8.0, 7.0)])
    with Served(root) as dash:
        # before any run: a 404 that says what to do, not a crash
        assert "autoresearch run" in dash.json("/api/status", 404)["detail"]
        proc = ar_popen(root, "run", "--tag", "live", "--agent", f"script:{script}",
                        "--policy", "greedy", "--max-experiments", "4")
        try:
            seen: list[tuple[int, tuple]] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and proc.poll() is None:
                code, body = dash.get("/api/status")
                if code == 200:
                    s = json.loads(body)
                    seen.append((s["experiments"], tuple(s["running"])))
                    if s["experiments"] >= 2 and s["running"]:
                        break
                time.sleep(0.1)
            assert proc.poll() is None, "the run ended before the dashboard saw it grow"
            counts = [n for n, _ in seen]
            assert counts and counts[-1] > counts[0] and counts[-1] >= 2, seen
            assert any(running for _, running in seen), seen
        finally:
            proc.terminate()
            proc.wait(30)


def test_cli_serves_until_ctrl_c(run_root):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = ar_popen(run_root, "dashboard", "--port", str(port), "--tag", "t")
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as r:
                    assert json.loads(r.read())["tag"] == "t"
                    break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard did not come up"
                time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_busy_port_is_one_error_line(run_root):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        p = ar(run_root, "dashboard", "--port", str(s.getsockname()[1]))
    assert p.returncode == 1 and p.stderr.startswith("error: cannot listen on 127.0.0.1:"), p.stderr
    assert "Traceback" not in p.stderr


def test_without_fastapi_the_error_says_what_to_install(run_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # makes `import fastapi` fail
    with pytest.raises(AutoresearchError, match=r"pip install 'autoresearch\[dashboard\]'"):
        create_app(load_target(run_root), None)
