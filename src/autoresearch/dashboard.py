"""The live dashboard: `autoresearch dashboard`, a web page that follows a run while it goes on.

Read-only by construction: every request opens the ledger read-only (the driver keeps writing it
in WAL mode) and closes it again, so the dashboard can start before, during or after a run and
never changes anything. It follows the latest run unless a tag is given; `?tag=` switches runs.

    GET /                        one self-contained page (static/dashboard.html, packaged; inline
                                 CSS/JS, no external assets) with the status and the last
                                 BOOT_ROWS rows; it loads older rows a page at a time, then polls
                                 the JSON below every 2 s and updates in place
    GET /api/status?tag=         run_summary(): the numbers `autoresearch status` prints
    GET /api/runs                every run in the ledger, oldest first
    GET /api/experiments?tag=&since=SEQ&limit=N
                                 export.row() of the experiments with seq > SEQ, oldest first, at
                                 most N (default and cap PAGE_ROWS); `more` says whether others follow
    GET /api/experiments?tag=&before=SEQ&limit=N
                                 the N experiments just before SEQ (the page's backfill)
    GET /api/experiments?tag=&seqs=3,9,12
                                 those experiments (the page refreshes its unsettled rows)
    GET /api/experiments/{seq}?tag=
                                 summary.experiment_detail(): the row, its repeats, its diff
                                 against its parent and its log tail (what `show` prints)

Every endpoint reads a bounded number of rows through the ledger's indexed queries, so it
answers as fast at experiment 10,000 as at experiment 10.

FastAPI and uvicorn are the optional extra `dashboard`; they are imported only here, lazily.
"""

from __future__ import annotations

import socket
from importlib import resources
from typing import TYPE_CHECKING, Any

from .config import Target
from .errors import AutoresearchError, LedgerError
from .ledger import Ledger, dumps

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["create_app", "serve"]

POLL_MS = 2000      # milliseconds between the page's polls
PAGE_ROWS = 500     # rows per /api/experiments answer, at most
BOOT_ROWS = 100     # rows that ride along with the page
LOG_TAIL_LINES = 80  # lines of an experiment's log in its detail view

_MISSING = "the dashboard needs FastAPI: pip install 'autoresearch[dashboard]'"


def _require_fastapi() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise AutoresearchError(_MISSING) from None


def _script_json(obj: Any) -> str:
    """JSON safe inside <script>: descriptions come from agents and may contain `</script>`."""
    return dumps(obj).replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _page() -> str:
    return (resources.files("autoresearch") / "static" / "dashboard.html").read_text("utf-8")


class _NotFound(Exception):
    """A request for a run, an experiment or a ledger that does not exist (yet): a 404."""


class _Reader:
    """Resolves the run a request is about and reads it; one read-only ledger per request."""

    def __init__(self, target: Target, tag: str | None):
        self.target = target
        self.tag = tag
        self.path = target.state_dir / "ledger.db"

    def open(self) -> Ledger:
        if not self.path.exists():
            raise _NotFound(f"no ledger at {self.path} yet — start a run with 'autoresearch run'")
        return Ledger(self.path, readonly=True)

    def resolve(self, ledger: Ledger, tag: str | None) -> str:
        try:
            return ledger.resolve_tag(tag or self.tag)
        except LedgerError as e:   # an unknown run is a 404 here, one error line in the CLI
            raise _NotFound(str(e)) from None

    def status(self, tag: str | None) -> dict[str, Any]:
        from .summary import run_summary

        ledger = self.open()
        try:
            tag = self.resolve(ledger, tag)
            return run_summary(ledger, tag, self.target.spec.policy)
        finally:
            ledger.close()

    def runs(self) -> dict[str, Any]:
        ledger = self.open()
        try:
            latest = ledger.latest_tag()
            runs = [{"tag": r.tag, "created": r.created, "metric": r.metric,
                     "direction": r.direction, "agent": r.agent, "policy": r.policy,
                     "state": r.state, "experiments": ledger.count(r.tag)}
                    for r in ledger.runs()]
            return {"runs": runs, "latest": latest, "following": self.tag or latest}
        finally:
            ledger.close()

    def experiments(self, tag: str | None, since: int = 0, before: int | None = None,
                    seqs: list[int] | None = None, limit: int = PAGE_ROWS) -> dict[str, Any]:
        from .export import row

        limit = max(1, min(limit, PAGE_ROWS))
        ledger = self.open()
        try:
            tag = self.resolve(ledger, tag)
            if seqs is not None:
                exps = ledger.by_seqs(tag, seqs[:PAGE_ROWS])
            elif before is not None:
                exps = ledger.page_before(tag, before, limit + 1)
                more = len(exps) > limit
                exps = exps[-limit:]
            else:
                exps = ledger.page(tag, since, limit + 1)
                more = len(exps) > limit
                exps = exps[:limit]
            out: dict[str, Any] = {"tag": tag, "since": since, "rows": [row(e) for e in exps]}
            if seqs is None:
                out["more"] = more
            return out
        finally:
            ledger.close()

    def detail(self, tag: str | None, seq: int) -> dict[str, Any]:
        from .summary import experiment_detail

        ledger = self.open()
        try:
            tag = self.resolve(ledger, tag)
            d = experiment_detail(ledger, tag, seq, self.target.root, LOG_TAIL_LINES)
        finally:
            ledger.close()
        if d is None:
            raise _NotFound(f"no experiment #{seq} in run '{tag}'")
        return d


