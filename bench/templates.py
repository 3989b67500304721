"""Each template's short offline run: baseline vs best, at the templates' default sizes.

    python bench/templates.py [--experiments 12] [--only sql,kernel] [--policy noise-aware]

For every template it runs `autoresearch init --template NAME` in a temporary directory, then
`autoresearch run --agent optuna --max-experiments N` (the prompt template against the fake
OpenAI server with its toy model), and prints the baseline metric, the best kept metric, their
ratio and PASS/FAIL against the target: at least 2x better for times, +0.3 for accuracy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from autoresearch.ledger import Ledger  # noqa: E402
from autoresearch.testing import FakeOpenAIServer  # noqa: E402

TEMPLATES = ("sql", "kernel", "config", "latency", "prompt")


def run_one(name: str, base: Path, experiments: int, policy: str, env: dict) -> dict:
    dest = base / name
    subprocess.run([sys.executable, "-m", "autoresearch.cli", "init", "--template", name,
                    str(dest)], check=True, capture_output=True, env=env)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "autoresearch.cli", "run", "--tag", "bench",
                        "--agent", "optuna", "--policy", policy, "--seed", "0",
                        "--max-experiments", str(experiments)], cwd=dest, capture_output=True,
                       text=True, env=env)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        return {"name": name, "error": (p.stdout + p.stderr)[-400:]}
    ledger = Ledger(dest / ".autoresearch" / "ledger.db", readonly=True)
    try:
        rows = ledger.experiments("bench")
        run = ledger.get_run("bench")
    finally:
        ledger.close()
    baseline = next(e for e in rows if e.seq == 1)
    kept = [e for e in rows if e.status.value == "keep" and e.metric is not None]
    maximize = run.direction == "maximize"
    best = (max if maximize else min)(kept, key=lambda e: e.metric)
    return {"name": name, "metric": run.metric,
            "baseline": baseline.metric, "best": best.metric, "best_seq": best.seq,
            "params": best.params, "seconds": seconds, "maximize": maximize,
            "kept": len(kept), "n": len(rows)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiments", type=int, default=12)
    ap.add_argument("--only", default=",".join(TEMPLATES))
    ap.add_argument("--policy", default="noise-aware")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    if "config" in names and shutil.which("gcc") is None:
        print("config: skipped (no gcc)")
        names.remove("config")
    base = Path(tempfile.mkdtemp(prefix="ar-bench-templates-"))
    ok = True
    print("template  metric       baseline        best   ratio  target  result  "
          "(experiments, seconds)")
    with FakeOpenAIServer([], responder=_toy()) as server:
        env = {**os.environ, **server.env()}
        for name in names:
            r = run_one(name, base, args.experiments, args.policy, env)
            if "error" in r:
                ok = False
                print(f"{name:9s} FAILED: {r['error']}")
                continue
            if r["maximize"]:
                gain, target = r["best"] - r["baseline"], "+0.30"
                good = gain >= 0.3
                ratio = f"+{gain:.2f}"
            else:
                ratio_v = r["baseline"] / r["best"]
                ratio, target, good = f"{ratio_v:.1f}x", ">=2x", ratio_v >= 2
            ok &= good
            print(f"{name:9s} {r['metric']:10s} {r['baseline']:10.4g} {r['best']:11.4g} "
                  f"{ratio:>7s}  {target:>6s}  {'PASS' if good else 'FAIL':6s}  "
                  f"({r['n']}, {r['seconds']:.0f}s) best #{r['best_seq']}: {r['params']}")
    print(f"targets in {base}")
    return 0 if ok else 1


def _toy():
    sys.path.insert(0, str(ROOT / "src" / "autoresearch" / "templates" / "prompt"))
    import toy_model
    return toy_model.respond


if __name__ == "__main__":
    sys.exit(main())
