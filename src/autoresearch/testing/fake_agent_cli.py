"""A fake coding-agent CLI that edits files in its working directory from a script.

    python -m autoresearch.testing.fake_agent_cli --script steps.jsonl [any claude/codex flags] [PROMPT]

It reads the prompt from stdin (or, when stdin is empty, from its last argument), takes the next
step of the JSON Lines script (a counter in `<script>.state` remembers where it is), applies the
step's edits to files in the current directory and prints `Description: ...`. A step:

    {"description": "raise the learning rate",
     "edits": [{"path": "train.py", "search": "LEARNING_RATE = 0.01", "replace": "LEARNING_RATE = 0.02"}],
     "write": {"notes.md": "whole new contents"}, "delete": ["old.py"],
     "sleep": 30, "exit": 1, "stdout": "extra output", "cost_usd": 0.01}

`{}` does nothing. With `--output-format json` (as Claude Code is run) it prints one JSON result
object as Claude Code does. Each prompt received is saved to `<script>.prompts/<n>.txt`, its arguments to `<n>.argv.json`. To stand
in for `claude` or `codex`, put an executable of that name first on PATH that runs this module.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _next_step(script: Path) -> tuple[int, dict | None]:
    state = script.with_name(script.name + ".state")
    n = int(state.read_text()) if state.exists() else 0
    steps = [line for line in script.read_text(encoding="utf-8").splitlines() if line.strip()]
    state.write_text(str(n + 1))
    return n, (json.loads(steps[n]) if n < len(steps) else None)


def _apply(step: dict) -> list[str]:
    errors = []
    for e in step.get("edits", []):
        p = Path(e["path"])
        if not p.is_file():
            errors.append(f"no file {p}")
            continue
        text = p.read_text(encoding="utf-8")
        if e["search"] not in text:
            errors.append(f"{p}: text not found: {e['search']!r}")
            continue
        p.write_text(text.replace(e["search"], e["replace"], 1), encoding="utf-8")
    for path, content in step.get("write", {}).items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content, encoding="utf-8")
    for path in step.get("delete", []):
        Path(path).unlink(missing_ok=True)
    return errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fake_agent_cli")
    ap.add_argument("--script", required=True)
    ap.add_argument("--output-format", default="text")
    args, rest = ap.parse_known_args(argv)
    prompt = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    positional = [a for a in rest if not a.startswith("-")]
    if not prompt.strip() and positional:
        prompt = positional[-1]
    script = Path(args.script).resolve()
    n, step = _next_step(script)
    prompts = script.with_name(script.name + ".prompts")
    prompts.mkdir(exist_ok=True)
    (prompts / f"{n}.txt").write_text(prompt, encoding="utf-8")
    (prompts / f"{n}.argv.json").write_text(json.dumps(sys.argv[1:] if argv is None else argv))
    if step is None:
        print(f"fake agent: the script {script.name} is exhausted", file=sys.stderr)
        return 2
    print(f"fake agent: step {n} in {Path.cwd()}", file=sys.stderr)
    if step.get("sleep"):
        time.sleep(float(step["sleep"]))
    errors = _apply(step)
    for e in errors:
        print(f"fake agent: {e}", file=sys.stderr)
    text = step.get("stdout", "I made the change.")
    if step.get("description"):
        text += f"\n\nDescription: {step['description']}"
    if args.output_format == "json":
        print(json.dumps({"type": "result", "subtype": "success", "is_error": bool(errors),
                          "result": text, "num_turns": 1, "session_id": f"fake-{n}",
                          "total_cost_usd": step.get("cost_usd", 0.0),
                          "usage": {"input_tokens": step.get("input_tokens", len(prompt) // 4),
                                    "output_tokens": step.get("output_tokens", len(text) // 4)}}))
    else:
        print(text)
    return int(step.get("exit", 3 if errors else 0))


if __name__ == "__main__":
    raise SystemExit(main())
