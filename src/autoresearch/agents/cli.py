"""Coding-agent CLIs as proposers: `--agent claude`, `--agent codex`, `--agent command:"CMD"`.

The CLI runs in a scratch checkout of the best commit (`context.workspace()`), edits files
there, and exits; the harness then reads back every editable file that changed (new and deleted
ones included) as the proposal. Edits to other files are dropped and noted (and recorded in
`Proposal.refused`); files the tools write for themselves (aider's `.aider.chat.history.md`,
`.aider.input.history`, `.aider.tags.cache.v*`, Claude Code's `.claude/`) are ignored. The run's
research notes are written to `.autoresearch-notes.md` there first and read back after (notes.py):
never part of the proposal, never a refused edit. The prompt
goes on stdin, or into the command where it says `{prompt}` (shell-quoted) or `{prompt_file}`.

Presets (flags checked against Claude Code 2.1.197 and Codex 0.171):

    claude   claude -p --output-format stream-json --verbose --include-partial-messages
                    --permission-mode acceptEdits --tools Read,Edit,Write --no-session-persistence
    codex    codex exec --json --ephemeral --sandbox workspace-write --skip-git-repo-check -

Claude Code gets only the tools that edit files; its errors are recorded from the result event's
fields (`api_error_status`, `subtype`, `terminal_reason`, `result`), its usage and cost from the
same event. Codex's tokens come from its `--json` events (`turn.completed.usage`), or from the
"tokens used N" line of its text output; its cost from `[agent.prices.codex]`.

Guarantees:
- a call is killed (with its process group) after `[agent] timeout` seconds, and sooner, after
  `[agent] stall_timeout` seconds without progress: output that only reports a retry
  (Claude Code's `api_retry` events, Codex's "Reconnecting...") is not progress;
- `check()` makes one tiny call before the run starts and turns an unreachable endpoint or a
  rejected key into one error line with the tool's own message;
- `close()` kills the calls still running, so a stopped run leaves no agent behind.
- with `sandbox` (the default on Linux) the CLI runs under bubblewrap (sandbox.AgentSandbox):
  network kept, only its scratch checkout and a private copy of its configuration writable.

The binaries are looked up on PATH; AUTORESEARCH_CLAUDE_BIN / AUTORESEARCH_CODEX_BIN override.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import STATE_DIR, AgentSettings
from ..errors import AgentConfigError
from ..experiment import Proposal, Usage
from ..notes import NOTES_FILE
from .base import Agent, AgentContext, AgentError, save_agent_log
from .edits import find_description, summarize_change
from .llm import price_usage
from .prompt import build_prompt

SKIP_DIRS = {".git", ".autoresearch", "__pycache__", ".pytest_cache", "node_modules", ".venv",
             ".claude"}
# files coding-agent tools write for themselves in the directory they work in
TOOL_FILES = (".aider.chat.history.md", ".aider.input.history", ".aider.llm.history",
              ".aider.tags.cache.v*")
KILL_GRACE = 5.0          # seconds between SIGTERM and SIGKILL
OUTPUT_TAIL = 2000        # characters of output quoted in an error
CHECK_TIMEOUT = 90.0      # seconds for the connectivity check
CHECK_PROMPT = "autoresearch connectivity check: reply with the single word OK and do nothing else."
# a line that only says the tool is retrying is not progress
_RETRY_LINE = re.compile(r"reconnecting|retrying|\"subtype\":\s*\"api_retry\"", re.I)
_TOKENS_USED = re.compile(r"tokens used[:\s]*([\d,]+)", re.I)

CLI_INSTRUCTIONS = """\
# How to answer
You are in the target directory. Make the change by editing the editable files here directly
({editable}). Do not edit any other file (such edits are dropped), do not run the training or
the evaluation (the harness does, with a fixed budget), and do not commit. Finish your answer
with one line: `Description: <what you changed and why>`.
"""


@dataclass(frozen=True)
class Preset:
    argv: list[str]          # after the binary
    env_bin: str
    install: str
    output: str = "text"     # how stdout is read: "claude" (JSON events), "codex" (--json events), "text"
    check_argv: list[str] = field(default_factory=list)   # the connectivity check's flags
    check_env: dict[str, str] = field(default_factory=dict)


PRESETS = {
    "claude": Preset(["-p", "--output-format", "stream-json", "--verbose", "--include-partial-messages",
                      "--permission-mode", "acceptEdits", "--tools", "Read,Edit,Write",
                      "--no-session-persistence"],
                     "AUTORESEARCH_CLAUDE_BIN", "npm install -g @anthropic-ai/claude-code (Node.js >= 22)",
                     output="claude",
                     check_argv=["-p", "--output-format", "json", "--tools", "", "--no-session-persistence"],
                     check_env={"CLAUDE_CODE_MAX_RETRIES": "1"}),
    "codex": Preset(["exec", "--json", "--ephemeral", "--sandbox", "workspace-write",
                     "--skip-git-repo-check", "-"],
                    "AUTORESEARCH_CODEX_BIN", "npm install -g @openai/codex", output="codex",
                    check_argv=["exec", "--json", "--ephemeral", "--sandbox", "read-only",
                                "--skip-git-repo-check", "-"]),
}


AGENT_WRITABLE_ENV = "AUTORESEARCH_AGENT_WRITABLE"  # more paths the agent may write (os.pathsep list)


def agent_sandbox(workspace: Path, writable: list[str],
                  holdout_data: list[str] = ()):  # noqa: ANN201 - an AgentSandbox
    """The coding agent's bubblewrap sandbox for a scratch checkout under the state directory
    (which it does not see, nor the declared holdout data): network on, only the checkout and a
    private HOME copy writable."""
    from ..sandbox import AgentSandbox

    state = next((p for p in Path(workspace).parents if p.name == STATE_DIR), None)
    extra = [p for p in os.environ.get(AGENT_WRITABLE_ENV, "").split(os.pathsep) if os.path.isabs(p)]
    root = state.parent if state else Path(workspace)
    hidden = [(Path(p) if os.path.isabs(p) else root / p).resolve() for p in holdout_data]
    return AgentSandbox(Path(workspace), dict(os.environ), state_dir=state,
                        writable=tuple(Path(p) for p in [*writable, *extra]),
                        hidden=tuple(hidden))


@dataclass
class _Run:
    returncode: int | None          # None: killed
    stdout: str
    stderr: str
    seconds: float
    killed: str = ""                # "timeout", "stall" or "closed" when it was killed
    quiet_lines: int = 0            # progress lines counted but not kept (partial messages)


@dataclass
class _Output:
    """What a CLI's stdout says: its final text, usage and, when it failed, the tool's reason."""

    text: str
    usage: Usage
    error: str | None = None


def _snapshot(root: Path) -> dict[str, str]:
    """Path -> content hash of every file under root, outside tool and cache directories."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS
                       and not any(fnmatch.fnmatch(d, pat) for pat in TOOL_FILES)]
        for f in filenames:
            if any(fnmatch.fnmatch(f, pat) for pat in TOOL_FILES):
                continue
            p = Path(dirpath) / f
            if p.is_symlink() or not p.is_file():
                continue
            try:
                out[p.relative_to(root).as_posix()] = hashlib.sha1(p.read_bytes()).hexdigest()
            except OSError:
                continue
    return out


