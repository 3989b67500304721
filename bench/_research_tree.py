"""Tree search against the ratchet on a two-step problem, through the real loop.

The target is real: a git repository in a temporary directory, an editable train.py holding
four constants and a locked evaluator that scores them, with noise (sd 0.01, drawn from the run's
tag and the experiment number). Every experiment goes through the whole loop: the agent's
proposal is committed and pinned, run and evaluated in a worktree slot (under bubblewrap when it
is installed), judged by the default noise-aware policy, recorded in the ledger.

    loss = 1.00 + 0.15 * NORM + lr_gain[NORM][LR] + small gains of DROP and WARMUP + noise

    NORM = 1 alone            1.15   worse
    LR = 0.3 alone            1.10   worse
    NORM = 1 and LR = 0.3     0.80   much better (LR = 1.0: 0.55)
    DROP, WARMUP              -0.02 / -0.015 at best, or worse

The agent (`OneChangeAgent`) stands in for an LLM that makes one change at a time: from the
node it is given, it sets one constant to another of its values, chosen at random. It is the
same agent under both strategies and never hears the operator, so the only difference between
the two runs of a rep is the strategy: where each proposal starts. The ratchet can keep the
small gains but can never hold NORM = 1 long enough to raise LR; the tree keeps the worse node
and may improve it.

A rep succeeds when the final best (the branch's train.py, scored without noise) has found the
two-step gain: a true loss at or below 0.85. Target: tree succeeds in at least 60% of reps, the
ratchet in at most 10%, and tree in at least 50 points more.

    python bench/_research_tree.py [--reps 8] [--experiments 40] [--seed 0]

`run(reps, seed)` returns the figures as a dict with `pass`, and `report(result)` the table
(bench/research.py imports both).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoresearch.agents import Agent, AgentContext
from autoresearch.config import load_target
from autoresearch.experiment import Proposal
from autoresearch.judge import RunStopped
from autoresearch.request import RunRequest

CHOICES = {"NORM": [0, 1], "LR": [0.1, 0.3, 1.0], "DROP": [0.0, 0.1, 0.2],
           "WARMUP": [0, 100, 500]}
FOUND = 0.85            # a true loss at or below this holds the two-step gain
EXPERIMENTS = 40        # per run, the baseline's and the policy's repeats included
TARGETS = {"tree": 0.6, "ratchet": 0.1, "gap": 0.5}

TRAIN = '''"""The training script (EDITABLE)."""
NORM = 0
LR = 0.1
DROP = 0.0
WARMUP = 0
open("out.txt", "w").write(f"{NORM} {LR} {DROP} {WARMUP}")
'''

EVALUATE = '''"""The evaluator (LOCKED): the two-step loss, with noise from the tag and experiment."""
import os
import random

def loss(norm, lr, drop, warmup):
    gain = {0.1: 0.0, 0.3: -0.35, 1.0: -0.6} if norm else {0.1: 0.0, 0.3: 0.1, 1.0: 0.5}
    return (1.0 + 0.15 * norm + gain[lr] + {0.0: 0.0, 0.1: -0.02, 0.2: 0.01}[drop]
            + {0: 0.0, 100: -0.015, 500: 0.02}[warmup])

if __name__ == "__main__":
    norm, lr, drop, warmup = open("out.txt").read().split()
    key = f"{os.environ['AUTORESEARCH_TAG']}:{os.environ['AUTORESEARCH_EXPERIMENT']}"
    noise = random.Random(key).gauss(0.0, 0.01)
    print(f"loss: {loss(int(norm), float(lr), float(drop), int(warmup)) + noise:.6f}")
'''


def true_loss(train_py: str) -> float:
    """The evaluator's loss of a train.py, without noise."""
    v = values_of(train_py)
    scope: dict = {}
    exec(EVALUATE.split("if __name__")[0], scope)     # the evaluator's own function
    return scope["loss"](v["NORM"], v["LR"], v["DROP"], v["WARMUP"])


def values_of(train_py: str) -> dict:
    out = {}
    for name, choices in CHOICES.items():
        m = re.search(rf"^{name} = (\S+)$", train_py, re.M)
        assert m, f"{name} missing from train.py"
        out[name] = type(choices[0])(float(m.group(1)))
    return out


class OneChangeAgent(Agent):
    """One change at a time: one constant of the given node set to another of its values, one
    it has not proposed before when there is one (as an agent that reads the history would)."""

    name = "one-change"
    concurrent = False

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.tried: set[str] = {TRAIN}

    def propose(self, context: AgentContext) -> Proposal:
        source = context.files["train.py"]
        now = values_of(source)
        moves = []
        for name, values in CHOICES.items():
            for value in values:
                if value != now[name]:
                    new = re.sub(rf"^{name} = \S+$", f"{name} = {value!r}", source, flags=re.M)
                    moves.append((new in self.tried, f"set {name} = {value!r}", new))
        fresh = [m for m in moves if not m[0]] or moves
        _, description, new = self.rng.choice(fresh)
        self.tried.add(new)
        return Proposal(description=description, files={"train.py": new})


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost",
                           "-c", "commit.gpgsign=false", *args], cwd=root, check=True,
                          capture_output=True, text=True).stdout


