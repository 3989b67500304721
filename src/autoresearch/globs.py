"""Matching target-relative paths against the editable and locked globs.

`*` and `?` stay inside one path segment, `**` spans any number of segments, so `src/**/*.py`
matches `src/a.py` and `src/x/y/a.py`. A glob without a slash still matches only at the top
(`train.py` is not `sub/train.py`), as a user reading the toml expects.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable


@functools.lru_cache(maxsize=512)
def _compile(glob: str) -> re.Pattern[str]:
    out = []
    i = 0
    g = glob.strip()
    while g.startswith("./"):  # not lstrip: that would also eat the dot of ".env"
        g = g[2:]
    while i < len(g):
        c = g[i]
        if g.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif g.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matches(path: str, globs: Iterable[str]) -> bool:
    return any(_compile(g).match(path) for g in globs)
