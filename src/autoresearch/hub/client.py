"""The hub's HTTP client, for contributors, verifiers and `hub leaderboard`.

Connection failures and 5xx/429 answers are retried with exponential backoff and jitter
(honouring Retry-After), so a hub restarted after a crash is found again; a 4xx answer is the
hub's final word and raised as `HubRefused` with its one-line reason.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from ..errors import AutoresearchError


class HubUnreachable(AutoresearchError):
    """The hub did not answer within the retry budget."""


class HubRefused(AutoresearchError):
    """The hub answered 4xx: `status` and the hub's reason."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"the hub refused the request ({status}): {detail}")
        self.status = status
        self.detail = detail


class HubClient:
    def __init__(self, url: str, key: str | None = None, *, timeout: float = 60,
                 retry_for: float = 600, backoff: float = 0.5, max_backoff: float = 30,
                 on_retry: Callable[[str, float], None] | None = None):
        if not url.startswith(("http://", "https://")):
            raise AutoresearchError(f"--hub {url!r} is not a URL — give http://HOST:PORT")
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self.retry_for = retry_for
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.on_retry = on_retry

    def request(self, method: str, path: str, body: Any = None, *, raw: bool = False,
                query: list[tuple[str, str]] | None = None) -> Any:
        """JSON in, JSON (or bytes with raw) out; None for 204. Retries what can be retried."""
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        deadline = time.monotonic() + self.retry_for
        delay = self.backoff
        while True:
            req = urllib.request.Request(url, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    if r.status == 204:
                        return None
                    payload = r.read()
                    return payload if raw else json.loads(payload or b"null")
            except urllib.error.HTTPError as e:
                text = e.read().decode(errors="replace")
                try:
                    detail = json.loads(text).get("detail", text)
                except (ValueError, AttributeError):
                    detail = text.strip()[:300]
                if e.code < 500 and e.code != 429:
                    raise HubRefused(e.code, str(detail)) from None
                wait = _retry_after(e.headers.get("Retry-After"))
                why = f"{e.code}: {detail}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                wait, why = None, f"{getattr(e, 'reason', e)}"
            now = time.monotonic()
            if now >= deadline:
                raise HubUnreachable(f"the hub at {self.url} did not answer ({why}) — is "
                                     f"'autoresearch hub serve' running there?")
            sleep = min(wait if wait is not None else delay * (0.5 + random.random()),
                        self.max_backoff, max(0.0, deadline - now))
            if self.on_retry:
                self.on_retry(why, sleep)
            time.sleep(sleep)
            delay = min(delay * 2, self.max_backoff)

    # -- the API -----------------------------------------------------------------------------
    def info(self) -> dict:
        return self.request("GET", "/api/info")

    def leaderboard(self, hardware: str | None = None) -> dict:
        return self.request("GET", "/api/leaderboard",
                            query=[("hardware", hardware)] if hardware else None)

    def best(self, hardware: str) -> dict:
        return self.request("GET", "/api/best", query=[("hardware", hardware)])

    def bundle(self, want: str, haves: list[str]) -> bytes:
        return self.request("GET", "/api/git/bundle", raw=True,
                            query=[("want", want), *[("have", h) for h in haves[:64]]])

    def submit(self, claim: dict) -> dict:
        return self.request("POST", "/api/claims", claim)

    def claim(self, claim_id: int) -> dict:
        return self.request("GET", f"/api/claims/{claim_id}")

    def claims(self) -> list[dict]:
        return self.request("GET", "/api/claims")

    def lease(self, hardware: str) -> dict | None:
        return self.request("POST", "/api/leases", {"hardware": hardware})

    def renew(self, vid: int) -> dict:
        return self.request("POST", f"/api/leases/{vid}/renew")

    def report(self, vid: int, report: dict) -> dict:
        return self.request("POST", f"/api/leases/{vid}/report", report)


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
