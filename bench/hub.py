"""The hub: intake rate, verification throughput, the hub's own cost per claim, and 1,000
contributors polling at once.

    python bench/hub.py [--quick]

The target is synthetic: its run command sleeps for the budget and prints the number in
value.txt, so verification costs no CPU and the figures measure the hub and the verifiers'
protocol, not the machine. Claims are real commits in real git bundles (built here in Python:
a pack of one blob, one tree and one commit), sent over HTTP to a real `autoresearch hub serve`
on 127.0.0.1 unless said otherwise.

1. Intake: claims accepted per second, 8 contributors submitting at once over HTTP (each
   claim: base64 bundle -> quarantine -> fsck -> scope -> admitted -> recorded).
   Target: at least 10 claims/s.
2. Verification throughput with 1, 2 and 4 `autoresearch verify` processes (quorum 1, 2 runs of
   each side per claim, sandboxed): claims decided per second over the window from the first
   lease to the last report. Target: N verifiers give at least 0.85 x N x one verifier's rate.
3. The hub's own cost per claim (in process, SQLite): CPU seconds of the hub and its git
   children for one claim's whole life at the hub (intake, lease, report, decision), averaged
   over 50 claims after 100 claims, and again after 10,000 (the 9,900 in between are written
   straight into the store and the repository). Target: at most 50 ms, and flat (at most 1.5x).
4. 1,000 contributors polling `GET /api/best` (each with its own key and connection, 3 polls
   one second apart, random phase): every poll must be answered, p99 latency at most 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import random
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

INTAKE_TARGET = 10.0           # claims/s
SCALING_TARGET = 0.85          # x N x one verifier
COST_TARGET_MS = 50.0
COST_FLAT = 1.5                # claim 10,000 / claim 100
POLL_P99_TARGET = 1.0          # seconds
HW = "cpu-bench"
TOML = """editable = ["value.txt"]
run = "sleep $AUTORESEARCH_BUDGET_SECONDS; echo score: $(cat value.txt)"
metric = "score"
budget = {budget}
timeout = 30
"""


# == git objects by hand (fast claims) ==========================================================
def _obj(kind: bytes, data: bytes) -> tuple[str, bytes]:
    return hashlib.sha1(kind + b" %d\0" % len(data) + data).hexdigest(), data


def _pack(objects: list[tuple[int, bytes]]) -> bytes:
    out = b"PACK" + struct.pack(">II", 2, len(objects))
    for kind, data in objects:
        size = len(data)
        byte = (kind << 4) | (size & 0x0F)
        size >>= 4
        head = bytearray()
        while size:
            head.append(byte | 0x80)
            byte = size & 0x7F
            size >>= 7
        head.append(byte)
        out += bytes(head) + zlib.compress(data)
    return out + hashlib.sha1(out).digest()


class ClaimMaker:
    """Commits on top of a parent that change value.txt, as bundles, without running git."""

    def __init__(self, root: Path, parent: str):
        self.parent = parent
        self.entries = {}
        out = subprocess.run(["git", "ls-tree", parent], cwd=root, capture_output=True,
                             text=True, check=True).stdout
        for line in out.splitlines():
            meta, name = line.split("\t", 1)
            mode, _kind, oid = meta.split()
            self.entries[name] = (mode, oid)

    def make(self, value: float, salt: str) -> tuple[str, bytes]:
        blob_id, blob = _obj(b"blob", f"{value}\n".encode())
        entries = dict(self.entries, **{"value.txt": ("100644", blob_id)})
        tree_data = b"".join(f"{mode} {name}".encode() + b"\0" + bytes.fromhex(oid)
                             for name, (mode, oid) in sorted(entries.items()))
        tree_id, _ = _obj(b"tree", tree_data)
        who = f"bench <bench@localhost> {int(time.time())} +0000"
        commit = (f"tree {tree_id}\nparent {self.parent}\nauthor {who}\ncommitter {who}\n\n"
                  f"value {value} {salt}\n").encode()
        commit_id, _ = _obj(b"commit", commit)
        pack = _pack([(1, commit), (2, tree_data), (3, blob)])
        header = f"# v2 git bundle\n-{self.parent} \n{commit_id} refs/heads/claim\n\n".encode()
        return commit_id, header + pack

    def claim(self, value: float, salt: str) -> dict:
        _sha, bundle = self.make(value, salt)
        return {"bundle": base64.b64encode(bundle).decode(), "parent": self.parent,
                "hardware": HW, "metric": value, "runs": [value], "agent": "bench",
                "description": f"value {value}"}


# == processes and HTTP ===========================================================================
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, cwd: Path | None = None) -> str:
    p = subprocess.run([sys.executable, "-m", "autoresearch.cli", *args], cwd=cwd,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"autoresearch {' '.join(args)} failed:\n{p.stdout}{p.stderr}")
    return p.stdout


def make_target(base: Path, budget: float) -> tuple[Path, str]:
    root = base / "target"
    root.mkdir(parents=True)
    (root / "autoresearch.toml").write_text(TOML.format(budget=budget))
    (root / "value.txt").write_text("10\n")
    (root / "program.md").write_text("make the score smaller\n")
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "bench target"], cwd=root, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                          text=True, check=True).stdout.strip()
    return root, head


def add_user(data: Path, name: str, role: str) -> str:
    return cli("hub", "add-user", name, "--role", role, "--data", str(data)).strip().splitlines()[-1]


def post(url: str, body: dict, key: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Hub:
    def __init__(self, root: Path, data: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(data.parent / f"hub-{self.port}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autoresearch.cli", "hub", "serve", "--target", str(root),
             "--port", str(self.port), "--data", str(data), *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.url + "/api/health", timeout=2).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the hub did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def verdict(good: bool) -> str:
    return "PASS" if good else "FAIL"


# == 1. intake ====================================================================================
def bench_intake(base: Path, n: int) -> float:
    root, head = make_target(base / "intake", 0.1)
    data = base / "intake" / "hubdata"
    data.mkdir()
    key = add_user(data, "c", "contributor")
    hub = Hub(root, data, "--rate-limit", "1000000")
    try:
        maker = ClaimMaker(root, head)
        claims = [maker.claim(100.0 + i, "intake") for i in range(n)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda c: post(hub.url + "/api/claims", c, key)[0], claims))
        rate = n / (time.perf_counter() - t0)
    finally:
        hub.stop()
    assert codes == [201] * n, codes
    print(f"intake: {n} claims from 8 concurrent contributors over HTTP")
    print(f"  {rate:.1f} claims/s accepted   target >= {INTAKE_TARGET:g}   "
          f"{verdict(rate >= INTAKE_TARGET)}")
    return rate


# == 2. verification throughput ===================================================================
def bench_verifiers(base: Path, counts: list[int], per_verifier: int, budget: float) -> None:
    import sqlite3

    print(f"\nverification: quorum 1, 2 sandboxed runs of each side per claim, budget {budget:g}s, "
          f"{per_verifier} claims per verifier")
    print(f"{'verifiers':>9} {'claims/s':>9} {'x one':>7} {'target':>7}  result")
    one = None
    for n in counts:
        where = base / f"verify-{n}"
        root, head = make_target(where, budget)
        data = where / "hubdata"
        data.mkdir()
        ckey = add_user(data, "c", "contributor")
        vkeys = [add_user(data, f"v{i}", "verifier") for i in range(n)]
        hub = Hub(root, data, "--quorum", "1", "--runs", "2", "--rate-limit", "1000000")
        procs = []
        try:
            maker = ClaimMaker(root, head)
            for i in range(n * per_verifier):   # worse than the base: the best never moves
                code, body = post(hub.url + "/api/claims", maker.claim(20.0 + i, "v"), ckey)
                assert code == 201, body
            for i, key in enumerate(vkeys):
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "autoresearch.cli", "verify", "--hub", hub.url,
                     "--key", key, "--hardware", HW, "--data", str(where / f"v{i}"), "--poll",
                     "0.1", "--max-claims", str(per_verifier)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for p in procs:
                p.wait(600)
        finally:
            hub.stop()
        db = sqlite3.connect(data / "hub.db")
        first, last, done = db.execute("SELECT MIN(created), MAX(finished), COUNT(*) FROM "
                                       "verifications WHERE status = 'done'").fetchone()
        decided = db.execute("SELECT COUNT(*) FROM claims WHERE status = 'rejected'").fetchone()[0]
        db.close()
        assert decided == n * per_verifier == done, (decided, done)
        rate = decided / (last - first)
        one = one or rate
        target = SCALING_TARGET * n if n > 1 else None
        good = target is None or rate / one >= target
        print(f"{n:>9} {rate:>9.3f} {rate / one:>7.2f} "
              f"{(f'{target:.2f}' if target else '-'):>7}  {verdict(good) if target else '-'}")


# == 3. the hub's own cost per claim ==============================================================
def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def bench_cost(base: Path, total: int, window: int) -> None:
    from autoresearch.config import load_target
    from autoresearch.hub.models import ClaimIn, ReportIn
    from autoresearch.hub.server import open_hub
    from autoresearch.hub.service import HubSettings, hash_key, welch_p

    root, head = make_target(base / "cost", 0.1)
    hub = open_hub(load_target(root), str(base / "cost" / "hubdata"), None,
                   HubSettings(quorum=1, rate_limit=10**9))
    user = hub.store.add_user("c", "contributor", hash_key("c"))
    verifier = hub.store.add_user("v", "verifier", hash_key("v"))
    maker = ClaimMaker(root, head)
    welch_p([1.0, 2.0], [3.0, 4.0], "minimize", 0.0)   # scipy's import is not a claim's cost
    seq = iter(range(10**9))

    def life(n: int) -> tuple[float, float]:
        bodies = [ClaimIn(**maker.claim(1000.0 + next(seq), "cost")) for _ in range(n)]
        t0, c0 = time.perf_counter(), _cpu()
        for body in bodies:
            hub.submit(user, body)
            lease = hub.lease(verifier, HW)
            hub.report(verifier, lease.verification_id, ReportIn(
                outcome="measured", candidate_runs=[2000.0, 2000.1], best_runs=[10.0, 10.1]))
        return (_cpu() - c0) / n * 1000, (time.perf_counter() - t0) / n * 1000

    life(100 - window)
    at100 = life(window)
    # claims 151 .. total - window, straight into the repository and the store
    prefill = total - 100 - window
    lines, marks = [], []
    for i in range(prefill):
        value = f"{5000 + i}\n".encode()
        lines.append(b"blob\nmark :%d\ndata %d\n%s\n" % (2 * i + 1, len(value), value))
        lines.append(b"commit refs/claims/prefill\nmark :%d\ncommitter b <b@b> 0 +0000\n"
                     b"data 2\np\nfrom %s\nM 100644 :%d value.txt\n\n"
                     % (2 * i + 2, head.encode(), 2 * i + 1))
        marks.append(2 * i + 2)
    marks_file = base / "cost" / "marks"
    hub.repo.git("fast-import", "--quiet", f"--export-marks={marks_file}",
                 input=b"".join(lines), binary=True)
    shas = dict(line.split() for line in marks_file.read_text().splitlines())
    commits = [shas[f":{m}"] for m in marks]
    hub.repo.git("update-ref", "--stdin", input="".join(
        f"create refs/claims/{c} {c}\n" for c in commits))
    hub.repo.delete_ref("refs/claims/prefill")
    now = time.time()
    with hub.store.atomic():
        for i, c in enumerate(commits):
            claim = hub.store.add_claim(
                user_id=user.id, hardware=HW, kind="claim", parent=head, commit_sha=c,
                tree_sha=hashlib.sha1(c.encode()).hexdigest(), agent="bench",
                description=f"prefill {i}", claimed_metric=5000.0 + i, claimed_runs=[5000.0 + i],
                status="rejected", reason="not verified", needed=1, diff="",
                diff_sig=[hashlib.blake2b(f"{i}".encode(), digest_size=6).hexdigest()],
                created=now - 7200, updated=now - 7200)
            hub.store.add_verification(claim_id=claim.id, verifier_id=verifier.id, against=head,
                                       status="done", expires=now, candidate_runs=[1.0, 2.0],
                                       best_runs=[1.0, 2.0], outcome="measured", finished=now)
    at10k = life(window)
    n_claims = sum(hub.store.count_claims().values())
    print("\nthe hub's own cost per claim (intake + lease + report + decision, in process, "
          "SQLite; CPU of the hub and its git children; wall on this machine in brackets)")
    print(f"  at claim 100:    {at100[0]:6.1f} ms  ({at100[1]:.1f} ms wall)")
    print(f"  at claim {n_claims:,}: {at10k[0]:6.1f} ms  ({at10k[1]:.1f} ms wall)")
    flat = at10k[0] / at100[0]
    good = at100[0] <= COST_TARGET_MS and at10k[0] <= COST_TARGET_MS and flat <= COST_FLAT
    print(f"  ratio {flat:.2f}   target <= {COST_TARGET_MS:g} ms and ratio <= {COST_FLAT:g}   "
          f"{verdict(good)}")
    hub.store.close()


# == 4. 1,000 contributors polling ================================================================
async def _poller(port: int, key: str, polls: int, interval: float, out: list, fails: list):
    await asyncio.sleep(random.random() * interval)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as e:
        fails.append(str(e))
        return
    request = (f"GET /api/best?hardware={HW} HTTP/1.1\r\nHost: hub\r\n"
               f"Authorization: Bearer {key}\r\n\r\n").encode()
    try:
        for _ in range(polls):
            t0 = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if b" 200 " not in status:
                fails.append(status.decode(errors="replace").strip())
            else:
                out.append(time.perf_counter() - t0)
            await asyncio.sleep(interval)
    except (OSError, asyncio.IncompleteReadError) as e:
        fails.append(f"{type(e).__name__}: {e}")
    finally:
        writer.close()


def bench_pollers(base: Path, n: int, polls: int, interval: float) -> None:
    from autoresearch.hub.service import hash_key
    from autoresearch.hub.store import open_store

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * n + 256)), hard))
    root, _head = make_target(base / "poll", 0.1)
    data = base / "poll" / "hubdata"
    data.mkdir()
    store = open_store(None, data)
    keys = [f"arh_bench_{i}_{random.random()}" for i in range(n)]
    with store.atomic():
        for i, k in enumerate(keys):
            store.add_user(f"c{i}", "contributor", hash_key(k))
    store.close()
    hub = Hub(root, data)
    latencies: list[float] = []
    fails: list[str] = []

    async def main() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(_poller(hub.port, k, polls, interval, latencies, fails)
                               for k in keys))
        return time.perf_counter() - t0

    try:
        took = asyncio.run(main())
    finally:
        hub.stop()
    latencies.sort()
    q = (lambda f: latencies[min(len(latencies) - 1, int(f * len(latencies)))]) if latencies \
        else (lambda f: float("inf"))
    good = not fails and len(latencies) == n * polls and q(0.99) <= POLL_P99_TARGET
    print(f"\n{n} contributors polling GET /api/best over loopback, {polls} polls each, "
          f"{interval:g}s apart ({took:.1f}s in all)")
    print(f"  answered {len(latencies)}/{n * polls}, failed {len(fails)}"
          + (f" (first: {fails[0]})" if fails else ""))
    print(f"  latency p50 {q(0.5) * 1000:.0f} ms, p99 {q(0.99) * 1000:.0f} ms, max "
          f"{latencies[-1] * 1000 if latencies else float('inf'):.0f} ms   target: all answered, "
          f"p99 <= {POLL_P99_TARGET:g} s   {verdict(good)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller numbers (a smoke run)")
    args = ap.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="ar-bench-hub-") as tmp:
        base = Path(tmp)
        bench_intake(base, 50 if args.quick else 200)
        bench_verifiers(base, [1, 2] if args.quick else [1, 2, 4], 2 if args.quick else 3,
                        budget=1.0)
        bench_cost(base, 1_000 if args.quick else 10_000, 50)
        bench_pollers(base, 200 if args.quick else 1_000, 3, 1.0)
    print(f"\ntotal {time.time() - t0:.0f}s")


if __name__ == "__main__":
    os.environ.pop("AUTORESEARCH_HARDWARE", None)
    threading.current_thread().name = "bench"
    main()
