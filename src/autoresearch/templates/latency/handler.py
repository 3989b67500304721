"""latency target: the request handler (EDITABLE). Make /search fast at the 99th percentile.

`handle(path, query)` gets the path and the parsed query string of one GET request and returns
(status, JSON-able body). server.py (locked) calls it from many threads at once, so shared state
must be thread-safe. The answer must follow catalog.py's contract exactly: the harness checks
every response.
"""

import bisect
import threading
from collections import OrderedDict

import catalog

USE_INDEX = 0         # 1: binary search over names sorted once at start-up; 0: scan every product
CACHE_SIZE = 0        # answers kept in an LRU cache (0: no cache)

ITEMS = catalog.products()
_SORTED = sorted(ITEMS)
_NAMES = [n for n, _ in _SORTED]
_cache: OrderedDict = OrderedDict()
_lock = threading.Lock()


def _search(q: str) -> dict:
    if not USE_INDEX:
        return catalog.answer(ITEMS, q)
    lo = bisect.bisect_left(_NAMES, q)
    hi = bisect.bisect_left(_NAMES, q + "\uffff")
    hits = sorted(_SORTED[lo:hi], key=lambda t: (-t[1], t[0]))
    return {"q": q, "results": [[n, p] for n, p in hits[:catalog.LIMIT]]}


def handle(path: str, query: dict[str, str]) -> tuple[int, dict]:
    if path != "/search" or "q" not in query:
        return 404, {"error": "GET /search?q=PREFIX"}
    q = query["q"]
    if CACHE_SIZE > 0:
        with _lock:
            hit = _cache.get(q)
            if hit is not None:
                _cache.move_to_end(q)
                return 200, hit
    body = _search(q)
    if CACHE_SIZE > 0:
        with _lock:
            _cache[q] = body
            if len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    return 200, body
