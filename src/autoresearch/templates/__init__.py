"""Targets shipped with autoresearch, and the program.md that `init` writes."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..config import TargetSpec

#: every template, with what it is (shown by `init --template` errors and the README)
TEMPLATES = ("quickstart", "nanochat", "sql", "kernel", "prompt", "config", "latency")


def template_files(name: str) -> dict[str, bytes]:
    root = resources.files(__package__) / name
    out: dict[str, bytes] = {}

    def walk(node, prefix: str) -> None:
        for child in node.iterdir():
            if child.name in ("__pycache__",) or child.name.endswith(".pyc"):
                continue
            rel = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, rel + "/")
            else:
                out[rel] = child.read_bytes()

    walk(root, "")
    return out


_TRAINING_HINTS = ("train", "finetune", "fine-tune", "fit")
_TRAINING_METRICS = ("loss", "bpb", "perplexity", "ppl")


def trains(spec: TargetSpec) -> bool:
    """Does this target train a model? Judged from its run command and metric name."""
    run = spec.run.lower()
    return (any(h in run for h in _TRAINING_HINTS)
            or any(m in spec.metric.lower() for m in _TRAINING_METRICS))


def program_md(spec: TargetSpec, name: str = "this project") -> str:
    """The research instructions for a coding agent, in both modes, fitted to the target.

    A target that trains is told about its training budget; any other target (a query, a
    kernel, a prompt, a configuration) hears nothing of training, only of its metric, its time
    limit, its constraints and what the evaluator sees.
    """
    editable = ", ".join(f"`{g}`" for g in spec.editable)
    locked = ", ".join(f"`{g}`" for g in spec.locked_globs)
    better = "lower" if spec.direction == "minimize" else "higher"
    training = trains(spec)
    if training:
        opening = (f"Each experiment changes the code, trains for a fixed budget of "
                   f"{spec.budget:g} seconds, and is judged by one number")
        does = "trains"
        budget_rule = "- The time budget is fixed. Do not try to get around it; make better use of it."
    else:
        opening = (f"Each experiment changes the editable files, runs `{spec.run}`, and is judged "
                   f"by one number")
        does = "runs"
        budget_rule = (f"- Each step is killed after {spec.hard_timeout:g} seconds "
                       f"(`AUTORESEARCH_BUDGET_SECONDS` = {spec.budget:g} is its budget).")
    evaluate = (f"then the locked evaluator `{spec.evaluate}` prints the score" if spec.evaluate
                else "and prints the score itself")
    extra = []
    if spec.setup:
        extra.append(f"- `{spec.setup}` runs once before the baseline (preparation); its output is "
                     f"shared by every experiment and is not yours to change.")
    for c in spec.constraints:
        extra.append(f"- Constraint `{c}`: an experiment that breaks it (or does not report the "
                     f"metric) is discarded, however good {spec.metric} is.")
    if spec.artifacts:
        arts = ", ".join(f"`{a}`" for a in spec.artifacts)
        extra.append(f"- The evaluator sees the committed files plus only {arts}, written by the "
                     f"run step; anything else the run step writes is not seen.")
    extra_text = "".join(line + "\n" for line in extra)
    crash = ("A crash is fine: read the log tail, fix the obvious bug if the idea is worth it, or "
             "move on.")
    return f"""# program.md: research instructions for {name}

You are doing autonomous research. {opening}: **{spec.metric}, {better} is better**.
Only real improvements are kept; everything else is reverted, and everything is recorded.

## The rules
- You may change only {editable}. Everything else is read-only, in particular {locked}.
  A change to any other file is refused as `invalid` and never runs.
- `{spec.run}` {does}, {evaluate}. You cannot change how the metric is computed, and trying to
  is pointless: it is checked.
{budget_rule}
{extra_text}- No new dependencies beyond what the project already uses.
- {crash}
- **Simplicity criterion**: all else equal, simpler is better. A tiny gain that adds a lot of
  complexity is not worth it; removing code for an equal result is a win (an equal metric with
  fewer lines is kept).

## Mode 1: the harness runs the loop (`autoresearch run`)
The harness calls you once per experiment with this file, the current best version of the
editable files, the history of what was tried, and the last crash. Answer with one line
`Description: <what and why>` and your edits. Do not run git, and do not run `{spec.run}`
yourself.

## Mode 2: you run the loop (`autoresearch start` / `autoresearch try`)
1. Once: `autoresearch start --tag <tag>` creates the branch `autoresearch/<tag>` and measures the
   baseline.
2. Then loop forever:
   - read the current files and `autoresearch status`; think of one idea;
   - edit {editable};
   - `autoresearch try -m "<what you changed and why>"`. It evaluates your uncommitted changes and
     prints a short verdict. On keep it commits them; otherwise it restores the files to the best
     version. Never run `git commit`, `git reset` or `{spec.run}` yourself.
   - `autoresearch log` shows what has been tried; `autoresearch show N` shows one experiment with
     its diff and log tail.

**NEVER STOP.** Once the loop has begun, do not pause to ask the human whether to continue. They
may be asleep. Run until you are interrupted. If you run out of ideas, think harder: reread the
files, combine near-misses, try more radical changes.
"""


def write_template(name: str, dest: Path) -> list[Path]:
    written = []
    for rel, data in template_files(name).items():
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        written.append(p)
    return written


__all__ = ["TEMPLATES", "program_md", "template_files", "trains", "write_template"]
