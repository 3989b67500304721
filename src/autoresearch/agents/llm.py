"""LLM API agents: `--agent openai:MODEL` and `--agent anthropic:MODEL` through the official SDKs.

One proposal is one conversation: the edit-format instructions as the system message, the
context (prompt.py) as the user message, and the model's answer: a `Description:` line plus
SEARCH/REPLACE or whole-file blocks (edits.py). A block that does not match, or an edit to a file
that is not editable, gets exactly one more turn with a message the model can act on; after that
the proposal fails as an AgentError (recorded as `agent-error`, the loop goes on).

Transport faults (429, 5xx, timeouts, dropped connections) are retried by the SDK with backoff,
`[agent] max_retries` times; what is left becomes an AgentError. A rejected key or an unknown
model is an AgentConfigError: retrying cannot fix it.

`check()`, before the run, lists the server's models (free; a tiny completion where the server
has no model list): a dead endpoint or a rejected key stops the run at once with the server's
message. Where the list gives the model's context length (vLLM's `max_model_len`, OpenRouter's and
LM Studio's `context_length`, ...), `max_tokens` defaults to a quarter of it (at most 8192) and
the prompt is cut to fit the rest; without one, no `max_tokens` is sent to an OpenAI-compatible
server (it fits the answer in what is left). A request the server refuses as too long is an error
that names the real limit.

The SDKs read OPENAI_BASE_URL / OPENAI_API_KEY and ANTHROPIC_BASE_URL / ANTHROPIC_API_KEY.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any

from ..config import AgentSettings
from ..errors import AgentConfigError
from ..experiment import Proposal, Usage
from .base import Agent, AgentContext, AgentError, save_agent_log
from .edits import (
    FORMAT_INSTRUCTIONS,
    NOTES_HOW,
    apply_edits,
    find_research_notes,
    parse_reply,
    retry_message,
    summarize_change,
)
from .prompt import build_prompt

DEFAULT_MAX_TOKENS = 8192     # the answer cap when the server says nothing about its context
CHARS_PER_TOKEN = 3           # conservative: code and tables tokenize densely
# fields an OpenAI-compatible /v1/models entry uses for the context length, by server
_CONTEXT_KEYS = ("max_model_len", "context_length", "context_window", "max_context_length",
                 "n_ctx", "max_input_tokens")
_CONTEXT_ERROR = re.compile(r"context length|context window|context size|maximum context|"
                            r"too many tokens|prompt is too long|exceeds the context", re.I)
_LIMIT = re.compile(r"(?:maximum context length|context (?:length|window|size))\D{0,30}?(\d[\d,]*)",
                    re.I)

SYSTEM_PROMPT = ("You are a research engineer running an automated experiment loop. Each answer "
                 "proposes one change to the code; a harness measures it and keeps it only if the "
                 "metric improves.\n\n" + FORMAT_INSTRUCTIONS)


def price_usage(model: str, input_tokens: int, output_tokens: int, settings: AgentSettings) -> Usage:
    """Usage with its cost from `[agent.prices]`: the exact model name, else the longest prefix."""
    price = settings.prices.get(model)
    if price is None:
        keys = [k for k in settings.prices if model.startswith(k)]
        price = settings.prices[max(keys, key=len)] if keys else None
    cost = 0.0 if price is None else (input_tokens * price.input + output_tokens * price.output) / 1e6
    return Usage(input_tokens, output_tokens, cost)


@dataclass
class _Answer:
    text: str
    usage: Usage
    truncated: bool           # stopped at max_tokens


class _LLMAgent(Agent):
    """The conversation logic shared by both APIs; subclasses do one request each."""

    provider = "llm"
    concurrent = True
    ahead = True        # slow: the loop asks for the next proposal while one runs

    def __init__(self, model: str, settings: AgentSettings):
        if not model:
            raise AgentConfigError(f"--agent {self.provider}:MODEL needs a model name, "
                                   f"e.g. --agent {self.provider}:{self.example_model}")
        self.model = model
        self.settings = settings
        self.name = f"{self.provider}:{model}"
        self.context_tokens: int | None = None      # the model's context, when the server says

    # -- the server's context ---------------------------------------------------------------
    def check(self) -> None:
        """One cheap call before the run (see the module docstring)."""
        if not self.settings.check:
            return
        try:
            self.context_tokens = self._probe()
        except AgentError as e:
            raise AgentConfigError(f"--agent {self.name}: the connectivity check failed: "
                                   f"{e.reason}") from None
        except AgentConfigError as e:
            raise AgentConfigError(f"--agent {self.name}: the connectivity check failed: {e}") from None
        mt = self.settings.max_tokens
        if mt is not None and self.context_tokens is not None and mt >= self.context_tokens:
            raise AgentConfigError(
                f"[agent] max_tokens = {mt} leaves no room for the prompt in {self.model}'s context "
                f"of {self.context_tokens} tokens (from the server's model list) — lower it, e.g. "
                f"max_tokens = {max(256, self.context_tokens // 4)}, or remove it to fit automatically")

    def _probe(self) -> int | None:
        """List the models (or make a tiny request); the model's context length when given."""
        raise NotImplementedError

    @property
    def max_tokens(self) -> int | None:
        """The answer cap sent: the setting, else a quarter of a known context, else the default
        (OpenAI-compatible servers: None, nothing is sent)."""
        if self.settings.max_tokens is not None:
            return self.settings.max_tokens
        if self.context_tokens:
            return max(256, min(DEFAULT_MAX_TOKENS, self.context_tokens // 4))
        return self.default_max_tokens

    default_max_tokens: int | None = DEFAULT_MAX_TOKENS

    def _prompt_chars(self) -> int:
        """The prompt's size budget: `[agent] context_chars`, cut to fit a known context."""
        chars = self.settings.context_chars
        if self.context_tokens:
            room = self.context_tokens - (self.max_tokens or 0) - len(SYSTEM_PROMPT) // CHARS_PER_TOKEN
            chars = min(chars, max(2000, room * CHARS_PER_TOKEN))
        return chars

    def _too_long(self, where: str, message: str) -> AgentError:
        """A request the server refused as too long, with the limit that was really hit."""
        m = _LIMIT.search(message)
        limit = int(m.group(1).replace(",", "")) if m else self.context_tokens
        sent = f"max_tokens={self.max_tokens}" if self.max_tokens else "no max_tokens"
        what = f"the model's context of {limit} tokens" if limit else "the model's context"
        return AgentError(f"{where}: the prompt plus the answer ({sent}) do not fit {what} — lower "
                          f"[agent] context_chars (now {self.settings.context_chars}) or [agent] "
                          f"max_tokens; the server said: {message}")

    example_model = "MODEL"
    _client: Any = None       # the SDK client, set by each API's constructor

    def _complete(self, system: str, messages: list[dict[str, str]]) -> _Answer:
        raise NotImplementedError

    def _call(self, system: str, messages: list[dict[str, str]], usage: Usage, log: list[str]) -> _Answer:
        start = time.monotonic()
        try:
            answer = self._complete(system, messages)
        except AgentError as e:
            e.usage = usage + e.usage
            log.append(f"## error\n{e.reason}\n")
            raise
        log.append(f"## assistant ({time.monotonic() - start:.1f} s, {answer.usage.input_tokens} in, "
                   f"{answer.usage.output_tokens} out tokens)\n{answer.text}\n")
        return answer

    def propose(self, context: AgentContext) -> Proposal:
        prompt = build_prompt(context, max_chars=self._prompt_chars(),
                              history_rows=self.settings.history_rows, notes_how=NOTES_HOW)
        messages = [{"role": "user", "content": prompt}]
        log = [f"## system\n{SYSTEM_PROMPT}", f"## user\n{prompt}"]
        try:
            proposal = self._converse(context, messages, Usage(), log)
        except AgentError as e:
            log.append(f"## agent error\n{e.reason}\n")
            e.agent_log = self._save(context, log)
            raise
        except BaseException as e:
            log.append(f"## {type(e).__name__}\n{e}\n")
            self._save(context, log)
            raise
        proposal.agent_log = self._save(context, log)
        return proposal

    def _converse(self, context: AgentContext, messages: list[dict[str, str]], usage: Usage,
                  log: list[str]) -> Proposal:
        files = dict(context.files)
        description = notes = None
        for turn in range(2):
            answer = self._call(SYSTEM_PROMPT, messages, usage, log)
            usage = usage + answer.usage
            parsed = parse_reply(answer.text)
            description = parsed.description or description
            notes = find_research_notes(answer.text) or notes
            if not parsed.edits:
                why = "the answer had no SEARCH/REPLACE block and no whole-file block"
                if answer.truncated:
                    cap = (f"max_tokens={self.max_tokens}" if self.max_tokens
                           else "the server's output limit")
                    why = (f"the answer was cut off at {cap} before any complete edit; raise "
                           f"[agent] max_tokens" + (f" (the context is {self.context_tokens} tokens)"
                                                    if self.context_tokens else ""))
                elif parsed.problems:
                    why += ": " + "; ".join(parsed.problems)
                if turn == 1:
                    why = "after one retry, " + why
                raise AgentError(why, usage)
            result = apply_edits(files, parsed.edits, context.editable)
            files = result.files
            if result.ok and not parsed.problems:
                break
            if turn == 1:
                raise AgentError(_failure_reason(result, parsed.problems) + " (after one retry)",
                                 usage)
            message = retry_message(result, sorted(p for p in context.files if context.editable(p)))
            if parsed.problems:
                message = "\n".join(parsed.problems) + "\n\n" + message
            messages = [*messages, {"role": "assistant", "content": answer.text},
                        {"role": "user", "content": message}]
            log.append(f"## user (retry)\n{message}\n")
        changed = {p: files[p] for p in files if files[p] != context.files.get(p)}
        if not changed:
            raise AgentError("the edits changed nothing (REPLACE equal to SEARCH)", usage)
        return Proposal(description=description or summarize_change(context.files, files),
                        files=changed, usage=usage, notes_entry=notes)

    def close(self) -> None:
        """Close the HTTP client: a request still on its way ends at once (the run stopped)."""
        if self._client is not None:
            self._client.close()

    def _save(self, context: AgentContext, log: list[str]) -> str | None:
        """Write the transcript to the context's log directory; its path, or None."""
        return save_agent_log(context, self.name, "\n".join(log), "md")


def _failure_reason(result: Any, problems: list[str]) -> str:
    reasons = list(problems)
    if result.failures:
        reasons.append(f"{len(result.failures)} SEARCH block(s) did not match: " +
                       result.failures[0].split("\n")[0])
    if result.refused:
        reasons.append("edits to files that are not editable were refused: " + ", ".join(result.refused))
    return "; ".join(reasons)


def _import(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError:
        raise AgentConfigError(f"--agent {extra}:MODEL needs the '{module}' package — "
                               f"pip install 'autoresearch[{extra}]'") from None


def _transport_error(sdk: Any, e: Exception, where: str, settings: AgentSettings,
                     agent: _LLMAgent | None = None) -> Exception:
    """An SDK exception as AgentError (worth another proposal) or AgentConfigError (fix the setup)."""
    retries = f"after {settings.max_retries} retries"
    if isinstance(e, sdk.APIStatusError) and not (e.status_code in (408, 409, 429) or e.status_code >= 500):
        retries = "not retried"     # the SDKs retry only these
    if isinstance(e, sdk.APITimeoutError):
        return AgentError(f"{where}: no answer within {settings.timeout:g} s ({retries}); "
                          f"raise [agent] timeout if the model is slow")
    if isinstance(e, sdk.APIConnectionError):
        return AgentError(f"{where}: cannot connect ({retries}): {e}")
    if isinstance(e, sdk.APIStatusError):
        status = e.status_code
        if status in (401, 403):
            return AgentConfigError(f"{where} rejected the API key (HTTP {status}): {_message(e)}")
        if status == 404:
            return AgentConfigError(f"{where}: not found (HTTP 404): {_message(e)} — check the model name "
                                    f"and the base URL")
        if status in (400, 413, 422) and agent is not None and _CONTEXT_ERROR.search(_message(e)):
            return agent._too_long(where, _message(e))
        kind = "rate limited" if status == 429 else f"HTTP {status}"
        return AgentError(f"{where}: {kind} ({retries}): {_message(e)}")
    return AgentError(f"{where}: {type(e).__name__}: {e}")


def _context_of(model: str, entries: list[dict]) -> int | None:
    """The context length the model list gives for `model` (or for the only model listed)."""
    entry = next((m for m in entries if m.get("id") == model), None)
    if entry is None and len(entries) == 1:
        entry = entries[0]          # llama.cpp serves one model under any name
    if entry is None:
        return None
    for source in (entry, entry.get("meta") or {}, entry.get("top_provider") or {}):
        for key in _CONTEXT_KEYS:
            value = source.get(key) if isinstance(source, dict) else None
            if isinstance(value, (int, float)) and value > 0:
                return int(value)
    return None


def _message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(getattr(e, "message", e))


class OpenAIAgent(_LLMAgent):
    """`--agent openai:MODEL`: any OpenAI-compatible Chat Completions server."""

    provider = "openai"
    example_model = "gpt-4.1"

    def __init__(self, model: str, settings: AgentSettings, *, base_url: str | None = None,
                 api_key: str | None = None):
        super().__init__(model, settings)
        openai = _import("openai", "openai")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            if not base_url:
                raise AgentConfigError("--agent openai:MODEL needs OPENAI_API_KEY (or OPENAI_BASE_URL "
                                       "for a local server such as vLLM, Ollama or llama.cpp)")
            api_key = "not-needed"      # local servers ignore the key; the SDK insists on one
        self.base_url = base_url
        self._sdk = openai
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url,
                                     max_retries=settings.max_retries, timeout=settings.timeout)
        # api.openai.com's reasoning models refuse `max_tokens`; other servers may not know the
        # newer `max_completion_tokens`.
        self._tokens_key = ("max_completion_tokens" if not base_url or "api.openai.com" in base_url
                            else "max_tokens")

    default_max_tokens = None       # servers fit the answer in what the prompt leaves

    @property
    def _where(self) -> str:
        return f"openai ({self.base_url or 'api.openai.com'})"

    def _probe(self) -> int | None:
        client = self._client.with_options(max_retries=1, timeout=min(60.0, self.settings.timeout))
        try:
            page = client.models.list()
        except self._sdk.NotFoundError:       # no model list here: a one-token request instead
            try:
                client.chat.completions.create(model=self.model, max_tokens=1,
                                               messages=[{"role": "user", "content": "ping"}])
            except self._sdk.OpenAIError as e:
                raise _transport_error(self._sdk, e, self._where, self.settings, self) from None
            return None
        except self._sdk.OpenAIError as e:
            raise _transport_error(self._sdk, e, self._where, self.settings, self) from None
        return _context_of(self.model, [m.model_dump() for m in page.data])

    def _complete(self, system: str, messages: list[dict[str, str]]) -> _Answer:
        kwargs: dict[str, Any] = {}
        if self.max_tokens is not None:
            kwargs[self._tokens_key] = self.max_tokens
        if self.settings.temperature is not None:
            kwargs["temperature"] = self.settings.temperature
        try:
            r = self._client.chat.completions.create(
                model=self.model, messages=[{"role": "system", "content": system}, *messages], **kwargs)
        except self._sdk.OpenAIError as e:
            raise _transport_error(self._sdk, e, self._where, self.settings, self) from None
        u = r.usage
        usage = price_usage(self.model, getattr(u, "prompt_tokens", 0) or 0,
                            getattr(u, "completion_tokens", 0) or 0, self.settings)
        if not r.choices:
            raise AgentError("openai: the answer had no choices", usage)
        choice = r.choices[0]
        return _Answer(choice.message.content or "", usage, choice.finish_reason == "length")


class AnthropicAgent(_LLMAgent):
    """`--agent anthropic:MODEL`: the Anthropic Messages API."""

    provider = "anthropic"
    example_model = "claude-sonnet-4-5"

    def __init__(self, model: str, settings: AgentSettings, *, base_url: str | None = None,
                 api_key: str | None = None):
        super().__init__(model, settings)
        anthropic = _import("anthropic", "anthropic")
        base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        api_key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not api_key and not os.environ.get("ANTHROPIC_AUTH_TOKEN"):
            if not base_url:
                raise AgentConfigError("--agent anthropic:MODEL needs ANTHROPIC_API_KEY")
            api_key = "not-needed"
        self.base_url = base_url
        self._sdk = anthropic
        self._client = anthropic.Anthropic(api_key=api_key, base_url=base_url,
                                           max_retries=settings.max_retries, timeout=settings.timeout)

    @property
    def _where(self) -> str:
        return f"anthropic ({self.base_url or 'api.anthropic.com'})"

    def _probe(self) -> int | None:
        client = self._client.with_options(max_retries=1, timeout=min(60.0, self.settings.timeout))
        try:
            page = client.models.list(limit=100)
        except self._sdk.NotFoundError:       # a gateway without the model list
            try:
                client.messages.create(model=self.model, max_tokens=1,
                                       messages=[{"role": "user", "content": "ping"}])
            except self._sdk.AnthropicError as e:
                raise _transport_error(self._sdk, e, self._where, self.settings, self) from None
            return None
        except self._sdk.AnthropicError as e:
            raise _transport_error(self._sdk, e, self._where, self.settings, self) from None
        return _context_of(self.model, [m.model_dump() for m in page.data])

    def _complete(self, system: str, messages: list[dict[str, str]]) -> _Answer:
        kwargs: dict[str, Any] = {}
        if self.settings.temperature is not None:
            kwargs["temperature"] = self.settings.temperature
        try:
            r = self._client.messages.create(model=self.model, system=system, messages=messages,
                                             max_tokens=self.max_tokens or DEFAULT_MAX_TOKENS, **kwargs)
        except self._sdk.AnthropicError as e:
            raise _transport_error(self._sdk, e, self._where, self.settings, self) from None
        u = r.usage
        input_tokens = sum(getattr(u, k, 0) or 0 for k in
                           ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
        usage = price_usage(self.model, input_tokens, u.output_tokens or 0, self.settings)
        text = "".join(getattr(b, "text", "") for b in r.content if getattr(b, "type", "") == "text")
        return _Answer(text, usage, r.stop_reason == "max_tokens")
