"""The hub's commands: `hub serve`, `hub add-user`, `hub leaderboard`, `verify`, and the
`run --hub URL --key KEY` flags. cli.py registers them with `add_commands` and `add_run_flags`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..errors import AutoresearchError, ConfigError

console = Console(highlight=False)


def _positive(flag: str, value: float | None, integer: bool = False) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{flag} must be above 0 (got {value:g})")


def cmd_hub_serve(args) -> int:
    from ..config import load_target
    from .server import open_hub, serve
    from .service import HubSettings

    for flag, value in (("--quorum", args.quorum), ("--runs", args.runs), ("--lease", args.lease),
                        ("--rate-limit", args.rate_limit)):
        _positive(flag, value)
    if args.runs is not None and args.runs < 2:
        raise ConfigError("--runs must be at least 2 (a t-test needs two runs of each side)")
    target = load_target(Path(args.target))
    settings = HubSettings()
    for name in ("quorum", "runs", "rate_limit", "trust_after", "alpha", "max_verifiers"):
        if getattr(args, name, None) is not None:
            setattr(settings, name, getattr(args, name))
    if args.lease is not None:
        settings.lease_seconds = args.lease
    hub = open_hub(target, args.data, args.db, settings)
    console.print(f"hub for {target.root} on [bold]http://{args.host}:{args.port}/[/] "
                  f"(store {hub.store.url}, base {hub.base[:12]}, quorum {settings.quorum}, "
                  f"lease {hub.lease_seconds:g}s)")
    try:
        serve(hub, args.host, args.port)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_hub_add_user(args) -> int:
    from .server import open_users_store
    from .service import hash_key, new_key

    store = open_users_store(Path(args.dir) if args.dir else None, args.data, args.db)
    key = new_key()
    store.add_user(args.name, args.role, hash_key(key))
    console.print(f"user [bold]{args.name}[/] ({args.role}); API key (shown once, only its hash "
                  f"is stored):", markup=True)
    print(key)
    return 0


def cmd_hub_leaderboard(args) -> int:
    from .client import HubClient

    board = HubClient(args.hub, retry_for=args.retry_for).leaderboard(args.hardware)
    if args.json:
        print(json.dumps(board, indent=2))
        return 0
    if not board["classes"]:
        console.print("no claims yet")
    for cls in board["classes"]:
        best = cls["best"]
        console.print(f"[bold]{cls['hardware']}[/]: best {board['metric']} "
                      f"{best['metric'] if best['metric'] is not None else '(baseline)'} at "
                      f"{best['commit'][:12]}" + (f" (claim #{best['claim']})" if best["claim"] else ""))
        t = Table(header_style="bold")
        for c in ("rank", "contributor", "verified", "gain"):
            t.add_column(c)
        for i, row in enumerate(cls["leaderboard"], 1):
            t.add_row(str(i), row["contributor"], str(row["verified"]), f"{row['gain']:.6g}")
        console.print(t)
        for link in cls["chain"]:
            console.print(f"  #{link.get('id')} {link.get('contributor')}: claimed "
                          f"{link.get('claimed')}, verified {link.get('verified'):.6g} "
                          f"(p {link.get('p_value'):.2g}, by {', '.join(link.get('verifiers', []))}) "
                          f"{link.get('description', '')}", markup=False)
        if cls["pending"]:
            console.print(f"  {len(cls['pending'])} claim(s) pending")
    return 0


def cmd_verify(args) -> int:
    from .client import HubClient
    from .hardware import detect_hardware
    from .verifier import Verifier, VerifyOptions

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {args.workers})")
    gpus = [g.strip() for g in args.gpus.split(",")] if args.gpus else None
    workers = args.workers or (len(gpus) if gpus else 1)
    if gpus and len(gpus) < workers:
        raise ConfigError(f"--gpus names {len(gpus)} GPU(s) for {workers} workers — give one per "
                          f"worker")
    client = HubClient(args.hub, args.key, retry_for=args.retry_for,
                       on_retry=lambda why, s: console.print(f"hub unreachable ({why}); retry in "
                                                             f"{s:.1f}s", markup=False))
    opts = VerifyOptions(hardware=detect_hardware(args.hardware), workers=workers, gpus=gpus,
                         data=Path(args.data) if args.data else None, poll=args.poll,
                         max_claims=args.max_claims)
    v = Verifier(client, opts, say=lambda text: console.print(text, markup=False))
    try:
        n = v.run()
    except KeyboardInterrupt:
        return 130
    console.print(f"sent {n} report(s)")
    return 0


def attach_contributor(loop, args, say=None) -> None:
    """`run --hub URL --key KEY`: give the loop its hub adapter (nothing without --hub)."""
    if not getattr(args, "hub", None):
        return
    from .contributor import make_contributor

    if not args.key:
        raise ConfigError("--hub needs --key KEY (an admin makes one with 'autoresearch hub "
                          "add-user NAME')")
    _positive("--hub-sync", args.hub_sync)
    loop.hub = make_contributor(loop.ratchet, args.hub, args.key, args.hardware,
                                loop.opt.agent_name, args.hub_sync, say)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("contributor mode (a hub)")
    g.add_argument("--hub", metavar="URL", help="submit every kept experiment to this hub as a claim")
    g.add_argument("--key", help="your API key for the hub")
    g.add_argument("--hardware", help="hardware class (default: detected, e.g. cpu-2core, H100-80GB)")
    g.add_argument("--hub-sync", type=float, default=30.0, metavar="SECONDS",
                   help="how often to pull the hub's best (default 30)")


def add_commands(sub) -> None:
    p = sub.add_parser("hub", help="a hub for distributed runs: serve, add-user, leaderboard")
    hs = p.add_subparsers(dest="hub_command", required=True)

    s = hs.add_parser("serve", help="serve one target to contributors and verifiers")
    s.add_argument("--target", required=True, metavar="DIR", help="the target (a git repository)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8700)
    s.add_argument("--data", metavar="DIR", help="hub state (default: TARGET/.autoresearch/hub)")
    s.add_argument("--db", metavar="URL", help="postgresql://... (default: SQLite in --data)")
    s.add_argument("--quorum", type=int, help="verifiers per claim (default 2)")
    s.add_argument("--runs", type=int, help="fresh-seed runs per side per verifier (default 3)")
    s.add_argument("--lease", type=float, metavar="SECONDS",
                   help="lease length (default: 2x the target's timeout)")
    s.add_argument("--rate-limit", type=int, help="claims per key per hour (default 100)")
    s.add_argument("--trust-after", type=int, help="verified claims in a row before a quorum of 1 "
                                                   "(default 5)")
    s.add_argument("--alpha", type=float, help="significance level (default 0.01)")
    s.add_argument("--max-verifiers", type=int, help="verifiers a disagreement may bring in "
                                                     "(default 5)")
    s.set_defaults(func=cmd_hub_serve)

    s = hs.add_parser("add-user", help="create a user and print its API key once")
    s.add_argument("name")
    s.add_argument("--role", choices=["contributor", "verifier", "admin"], default="contributor")
    s.add_argument("--data", metavar="DIR", help="hub state (default: TARGET/.autoresearch/hub)")
    s.add_argument("--db", metavar="URL", help="postgresql://... (default: the hub's)")
    s.set_defaults(func=cmd_hub_add_user)

    s = hs.add_parser("leaderboard", help="the hub's leaderboard")
    s.add_argument("--hub", required=True, metavar="URL")
    s.add_argument("--hardware", help="one hardware class")
    s.add_argument("--json", action="store_true")
    s.add_argument("--retry-for", type=float, default=10.0, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_hub_leaderboard)

    p = sub.add_parser("verify", help="verify claims for a hub (a worker of the trusted pool)")
    p.add_argument("--hub", required=True, metavar="URL")
    p.add_argument("--key", required=True)
    p.add_argument("--workers", type=int, help="claims verified at once (default: 1, or one per GPU)")
    p.add_argument("--gpus", help="GPU indices, one per worker: 0,1,2,3")
    p.add_argument("--hardware", help="hardware class (default: detected)")
    p.add_argument("--data", metavar="DIR", help="local copies and logs (default ~/.cache/autoresearch/verify/HOST)")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between lease attempts when idle")
    p.add_argument("--max-claims", type=int, help="stop after N reports")
    p.add_argument("--retry-for", type=float, default=600.0, help="give up after the hub is away this long")
    p.set_defaults(func=cmd_verify)


__all__ = ["AutoresearchError", "add_commands", "add_run_flags", "attach_contributor"]
