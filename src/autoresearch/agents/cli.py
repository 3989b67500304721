"""Coding-agent CLIs as proposers: `--agent claude`, `--agent codex`, `--agent command:"CMD"`.

The CLI runs in a scratch checkout of the best commit (`context.workspace()`), edits files
there, and exits; the harness then reads back every editable file that changed (new and deleted
ones included) as the proposal. Edits to other files are dropped and noted. The prompt goes on
stdin, or into the command where it says `{prompt}` (shell-quoted) or `{prompt_file}` (a path).

Presets (flags from the tools' documentation, see docs/agents.md):

    claude   claude -p --permission-mode acceptEdits --output-format json   (prompt on stdin)
    codex    codex exec --sandbox workspace-write --skip-git-repo-check -   (prompt on stdin)

The binaries are looked up on PATH; AUTORESEARCH_CLAUDE_BIN / AUTORESEARCH_CODEX_BIN override.
Each call is killed (with its process group) after `[agent] timeout` seconds. With `sandbox`
(the default on Linux) the CLI runs under bubblewrap (sandbox.AgentSandbox): network kept, only
its scratch checkout and a private copy of its configuration in HOME writable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import STATE_DIR, AgentSettings
from ..errors import AgentConfigError
from ..experiment import Proposal, Usage
from .base import Agent, AgentContext, AgentError
from .edits import find_description, summarize_change
from .llm import price_usage
from .prompt import build_prompt

SKIP_DIRS = {".git", ".autoresearch", "__pycache__", ".pytest_cache", "node_modules", ".venv"}
KILL_GRACE = 5.0          # seconds between SIGTERM and SIGKILL
AGENT_WRITABLE_ENV = "AUTORESEARCH_AGENT_WRITABLE"  # more paths the agent may write (os.pathsep list)
OUTPUT_TAIL = 2000        # characters of output quoted in an error

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
    json_output: bool = False


PRESETS = {
    "claude": Preset(["-p", "--permission-mode", "acceptEdits", "--output-format", "json"],
                     "AUTORESEARCH_CLAUDE_BIN", "npm install -g @anthropic-ai/claude-code",
                     json_output=True),
    "codex": Preset(["exec", "--sandbox", "workspace-write", "--skip-git-repo-check", "-"],
                    "AUTORESEARCH_CODEX_BIN", "npm install -g @openai/codex"),
}


@dataclass
class _Run:
    returncode: int | None          # None: killed at the timeout
    stdout: str
    stderr: str
    seconds: float


def agent_sandbox(workspace: Path, writable: list[str]):  # noqa: ANN201 - an AgentSandbox
    """The coding agent's bubblewrap sandbox for a scratch checkout under the state directory
    (which it does not see): network on, only the checkout and a private HOME copy writable."""
    from ..sandbox import AgentSandbox

    state = next((p for p in Path(workspace).parents if p.name == STATE_DIR), None)
    extra = [p for p in os.environ.get(AGENT_WRITABLE_ENV, "").split(os.pathsep) if os.path.isabs(p)]
    return AgentSandbox(Path(workspace), dict(os.environ), state_dir=state,
                        writable=tuple(Path(p) for p in [*writable, *extra]))


def _snapshot(root: Path) -> dict[str, str]:
    """Path -> content hash of every file under root, outside tool and cache directories."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for f in filenames:
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
                 json_output: bool = False):
        self.name = name
        self.command = command          # a list: argv, prompt on stdin; a str: a shell command
        self.settings = settings
        self.json_output = json_output
        self.writable: list[str] = []   # absolute paths the agent may write besides its checkout

    @classmethod
    def preset(cls, name: str, settings: AgentSettings) -> CodingAgentCLI:
        """`claude` or `codex`, with the binary found on PATH or in the override variable."""
        p = PRESETS[name]
        binary = os.environ.get(p.env_bin) or shutil.which(name)
        if not binary:
            raise AgentConfigError(f"--agent {name}: '{name}' is not on PATH — install it "
                                   f"({p.install}) or set {p.env_bin} to its path")
        return cls(name, [binary, *p.argv], settings, json_output=p.json_output)

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
    def _prompt(self, context: AgentContext) -> str:
        editable = ", ".join(sorted(context.files)) or ", ".join(context.spec.editable)
        tail = CLI_INSTRUCTIONS.format(editable=editable)
        body = build_prompt(context, max_chars=max(1000, self.settings.context_chars - len(tail)),
                            history_rows=self.settings.history_rows)
        return body + "\n" + tail

    def _run(self, cwd: Path, prompt: str, prompt_file: Path, sandbox: bool = False) -> _Run:
        if isinstance(self.command, list):
            argv, shell, stdin = self.command, False, prompt
        else:
            uses_arg = "{prompt}" in self.command or "{prompt_file}" in self.command
            cmd = (self.command.replace("{prompt_file}", shlex.quote(str(prompt_file)))
                   .replace("{prompt}", shlex.quote(prompt)))
            argv, shell, stdin = cmd, True, (None if uses_arg else prompt)
        if not sandbox:
            return self._spawn(argv, shell, stdin, cwd, None)
        with agent_sandbox(cwd, self.writable) as sb:   # only the scratch checkout persists
            return self._spawn(sb.argv(["/bin/bash", "-c", argv] if shell else argv), False,
                               stdin, cwd, sb.env)

    def _spawn(self, argv: str | list[str], shell: bool, stdin: str | None, cwd: Path,
               env: dict[str, str] | None) -> _Run:
        start = time.monotonic()
        try:
            proc = subprocess.Popen(argv, shell=shell, cwd=cwd, text=True, start_new_session=True,
                                    env=env,
                                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as e:
            raise AgentError(f"{self.name}: cannot start {argv if shell else argv[0]!r}: {e.strerror}") from None
        try:
            out, err = proc.communicate(stdin, timeout=self.settings.timeout)
            return _Run(proc.returncode, out, err, time.monotonic() - start)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            out, err = proc.communicate()
            return _Run(None, out or "", err or "", time.monotonic() - start)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _parse_output(self, stdout: str) -> tuple[str, Usage]:
        """The agent's final text, and its usage when the CLI reports one (Claude Code's JSON)."""
        if not self.json_output:
            return stdout, Usage()
        try:
            data = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return stdout, Usage()
        u = data.get("usage") or {}
        tokens_in = sum(int(u.get(k) or 0) for k in
                        ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
        tokens_out = int(u.get("output_tokens") or 0)
        cost = data.get("total_cost_usd", data.get("cost_usd"))
        usage = (Usage(tokens_in, tokens_out, float(cost)) if cost is not None
                 else price_usage(self.name, tokens_in, tokens_out, self.settings))
        return str(data.get("result", "")), usage

    def propose(self, context: AgentContext) -> Proposal:
        if context.workspace is None:
            raise AgentError(f"{self.name}: the harness gave no workspace to edit")
        root = Path(context.workspace())
        self.writable = [p for p in context.spec.sandbox_writable if os.path.isabs(p)]
        prompt = self._prompt(context)
        before = _snapshot(root)
        with tempfile.TemporaryDirectory(prefix="ar-prompt-") as tmp:
            prompt_file = Path(tmp) / "prompt.md"
            prompt_file.write_text(prompt, encoding="utf-8")
            run = self._run(root, prompt, prompt_file, sandbox=context.spec.sandbox)
        text, usage = self._parse_output(run.stdout)
        log = (f"# {self.name}, experiment #{context.experiment_seq}\n## command\n{self.command}\n"
               f"## prompt\n{prompt}\n## exit\n"
               f"{'killed at the timeout' if run.returncode is None else run.returncode} "
               f"after {run.seconds:.1f} s\n## stdout\n{run.stdout}\n## stderr\n{run.stderr}\n")
        log_path = self._save(context, log)
        if run.returncode is None:
            raise AgentError(f"{self.name}: no answer within {self.settings.timeout:g} s; killed "
                             f"(raise [agent] timeout if it needs longer)", usage, log_path)
        if run.returncode != 0:
            tail = (run.stderr.strip() or run.stdout.strip())[-OUTPUT_TAIL:].strip().splitlines()
            raise AgentError(f"{self.name} exited with status {run.returncode}: "
                             f"{tail[-1] if tail else '(no output)'}", usage, log_path)

        files, notes = self._read_back(root, before, context)
        if not files:
            reason = "the agent changed no editable file"
            if notes:
                reason += " (" + "; ".join(notes) + ")"
            raise AgentError(reason, usage, log_path)
        new = {**context.files, **files}
        new = {p: t for p, t in new.items() if t is not None}
        description = find_description(text) or summarize_change(context.files, new)
        return Proposal(description=description, files=files, usage=usage, notes=notes, agent_log=log_path)

    def _read_back(self, root: Path, before: dict[str, str],
                   context: AgentContext) -> tuple[dict[str, str | None], list[str]]:
        after = _snapshot(root)
        files: dict[str, str | None] = {}
        dropped: list[str] = []
        binary: list[str] = []
        for path in sorted(set(before) | set(after) | set(context.files)):
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
        return files, notes

    def _save(self, context: AgentContext, log: str) -> str | None:
        """Write the transcript to the context's log directory; its path, or None."""
        if context.log_dir is None:
            return None
        context.log_dir.mkdir(parents=True, exist_ok=True)
        path = context.log_dir / f"agent-{context.experiment_seq}.log"
        path.write_text(log, encoding="utf-8")
        return str(path)
