"""The live dashboard: `autoresearch dashboard`, a web page that follows a run while it goes on.

Read-only by construction: every request opens the ledger read-only (the driver keeps writing it
in WAL mode) and closes it again, so the dashboard can start before, during or after a run and
never changes anything. It follows the latest run unless a tag is given; `?tag=` switches runs.

    GET /                        one self-contained page (inline CSS/JS, no external assets) that
                                 polls the JSON below every 2 s and updates in place
    GET /api/status?tag=         run_summary(): the numbers `autoresearch status` prints
    GET /api/runs                every run in the ledger, oldest first
    GET /api/experiments?tag=&since=SEQ
                                 export.row() of every experiment with seq > SEQ (incremental)
    GET /api/experiments/{seq}?tag=
                                 one row plus its diff against its parent and its log tail

FastAPI and uvicorn are the optional extra `dashboard`; they are imported only here, lazily.
"""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Target
from .errors import AutoresearchError, LedgerError
from .ledger import Ledger

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["create_app", "serve"]

POLL_MS = 2000      # milliseconds between the page's polls
LOG_TAIL_LINES = 80  # lines of an experiment's log in its detail view

_MISSING = "the dashboard needs FastAPI: pip install 'autoresearch[dashboard]'"


def _require_fastapi() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise AutoresearchError(_MISSING) from None


