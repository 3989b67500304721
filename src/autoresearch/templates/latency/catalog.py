"""latency target: the fixed product catalogue and the service's contract (LOCKED).

GET /search?q=PREFIX returns `{"q": PREFIX, "results": [[name, popularity], ...]}`: the products
whose name starts with PREFIX (case-sensitive), most popular first, ties by name, at most LIMIT.
The catalogue is generated from a fixed seed: LATENCY_ITEMS products (default 50,000).
"""

import os
import random

SEED = 7                                      # fixed: the same catalogue everywhere
ITEMS = int(os.environ.get("LATENCY_ITEMS", "50000"))
LIMIT = 10                                    # results per answer
_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "da", "fi", "go", "pe", "zu"]


def products() -> list[tuple[str, int]]:
    """(name, popularity) pairs, unique names, in a fixed shuffled order."""
    rng = random.Random(SEED)
    names: set[str] = set()
    out = []
    while len(out) < ITEMS:
        name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
        name += f"-{rng.randrange(1000):03d}"
        if name in names:
            continue
        names.add(name)
        out.append((name, rng.randrange(1_000_000)))
    return out


def answer(items: list[tuple[str, int]], q: str) -> dict:
    """The contract, as plainly as possible: scan, filter, sort, cut."""
    hits = [(n, p) for n, p in items if n.startswith(q)]
    hits.sort(key=lambda t: (-t[1], t[0]))
    return {"q": q, "results": [[n, p] for n, p in hits[:LIMIT]]}
