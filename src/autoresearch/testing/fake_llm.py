"""Fake OpenAI-compatible and Anthropic servers that answer from a script, for offline runs.

Each is a real HTTP server on 127.0.0.1 (a free port, a background thread) speaking the real wire
format: `POST /v1/chat/completions` (choices, message, usage.prompt_tokens/completion_tokens) and
`POST /v1/messages` (content blocks, usage.input_tokens/output_tokens), errors in each API's JSON
error format. Every request takes the next step of the script:

    "Description: ...\\n\\ntrain.py\\n<<<<<<< SEARCH ..."     reply with this text
    {"reply": "...", "input_tokens": 900, "output_tokens": 80, "finish_reason": "length"}
    {"status": 429, "retry_after": 0}                       rate limited (Retry-After header)
    {"status": 500}  /  {"status": 529}                     server errors
    {"delay": 5, "reply": "..."}                            answer late (client timeouts)
    {"raw": "not json", "status": 200}                      a malformed body
    {"drop": true}                                          close the connection unanswered

`GET /v1/models` lists one model (`model`, default "fake"), checks the key like every request,
and with `context_length=N` gives it vLLM's `max_model_len`; a request whose prompt (about 4
characters a token) plus `max_tokens` exceeds N is then refused with vLLM's 400 "maximum context
length" error. `models=False` serves no model list (404), as some gateways do.

Instead of a script, a `responder` (a function of the request body that returns a step) can
answer every request: a stand-in model for offline runs of an evaluator that calls an LLM (the
`prompt` template's toy_model.py is one). An exception in it is a 500 answer.

Requests are recorded (`server.requests`) so tests can assert what was sent. From the shell:

    python -m autoresearch.testing.fake_llm --openai --script steps.json --port 8000
    python -m autoresearch.testing.fake_llm --openai --responder toy_model:respond --port 8000
    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=x autoresearch run --agent openai:fake
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Step = str | dict[str, Any]
Responder = Callable[[dict[str, Any]], Step]

_OPENAI_ERRORS = {400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
                  404: ("invalid_request_error", "model_not_found"),
                  429: ("requests", "rate_limit_exceeded"), 500: ("server_error", None),
                  503: ("server_error", None)}
_ANTHROPIC_ERRORS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                     404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                     500: "api_error", 529: "overloaded_error"}


def load_script(path: str | Path) -> list[Step]:
    """A script file: a JSON list of steps, or JSON Lines (one step per line)."""
    text = Path(path).read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        return list(json.loads(text))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # Clients that time out or exit close their connections; that is not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)      # a rough count, like 4 characters per token


class _FakeServer:
    """The shared machinery: the script, the recorded requests, the HTTP server thread."""

    kind = "fake"
    path = "/"

    def __init__(self, script: list[Step], *, port: int = 0, api_key: str | None = None,
                 loop: bool = False, context_length: int | None = None, model: str = "fake",
                 models: bool = True, responder: Responder | None = None):
        self.context_length = context_length
        self.model = model
        self.models = models
        self.script = list(script)
        self.responder = responder
        self.loop = loop
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._next = 0
        self._httpd = _QuietServer(("127.0.0.1", port), self._handler_class())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> _FakeServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=f"fake-{self.kind}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def remaining(self) -> int:
        return len(self.script) - self._next

    def _take(self) -> Step | None:
        with self._lock:
            if self._next >= len(self.script):
                if not self.loop or not self.script:
                    return None
                self._next = 0
            step = self.script[self._next]
            self._next += 1
            return step

    def _too_long(self, body: dict) -> str | None:
        """vLLM's refusal when prompt + max_tokens exceed the context; None when it fits."""
        if not self.context_length:
            return None
        prompt = _tokens(_prompt_text(body.get("messages", [])) + str(body.get("system") or ""))
        answer = int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)
        if prompt + answer <= self.context_length:
            return None
        return (f"This model's maximum context length is {self.context_length} tokens. However, you "
                f"requested {prompt + answer} tokens ({prompt} in the messages, {answer} in the "
                f"completion). Please reduce the length of the messages or completion.")

    # -- wire format, per API ---------------------------------------------------------------
    def _authorized(self, headers) -> bool:
        raise NotImplementedError

    def _reply(self, body: dict, text: str, step: dict) -> dict:
        raise NotImplementedError

    def _error(self, status: int, message: str) -> dict:
        raise NotImplementedError

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:   # keep test output clean
                pass

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("request-id", f"req_{uuid.uuid4().hex[:16]}")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                with server._lock:
                    server.requests.append({"path": self.path, "method": "GET", "body": None,
                                            "headers": {k.lower(): v for k, v in self.headers.items()},
                                            "time": time.time()})
                if self.path.split("?")[0].rstrip("/").endswith("/models") and server.models:
                    if not server._authorized(self.headers):
                        self._send(401, server._error(401, "invalid API key"))
                        return
                    entry = {"id": server.model, "object": "model", "created": 0,
                             "owned_by": "autoresearch", "type": "model", "display_name": server.model}
                    if server.context_length:
                        entry["max_model_len"] = server.context_length
                    self._send(200, {"object": "list", "data": [entry], "has_more": False,
                                     "first_id": server.model, "last_id": server.model})
                else:
                    self._send(404, server._error(404, f"no route GET {self.path}"))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    self._send(400, server._error(400, "the request body is not JSON"))
                    return
                with server._lock:
                    server.requests.append({"path": self.path, "method": "POST", "body": body,
                                            "headers": {k.lower(): v for k, v in self.headers.items()},
                                            "time": time.time()})
                if self.path.split("?")[0].rstrip("/") != server.path:
                    self._send(404, server._error(404, f"no route POST {self.path}; this fake serves {server.path}"))
                    return
                if not server._authorized(self.headers):
                    self._send(401, server._error(401, "invalid API key"))
                    return
                if body.get("stream"):
                    self._send(400, server._error(400, "this fake server does not stream; send stream=false"))
                    return
                if server.responder is not None:
                    try:
                        step = server.responder(body)
                    except Exception as e:
                        self._send(500, server._error(500, f"responder failed: {type(e).__name__}: {e}"))
                        return
                else:
                    step = server._take()
                if step is None:
                    self._send(400, server._error(
                        400, f"the fake server's script is exhausted after {len(server.script)} steps"))
                    return
                if isinstance(step, str):
                    step = {"reply": step}
                too_long = server._too_long(body)
                if too_long:
                    self._send(400, server._error(400, too_long))
                    return
                if step.get("delay"):
                    time.sleep(float(step["delay"]))
                if step.get("drop"):
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                status = int(step.get("status", 200))
                if "raw" in step:
                    self._send(status, str(step["raw"]).encode())
                    return
                if status != 200:
                    headers = {}
                    if "retry_after" in step:
                        ra = float(step["retry_after"])
                        headers["retry-after"] = str(int(ra))
                        headers["retry-after-ms"] = str(max(1, int(ra * 1000)))
                    msg = step.get("message", f"fake {status} error")
                    self._send(status, server._error(status, msg), headers)
                    return
                self._send(200, server._reply(body, str(step.get("reply", "")), step))

        return Handler