class CodingAgentCLI(Agent):
    """A coding-agent CLI run once per proposal in a scratch workspace."""

    concurrent = True
    ahead = True        # slow: the loop asks for the next proposal while one runs

    def __init__(self, name: str, command: str | list[str], settings: AgentSettings, *,
                 output: str = "text", preset: Preset | None = None):
        self.name = name
        self.command = command          # a list: argv, prompt on stdin; a str: a shell command
        self.settings = settings
        self.output = output
        self.writable: list[str] = []   # absolute paths the agent may write besides its checkout
        self.holdout_data: list[str] = []   # the declared holdout data, hidden from the agent
        self.preset_spec = preset
        self._procs: set[subprocess.Popen] = set()
        self._procs_lock = threading.Lock()
        self._closed = False

    @classmethod
    def preset(cls, name: str, settings: AgentSettings) -> CodingAgentCLI:
        """`claude` or `codex`, with the binary found on PATH or in the override variable."""
        p = PRESETS[name]
        binary = os.environ.get(p.env_bin) or shutil.which(name)
        if not binary:
            raise AgentConfigError(f"--agent {name}: '{name}' is not on PATH — install it "
                                   f"({p.install}) or set {p.env_bin} to its path")
        if name == "codex":
            _check_codex_home()
        return cls(name, [binary, *p.argv], settings, output=p.output, preset=p)

    @classmethod
    def from_command(cls, command: str, settings: AgentSettings) -> CodingAgentCLI:
        """`command:"aider --yes-always --message {prompt}"`; without {prompt} the prompt goes on stdin."""
        command = command.strip() or (settings.command or "").strip()
        if not command:
            raise AgentConfigError('--agent command:"CMD" needs a command, e.g. '
                                   'command:"aider --yes-always --no-git --message {prompt}" '
                                   '(or set [agent] command in autoresearch.toml)')
        return cls("command", command, settings)

    # ---------------------------------------------------------------------------------------
    def check(self) -> None:
        """One tiny call before the run: an unreachable endpoint or a rejected key is one error
        line with the tool's message, not an hour of retries. `command:` agents are not checked
        (their protocol is unknown); `[agent] check = false` skips it."""
        if self.preset_spec is None or not self.settings.check or not isinstance(self.command, list):
            return
        argv = [self.command[0], *self.preset_spec.check_argv]
        env = {**self.preset_spec.check_env, **os.environ}     # the user's own settings win
        with tempfile.TemporaryDirectory(prefix="ar-check-") as tmp:
            run = self._run(Path(tmp), CHECK_PROMPT, Path(tmp) / "prompt.md", argv=argv, env=env,
                            timeout=min(CHECK_TIMEOUT, self.settings.timeout),
                            stall=min(CHECK_TIMEOUT, self.settings.stall_timeout))
        out = self._parse_output(run.stdout)
        if run.returncode == 0 and out.error is None:
            return
        if run.killed:
            why = (f"no answer within {run.seconds:.0f} s" if run.killed == "timeout" else
                   f"no progress for {run.seconds:.0f} s (only retries)")
            last = _last_line(run.stderr) or _last_line(run.stdout)
            why += f"; last output: {last}" if last else ""
        else:
            why = out.error or _last_line(run.stderr) or _last_line(run.stdout) or \
                f"exit status {run.returncode}"
        raise AgentConfigError(
            f"--agent {self.name}: the connectivity check failed: {why} — check the endpoint and "
            f"the key the tool uses (see the README's agents section), or set [agent] check = false")

    def close(self) -> None:
        """Kill the calls still running (a stopped run must not leave a paid agent behind)."""
        self._closed = True
        with self._procs_lock:
            procs = list(self._procs)
        for proc in procs:
            self._kill(proc)

    # ---------------------------------------------------------------------------------------
    def _prompt(self, context: AgentContext) -> str:
        editable = ", ".join(sorted(context.files)) or ", ".join(context.spec.editable)
        tail = CLI_INSTRUCTIONS.format(editable=editable)
        how = (f"To change the research notes (they outlive this session: record what you "
               f"learned, what to try next, what not to try again), edit the file {NOTES_FILE} in "
               f"this directory; it holds the notes above. Keep it under {context.notes_chars} "
               f"characters.") if context.notes_chars else ""
        body = build_prompt(context, max_chars=max(1000, self.settings.context_chars - len(tail)),
                            history_rows=self.settings.history_rows, notes_how=how)
        return body + "\n" + tail

    def _progress(self, line: str) -> bool:
        """Is this output line progress (not only a retry notice)?"""
        return bool(line.strip()) and not _RETRY_LINE.search(line)

    def _run(self, cwd: Path, prompt: str, prompt_file: Path, *, argv: list[str] | None = None,
             env: dict[str, str] | None = None, timeout: float | None = None,
             stall: float | None = None, sandbox: bool = False) -> _Run:
        if argv is not None:
            cmd, shell, stdin = argv, False, prompt
        elif isinstance(self.command, list):
            cmd, shell, stdin = self.command, False, prompt
        else:
            uses_arg = "{prompt}" in self.command or "{prompt_file}" in self.command
            cmd = (self.command.replace("{prompt_file}", shlex.quote(str(prompt_file)))
                   .replace("{prompt}", shlex.quote(prompt)))
            shell, stdin = True, (None if uses_arg else prompt)
        timeout = self.settings.timeout if timeout is None else timeout
        stall = self.settings.stall_timeout if stall is None else stall
        if sandbox:   # only the scratch checkout (and a private HOME copy) persists
            with agent_sandbox(cwd, self.writable, self.holdout_data) as box:
                return self._run(cwd, prompt, prompt_file, env={**box.env, **(env or {})},
                                 argv=box.argv(["/bin/bash", "-c", cmd] if shell else list(cmd)),
                                 timeout=timeout, stall=stall)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, shell=shell, cwd=cwd, text=True, start_new_session=True,
                                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                    encoding="utf-8", errors="replace")
        except OSError as e:
            raise AgentError(f"{self.name}: cannot start {cmd if shell else cmd[0]!r}: {e.strerror}") from None
        with self._procs_lock:
            self._procs.add(proc)
        last = [time.monotonic()]
        out: list[str] = []
        err: list[str] = []
        quiet = [0]

        def read(stream, sink: list[str], keep_partial: bool) -> None:
            for line in stream:
                if self._progress(line):
                    last[0] = time.monotonic()
                if not keep_partial and '"type":"stream_event"' in line.replace(" ", "")[:40]:
                    quiet[0] += 1       # token-by-token progress: counted, not kept in the log
                    continue
                sink.append(line)

        def feed() -> None:
            try:
                if stdin is not None and proc.stdin:
                    proc.stdin.write(stdin)
            except (BrokenPipeError, OSError):
                pass
            finally:
                if proc.stdin:
                    try:
                        proc.stdin.close()
                    except OSError:
                        pass

        threads = [threading.Thread(target=read, args=(proc.stdout, out, self.output != "claude"),
                                    daemon=True),
                   threading.Thread(target=read, args=(proc.stderr, err, True), daemon=True),
                   threading.Thread(target=feed, daemon=True)]
        for t in threads:
            t.start()
        killed = ""
        try:
            while True:
                try:
                    proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if self._closed:
                    killed = "closed"
                elif now - start >= timeout:
                    killed = "timeout"
                elif now - last[0] >= stall:
                    killed = "stall"
                if killed:
                    self._kill(proc)
                    break
        finally:
            with self._procs_lock:
                self._procs.discard(proc)
        if not killed and self._closed and proc.returncode and proc.returncode < 0:
            killed = "closed"       # close() killed it between two polls
        for t in threads[:2]:
            t.join(timeout=KILL_GRACE)
        return _Run(None if killed else proc.returncode, "".join(out), "".join(err),
                    time.monotonic() - start, killed, quiet[0])

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    # -- reading the output ------------------------------------------------------------------
    def _parse_output(self, stdout: str) -> _Output:
        """The agent's final text, its usage, and the tool's own reason when it failed."""
        if self.output == "claude":
            return self._parse_claude(stdout)
        if self.output == "codex":
            return self._parse_codex(stdout)
        return _Output(stdout, self._tokens_used(stdout))

    def _tokens_used(self, text: str) -> Usage:
        """The last "tokens used N" line (Codex's text output): one total, counted as input."""
        found = _TOKENS_USED.findall(text)
        if not found:
            return Usage()
        return price_usage(self.name, int(found[-1].replace(",", "")), 0, self.settings)

    def _parse_claude(self, stdout: str) -> _Output:
        events = _json_lines(stdout)
        result = next((e for e in reversed(events) if e.get("type") == "result"), None)
        if result is None:
            # killed or crashed before its result: what its finished messages cost
            tin = tout = 0
            texts = []
            for e in events:
                msg = e.get("message") if e.get("type") == "assistant" else None
                if isinstance(msg, dict):
                    u = msg.get("usage") or {}
                    tin += _claude_input(u)
                    tout += int(u.get("output_tokens") or 0)
                    texts += [b.get("text", "") for b in msg.get("content") or []
                              if isinstance(b, dict) and b.get("type") == "text"]
            return _Output("\n".join(texts) or stdout, price_usage(self.name, tin, tout, self.settings))
        u = result.get("usage") or {}
        tin, tout = _claude_input(u), int(u.get("output_tokens") or 0)
        cost = result.get("total_cost_usd", result.get("cost_usd"))
        usage = (Usage(tin, tout, float(cost)) if cost and float(cost) > 0
                 else price_usage(self.name, tin, tout, self.settings))
        text = str(result.get("result") or "")
        error = None
        if result.get("is_error") or str(result.get("subtype", "success")) != "success":
            fields = [f"{k} {result[k]}" for k in ("api_error_status", "subtype", "terminal_reason")
                      if result.get(k) not in (None, "", "success", "completed")]
            error = (text.strip().splitlines()[-1] if text.strip() else "an error") + \
                (f" ({', '.join(fields)})" if fields else "")
        return _Output(text, usage, error)

    def _parse_codex(self, stdout: str) -> _Output:
        tin = tout = 0
        texts: list[str] = []
        error = None
        for e in _json_lines(stdout):
            kind = e.get("type")
            if kind == "turn.completed":
                u = e.get("usage") or {}
                tin += int(u.get("input_tokens") or 0)
                tout += int(u.get("output_tokens") or 0)
            elif kind == "item.completed":
                item = e.get("item") or {}
                if item.get("type") == "agent_message":
                    texts.append(str(item.get("text", "")))
            elif kind == "turn.failed":
                error = str((e.get("error") or {}).get("message") or "the turn failed")
            elif kind == "error" and not _RETRY_LINE.search(str(e.get("message", ""))):
                error = str(e.get("message") or "error")
        usage = (price_usage(self.name, tin, tout, self.settings) if tin or tout
                 else self._tokens_used(stdout))
        return _Output("\n".join(texts) or stdout, usage, error)

    # -- one proposal ------------------------------------------------------------------------
    def propose(self, context: AgentContext) -> Proposal:
        if context.workspace is None:
            raise AgentError(f"{self.name}: the harness gave no workspace to edit")
        root = Path(context.workspace())
        prompt = self._prompt(context)
        notes_path = root / NOTES_FILE
        if context.notes_chars:
            notes_path.write_text(context.research_notes, encoding="utf-8")
        else:
            notes_path.unlink(missing_ok=True)
        before = _snapshot(root)
        with tempfile.TemporaryDirectory(prefix="ar-prompt-") as tmp:
            prompt_file = Path(tmp) / "prompt.md"
            prompt_file.write_text(prompt, encoding="utf-8")
            self.writable = [p for p in context.spec.sandbox_writable if os.path.isabs(p)]
            self.holdout_data = list(context.spec.holdout_data)
            run = self._run(root, prompt, prompt_file, sandbox=context.spec.sandbox)
        out = self._parse_output(run.stdout)
        usage = out.usage
        ended = {"timeout": "killed at the timeout", "stall": "killed: no progress",
                 "closed": "killed: the run stopped"}.get(run.killed, str(run.returncode))
        quiet = f" ({run.quiet_lines} partial-message lines not kept)" if run.quiet_lines else ""
        log = (f"## command\n{self.command}\n## prompt\n{prompt}\n## exit\n{ended} after "
               f"{run.seconds:.1f} s\n## stdout{quiet}\n{run.stdout}\n## stderr\n{run.stderr}\n")
        log_path = save_agent_log(context, self.name, log, "log")
        if run.killed == "timeout":
            raise AgentError(f"{self.name}: no answer within {self.settings.timeout:g} s; killed "
                             f"(raise [agent] timeout if it needs longer)", usage, log_path)
        if run.killed == "stall":
            last = _last_line(run.stderr) or _last_line(run.stdout)
            raise AgentError(f"{self.name}: no progress for {self.settings.stall_timeout:g} s "
                             f"(only retries or silence); killed — check its endpoint and key, or "
                             f"raise [agent] stall_timeout" + (f"; last output: {last}" if last else ""),
                             usage, log_path)
        if run.killed == "closed":
            raise AgentError(f"{self.name}: stopped with the run", usage, log_path)
        if out.error is not None:
            raise AgentError(f"{self.name} failed: {out.error}", usage, log_path)
        if run.returncode != 0:
            tail = (run.stderr.strip() or run.stdout.strip())[-OUTPUT_TAIL:].strip().splitlines()
            raise AgentError(f"{self.name} exited with status {run.returncode}: "
                             f"{tail[-1] if tail else '(no output)'}", usage, log_path)

        files, notes, refused = self._read_back(root, before, context)
        notes_text = _read_notes(notes_path) if context.notes_chars else None
        if notes_text == context.research_notes:
            notes_text = None
        if not files:
            reason = "the agent changed no editable file"
            if notes:
                reason += " (" + "; ".join(notes) + ")"
            raise AgentError(reason, usage, log_path)
        new = {**context.files, **files}
        new = {p: t for p, t in new.items() if t is not None}
        description = find_description(out.text) or summarize_change(context.files, new)
        return Proposal(description=description, files=files, usage=usage, notes=notes,
                        agent_log=log_path, refused=refused, notes_text=notes_text)

    def _read_back(self, root: Path, before: dict[str, str],
                   context: AgentContext) -> tuple[dict[str, str | None], list[str], list[str]]:
        after = _snapshot(root)
        files: dict[str, str | None] = {}
        dropped: list[str] = []
        binary: list[str] = []
        for path in sorted(set(before) | set(after) | set(context.files)):
            if path == NOTES_FILE:
                continue          # the research notes: read back on their own, never committed
            if context.editable(path):
                if path not in after:
                    if path in context.files:
                        files[path] = None          # deleted
                    continue
                try:
                    content = (root / path).read_text(encoding="utf-8")
                except UnicodeDecodeError:
                    binary.append(path)
                    continue
                if content != context.files.get(path):
                    files[path] = content
            elif before.get(path) != after.get(path):
                dropped.append(path)
        notes = []
        if dropped:
            notes.append("dropped edits to files that are not editable: " + ", ".join(dropped))
        if binary:
            notes.append("dropped editable files that are not UTF-8 text: " + ", ".join(binary))
        return files, notes, dropped


def _read_notes(path: Path) -> str | None:
    """The notes file as the agent left it (None when it deleted it or it is unreadable: the
    notes stay as they were)."""
    try:
        return path.read_text(encoding="utf-8") if path.is_file() else None
    except (OSError, UnicodeDecodeError):
        return None


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if isinstance(d, dict):
                out.append(d)
    return out


def _claude_input(u: dict) -> int:
    return sum(int(u.get(k) or 0) for k in
               ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][-300:] if lines else ""


def _check_codex_home() -> None:
    """Codex's sandbox fails every command it runs when its home is under /tmp, and Codex still
    exits 0: the harness would only see "the agent changed no editable file", every time."""
    home = os.environ.get("CODEX_HOME")
    if not home:
        return
    resolved = Path(home).expanduser().resolve()
    tmp_roots = {Path("/tmp").resolve(), Path(tempfile.gettempdir()).resolve()}
    if any(resolved == t or t in resolved.parents for t in tmp_roots):
        raise AgentConfigError(
            f"--agent codex: CODEX_HOME={home} is under /tmp, where Codex's sandbox makes every "
            f"command it runs fail (and Codex still exits 0, so no proposal would ever come) — "
            f"set CODEX_HOME to a directory outside /tmp, e.g. ~/.codex")


