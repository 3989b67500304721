"""The hub's HTTP API (FastAPI) and its live page.

Every endpoint that reads anything private or changes anything checks the caller's API key
(`Authorization: Bearer KEY`, looked up by its SHA-256) and role on every request; the
leaderboard, the page and /api/info are public. Every body is a pydantic model; a refused request
gets one JSON line `{"detail": "..."}` with the status that says why (401 no or unknown key,
403 wrong role or someone else's claim, 404, 409 replay or expired lease, 411/413 size, 422 bad
input or out of scope, 429 rate limit).
"""

# no `from __future__ import annotations` here: FastAPI reads the annotations of the endpoints
# defined inside create_app, which name classes imported there

import dataclasses
import json
import re
import time
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import Target
from ..errors import AutoresearchError
from .models import HARDWARE_PATTERN, ClaimIn, LeaseIn, ReportIn, UserIn
from .service import Hub, HubError, HubSettings, hash_key, new_key
from .store import HubStore, User, open_store

_SHA = re.compile(r"[0-9a-f]{40}")
_HARDWARE = re.compile(HARDWARE_PATTERN)
USER_CACHE_SECONDS = 5.0   # how long a looked-up key is trusted without asking the store again
ROLE_SETS = {"contribute": ("contributor", "admin"), "verify": ("verifier", "admin"),
             "admin": ("admin",), "any": ("contributor", "verifier", "admin")}


class _SizeCap:
    """A plain ASGI middleware (cheap on the poll path): a POST must say its length, and a
    length over the cap is refused before a byte of the body is read."""

    def __init__(self, app, max_body: int, cap: int):
        self.app, self.max_body, self.cap = app, max_body, cap

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT"):
            length = dict(scope["headers"]).get(b"content-length")
            if length is None:
                return await self._refuse(send, 411, "send a Content-Length header")
            if not length.isdigit() or int(length) > self.max_body:
                return await self._refuse(send, 413, f"the request is over {self.max_body} bytes "
                                                     f"— the bundle cap is {self.cap} bytes")
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def page_html() -> str:
    return (resources.files(__package__) / "page.html").read_text(encoding="utf-8")


