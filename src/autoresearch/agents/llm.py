"""LLM API agents: `--agent openai:MODEL` and `--agent anthropic:MODEL` through the official SDKs.

One proposal is one conversation: the edit-format instructions as the system message, the
context (prompt.py) as the user message, and the model's answer: a `Description:` line plus
SEARCH/REPLACE or whole-file blocks (edits.py). A block that does not match, or an edit to a file
that is not editable, gets exactly one more turn with a message the model can act on; after that
the proposal fails as an AgentError (recorded as `agent-error`, the loop goes on).

Transport faults (429, 5xx, timeouts, dropped connections) are retried by the SDK with backoff,
`[agent] max_retries` times; what is left becomes an AgentError. A rejected key or an unknown
model is an AgentConfigError: retrying cannot fix it.

The SDKs read OPENAI_BASE_URL / OPENAI_API_KEY and ANTHROPIC_BASE_URL / ANTHROPIC_API_KEY.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from ..config import AgentSettings
from ..errors import AgentConfigError
from ..experiment import Proposal, Usage
from .base import Agent, AgentContext, AgentError, save_agent_log
from .edits import FORMAT_INSTRUCTIONS, apply_edits, parse_reply, retry_message, summarize_change
from .prompt import build_prompt

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

    example_model = "MODEL"

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
        prompt = build_prompt(context, max_chars=self.settings.context_chars,
                              history_rows=self.settings.history_rows)
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
        description = None
        for turn in range(2):
            answer = self._call(SYSTEM_PROMPT, messages, usage, log)
            usage = usage + answer.usage
            parsed = parse_reply(answer.text)
            description = parsed.description or description
            if not parsed.edits:
                why = "the answer had no SEARCH/REPLACE block and no whole-file block"
                if answer.truncated:
                    why = (f"the answer was cut off at max_tokens={self.settings.max_tokens} before "
                           f"any complete edit; raise [agent] max_tokens")
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
                        files=changed, usage=usage)

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


def _transport_error(sdk: Any, e: Exception, where: str, settings: AgentSettings) -> Exception:
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
        kind = "rate limited" if status == 429 else f"HTTP {status}"
        return AgentError(f"{where}: {kind} ({retries}): {_message(e)}")
    return AgentError(f"{where}: {type(e).__name__}: {e}")


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

    def _complete(self, system: str, messages: list[dict[str, str]]) -> _Answer:
        kwargs: dict[str, Any] = {self._tokens_key: self.settings.max_tokens}
        if self.settings.temperature is not None:
            kwargs["temperature"] = self.settings.temperature
        try:
            r = self._client.chat.completions.create(
                model=self.model, messages=[{"role": "system", "content": system}, *messages], **kwargs)
        except self._sdk.OpenAIError as e:
            raise _transport_error(self._sdk, e, f"openai ({self.base_url or 'api.openai.com'})",
                                   self.settings) from None
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

    def _complete(self, system: str, messages: list[dict[str, str]]) -> _Answer:
        kwargs: dict[str, Any] = {}
        if self.settings.temperature is not None:
            kwargs["temperature"] = self.settings.temperature
        try:
            r = self._client.messages.create(model=self.model, system=system, messages=messages,
                                             max_tokens=self.settings.max_tokens, **kwargs)
        except self._sdk.AnthropicError as e:
            raise _transport_error(self._sdk, e, f"anthropic ({self.base_url or 'api.anthropic.com'})",
                                   self.settings) from None
        u = r.usage
        input_tokens = sum(getattr(u, k, 0) or 0 for k in
                           ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
        usage = price_usage(self.model, input_tokens, u.output_tokens or 0, self.settings)
        text = "".join(getattr(b, "text", "") for b in r.content if getattr(b, "type", "") == "text")
        return _Answer(text, usage, r.stop_reason == "max_tokens")
