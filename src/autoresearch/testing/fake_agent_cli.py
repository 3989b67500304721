"""A fake coding-agent CLI that edits files in its working directory from a script.

    python -m autoresearch.testing.fake_agent_cli --script steps.jsonl [any claude/codex flags] [PROMPT]

It reads the prompt from stdin (or, when stdin is empty, from its last argument), takes the next
step of the JSON Lines script (a counter in `<script>.state` remembers where it is), applies the
step's edits to files in the current directory and prints `Description: ...`. A step:

    {"description": "raise the learning rate",
     "edits": [{"path": "train.py", "search": "LEARNING_RATE = 0.01", "replace": "LEARNING_RATE = 0.02"}],
     "write": {"notes.md": "whole new contents"}, "delete": ["old.py"],
     "sleep": 30, "exit": 1, "stdout": "extra output", "cost_usd": 0.01,
     "input_tokens": 1200, "output_tokens": 300}

`{}` does nothing. Faults the real tools show:

    {"api_error": 401, "message": "invalid API key"}   the request failed (Claude Code: an error
                                                       result with api_error_status; Codex: a
                                                       turn.failed event); exit 1
    {"stall": 30}                                      print nothing for 30 s, then go on
    {"retry_forever": true}                            only retry notices until killed (a dead
                                                       endpoint: Claude Code's api_retry events,
                                                       Codex's "Reconnecting...")
    {"aider_files": true}                              write aider's history and cache files

The output speaks the protocol the flags ask for: `--output-format json` one Claude Code result
object, `--output-format stream-json` Claude Code's events (init, partial messages, assistant,
result), `--json` Codex's events (thread.started, item.completed, turn.completed with usage, or
turn.failed), otherwise text, and with `--codex-text` Codex's "tokens used N" line on stderr.

The connectivity check (the prompt starts with "autoresearch connectivity check") takes no step:
it answers with the step in `<script>.check.json` when that file exists (e.g. `{"api_error": 401}`
or `{"retry_forever": true}`), else with OK.

Each prompt received is saved to `<script>.prompts/<n>.txt`, its arguments to `<n>.argv.json`,
and `<n>.done` is written once its answer was printed.
To stand in for `claude` or `codex`, put an executable of that name first on PATH that runs this
module.
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


def _emit(line: object) -> None:
    print(line if isinstance(line, str) else json.dumps(line), flush=True)


def _retry_forever(mode: str) -> None:
    for attempt in range(1, 1_000_000):
        if mode in ("json", "stream-json"):
            _emit({"type": "system", "subtype": "api_retry", "attempt": attempt, "max_retries": 10,
                   "retry_delay_ms": 200, "error_status": None, "error": "unknown"})
        elif mode == "codex":
            _emit({"type": "error", "message": f"Reconnecting... {attempt}/5 (stream disconnected)"})
        else:
            print(f"Reconnecting... {attempt}/5", file=sys.stderr, flush=True)
        time.sleep(0.2)


def _result(mode: str, step: dict, text: str, prompt: str, n: int, errors: list[str]) -> int:
    """Print the answer in the protocol of `mode`; the exit status."""
    tin = int(step.get("input_tokens", len(prompt) // 4))
    tout = int(step.get("output_tokens", len(text) // 4))
    failed = step.get("api_error")
    if failed:
        text = f"API Error: {failed} {step.get('message', 'fake error')}"
    if mode in ("json", "stream-json"):
        result = {"type": "result", "subtype": "success", "is_error": bool(errors or failed),
                  "api_error_status": failed, "result": text, "num_turns": 1,
                  "session_id": f"fake-{n}", "terminal_reason": "completed",
                  "total_cost_usd": 0 if failed else step.get("cost_usd", 0.0),
                  "usage": {"input_tokens": 0 if failed else tin,
                            "output_tokens": 0 if failed else tout,
                            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}
        if mode == "stream-json":
            _emit({"type": "system", "subtype": "init", "session_id": f"fake-{n}",
                   "tools": ["Edit", "Read", "Write"]})
            if not failed:
                for word in text.split()[:5]:
                    _emit({"type": "stream_event", "event": {"type": "content_block_delta",
                                                             "delta": {"type": "text_delta", "text": word}}})
                _emit({"type": "assistant", "message": {
                    "content": [{"type": "text", "text": text}],
                    "usage": {"input_tokens": tin, "output_tokens": tout}}})
        _emit(result)
        return 1 if failed else int(step.get("exit", 3 if errors else 0))
    if mode == "codex":
        _emit({"type": "thread.started", "thread_id": f"fake-{n}"})
        _emit({"type": "turn.started"})
        if failed:
            _emit({"type": "error", "message": f"unexpected status {failed}: {step.get('message', '')}"})
            _emit({"type": "turn.failed", "error": {"message": f"unexpected status {failed} "
                                                               f"{step.get('message', 'fake error')}"}})
            return 1
        _emit({"type": "item.completed", "item": {"id": "item_0", "type": "agent_message", "text": text}})
        _emit({"type": "turn.completed", "usage": {"input_tokens": tin, "cached_input_tokens": 0,
                                                   "output_tokens": tout}})
        return int(step.get("exit", 3 if errors else 0))
    if failed:
        print(text, file=sys.stderr)
        return 1
    print(text)
    if mode == "codex-text":
        print(f"tokens used\n{tin + tout:,}", file=sys.stderr)
    return int(step.get("exit", 3 if errors else 0))


def _aider_files() -> None:
    Path(".aider.chat.history.md").write_text("# aider chat started\n", encoding="utf-8")
    Path(".aider.input.history").write_text("+/add train.py\n", encoding="utf-8")
    cache = Path(".aider.tags.cache.v4")
    cache.mkdir(exist_ok=True)
    (cache / "cache.db").write_bytes(b"SQLite format 3\x00")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fake_agent_cli")
    ap.add_argument("--script", required=True)
    ap.add_argument("--output-format", default="text")
    ap.add_argument("--json", action="store_true", help="Codex's event stream")
    ap.add_argument("--codex-text", action="store_true", help="Codex's text output")
    args, rest = ap.parse_known_args(argv)
    mode = ("codex" if args.json else "codex-text" if args.codex_text
            else args.output_format if args.output_format in ("json", "stream-json") else "text")
    prompt = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    positional = [a for a in rest if a and not a.startswith("-")]
    if not prompt.strip() and positional:
        prompt = positional[-1]
    script = Path(args.script).resolve()
    if prompt.startswith("autoresearch connectivity check"):
        check = script.with_name(script.name + ".check.json")
        step = json.loads(check.read_text(encoding="utf-8")) if check.exists() else {}
        if step.get("retry_forever"):
            _retry_forever(mode)
        return _result(mode, step, "OK", prompt, 0, [])
    n, step = _next_step(script)
    prompts = script.with_name(script.name + ".prompts")
    prompts.mkdir(exist_ok=True)
    (prompts / f"{n}.txt").write_text(prompt, encoding="utf-8")
    (prompts / f"{n}.argv.json").write_text(json.dumps(sys.argv[1:] if argv is None else argv))
    if step is None:
        print(f"fake agent: the script {script.name} is exhausted", file=sys.stderr)
        return 2
    print(f"fake agent: step {n} in {Path.cwd()}", file=sys.stderr, flush=True)
    if step.get("retry_forever"):
        _retry_forever(mode)
    if step.get("stall"):
        time.sleep(float(step["stall"]))
    if step.get("sleep"):
        time.sleep(float(step["sleep"]))
    if step.get("aider_files"):
        _aider_files()
    errors = [] if step.get("api_error") else _apply(step)
    for e in errors:
        print(f"fake agent: {e}", file=sys.stderr)
    text = step.get("stdout", "I made the change.")
    if step.get("description"):
        text += f"\n\nDescription: {step['description']}"
    code = _result(mode, step, text, prompt, n, errors)
    (prompts / f"{n}.done").write_text(str(code))      # the answer was given (and paid for)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
