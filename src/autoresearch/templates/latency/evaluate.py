"""latency target: the load generator and judge (LOCKED). Prints the p99 latency of /search.

    python evaluate.py            ROUNDS rounds of REQUESTS requests; `p99_ms` is their median
    python evaluate.py --check    a few requests, checked, no timing (the run step)

It starts `python server.py` (locked) on 127.0.0.1, waits for it to answer, then drives it with
CONCURRENCY clients, each on its own keep-alive connection, in a closed loop (a bounded load:
never more than CONCURRENCY requests in flight). Queries are prefixes drawn from a Zipf-like
distribution (hot prefixes repeat, as real traffic does) with a fresh seed from os.urandom, so
the traffic cannot be known in advance. Every response is checked in full against catalog.py's
contract; one wrong answer, error status or dropped connection fails the experiment. Latency is
measured here, from send to the last byte read. At the end the server, and every process the
handler started (this evaluator is their subreaper), is killed before the metrics are printed:
nothing the agent's code prints can come after them.
"""

import bisect
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import catalog

CONCURRENCY = 4                                            # clients in flight
REQUESTS = int(os.environ.get("LATENCY_REQUESTS", "400"))  # per round
ROUNDS = 3                                                 # rounds; the metric is the median p99
WARMUP = 20                                                # untimed requests first
START_TIMEOUT = 30.0                                       # seconds for the server to come up
REQUEST_TIMEOUT = 10.0                                     # seconds for one request


def fail(message: str) -> int:
    print(f"eval_error: {message}", flush=True)
    return 1


class Oracle:
    """Expected answers: catalog.py's contract, computed over a sorted copy (same result, fast)."""

    def __init__(self) -> None:
        self.items = catalog.products()
        self.by_name = sorted(self.items)
        self.names = [n for n, _ in self.by_name]
        self.memo: dict[str, dict] = {}

    def __call__(self, q: str) -> dict:
        if q not in self.memo:
            lo = bisect.bisect_left(self.names, q)
            hi = bisect.bisect_right(self.names, q + "\U0010ffff")
            self.memo[q] = catalog.answer(self.by_name[lo:hi], q)
        return self.memo[q]


def prefixes(rng: random.Random, items: list[tuple[str, int]], n: int) -> list[str]:
    pool = sorted({name[:k] for name, _ in items[:2000] for k in (1, 2, 3, 4, 5)})
    rng.shuffle(pool)
    weights = [1.0 / (rank + 1) ** 1.1 for rank in range(len(pool))]    # Zipf-like
    return rng.choices(pool, weights=weights, k=n)


def drive(port: int, queries: list[str], oracle: Oracle, errors: list[str]) -> list[float]:
    """Send the queries over CONCURRENCY keep-alive connections; latencies in ms.

    The clients only send, read and time; every answer is checked after the round, so the
    harness's own work never delays a request in flight.
    """
    for q in set(queries):
        oracle(q)                     # expected answers ready before the clock starts
    lat: list[float] = []
    answers: list[tuple[int, str, int, bytes]] = []
    lock = threading.Lock()
    it = iter(enumerate(queries))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        try:
            while not errors:
                with lock:
                    nxt = next(it, None)
                if nxt is None:
                    return
                i, q = nxt
                t0 = time.perf_counter()
                conn.request("GET", f"/search?q={q}")
                resp = conn.getresponse()
                body = resp.read()
                ms = (time.perf_counter() - t0) * 1000.0
                with lock:
                    lat.append(ms)
                    answers.append((i, q, resp.status, body))
        except (OSError, http.client.HTTPException) as e:
            errors.append(f"connection failed: {type(e).__name__}: {e}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(CONCURRENCY)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, q, status, body in sorted(answers):
        if status != 200:
            errors.append(f"request {i} (q={q!r}): status {status}: {body[:120]!r}")
            break
        try:
            got = json.loads(body)
        except ValueError:
            errors.append(f"request {i} (q={q!r}): the body is not JSON")
            break
        if got != oracle(q):
            errors.append(f"request {i} (q={q!r}): wrong answer {str(got)[:160]}")
            break
    if not errors and len(answers) != len(queries):
        errors.append(f"{len(queries) - len(answers)} requests got no answer")
    return lat


def become_subreaper() -> None:
    """Orphans of the server (double forks, setsid daemons) become our children (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)   # PR_SET_CHILD_SUBREAPER


def kill_all() -> None:
    """Stop, then kill, every process this evaluator started: the server and whatever the
    handler left behind. The metrics are printed after this, so no line the agent's code prints
    can come after them."""
    import psutil
    me = psutil.Process()
    for _ in range(20):              # until no new process appears (one may fork meanwhile)
        procs = me.children(recursive=True)
        if not procs:
            return
        for p in procs:
            try:
                p.suspend()
            except psutil.Error:
                pass
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=5)


def p99(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(0.99 * len(s)))]


def main(argv: list[str]) -> int:
    check_only = "--check" in argv
    become_subreaper()
    here = Path(__file__).resolve().parent
    server = subprocess.Popen([sys.executable, str(here / "server.py")], cwd=here,
                              stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        line = server.stdout.readline().strip()
        if not line.startswith("port: "):
            return fail(f"the server did not start (it printed {line!r}; see the log)")
        port = int(line.split()[1])
        oracle = Oracle()
        rng = random.Random(int.from_bytes(os.urandom(16), "little"))
        errors: list[str] = []
        while True:   # the first answer also waits out the handler's start-up work
            try:
                drive(port, prefixes(rng, oracle.items, 1), oracle, errors)
                break
            except Exception:
                if time.monotonic() > deadline:
                    return fail(f"the server did not answer within {START_TIMEOUT:g} s")
                time.sleep(0.05)
        if errors:
            return fail(errors[0])
        drive(port, prefixes(rng, oracle.items, 10 if check_only else WARMUP), oracle, errors)
        if errors:
            return fail(errors[0])
        if check_only:
            print("check: responses correct")
            return 0
        rounds, everything = [], []
        for _ in range(ROUNDS):
            lat = drive(port, prefixes(rng, oracle.items, REQUESTS), oracle, errors)
            if errors:
                return fail(errors[0])
            rounds.append(p99(lat))
            everything += lat
        if server.poll() is not None:
            return fail(f"the server exited with {server.returncode} during the load")
    finally:
        kill_all()
        server.wait()
    spread = (max(rounds) - min(rounds)) if len(rounds) > 1 else 0.0
    print(f"p99_ms: {statistics.median(rounds):.3f}")
    print(f"p99_ms_range: {spread:.3f}")
    print(f"p50_ms: {statistics.median(everything):.3f}")
    print(f"requests: {len(everything)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