def _prompt_text(messages: list[dict]) -> str:
    out = []
    for m in messages:
        c = m.get("content")
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, list):
            out.extend(str(b.get("text", "")) for b in c if isinstance(b, dict))
    return "\n".join(out)


class FakeOpenAIServer(_FakeServer):
    """An OpenAI-compatible Chat Completions server. Point the SDK at `base_url` (ends in /v1)."""

    kind = "openai"
    path = "/v1/chat/completions"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def env(self) -> dict[str, str]:
        return {"OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": self.api_key or "fake-key"}

    def _authorized(self, headers) -> bool:
        return self.api_key is None or headers.get("Authorization") == f"Bearer {self.api_key}"

    def _error(self, status: int, message: str) -> dict:
        etype, code = _OPENAI_ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
        return {"error": {"message": message, "type": etype, "param": None, "code": code}}

    def _reply(self, body: dict, text: str, step: dict) -> dict:
        prompt_tokens = int(step.get("input_tokens", _tokens(_prompt_text(body.get("messages", [])))))
        completion_tokens = int(step.get("output_tokens", _tokens(text)))
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "finish_reason": step.get("finish_reason", "stop"), "logprobs": None,
                         "message": {"role": "assistant", "content": text, "refusal": None}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "system_fingerprint": None,
        }


class FakeAnthropicServer(_FakeServer):
    """An Anthropic Messages API server. Point the SDK at `base_url` (no /v1)."""

    kind = "anthropic"
    path = "/v1/messages"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"ANTHROPIC_BASE_URL": self.base_url, "ANTHROPIC_API_KEY": self.api_key or "fake-key"}

    def _authorized(self, headers) -> bool:
        # the API key, or the same as a bearer token (what the SDK sends for some calls)
        return self.api_key is None or self.api_key in (headers.get("x-api-key"),
                                                        (headers.get("Authorization") or "")[7:])

    def _error(self, status: int, message: str) -> dict:
        etype = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": etype, "message": message}}

    def _reply(self, body: dict, text: str, step: dict) -> dict:
        system = body.get("system")
        system_text = system if isinstance(system, str) else _prompt_text([{"content": system or []}])
        input_tokens = int(step.get("input_tokens",
                                    _tokens(system_text + _prompt_text(body.get("messages", [])))))
        stop = step.get("finish_reason", "end_turn")
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "fake"),
            "content": [{"type": "text", "text": text}],
            "stop_reason": "max_tokens" if stop == "length" else stop,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": int(step.get("output_tokens", _tokens(text))),
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autoresearch.testing.fake_llm",
                                 description="Serve a scripted fake LLM API on 127.0.0.1.")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--openai", action="store_true", help="OpenAI Chat Completions (/v1/chat/completions)")
    which.add_argument("--anthropic", action="store_true", help="Anthropic Messages (/v1/messages)")
    ap.add_argument("--script", help="JSON list or JSON Lines of steps")
    ap.add_argument("--responder", metavar="MODULE:FUNCTION",
                    help="answer every request with FUNCTION(body) instead of a script")
    ap.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    ap.add_argument("--api-key", default=None, help="require this key (default: accept any)")
    ap.add_argument("--loop", action="store_true", help="start the script again when it runs out")
    ap.add_argument("--context-length", type=int, help="the model's context, tokens (vLLM-style)")
    args = ap.parse_args(argv)
    if (args.script is None) == (args.responder is None):
        ap.error("give exactly one of --script and --responder")
    responder = None
    if args.responder:
        module, _, func = args.responder.partition(":")
        sys.path.insert(0, str(Path.cwd()))
        try:
            responder = getattr(importlib.import_module(module), func or "respond")
        except (ImportError, AttributeError) as e:
            ap.error(f"--responder {args.responder}: {e}")
    cls = FakeOpenAIServer if args.openai else FakeAnthropicServer
    server = cls(load_script(args.script) if args.script else [], port=args.port,
                 api_key=args.api_key, loop=args.loop, context_length=args.context_length,
                 responder=responder)
    server.start()
    for k, v in server.env().items():
        print(f"export {k}={v}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
