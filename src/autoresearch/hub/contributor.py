"""Contributor mode (`autoresearch run --hub URL --key KEY`): the loop, plus a hub.

The loop calls this adapter at three points and nothing else:
    open()            the base commit of a new run: the hub's verified best of this hardware class
    kept(exp, ...)    every experiment kept locally becomes a claim (submitted in the background:
                      the commit as a git bundle against its hub parent, the claimed metric with
                      its runs, the hardware class, the agent and the description)
    sync(incumbent)   at intervals: the hub's best, when it moved to code this run does not
                      already contain, is handed to the loop to adopt (measured here, then
                      candidates proposed against the old best are rebased onto it, as slots
                      do); what the hub decided about our claims comes back as feedback for
                      the agent's next proposal.
Network trouble never stops the loop: requests retry with backoff, and claims wait in a queue.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..errors import AutoresearchError
from ..ratchet import Ratchet
from .client import HubClient, HubRefused
from .repo import local

FINAL = ("verified", "rejected", "duplicate", "rebased", "conflict")


@dataclass
class HubNews:
    best: str | None = None            # a new hub best, fetched locally, to adopt
    description: str = ""
    feedback: list[str] = field(default_factory=list)


class HubContributor:
    def __init__(self, client: HubClient, ratchet: Ratchet, hardware: str, agent: str,
                 sync_every: float = 30.0, say=None):
        self.client = client
        self.ratchet = ratchet
        self.repo = local(ratchet)
        self.hardware = hardware
        self.agent = agent
        self.sync_every = sync_every
        self.say = say or (lambda text: None)
        self.best_commit: str | None = None
        self._adopted: set[str] = set()
        self._pending: deque[dict[str, Any]] = deque()   # claims to send, parents first
        self._wake = threading.Event()
        self._news = HubNews()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._claims: dict[int, str] = {}        # claim id -> last status seen
        self.submitted: list[dict[str, Any]] = []
        self._thread: threading.Thread | None = None

    # == the loop's three calls ==================================================================
    def open(self) -> str:
        """Fetch the hub's best of our class; it is where a new run starts."""
        best = self.client.best(self.hardware)["commit_sha"]
        self._fetch(best)
        self.best_commit = best
        self._adopted.add(best)
        self._start()
        return best

    def _start(self) -> None:
        """The background sender (also for a resumed run, which never calls open)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="hub", daemon=True)
            self._thread.start()

    def kept(self, commit: str, parent: str, metric: float | None, runs: list[float],
             description: str) -> None:
        self._pending.append({"commit": commit, "parent": parent, "metric": metric,
                              "runs": runs, "description": description})
        self._start()
        self._wake.set()

    def sync(self, incumbent: str | None) -> HubNews:
        self._start()
        with self._lock:
            news, self._news = self._news, HubNews()
        if news.best is not None and incumbent is not None and (
                news.best == incumbent or self.repo.is_ancestor(news.best, incumbent)):
            news.best = None   # our own claim became the best: this run already has it
        return news

    def close(self, timeout: float = 60.0) -> None:
        """Send what is still queued (bounded in time), then stop the background thread."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline and self._alive():
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))

    # == background work =========================================================================
    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _fetch(self, commit: str) -> None:
        if self.repo.has_commit(commit):
            return
        haves = [c for c in (self.best_commit, self.ratchet.head()) if c]
        data = self.client.bundle(commit, haves)
        self.repo.fetch_bundle(data, commit, f"refs/autoresearch-hub/{commit}")

    def _work(self) -> None:
        next_sync = time.monotonic() + self.sync_every
        backoff = 1.0
        while not self._stop.is_set():
            self._wake.wait(max(0.0, min(0.5, next_sync - time.monotonic())))
            self._wake.clear()
            try:
                while self._pending and not self._stop.is_set():
                    self._submit(self._pending[0])
                    self._pending.popleft()   # sent (or refused for good): the next one
                if time.monotonic() >= next_sync:
                    self._sync()
                    next_sync = time.monotonic() + self.sync_every
                backoff = 1.0
            except AutoresearchError as e:
                # the hub is away for long (the client already retried): the claim stays first
                # in line, and we try again later
                self.say(f"hub: {e}")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 60.0)

    def _submit(self, item: dict[str, Any]) -> None:
        bundle = self.repo.bundle(item["commit"], [item["parent"]])
        body = {"bundle": base64.b64encode(bundle).decode(), "parent": item["parent"],
                "hardware": self.hardware, "metric": item["metric"], "runs": item["runs"],
                "agent": self.agent, "description": item["description"][:2000]}
        try:
            claim = self.client.submit(body)
        except HubRefused as e:
            self._feedback(f"The hub refused your kept change ({item['description']!r}) as a "
                           f"claim: {e.detail}")
            return
        self.submitted.append(claim)
        self._claims[claim["id"]] = claim["status"]
        self.say(f"hub: claim #{claim['id']} {claim['status']}"
                 + (f" ({'; '.join(claim['flags'])})" if claim.get("flags") else ""))
        if claim["status"] in FINAL:
            self._feedback(self._tell(claim))

    def _sync(self) -> None:
        best = self.client.best(self.hardware)
        commit = best["commit_sha"]
        if commit != self.best_commit and commit not in self._adopted:
            self._fetch(commit)
            self.best_commit = commit
            self._adopted.add(commit)
            with self._lock:
                self._news.best = commit
                self._news.description = (f"hub best of {self.hardware} (claim #{best['claim_id']}, "
                                          f"verified {best['metric']})")
        open_ids = [cid for cid, st in self._claims.items() if st not in FINAL]
        if open_ids:
            for claim in self.client.claims():
                if claim["id"] in self._claims and claim["status"] != self._claims[claim["id"]]:
                    self._claims[claim["id"]] = claim["status"]
                    if claim["status"] in FINAL:
                        self._feedback(self._tell(claim))
                        self.say(f"hub: claim #{claim['id']} {claim['status']}: {claim['reason']}")

    def _tell(self, claim: dict[str, Any]) -> str:
        return (f"Hub verdict on claim #{claim['id']} ({claim['description']!r}): "
                f"{claim['status']} — {claim['reason']}")

    def _feedback(self, text: str) -> None:
        with self._lock:
            self._news.feedback.append(text)


def make_contributor(ratchet: Ratchet, url: str, key: str, hardware: str | None, agent: str,
                     sync_every: float = 30.0, say=None) -> HubContributor:
    from .hardware import detect_hardware

    if not key:
        raise HubRefused(401, "--hub needs --key KEY (ask the hub's admin for one)")
    return HubContributor(HubClient(url, key), ratchet, detect_hardware(hardware), agent,
                          sync_every, say)