def _jsonable(obj: Any) -> Any:
    """Strict JSON for browsers: JSON.parse rejects Infinity and NaN, so they become strings
    (as the ledger stores them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if hasattr(obj, "item"):  # numpy scalars from a policy's estimate
        return _jsonable(obj.item())
    return str(obj)


def _dumps(obj: Any) -> str:
    return json.dumps(_jsonable(obj), allow_nan=False)


def _script_json(obj: Any) -> str:
    """JSON safe inside <script>: descriptions come from agents and may contain `</script>`."""
    return _dumps(obj).replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


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

    def experiments(self, tag: str | None, since: int) -> dict[str, Any]:
        from .export import row

        ledger = self.open()
        try:
            tag = self.resolve(ledger, tag)
            rows = [row(e) for e in ledger.experiments(tag) if e.seq > since]
            return {"tag": tag, "since": since, "rows": rows}
        finally:
            ledger.close()

    def detail(self, tag: str | None, seq: int) -> dict[str, Any]:
        from .export import row
        from .metrics import tail_lines
        from .ratchet import Ratchet

        ledger = self.open()
        try:
            tag = self.resolve(ledger, tag)
            e = ledger.by_seq(tag, seq)
            if e is None:
                raise _NotFound(f"no experiment #{seq} in run '{tag}' (it has {ledger.count(tag)})")
            d = row(e)
            exps = ledger.experiments(tag)
            by_id = {x.id: x for x in exps}
            d["candidate_seq"] = by_id[e.candidate_of].seq if e.candidate_of in by_id else None
            d["repeats"] = [{"seq": r.seq, "status": r.status.value, "metric": r.metric}
                            for r in exps if r.candidate_of == e.id]
        finally:
            ledger.close()
        d["diff"] = d["diff_error"] = None
        if e.commit_sha and e.parent:
            try:
                d["diff"] = Ratchet(self.target.root).diff(e.parent, e.commit_sha)
            except AutoresearchError as err:  # a commit gone after a gc, git missing
                d["diff_error"] = str(err)
        d["log_tail"] = tail_lines(Path(e.log_path), LOG_TAIL_LINES) if e.log_path else []
        return d


def create_app(target: Target, tag: str | None) -> FastAPI:
    """The dashboard's web app for one target; `tag` pins a run (None follows the latest)."""
    _require_fastapi()
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, Response

    reader = _Reader(target, tag)
    app = FastAPI(title="autoresearch dashboard", docs_url=None, redoc_url=None, openapi_url=None)

    def _json(data: Any, status: int = 200) -> Response:
        return Response(_dumps(data), status_code=status, media_type="application/json",
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
    def experiments(tag: str | None = None, since: int = 0) -> Response:
        return _json(reader.experiments(tag, since))

    @app.get("/api/experiments/{seq}")
    def detail(seq: int, tag: str | None = None) -> Response:
        return _json(reader.detail(tag, seq))

    @app.get("/", response_class=HTMLResponse)
    def page(tag: str | None = None) -> HTMLResponse:
        # the first state rides along with the page, so it paints before the first poll
        try:
            boot: dict[str, Any] = {"status": reader.status(tag),
                                    "experiments": reader.experiments(tag, 0)["rows"]}
        except (_NotFound, AutoresearchError) as exc:
            boot = {"error": str(exc)}
        boot["poll_ms"] = POLL_MS
        return HTMLResponse(_PAGE.replace("__BOOT__", _script_json(boot)),
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


# == the page (inline everything: overnight machines often have no internet) ===================
_PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>autoresearch</title>
<style>
:root { --fg:#1f2328; --muted:#656d76; --line:#d0d7de; --bg:#f6f8fa; --card:#fff;
  --keep:#1a7f37; --bad:#cf222e; --run:#0969da; --warn:#9a6700; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:var(--fg); background:var(--bg); }
header { background:#24292f; color:#fff; padding:10px 20px; display:flex; align-items:center;
  gap:18px; flex-wrap:wrap; }
header h1 { font-size:17px; margin:0; font-weight:600; }
header h1 .tag { color:#7ee787; }
header .meta { display:flex; gap:14px; flex-wrap:wrap; color:#d0d7de; font-size:13px; }
header .meta b { color:#fff; font-weight:600; }
header .right { margin-left:auto; display:flex; gap:10px; align-items:center; font-size:12px; }
header select { font:inherit; padding:2px 4px; }
#live { width:9px; height:9px; border-radius:50%; background:#6e7781; display:inline-block; }
#live.ok { background:#3fb950; } #live.err { background:#f85149; }
main { padding:16px 20px; max-width:1500px; margin:0 auto; }
#banner { display:none; background:#fff8c5; border:1px solid #d4a72c; padding:8px 12px;
  border-radius:6px; margin-bottom:12px; }
.cards { display:grid; grid-template-columns:1.4fr 1fr 1.6fr 1fr; gap:12px; margin-bottom:12px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px 14px; }
.card h2 { font-size:12px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted);
  margin:0 0 4px; font-weight:600; }
.big { font-size:24px; font-weight:600; font-variant-numeric:tabular-nums; }
.sub { color:var(--muted); font-size:12.5px; overflow:hidden; text-overflow:ellipsis; }
.num { font-variant-numeric:tabular-nums; font-family:ui-monospace,SFMono-Regular,Menlo,monospace;
  font-size:12.5px; }
.better { color:var(--keep); } .worse { color:var(--bad); }
.pill { display:inline-block; padding:0 7px; border-radius:10px; font-size:12px; color:#fff;
  background:#6e7781; white-space:nowrap; line-height:18px; }
.pills { display:flex; flex-wrap:wrap; gap:5px; margin-top:6px; }
.s-keep { background:#1a7f37; } .s-discard { background:#8c959f; } .s-crash { background:#cf222e; }
.s-timeout, .s-over-budget { background:#bc4c00; } .s-invalid { background:#8250df; } .s-running { background:#0969da; }
.s-pending { background:#9a6700; } .s-repeat { background:#1b7c83; } .s-rebased { background:#4d2d8c; }
.s-pruned { background:#953800; } .s-interrupted { background:#57606a; } .s-agent-error { background:#82071e; }
.grid2 { display:grid; grid-template-columns:2.6fr 1fr; gap:12px; margin-bottom:12px; }
#chart svg { width:100%; height:300px; display:block; }
#chart .empty { color:var(--muted); padding:40px; text-align:center; }
table { border-collapse:collapse; width:100%; }
th { text-align:left; font-size:12px; color:var(--muted); font-weight:600; padding:4px 8px;
  border-bottom:1px solid var(--line); position:sticky; top:0; background:var(--card); }
td { padding:4px 8px; border-bottom:1px solid #eaeef2; vertical-align:top; }
#exps tbody tr { cursor:pointer; } #exps tbody tr:hover { background:#f3f8ff; }
#exps tbody tr.sel { background:#ddf4ff; }
td.desc { max-width:0; width:55%; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
.scroll { max-height:520px; overflow:auto; }
#drawer { position:fixed; top:0; right:0; bottom:0; width:min(900px,62vw); background:#fff;
  border-left:1px solid var(--line); box-shadow:-8px 0 24px rgba(0,0,0,.12); overflow:auto;
  padding:14px 18px; display:none; z-index:10; }
#drawer.open { display:block; }
#drawer h3 { margin:0 30px 6px 0; font-size:16px; word-break:break-word; }
#drawer h4 { margin:14px 0 4px; font-size:13px; color:var(--muted); }
#close { position:absolute; top:10px; right:14px; border:0; background:none; font-size:22px;
  cursor:pointer; color:var(--muted); }
.kv { display:grid; grid-template-columns:max-content 1fr; gap:2px 14px; font-size:13px; }
.kv div:nth-child(odd) { color:var(--muted); }
pre { background:#f6f8fa; border:1px solid var(--line); border-radius:6px; padding:8px 10px;
  font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace; overflow:auto; max-height:460px;
  margin:0; white-space:pre; }
pre .add { color:#116329; background:#dafbe1; display:block; }
pre .del { color:#82071e; background:#ffebe9; display:block; }
pre .hunk { color:#0550ae; display:block; }
.muted { color:var(--muted); }
.legend { float:right; text-transform:none; letter-spacing:0; font-weight:400; }
.legend i { display:inline-block; width:9px; height:9px; border-radius:50%; margin:0 4px 0 10px;
  vertical-align:-1px; }
.legend .lk { background:#2da44e; border:1px solid #1f2328; } .legend .ld { background:#8c959f; }
.legend .lr { background:#0969da; } .legend .lx { color:#cf222e; margin:0 4px 0 10px; }
.legend .lb { width:16px; height:0; border-radius:0; border-top:2px solid #2da44e; vertical-align:3px; }
svg text { font:11px system-ui,sans-serif; fill:#57606a; }
svg .lbl { fill:#1a5e1a; font-size:10px; }
svg .dot { cursor:pointer; }
@media (max-width: 1000px) { .cards, .grid2 { grid-template-columns:1fr; } }
</style>
</head>
<body>
<header>
  <h1>autoresearch <span class="tag" id="h-tag"></span></h1>
  <div class="meta" id="h-meta"></div>
  <div class="right"><label>run <select id="runs"></select></label>
    <span id="live" title="connection"></span><span id="updated" class="muted"></span></div>
</header>
<main>
  <div id="banner"></div>
  <div class="cards">
    <div class="card"><h2>best</h2><div class="big" id="best">–</div><div class="sub" id="best-sub"></div></div>
    <div class="card"><h2>baseline</h2><div class="big" id="base">–</div><div class="sub" id="base-sub"></div></div>
    <div class="card"><h2>experiments</h2><div class="big" id="total">0</div><div class="pills" id="counts"></div></div>
    <div class="card"><h2>cost</h2><div class="big" id="cost">$0</div><div class="sub" id="cost-sub"></div></div>
  </div>
  <div class="grid2">
    <div class="card"><h2>progress <span class="legend"><i class="lk"></i>kept <i class="ld"></i>discarded / repeat
      <i class="lr"></i>running <b class="lx">×</b>crash / timeout / pruned <i class="lb"></i>best so far</span></h2>
      <div id="chart"></div></div>
    <div class="card"><h2>slots</h2>
      <table id="slots"><thead><tr><th>slot</th><th>gpu</th><th>running</th><th>for</th><th>proposal</th></tr></thead>
      <tbody></tbody></table></div>
  </div>
  <div class="card"><h2>experiments (newest first; click one for its diff and log)</h2>
    <div class="scroll"><table id="exps"><thead><tr><th>#</th><th>status</th><th>metric</th><th>Δ baseline</th>
      <th>wall</th><th>description</th></tr></thead><tbody></tbody></table></div></div>
</main>
<aside id="drawer"><button id="close" title="close (Esc)">×</button><div id="detail"></div></aside>
<script id="boot" type="application/json">__BOOT__</script>
<script>
"use strict";
// Everything from the ledger is put in the page with textContent, never as HTML:
// descriptions, logs and diffs come from agents and training scripts.
const SVG = "http" + "://www.w3.org/2000/svg";
const boot = JSON.parse(document.getElementById("boot").textContent);
const pinned = new URLSearchParams(location.search).get("tag");
const state = { tag: null, status: null, rows: new Map(), open: null, lastOk: 0 };
const UNSETTLED = new Set(["running", "pending"]);
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "on") e.addEventListener("click", v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
const isNum = (v) => typeof v === "number" && isFinite(v);
function fmt(v) {
  if (!isNum(v)) return v === null || v === undefined ? "–" : String(v);
  const a = Math.abs(v);
  return a >= 1e5 || (a > 0 && a < 1e-4) ? v.toExponential(4) : a >= 1000 ? v.toFixed(2) : v.toFixed(6);
}
function fmtDelta(v) { return isNum(v) ? (v >= 0 ? "+" : "") + fmt(v) : ""; }
function dur(s) {
  if (!isNum(s)) return "";
  if (s < 60) return s.toFixed(1) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + String(Math.round(s % 60)).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
}
function pill(status) { return el("span", { class: "pill s-" + String(status).replace(/[^a-z-]/g, "") }, status); }
function better(d) { // is a delta an improvement under the run's direction?
  const dir = state.status && state.status.direction;
  return dir === "maximize" ? d > 0 : d < 0;
}
function deltaCell(v) {
  const base = state.status && state.status.baseline;
  if (!isNum(v) || !isNum(base)) return el("td", { class: "num" });
  const d = v - base;
  return el("td", { class: "num " + (d === 0 ? "" : better(d) ? "better" : "worse") }, fmtDelta(d));
}
function q(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined) u.set(k, v);
  const s = u.toString();
  return s ? "?" + s : "";
}
async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  const body = await r.json().catch(() => ({ detail: r.statusText }));
  if (!r.ok) throw new Error(body.detail || r.statusText);
  return body;
}

// -- header and cards ---------------------------------------------------------------------------
function renderStatus(s) {
  $("h-tag").textContent = s.tag;
  document.title = "autoresearch " + s.tag;
  const meta = $("h-meta"); meta.replaceChildren();
  const item = (k, v) => meta.append(el("span", null, k + " ", el("b", null, v ?? "–")));
  item("metric", s.metric + (s.direction === "maximize" ? " ↑ " : " ↓ ") + s.direction);
  item("agent", s.agent); item("policy", s.policy); item("branch", s.branch);

  const b = s.best, base = s.baseline;
  $("base").textContent = fmt(base);
  $("base-sub").textContent = isNum(base) ? "#1 · the unmodified target" : "not measured yet";
  if (b) {
    const est = b.reported ? { mean: b.reported.value, sem: b.reported.sem, n: b.reported.n } : (b.estimate || {});
    const mean = isNum(est.mean) ? est.mean : b.metric;
    const best = $("best"); best.replaceChildren(fmt(mean));
    if (isNum(est.sem)) best.append(el("span", { class: "muted", style: "font-size:15px" }, " ± " + fmt(est.sem)));
    const sub = $("best-sub"); sub.replaceChildren();
    const gain = b.reported && isNum(b.reported.gain) ? b.reported.gain : null;
    if (isNum(mean) && isNum(base) && b.seq !== 1) {
      const d = gain !== null ? gain : mean - base;
      sub.append(el("span", { class: d === 0 ? "" : better(d) ? "better" : "worse" },
        fmtDelta(d) + (base !== 0 ? " (" + (100 * d / Math.abs(base)).toFixed(2) + "%)" : "")), " vs baseline · ");
    }
    sub.append("#" + b.seq + (est.n ? " · n=" + est.n : "") + " · " + (b.description || ""));
    sub.title = b.description || "";
    for (const a of ((s.holdout || {}).alarms || [])) {
      sub.append(el("div", { class: "worse" }, "holdout divergence at #" + a.seq + " (" + a.status + "): " +
        s.metric + " " + fmtDelta(a.validation_change) + ", holdout " + fmtDelta(a.holdout_change) +
        " against #" + a.against));
    }
  } else { $("best").textContent = "–"; $("best-sub").textContent = "no kept experiment yet"; }

  $("total").textContent = s.experiments;
  const counts = $("counts"); counts.replaceChildren();
  for (const [k, v] of Object.entries(s.counts).sort((a, b) => b[1] - a[1])) {
    const p = pill(k); p.textContent = v + " " + k; counts.append(p);
  }
  $("cost").textContent = "$" + (s.cost_usd || 0).toFixed(4);
  $("cost-sub").textContent = s.improvements + " kept improvement" + (s.improvements === 1 ? "" : "s")
    + (s.cost_usd && isNum(s.cost_per_improvement) ? " · $" + s.cost_per_improvement.toFixed(4) + " each" : "")
    + (s.tokens.input || s.tokens.output ? " · tokens " + s.tokens.input + " in / " + s.tokens.output + " out"
      : " · no agent tokens");

  const tb = $("slots").tBodies[0]; tb.replaceChildren();
  if (!s.slots.length) tb.append(el("tr", null, el("td", { colspan: 5, class: "muted" },
    s.running.length ? "running #" + s.running.join(", #") : "no slots: the run is not active")));
  for (const sl of s.slots) {
    const busy = sl.experiment !== null;
    tb.append(el("tr", busy ? { on: () => openDetail(sl.experiment), style: "cursor:pointer" } : null,
      el("td", null, sl.slot), el("td", null, sl.gpu || ""),
      el("td", { style: "white-space:nowrap" }, busy ? pill("running") : el("span", { class: "muted" }, "idle"), busy ? " #" + sl.experiment : ""),
      el("td", { class: "num" }, busy ? dur(sl.running_for) : ""),
      el("td", null, sl.description || "")));
  }
}

// -- experiments table ----------------------------------------------------------------------------
function renderTable() {
  const tb = $("exps").tBodies[0]; tb.replaceChildren();
  const rows = [...state.rows.values()].sort((a, b) => b.seq - a.seq);
  if (!rows.length) tb.append(el("tr", null, el("td", { colspan: 6, class: "muted" }, "no experiments yet")));
  for (const r of rows) {
    const wall = isNum(r.wall_time) ? r.wall_time
      : r.status === "running" && isNum(r.started) ? state.status.updated - r.started : null;  // server clock
    tb.append(el("tr", { class: state.open === r.seq ? "sel" : "", on: () => openDetail(r.seq) },
      el("td", { class: "num" }, r.seq), el("td", null, pill(r.status)),
      el("td", { class: "num" }, fmt(r.metric)), r.seq === 1 ? el("td", { class: "muted" }, "baseline") : deltaCell(r.metric),
      el("td", { class: "num" }, dur(wall)),
      el("td", { class: "desc", title: r.description }, r.description)));
  }
}

// -- progress chart: every experiment a dot, kept ones highlighted, the running best a step line ---
function niceTicks(lo, hi, n) {
  const span = hi - lo || Math.abs(hi) || 1, raw = span / n;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
  return out;
}
function renderChart() {
  const box = $("chart"), s = state.status;
  const rows = [...state.rows.values()].sort((a, b) => a.seq - b.seq);
  const measured = rows.filter((r) => isNum(r.metric));
  if (!s || !measured.length) {
    box.replaceChildren(el("div", { class: "empty" }, "the chart appears after the first measurement")); return;
  }
  const W = Math.max(box.clientWidth, 400), H = 300, m = { l: 70, r: 16, t: 14, b: 34 };
  const maxSeq = Math.max(...rows.map((r) => r.seq), 2);
  let lo = Math.min(...measured.map((r) => r.metric)), hi = Math.max(...measured.map((r) => r.metric));
  const pad = (hi - lo) * 0.08 || Math.abs(hi) * 0.05 || 1; lo -= pad; hi += pad;
  const x = (v) => m.l + (v - 0.5) / maxSeq * (W - m.l - m.r);  // half a step of margin each side
  const y = (v) => m.t + (hi - v) / (hi - lo) * (H - m.t - m.b);
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  g.append(svg("rect", { x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b, fill: "#fff", stroke: "#d0d7de" }));
  for (const t of niceTicks(lo, hi, 5)) {
    g.append(svg("line", { x1: m.l, x2: W - m.r, y1: y(t), y2: y(t), stroke: "#eaeef2" }));
    g.append(svg("text", { x: m.l - 6, y: y(t) + 4, "text-anchor": "end" }, fmt(t).replace(/0+$/, "").replace(/\.$/, "")));
  }
  for (const t of niceTicks(1, maxSeq, Math.min(10, maxSeq - 1)).filter((t) => Number.isInteger(t))) {
    g.append(svg("line", { x1: x(t), x2: x(t), y1: H - m.b, y2: H - m.b + 4, stroke: "#8c959f" }));
    g.append(svg("text", { x: x(t), y: H - m.b + 16, "text-anchor": "middle" }, t));
  }
  g.append(svg("text", { x: (m.l + W - m.r) / 2, y: H - 3, "text-anchor": "middle" }, "experiment"));
  g.append(svg("text", { x: 12, y: (m.t + H - m.b) / 2, "text-anchor": "middle",
    transform: `rotate(-90 12 ${(m.t + H - m.b) / 2})` }, s.metric + (s.direction === "maximize" ? " (higher is better)" : " (lower is better)")));
  // the running best: only kept experiments move it, in the order they were kept
  const kept = rows.filter((r) => r.status === "keep" && isNum(r.metric))
    .sort((a, b) => ((a.decision || {}).at || 0) - ((b.decision || {}).at || 0) || a.seq - b.seq);
  if (kept.length) {
    let d = "";
    const kv = (r) => { const v = (s.kept_values || {})[r.seq]; return isNum(v) ? v : r.metric; };
    kept.forEach((r, i) => { d += i ? ` H${x(r.seq)} V${y(kv(r))}` : `M${x(r.seq)} ${y(kv(r))}`; });
    d += ` H${x(maxSeq + 0.5)}`;
    g.append(svg("path", { d, fill: "none", stroke: "#2da44e", "stroke-width": 2 }));
  }
  const top = s.direction === "maximize" ? lo + pad / 2 : hi - pad / 2;
  const title = (r) => svg("title", {}, `#${r.seq} ${r.status} ${fmt(r.metric)}\n${r.description}`);
  for (const r of rows) {
    const failed = ["crash", "timeout", "over-budget", "pruned", "invalid"].includes(r.status);
    if (!isNum(r.metric) && !failed) continue;
    let mark;
    if (!isNum(r.metric)) {
      const cx = x(r.seq), cy = y(top), k = 4;
      mark = svg("path", { d: `M${cx - k} ${cy - k}L${cx + k} ${cy + k}M${cx - k} ${cy + k}L${cx + k} ${cy - k}`,
        stroke: "#cf222e", "stroke-width": 1.8 });
    } else if (r.status === "keep") {
      mark = svg("circle", { cx: x(r.seq), cy: y(r.metric), r: 5.5, fill: "#2da44e", stroke: "#1f2328", "stroke-width": .8 });
    } else {
      const c = r.status === "running" || r.status === "pending" ? "#0969da" : "#8c959f";
      mark = svg("circle", { cx: x(r.seq), cy: y(r.metric), r: 4, fill: c, "fill-opacity": .8 });
    }
    mark.setAttribute("class", "dot");
    mark.append(title(r));
    mark.addEventListener("click", () => openDetail(r.seq));
    g.append(mark);
  }
  for (const r of kept.slice(-12)) {
    if (r.seq === 1) continue;
    const right = x(r.seq) > W * 0.75;  // near the right edge the label goes to the left
    const tx = x(r.seq) + (right ? -6 : 6), ty = y(r.metric) - 7;
    g.append(svg("text", { x: tx, y: ty, class: "lbl", "text-anchor": right ? "end" : "start",
      transform: `rotate(-12 ${tx} ${ty})` },
      r.description.length > 40 ? r.description.slice(0, 39) + "…" : r.description));
  }
  box.replaceChildren(g);
}

// -- detail drawer --------------------------------------------------------------------------------
function diffPre(text) {
  const pre = el("pre");
  for (const line of text.split("\n")) {
    const cls = line.startsWith("+") && !line.startsWith("+++") ? "add"
      : line.startsWith("-") && !line.startsWith("---") ? "del" : line.startsWith("@@") ? "hunk" : null;
    pre.append(cls ? el("span", { class: cls }, line) : line + "\n");
  }
  return pre;
}
async function openDetail(seq, quiet) {
  state.open = seq;
  history.replaceState(null, "", location.search + "#" + seq);  // a link to this view
  if (!quiet) renderTable();
  const box = $("detail"); $("drawer").classList.add("open");
  let d;
  try { d = await getJSON(`/api/experiments/${seq}` + q({ tag: state.tag })); }
  catch (e) { box.replaceChildren(el("h3", null, "#" + seq), el("p", { class: "worse" }, e.message)); return; }
  if (state.open !== seq) return;
  const scroll = $("drawer").scrollTop;
  const kv = el("div", { class: "kv" });
  const add = (k, v) => { if (v !== null && v !== undefined && v !== "") kv.append(el("div", null, k), el("div", { class: "num" }, v)); };
  add(state.status ? state.status.metric : "metric", fmt(d.metric));
  add("kind", d.kind); add("agent", d.agent); add("seed", d.seed);
  add("commit", d.commit); add("parent", d.parent);
  if (d.candidate_seq) add("measured for", "#" + d.candidate_seq);
  if (d.repeats.length) add("repeats", d.repeats.map((r) => `#${r.seq} ${r.status} ${fmt(r.metric)}`).join(", "));
  add("wall", dur(d.wall_time)); add("peak memory", isNum(d.peak_memory_mb) ? d.peak_memory_mb.toFixed(0) + " MB" : null);
  add("exit code", d.exit_code);
  if (d.input_tokens || d.cost_usd) add("agent cost", `${d.input_tokens} in / ${d.output_tokens} out · $${(d.cost_usd || 0).toFixed(4)}`);
  add("notes", d.notes);
  const parts = [el("h3", null, "#" + d.seq + " " + d.description),
    el("div", null, pill(d.status), d.reason ? " " + d.reason : ""), el("h4", null, "run"), kv];
  const metrics = Object.entries(d.metrics || {});
  if (metrics.length) {
    const t = el("table", { style: "width:auto" }, el("tbody"));
    for (const [k, v] of metrics.sort()) t.tBodies[0].append(el("tr", null, el("td", null, k), el("td", { class: "num" }, fmt(v))));
    parts.push(el("h4", null, "metrics"), t);
  }
  if (d.params && Object.keys(d.params).length) parts.push(el("h4", null, "params"), el("pre", null, JSON.stringify(d.params, null, 2)));
  if (d.decision) parts.push(el("h4", null, "decision"), el("pre", null, JSON.stringify(d.decision, null, 2)));
  parts.push(el("h4", null, "diff against its parent"),
    d.diff ? diffPre(d.diff) : el("p", { class: "muted" }, d.diff_error || (d.diff === "" ? "(no change)" : "(no commit)")));
  parts.push(el("h4", null, "log tail" + (d.log_path ? " — " + d.log_path : "")),
    d.log_tail.length ? el("pre", null, d.log_tail.join("\n")) : el("p", { class: "muted" }, "(no log)"));
  box.replaceChildren(...parts);
  $("drawer").scrollTop = scroll;
}
function closeDetail() {
  state.open = null; $("drawer").classList.remove("open"); renderTable();
  history.replaceState(null, "", location.pathname + location.search);
}
$("close").addEventListener("click", closeDetail);
document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeDetail(); });

// -- polling --------------------------------------------------------------------------------------
function settled() { // every row up to this seq is final, so `since` can skip them
  let n = 0;
  for (const r of [...state.rows.values()].sort((a, b) => a.seq - b.seq)) {
    if (r.seq !== n + 1 || UNSETTLED.has(r.status)) break;
    n = r.seq;
  }
  return n;
}
function showError(msg) {
  const b = $("banner");
  b.style.display = msg ? "block" : "none"; b.textContent = msg || "";
  $("live").className = msg ? "err" : "ok";
}
function apply(status, rows, reset) {
  if (reset || status.tag !== state.tag) state.rows = new Map();
  state.tag = status.tag; state.status = status;
  for (const r of rows) state.rows.set(r.seq, r);
  state.lastOk = Date.now();
  renderStatus(status); renderTable(); renderChart();
}
async function renderRuns() {
  const r = await getJSON("/api/runs");
  const sel = $("runs"); sel.replaceChildren();
  sel.append(el("option", { value: "" }, "follow latest (" + (r.latest || "none") + ")"));
  for (const run of r.runs.slice().reverse())
    sel.append(el("option", { value: run.tag }, run.tag + " · " + run.experiments + " exp"));
  sel.value = pinned || "";
}
$("runs").addEventListener("change", (e) => {
  location.search = e.target.value ? q({ tag: e.target.value }) : "";
});
let polls = 0;
async function poll() {
  try {
    const status = await getJSON("/api/status" + q({ tag: pinned }));
    // a full reload now and then, in case a settled row was ever rewritten
    const since = status.tag === state.tag && polls % 30 ? settled() : 0;
    const ex = await getJSON("/api/experiments" + q({ tag: status.tag, since }));
    apply(status, ex.rows, since === 0);
    if (polls % 5 === 0) await renderRuns();
    if (state.open !== null) {
      const r = state.rows.get(state.open);
      if (r && UNSETTLED.has(r.status)) openDetail(state.open, true);
    }
    showError(null);
  } catch (e) { showError(e.message); }
  polls++;
}
function tick() {
  $("updated").textContent = state.lastOk ? "updated " + Math.round((Date.now() - state.lastOk) / 1000) + "s ago" : "";
}
if (boot.status) { apply(boot.status, boot.experiments, true); showError(null); }
else showError(boot.error);
renderRuns().catch(() => {});
if (/^#\d+$/.test(location.hash)) openDetail(+location.hash.slice(1));
setInterval(poll, boot.poll_ms); setInterval(tick, 1000);
window.addEventListener("resize", renderChart);
</script>
</body>
</html>
"""