def create_app(target: Target, tag: str | None) -> FastAPI:
    """The dashboard's web app for one target; `tag` pins a run (None follows the latest)."""
    _require_fastapi()
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, Response

    reader = _Reader(target, tag)
    page_html = _page()
    app = FastAPI(title="autoresearch dashboard", docs_url=None, redoc_url=None, openapi_url=None)

    def _json(data: Any, status: int = 200) -> Response:
        return Response(dumps(data), status_code=status, media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    @app.exception_handler(_NotFound)
    def _not_found(request: Request, exc: _NotFound) -> Response:
        return _json({"detail": str(exc)}, 404)

    @app.exception_handler(AutoresearchError)
    def _unreadable(request: Request, exc: AutoresearchError) -> Response:
        return _json({"detail": str(exc)}, 503)

    @app.get("/api/status")
    def status(tag: str | None = None) -> Response:
        return _json(reader.status(tag))

    @app.get("/api/runs")
    def runs() -> Response:
        return _json(reader.runs())

    @app.get("/api/experiments")
    def experiments(tag: str | None = None, since: int = 0, before: int | None = None,
                    seqs: str | None = None, limit: int = PAGE_ROWS) -> Response:
        wanted = None
        if seqs is not None:
            try:
                wanted = [int(x) for x in seqs.split(",") if x.strip()]
            except ValueError:
                return _json({"detail": f"seqs must be numbers separated by commas: {seqs!r}"}, 422)
        return _json(reader.experiments(tag, since, before, wanted, limit))

    @app.get("/api/experiments/{seq}")
    def detail(seq: int, tag: str | None = None) -> Response:
        return _json(reader.detail(tag, seq))

    @app.get("/", response_class=HTMLResponse)
    def page(tag: str | None = None) -> HTMLResponse:
        # the first state rides along with the page, so it paints before the first poll
        try:
            status = reader.status(tag)
            first = max(0, status["experiments"] - BOOT_ROWS)
            boot: dict[str, Any] = {"status": status,
                                    "experiments": reader.experiments(tag, first)["rows"]}
        except (_NotFound, AutoresearchError) as exc:
            boot = {"error": str(exc)}
        boot["poll_ms"], boot["boot_rows"] = POLL_MS, BOOT_ROWS
        return HTMLResponse(page_html.replace("__BOOT__", _script_json(boot)),
                            headers={"Cache-Control": "no-store"})

    return app


def _listen(host: str, port: int) -> socket.socket:
    """Bind here, so a busy port is one error line instead of uvicorn exiting the process."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise AutoresearchError(f"cannot listen on {host}:{port} ({e.strerror or e}) — "
                                f"pick another --port or --host") from None
    sock.set_inheritable(True)
    return sock


def serve(target: Target, *, host: str, port: int, tag: str | None) -> None:
    """Serve the dashboard until Ctrl-C (blocking)."""
    app = create_app(target, tag)
    import uvicorn

    sock = _listen(host, port)
    # no access log: the page polls every 2 s and would flood the terminal
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           lifespan="off"))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