def make_target(base: Path) -> Path:
    root = base / "target"
    root.mkdir(parents=True)
    sandbox = "true" if shutil.which("bwrap") else "false"
    (root / "autoresearch.toml").write_text(
        'editable = ["train.py"]\nlocked = ["evaluate.py"]\nrun = "python train.py"\n'
        'evaluate = "python evaluate.py"\nmetric = "loss"\nbudget = 1\ntimeout = 30\n'
        f'artifacts = ["out.txt"]\nsandbox = {sandbox}\n')
    (root / "train.py").write_text(TRAIN)
    (root / "evaluate.py").write_text(EVALUATE)
    (root / "program.md").write_text("Minimise loss, one change at a time.\n")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "two-step target")
    return root


def one_run(strategy: str, rep: int, seed: int, experiments: int) -> dict:
    """One run of the loop; its final best scored without noise."""
    with tempfile.TemporaryDirectory(prefix=f"ar-tree-{strategy}-") as tmp:
        root = make_target(Path(tmp))
        tag = f"s{seed}-r{rep}"
        request = RunRequest(tag=tag, max_experiments=experiments, seed=seed + rep,
                             strategy=strategy)
        loop = request.build(load_target(root), agent=OneChangeAgent(seed * 1000 + rep),
                             agent_name="one-change")
        started = time.perf_counter()
        try:
            stopped = loop.run_forever()
        except RunStopped as e:   # every one-change move of the node it must start from was tried
            stopped = str(e)
        wall = time.perf_counter() - started
        assert loop.state is not None and loop.state.incumbent is not None
        best = loop.state.incumbent
        branch = _git(root, "show", f"autoresearch/{tag}:train.py")
        rows = list(loop.state.rows.values())
        found_at = next((e.seq for e in rows if e.status.value == "keep" and e.kind.value != "baseline"
                         and values_of(_git(root, "show", f"{e.commit_sha}:train.py"))["NORM"]),
                        None)
        return {"true_loss": true_loss(branch), "measured": best.metric, "found_at": found_at,
                "kept": sum(1 for e in rows if e.status.value == "keep") - 1,
                "experiments": len(rows), "wall": wall, "stopped": stopped}


def run(reps: int, seed: int, experiments: int = EXPERIMENTS) -> dict:
    """Both strategies, `reps` runs each (rep r of each uses the same agent seed and noise)."""
    out: dict = {"reps": reps, "seed": seed, "experiments": experiments, "found_below": FOUND,
                 "targets": TARGETS, "measured": "the real loop on a real target (not a simulation)"}
    for strategy in ("ratchet", "tree"):
        runs = [one_run(strategy, r, seed, experiments) for r in range(reps)]
        found = [r["true_loss"] <= FOUND for r in runs]
        out[strategy] = {"success": sum(found) / reps, "runs": runs,
                         "mean_true_loss": sum(r["true_loss"] for r in runs) / reps,
                         "wall": sum(r["wall"] for r in runs)}
    tree, ratchet = out["tree"]["success"], out["ratchet"]["success"]
    out["pass"] = (tree >= TARGETS["tree"] and ratchet <= TARGETS["ratchet"]
                   and tree - ratchet >= TARGETS["gap"])
    return out


def report(res: dict) -> str:
    """The table of a `run` result, with PASS or FAIL (bench/research.py prints it too)."""
    lines = [f"two-step problem, {res['reps']} reps x {res['experiments']} experiments per "
             f"strategy (real loop, noise-aware policy, one-change agent); found = true loss "
             f"<= {FOUND}",
             f"{'strategy':<9} {'found':>7} {'mean true loss':>15} {'first found at':>15} "
             f"{'experiments':>12} {'stuck':>6} {'wall s':>7}  target"]
    for s in ("ratchet", "tree"):
        r = res[s]
        at = sorted(x["found_at"] for x in r["runs"] if x["found_at"] is not None)
        median = f"#{at[len(at) // 2]}" if at else "-"
        target = f">= {TARGETS['tree']:.0%}" if s == "tree" else f"<= {TARGETS['ratchet']:.0%}"
        ran = sum(x["experiments"] for x in r["runs"]) / len(r["runs"])
        stuck = sum(1 for x in r["runs"] if "repeated earlier" in x["stopped"])
        lines.append(f"{s:<9} {r['success']:>7.0%} {r['mean_true_loss']:>15.3f} {median:>15} "
                     f"{ran:>12.1f} {stuck:>6} {r['wall']:>7.0f}  {target}")
    gap = res["tree"]["success"] - res["ratchet"]["success"]
    lines.append(f"tree - ratchet: {gap:+.0%} (target >= +{TARGETS['gap']:.0%})   "
                 f"{'PASS' if res['pass'] else 'FAIL'}")
    lines.append("stuck: runs that ended early because every one-change move from the node "
                 "they had to start from was tried (a local optimum)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--experiments", type=int, default=EXPERIMENTS)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args(argv)
    res = run(args.reps, args.seed, args.experiments)
    print(report(res))
    if args.json:
        print(json.dumps(res, indent=2))
    return 0 if res["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