def create_app(hub: Hub) -> Any:
    """The FastAPI app of one hub."""
    try:
        from fastapi import Depends, FastAPI, Query, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import HTMLResponse, Response
    except ImportError:
        raise AutoresearchError("the hub needs FastAPI: pip install 'autoresearch[hub]'") from None

    app = FastAPI(title="autoresearch hub", docs_url=None, redoc_url=None, openapi_url=None)
    store = hub.store
    page = page_html()
    users: dict[str, tuple[User, float]] = {}   # key hash -> (user, valid until): polls are cheap
    polled: dict[Any, bytes] = {}                # a best -> its JSON
    max_body = hub.settings.max_bundle_bytes * 4 // 3 + 2**20

    def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return Response(json.dumps(data, default=str), status_code=status,
                        media_type="application/json",
                        headers={"Cache-Control": "no-store", **(headers or {})})

    @app.exception_handler(HubError)
    def _hub_error(request: Request, exc: HubError) -> Response:
        return _json({"detail": str(exc)}, exc.status, exc.headers)

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
        return _json({"detail": f"{where}: {first.get('msg')} — fix the request "
                                f"({len(errs)} problem(s))"}, 422)

    app.add_middleware(_SizeCap, max_body=max_body,
                       cap=hub.settings.max_bundle_bytes)

    async def caller(request: Request) -> User:   # async: the poll path skips the threadpool
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer ") or not auth[7:].strip():
            raise HubError(401, "no API key — send 'Authorization: Bearer KEY' (an admin makes "
                                "one with 'autoresearch hub add-user NAME')",
                           {"WWW-Authenticate": "Bearer"})
        key_hash = hash_key(auth[7:].strip())
        hit = users.get(key_hash)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        user = store.user_by_key_hash(key_hash)
        if user is None:
            raise HubError(401, "unknown API key — check --key", {"WWW-Authenticate": "Bearer"})
        if len(users) > 10_000:
            users.clear()
        users[key_hash] = (user, time.monotonic() + USER_CACHE_SECONDS)
        return user

    def role(kind: str):
        async def check(user: User = Depends(caller)) -> User:
            if user.role not in ROLE_SETS[kind]:
                raise HubError(403, f"role '{user.role}' may not do this — it needs "
                                    f"{' or '.join(ROLE_SETS[kind])}")
            return user
        return check

    # -- public ---------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/api/info")
    async def info() -> Response:
        return _json(hub.info())

    @app.get("/api/leaderboard")
    def leaderboard(hardware: str | None = None) -> Response:
        return _json(hub.leaderboard(hardware))

    @app.get("/api/health")
    async def health() -> Response:
        return _json({"ok": True})

    # -- contributors ---------------------------------------------------------------------------
    @app.get("/api/best")
    async def best(hardware: str, user: User = Depends(role("any"))) -> Response:
        if not _HARDWARE.fullmatch(hardware):   # the pattern LeaseIn and ClaimIn use
            raise HubError(422, f"hardware {hardware[:80]!r} is not a hardware class name "
                                f"(letters, digits, . _ + -)")
        b = hub.best_for_polling(hardware)
        key = (b.hardware, b.version, b.commit_sha, b.metric, b.updated)
        body = polled.get(key)
        if body is None:
            if len(polled) > 256:
                polled.clear()
            body = polled[key] = json.dumps(dataclasses.asdict(b)).encode()
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    @app.get("/api/git/bundle")
    def bundle(want: str, have: list[str] = Query(default=[]),  # noqa: B006 - FastAPI's way
               user: User = Depends(role("any"))) -> Response:
        haves = have
        if not all(_SHA.fullmatch(x) for x in (want, *haves)) or len(haves) > 64:
            raise HubError(422, "want and have must be full commit ids (40 hex digits), with at "
                                "most 64 have=")
        allowed = want == hub.base or want in {b.commit_sha for b in store.bests()} \
            or want in set(store.chain_commits())
        if not allowed:
            c = store.claim_by_commit(want)
            if c is None:
                raise HubError(404, f"no commit {want[:12]} on the hub")
            if c.user_id != user.id and user.role == "contributor":
                raise HubError(403, f"commit {want[:12]} is another user's claim")
        return Response(hub.repo.bundle(want, haves), media_type="application/octet-stream")

    @app.post("/api/claims", status_code=201)
    def submit(body: ClaimIn, user: User = Depends(role("contribute"))) -> Response:
        return _json(hub.claim_view(hub.submit(user, body)), 201)

    @app.get("/api/claims")
    def claims(user: User = Depends(role("any")), limit: int = 100) -> Response:
        limit = max(1, min(limit, 1000))
        mine = store.claims(user_id=user.id, limit=limit) if user.role == "contributor" \
            else store.claims(limit=limit)
        return _json([hub.claim_view(c) for c in mine])

    @app.get("/api/claims/{claim_id}")
    def claim(claim_id: int, user: User = Depends(role("any"))) -> Response:
        c = store.claim(claim_id)
        if c is None:
            raise HubError(404, f"no claim #{claim_id}")
        if c.user_id != user.id and user.role == "contributor":
            raise HubError(403, f"claim #{claim_id} is another user's")
        view = hub.claim_view(c, with_diff=True)
        view["verifications"] = [
            {"id": v.id, "status": v.status, "outcome": v.outcome, "reason": v.reason,
             "candidate_runs": v.candidate_runs, "best_runs": v.best_runs,
             "verifier": (u.name if (u := store.user(v.verifier_id)) else None)}
            for v in store.verifications(c.id)]
        return _json(view)

    # -- verifiers ------------------------------------------------------------------------------
    @app.post("/api/leases")
    def lease(body: LeaseIn, user: User = Depends(role("verify"))) -> Response:
        got = hub.lease(user, body.hardware)
        if got is None:
            return Response(status_code=204)
        return _json(dataclasses.asdict(got))

    @app.post("/api/leases/{vid}/renew")
    def renew(vid: int, user: User = Depends(role("verify"))) -> Response:
        return _json({"expires": hub.renew(user, vid)})

    @app.post("/api/leases/{vid}/report")
    def report(vid: int, body: ReportIn, user: User = Depends(role("verify"))) -> Response:
        return _json(hub.claim_view(hub.report(user, vid, body)))

    # -- admin ----------------------------------------------------------------------------------
    @app.post("/api/users", status_code=201)
    def add_user(body: UserIn, user: User = Depends(role("admin"))) -> Response:
        key = new_key()
        try:
            store.add_user(body.name, body.role, hash_key(key))
        except AutoresearchError as e:
            raise HubError(409, str(e)) from None
        return _json({"name": body.name, "role": body.role, "key": key}, 201)

    return app


def data_dir_for(target: Target, data: str | None) -> Path:
    return Path(data).resolve() if data else target.state_dir / "hub"


def open_hub(target: Target, data: str | None, db: str | None,
             settings: HubSettings | None = None) -> Hub:
    d = data_dir_for(target, data)
    d.mkdir(parents=True, exist_ok=True)
    store = open_store(db or _saved_db(d), d)
    if db:
        (d / "db-url").write_text(db + "\n")
    return Hub.open(target, store, d, settings)


def _saved_db(d: Path) -> str | None:
    """The --db a hub was started with, so add-user on the same --data finds that database."""
    f = d / "db-url"
    return f.read_text().strip() if f.exists() else None


def open_users_store(target_dir: Path | None, data: str | None, db: str | None) -> HubStore:
    if data is None:
        from ..config import load_target
        d = load_target(target_dir).state_dir / "hub"
    else:
        d = Path(data).resolve()
    d.mkdir(parents=True, exist_ok=True)
    return open_store(db or _saved_db(d), d)


def serve(hub: Hub, host: str, port: int, ready=None) -> None:
    """Serve until Ctrl-C or SIGTERM (blocking)."""
    import uvicorn

    from ..dashboard import _listen

    sock = _listen(host, port)
    server = uvicorn.Server(uvicorn.Config(create_app(hub), log_level="warning",
                                           access_log=False, lifespan="off",
                                           timeout_keep_alive=30, backlog=2048))
    if ready is not None:
        ready(sock.getsockname()[1])
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
