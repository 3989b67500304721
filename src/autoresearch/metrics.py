"""Metrics read from a command's output: `name: value` lines and `METRIC name=value` lines.

The output protocol of target commands (last value wins):

    val_bpb: 0.997900                          a line made only of `name: value` pairs
    progress: 0.40 | train_loss: 3.21          pairs may be separated by spaces, `|` or `,`
    METRIC val_bpb=0.9979 peak_vram_mb=4500    explicit form, any number of pairs

Anything else (`step 00100 | loss 3.2`, `Epoch 1: starting`, `acc: 95%`) carries no metric.
`nan` and `inf` parse to floats so that callers can reject them by policy, not by accident.
parse_line runs on every output line of every experiment, so it is two compiled regexes and a
cheap pre-check.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

__all__ = ["MetricParser", "missing_metric_reason", "parse_line", "tail_lines"]

MAX_PROGRESS_POINTS = 10_000  # progress samples kept per run; denser output is subsampled

_NAME = r"[A-Za-z_][\w.\-/]*"
_NUMBER = r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|(?i:inf(?:inity)?|nan))"
_SEP = r"(?:\s*[|,]\s*|\s+)"
_COLON_PAIR = rf"{_NAME}\s*:\s*{_NUMBER}"
_EQUALS_PAIR = rf"{_NAME}\s*=\s*{_NUMBER}"

_COLON_LINE = re.compile(rf"\s*{_COLON_PAIR}(?:{_SEP}{_COLON_PAIR})*\s*[|,]?\s*")
_METRIC_LINE = re.compile(rf"\s*METRIC\s+{_EQUALS_PAIR}(?:{_SEP}{_EQUALS_PAIR})*\s*[|,]?\s*")
# Only used on a line already validated by one of the two above, so tokenization agrees.
_PAIR = re.compile(rf"({_NAME})\s*[:=]\s*({_NUMBER})")


def parse_line(line: str) -> dict[str, float]:
    """The metric pairs on one output line, or {} when the line is not a metric line."""
    if ":" not in line and "=" not in line:
        return {}
    if not (_COLON_LINE.fullmatch(line) or _METRIC_LINE.fullmatch(line)):
        return {}
    return {name: float(value) for name, value in _PAIR.findall(line)}


class MetricParser:
    """Accumulates the metrics of one run, line by line.

    `values` holds the last value seen for every name. `progress_points` holds
    (progress, {other metrics on that line}) for each line that reports `progress`; past
    MAX_PROGRESS_POINTS it keeps every 2nd, then every 4th... point, so memory stays bounded
    for a script that reports progress on every step.
    """

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.progress_points: list[tuple[float, dict[str, float]]] = []
        self._stride = 1
        self._progress_seen = 0

    def feed(self, line: str) -> dict[str, float]:
        """Parse one line, record its pairs and return them."""
        pairs = parse_line(line)
        if not pairs:
            return pairs
        self.values.update(pairs)
        if "progress" in pairs:
            if self._progress_seen % self._stride == 0:
                others = {k: v for k, v in pairs.items() if k != "progress"}
                self.progress_points.append((pairs["progress"], others))
                if len(self.progress_points) > MAX_PROGRESS_POINTS:
                    self.progress_points = self.progress_points[::2]
                    self._stride *= 2
            self._progress_seen += 1
        return pairs


def tail_lines(path: str | os.PathLike[str], n: int = 50, max_bytes: int = 64_000) -> list[str]:
    """The last `n` lines of a file, reading at most its last `max_bytes` bytes.

    A missing or unreadable file gives []. When the read starts mid-file, the first (partial)
    line is dropped.
    """
    if n <= 0:
        return []
    try:
        with open(Path(path), "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read(size - start)
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]
    return lines[-n:]


def missing_metric_reason(name: str, seen: dict[str, float], step: str) -> str:
    """Why a run has no value for the metric: the metrics it did print, and the closest name.

    `val_los` with `val_loss: 1.05` in the log reads: no 'val_los: <number>' line in the
    evaluate step's output; metrics seen: val_loss 1.05 — did you mean 'val_loss'? ...
    """
    reason = f"no '{name}: <number>' line in the {step} step's output"
    if not seen:
        return reason + " (it printed no 'name: value' line at all)"
    names = sorted(seen)
    shown = ", ".join(f"{k} {seen[k]:g}" for k in names[:12]) + (" ..." if len(names) > 12 else "")
    reason += f"; metrics seen: {shown}"
    guess = difflib.get_close_matches(name, names, n=1, cutoff=0.6) or \
        difflib.get_close_matches(name.lower(), [n.lower() for n in names], n=1, cutoff=0.6)
    if guess:
        real = next(n for n in names if n.lower() == guess[0].lower())
        reason += f" — did you mean '{real}'? (metric = \"{real}\" in autoresearch.toml)"
    return reason
