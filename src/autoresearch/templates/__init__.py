"""Targets shipped with autoresearch, and the program.md that `init` writes."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..config import TargetSpec

TEMPLATES = ("quickstart", "nanochat")


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


def program_md(spec: TargetSpec, name: str = "this project") -> str:
    """The research instructions for a coding agent, in both modes."""
    editable = ", ".join(f"`{g}`" for g in spec.editable)
    locked = ", ".join(f"`{g}`" for g in spec.locked_globs)
    better = "lower" if spec.direction == "minimize" else "higher"
    evaluate = (f"then the locked evaluator `{spec.evaluate}` prints the score" if spec.evaluate
                else "and prints the score itself")
    return f"""# program.md: research instructions for {name}

You are doing autonomous research. Each experiment changes the code, trains for a fixed budget of
{spec.budget:g} seconds, and is judged by one number: **{spec.metric}, {better} is better**.
Only real improvements are kept; everything else is reverted, and everything is recorded.

## The rules
- You may change only {editable}. Everything else is read-only, in particular {locked}.
  A change to any other file is refused as `invalid` and never runs.
- `{spec.run}` trains, {evaluate}. You cannot change how the metric is computed, and trying to
  is pointless: it is checked.
- The time budget is fixed. Do not try to get around it; make better use of it.
- No new dependencies beyond what the project already uses.
- A crash is fine: read the log tail, fix the obvious bug if the idea is worth it, or move on.
- **Simplicity criterion**: all else equal, simpler is better. A tiny gain that adds a lot of
  ugly code is not worth it; removing code for an equal result is a win (an equal metric with
  fewer lines is kept).

## Mode 1: the harness runs the loop (`autoresearch run`)
The harness calls you once per experiment with this file, the current best code, the history of
what was tried, and the last crash. Answer with one line `Description: <what and why>` and your
edits. Do not run git, do not run the training yourself.

## Mode 2: you run the loop (`autoresearch start` / `autoresearch try`)
1. Once: `autoresearch start --tag <tag>` creates the branch `autoresearch/<tag>` and measures the
   baseline.
2. Then loop forever:
   - read the current code and `autoresearch status`; think of one idea;
   - edit {editable};
   - `autoresearch try -m "<what you changed and why>"`. It evaluates your uncommitted changes and
     prints a short verdict. On keep it commits them; otherwise it restores the files to the best
     version. Never run `git commit`, `git reset` or the training script yourself.
   - `autoresearch log` shows what has been tried; `autoresearch show N` shows one experiment with
     its diff and log tail.

**NEVER STOP.** Once the loop has begun, do not pause to ask the human whether to continue. They
may be asleep. Run until you are interrupted. If you run out of ideas, think harder: reread the
code, combine near-misses, try more radical changes.
"""


def write_template(name: str, dest: Path) -> list[Path]:
    written = []
    for rel, data in template_files(name).items():
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        written.append(p)
    return written


__all__ = ["TEMPLATES", "template_files", "program_md", "write_template"]
