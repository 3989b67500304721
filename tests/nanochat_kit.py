"""Helpers shared by the nanochat tests and the nanochat attacks: the template's scripts run as
the harness runs them, on the CPU profile and the offline corpus."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import autoresearch
from autoresearch.metrics import MetricParser

TEMPLATE = Path(autoresearch.__file__).parent / "templates" / "nanochat"


def nanochat_env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env.update(AUTORESEARCH_CACHE=str(cache), AUTORESEARCH_NANOCHAT_PROFILE="cpu",
               AUTORESEARCH_DATA="offline", AUTORESEARCH_SEED="0", AUTORESEARCH_CPU_THREADS="1",
               **extra)
    return env


def run_python(args: list[str], cwd: Path, env: dict[str, str], timeout: float):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def parse_metrics(output: str) -> dict[str, float]:
    parser = MetricParser()
    for line in output.splitlines():
        parser.feed(line)
    return parser.values
