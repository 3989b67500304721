"""The command line: init, run, start, try, status, log, show, export, plot, promote, demo.

compare and evolve-program (research organisations) have their own section at the end.

Only AutoresearchError is caught here: it becomes one red line and exit code 1. Ctrl-C exits
130 after the running experiment was recorded as interrupted. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from . import __version__
from .agents import Agent, ProposalsExhausted
from .config import (
    CONFIG_NAME,
    PROGRAM_NAME,
    Constraint,
    Target,
    check_globs,
    load_target,
    parse_spec,
)
from .errors import AutoresearchError, ConfigError
from .experiment import Status
from .ledger import Ledger, dumps

if TYPE_CHECKING:
    from .compare import CompareSpec

console = Console(highlight=False)
if not console.is_terminal:
    console = Console(highlight=False, width=160, soft_wrap=True)  # logs and pipes get whole lines
err_console = Console(stderr=True, highlight=False, soft_wrap=True)  # one error, one line


# `try` exit codes, one per verdict, so that an agent's shell can branch on them (README)
EXIT_KEEP, EXIT_ERROR, EXIT_DISCARD, EXIT_CRASH, EXIT_INVALID, EXIT_NOTHING = 0, 1, 3, 4, 5, 6
EXIT_INTERRUPTED = 130

# a tag names a branch (autoresearch/TAG), a ref prefix (refs/autoresearch/TAG/) and a directory:
# one path segment that git accepts, so `nov/23` (which would block a later `nov`) is refused
_TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _e(value: object) -> str:
    """User text (paths, descriptions, reasons) inside a markup string: printed verbatim."""
    return escape(str(value))


def default_tag() -> str:
    return _dt.date.today().strftime("%b%d").lower()


def check_tag(tag: str) -> str:
    """The tag, if it is safe as one git ref component and one directory name; else one error."""
    why = None
    if not _TAG_RE.fullmatch(tag):
        why = ("use letters, digits, '.', '_' and '-', starting with a letter or digit, at most "
               "100 characters (no '/': a tag is one branch name and one directory)")
    elif ".." in tag or tag.endswith((".", ".lock")):
        why = "git refuses '..' in a ref and a ref ending in '.' or '.lock'"
    if why:
        raise ConfigError(f"--tag {tag!r} is not a valid tag: {why} — e.g. "
                          f"{re.sub(r'[^A-Za-z0-9_-]+', '-', tag).strip('-.') or 'nov23'!r}")
    return tag


# == helpers ===================================================================================
def _target(args) -> Target:
    return load_target(Path(args.dir) if getattr(args, "dir", None) else None)


def _ledger(target: Target, readonly: bool = False) -> Ledger:
    return Ledger(target.state_dir / "ledger.db", readonly=readonly)


def _tag(ledger: Ledger, args) -> str:
    return ledger.resolve_tag(getattr(args, "tag", None))


def _open_run(args) -> tuple[Target, Ledger, str]:
    """For the read-only commands: the target, its ledger, and the run they ask about."""
    target = _target(args)
    ledger = _ledger(target, readonly=True)
    return target, ledger, _tag(ledger, args)


# == init ======================================================================================
def cmd_init(args) -> int:
    from .ratchet import commit_all, inside_work_tree
    from .templates import TEMPLATES, program_md, template_files, write_template

    dest = Path(args.dir or ".").resolve()
    if args.template:
        if args.template not in TEMPLATES:
            raise ConfigError(f"unknown template '{args.template}' — choose one of: {', '.join(TEMPLATES)}")
        dest.mkdir(parents=True, exist_ok=True)
        files = template_files(args.template)
        clash = [r for r in files if (dest / r).exists()]
        if clash and not args.force:
            raise ConfigError(f"{dest / clash[0]} already exists — use an empty directory or --force")
        write_template(args.template, dest)
        target = load_target(dest)
        if not (dest / PROGRAM_NAME).exists():
            (dest / PROGRAM_NAME).write_text(program_md(target.spec, args.template))
        commit_all(dest, f"autoresearch: the {args.template} target")
        console.print(f"[green]✓[/] wrote the [bold]{_e(args.template)}[/] target to {_e(dest)} and "
                      f"committed it")
        console.print(f"  next: [bold]cd {_e(dest)} && autoresearch run[/]")
        return 0

    if not dest.is_dir():
        raise ConfigError(f"{dest} is not a directory — create it first")
    if not inside_work_tree(dest):
        raise ConfigError(f"{dest} is not inside a git repository — run 'git init' there first, or "
                          f"use 'autoresearch init --template quickstart {dest}'")
    cfg = dest / CONFIG_NAME
    if cfg.exists() and not args.force:
        raise ConfigError(f"{cfg} already exists — edit it, or pass --force to overwrite it")
    if not args.editable:
        raise ConfigError("init needs --editable GLOB: the file(s) the agent may change (e.g. --editable train.py)")
    if not args.run:
        raise ConfigError("init needs --run CMD: the command that trains (e.g. --run 'python train.py')")
    if not args.metric:
        raise ConfigError("init needs --metric NAME: the number the run prints as 'NAME: value'")
    data = {"editable": args.editable, "locked": args.locked or [], "run": args.run,
            "metric": args.metric, "direction": args.direction, "budget": args.budget}
    if args.setup:
        data["setup"] = args.setup
    if args.evaluate:
        data["evaluate"] = args.evaluate
    if args.timeout:
        data["timeout"] = args.timeout
    if args.constraint:
        for c in args.constraint:
            try:
                Constraint.parse(c)
            except ValueError as e:
                raise ConfigError(f"--constraint: {e}") from None
        data["constraints"] = args.constraint
    if args.artifact:
        bad = next((a for a in args.artifact if not a.strip() or Path(a).is_absolute()
                    or ".." in Path(a).parts), None)
        if bad is not None:
            raise ConfigError(f"--artifact {bad!r}: give a path inside the target, relative to it "
                              f"(e.g. --artifact model.pt)")
        data["artifacts"] = args.artifact
    spec = parse_spec(data, cfg)
    try:       # files may come after the toml: a note now, refused when a run starts
        check_globs(spec, dest, cfg)
        glob_note = None
    except ConfigError as e:
        glob_note = str(e).replace(f"{cfg}: ", "", 1)
    lines = ["# autoresearch target: see the README's autoresearch.toml reference for every key"]
    for key in ("editable", "locked", "setup", "run", "evaluate", "metric", "direction", "budget",
                "timeout", "constraints", "artifacts"):
        if key in data:
            lines.append(f"{key} = {json.dumps(data[key], ensure_ascii=False)}")
    cfg.write_text("\n".join(lines) + "\n")
    prog = dest / PROGRAM_NAME
    if not prog.exists() or args.force:
        prog.write_text(program_md(spec, dest.name))
    console.print(f"[green]✓[/] wrote {_e(cfg)} and {_e(prog)}")
    if glob_note:
        console.print(f"[yellow]note[/]: {_e(glob_note)} (a run refuses it until the file is "
                      f"committed)")
    console.print(f"  next: commit them ([bold]git add {CONFIG_NAME} {PROGRAM_NAME} && git commit -m "
                  f"autoresearch[/]), then [bold]autoresearch run[/]")
    return 0


# == run =======================================================================================
def build_loop(target: Target, args, tag: str, agent=None, reporter=None,
               agent_name: str | None = None):
    """The loop for parsed run flags (see request.RunRequest)."""
    from .request import RunRequest

    return RunRequest.from_namespace(args, tag).build(target, agent=agent, agent_name=agent_name,
                                                      reporter=reporter)


def _editable(target: Target, rel: str) -> bool:
    from .globs import matches

    spec = target.spec
    return matches(rel, spec.editable) and not matches(rel, spec.locked_globs)


def _run_loop(loop, console: Console, say_why: bool = True) -> int:
    from .loop import RunStopped

    try:
        why = loop.run_forever()
    except KeyboardInterrupt:
        if loop.reporter:
            loop.reporter.close()
        console.print(f"[yellow]interrupted[/]: the running experiment was recorded as interrupted; "
                      f"resume with [bold]autoresearch run --tag {loop.tag}[/]")
        return 130
    except RunStopped:
        if loop.reporter:
            loop.reporter.close()
        raise
    if loop.reporter:
        loop.reporter.close()
    if say_why:
        console.print(f"[bold]stopped[/]: {_e(why)}")
    return 0


def cmd_run(args) -> int:
    from .ui import Reporter

    tag = check_tag(args.tag or default_tag())
    target = _target(args)
    _warn_uncommitted(target)
    reporter = Reporter(console, target.spec.metric, quiet=args.quiet)
    loop = build_loop(target, args, tag, reporter=reporter)
    _hub_contributor(loop, args, reporter)
    console.print(f"[bold]autoresearch[/] run [cyan]{_e(tag)}[/] on {_e(target.root)} — agent "
                  f"[bold]{_e(loop.opt.agent_name)}[/], policy [bold]{_e(loop.policy.name)}[/], "
                  f"strategy [bold]{_e(loop.opt.strategy)}[/], "
                  f"{loop.executor.slots} slot(s), budget {loop.budget:g}s, branch autoresearch/{tag}")
    code = _run_loop(loop, console)
    _print_summary(loop.ledger, tag, target)
    return code


def _warn_uncommitted(target: Target) -> None:
    """`run` evaluates commits: edits not committed yet are silently absent from the baseline."""
    from .globs import matches
    from .ratchet import Ratchet

    try:
        changed = Ratchet(target.root).worktree_changes()
    except AutoresearchError:
        return
    spec = target.spec
    relevant = [p for p in changed if matches(p, spec.editable) or matches(p, spec.locked_globs)]
    if relevant:
        console.print(f"[yellow]note[/]: uncommitted changes to {_e(', '.join(relevant[:5]))} are not part "
                      f"of the run (it starts from the last commit) — commit them first to include them")


def _print_summary(ledger: Ledger, tag: str, target: Target) -> None:
    exps = ledger.experiments(tag)
    if not exps:
        return
    from .summary import best_text, reported_best

    kept = [e for e in exps if e.status == Status.KEEP]
    rep = reported_best(ledger, tag, target.spec.policy)
    if rep is not None and rep.value is not None:
        console.print(f"best {target.spec.metric} {best_text(rep)}; {len(exps)} experiments, "
                      f"{len(kept)} kept; results: {target.results_path}", markup=False)


def _print_yield(agents: list[dict]) -> None:
    """`status`: what each agent of the run brought (summary.yield_by_agent)."""
    from rich.table import Table

    if not agents:
        return
    t = Table(title="yield by agent", header_style="bold")
    for c in ("agent", "role", "proposals", "kept", "keep rate", "improvement", "cost"):
        t.add_column(c)
    for y in agents:
        rate = "-" if y["keep_rate"] is None else f"{y['keep_rate']:.0%}"
        t.add_row(Text(y["agent"]), Text(y["role"] or "-"), str(y["proposals"]), str(y["kept"]),
                  rate, f"{y['improvement']:+.6g}", f"${y['cost_usd']:.4f}")
    console.print(t)


# == agent-driven mode =========================================================================
def cmd_start(args) -> int:
    from .ui import Reporter

    tag = check_tag(args.tag)
    target = _target(args)
    from .ratchet import Ratchet
    ratchet = Ratchet(target.root)
    ledger = _ledger(target)
    if ledger.get_run(tag) is None and ratchet.branch_commit(tag) is not None:
        raise AutoresearchError(f"branch autoresearch/{tag} already exists — pick another --tag")
    reporter = Reporter(console, target.spec.metric)
    loop = build_loop(target, args, tag, agent=_NoAgent(), reporter=reporter,
                      agent_name="coding-agent")
    code = _run_loop(loop, console, say_why=False)   # it stops after the baseline, as it should
    if code:
        return code
    if ratchet.current_branch() != f"refs/heads/autoresearch/{tag}":
        ratchet.checkout_branch(tag)
    base = ledger.experiments(tag)[0]
    console.print(f"on branch [bold]autoresearch/{_e(tag)}[/]; baseline {_e(target.spec.metric)} = "
                  f"{base.metric}. Now edit, then: autoresearch try -m \"what you changed\"")
    return 0


class _NoAgent(Agent):
    """For `start`: the baseline only."""

    name = "coding-agent"

    def propose(self, context):
        raise ProposalsExhausted("agent-driven mode")


class _OneShot(_NoAgent):
    def __init__(self, proposal):
        self.proposal = proposal

    def propose(self, context):
        p, self.proposal = self.proposal, None
        if p is None:
            return super().propose(context)
        return p


def cmd_try(args) -> int:
    """Evaluate the uncommitted editable changes; the exit code is the verdict (EXIT_*)."""
    from .experiment import Proposal
    from .loop import record_refused
    from .ratchet import Ratchet

    target = _target(args)
    ratchet = Ratchet(target.root)
    branch = ratchet.current_branch() or ""
    prefix = "refs/heads/autoresearch/"
    if not branch.startswith(prefix):
        raise AutoresearchError("not on an autoresearch/TAG branch — run 'autoresearch start --tag TAG' first")
    tag = branch[len(prefix):]
    ledger = _ledger(target)
    if ledger.get_run(tag) is None:
        raise AutoresearchError(f"no run '{tag}' in the ledger — run 'autoresearch start --tag {tag}' first")
    head = ratchet.head()
    tracked = ratchet.list_files(head)
    ours = (".autoresearch/", "results.tsv", "progress.png")
    changed = [p for p in ratchet.worktree_changes()
               if not p.startswith("../") and not p.startswith(ours)]   # only the target's files
    editable = [p for p in changed if _editable(target, p)]
    # tracked files the agent may not change go back; untracked ones are the user's, left alone
    refused = [p for p in changed if not _editable(target, p) and p in tracked]
    refused_reason = ""
    if refused:
        ratchet.restore_in_checkout(refused, head)
        refused_reason = f"changes outside the editable files were refused and restored: {', '.join(refused)}"
        target = _target(args)   # the spec may have been one of them: read the restored one

    def refuse(why: str) -> int:
        from .export import write_results_tsv

        e = record_refused(ledger, tag, parent=head, agent="coding-agent", description=args.message,
                           reason=refused_reason + why)
        write_results_tsv(ledger, tag, target.spec, target.results_path)
        console.print(Text.assemble(("invalid", "magenta"), f" #{e.seq}: {e.reason}"))
        return EXIT_INVALID

    if not editable:
        if refused:
            return refuse("")
        console.print("nothing to try: no uncommitted change to the editable files "
                      f"({', '.join(target.spec.editable)})", markup=False)
        return EXIT_NOTHING
    files = {p: ratchet.read_worktree_file(p) for p in editable}
    proposal = Proposal(description=args.message, files=files,
                        notes=[refused_reason] if refused else [])
    loop = build_loop(target, args, tag, agent=_OneShot(proposal), reporter=None,
                      agent_name="coding-agent")
    before = {e.id for e in ledger.experiments(tag)}
    code = _run_loop(loop, Console(quiet=True))
    new = [e for e in ledger.experiments(tag) if e.id not in before]
    cand = next((e for e in new if e.kind == "candidate"), None)
    if cand is None:
        ratchet.restore_in_checkout(editable, ratchet.head())
        if refused:
            return refuse("; the editable part repeats an earlier experiment exactly")
        console.print("[yellow]not run[/]: the change repeats an earlier experiment exactly")
        return EXIT_NOTHING
    if cand.status == Status.KEEP:
        ratchet.sync_index()
    else:
        ratchet.restore_in_checkout(editable, ratchet.head())
    _print_verdict(ledger, tag, cand, target)
    if refused:
        console.print(f"  note: {refused_reason}", markup=False)
    if code:
        return code
    return {Status.KEEP: EXIT_KEEP, Status.DISCARD: EXIT_DISCARD, Status.INVALID: EXIT_INVALID,
            Status.INTERRUPTED: EXIT_INTERRUPTED}.get(cand.status, EXIT_CRASH)


def _print_verdict(ledger: Ledger, tag: str, cand, target: Target) -> None:
    from .metrics import tail_lines
    from .summary import best_text, reported_best

    exps = ledger.experiments(tag)
    rep = reported_best(ledger, tag, target.spec.policy)
    m = target.spec.metric
    color = {"keep": "green", "discard": "yellow"}.get(cand.status.value, "red")
    # the candidate's own runs: its first measurement and its repeats (not the best's refreshes)
    runs = [e for e in exps if e.id == cand.id or (e.candidate_of == cand.id
                                                   and e.tree_sha == cand.tree_sha)]
    measured = [e.metric for e in runs if e.metric is not None]
    line = Text.assemble((cand.status.value, color), f" #{cand.seq}: ")
    if measured:
        line.append(f"{m} = {cand.metric}")
        if len(measured) > 1:
            line.append(f" (mean of {len(measured)} runs {sum(measured) / len(measured):.6g})")
    else:
        line.append(f"no {m} measured")
    if rep is not None and rep.value is not None:
        line.append(f"; best {best_text(rep)}")
    line.append(f"; {len(runs)} run(s) of this change")
    refreshes = [e for e in exps if e.candidate_of == cand.id and e.tree_sha != cand.tree_sha]
    if refreshes:
        line.append(f" (and {len(refreshes)} of the best it was judged against)")
    line.append(f"; log {cand.log_path}")
    console.print(line)
    if cand.reason:
        console.print(f"  reason: {cand.reason}", markup=False)
    if cand.status in (Status.CRASH, Status.TIMEOUT) and cand.log_path:
        console.print("  last lines of the log:")
        for ln in tail_lines(Path(cand.log_path), 50):
            console.print("  | " + ln, markup=False)
    if cand.status == Status.KEEP:
        console.print("  committed on the branch.")
    else:
        console.print("  the editable files were restored to the best version.")


# == reading the ledger ========================================================================
def cmd_status(args) -> int:
    from rich.table import Table

    from .summary import agent_yield, run_summary
    from .ui import experiments_table

    target, ledger, tag = _open_run(args)
    info = run_summary(ledger, tag, target.spec.policy)
    info["agents"] = [dataclasses.asdict(y) for y in agent_yield(ledger, tag, info["direction"])]
    if args.json:
        print(dumps(info, indent=2))
        return 0
    console.print(f"[bold]run {_e(tag)}[/] · {_e(info['metric'])} ({info['direction']}) · agent "
                  f"{_e(info['agent'])} · policy {_e(info['policy'])} · strategy "
                  f"{_e(info['strategy'])} · branch {_e(info['branch'])}"
                  + (f" · organisation {_e(info['org'])}" if info.get("org") else ""))
    if info["source"]:
        console.print(f"  promotion of run {_e(info['source'])} at scale {_e(info['scale'])} "
                      f"(autoresearch promote --from {_e(info['source'])} --scale "
                      f"{_e(info['scale'])} prints its report)")
    elif info["scale"]:
        console.print(f"  at scale {_e(info['scale'])}")
    console.print("  " + ", ".join(f"{v} {k}" for k, v in sorted(info["counts"].items()))
                  + f" · {info['experiments']} total")
    if info["operators"]:
        console.print("  tree     " + ", ".join(f"{c['proposed']} {op} ({c['kept']} kept)"
                                               for op, c in info["operators"].items()))
    base, best = info["baseline"], info["best"]
    if base is not None:
        console.print(f"  baseline {base:.6f} (mean of {info['baseline_runs']} run(s))")
    if best and best["metric"] is not None and base is not None:
        from .summary import ReportedBest, best_text

        console.print(f"  best     {best_text(ReportedBest(**best['reported']))}: "
                      f"{best['description']}",
                      markup=False)
    hold = info["holdout"]
    if hold["baseline"] is not None or hold["alarms"]:
        console.print(f"  holdout  baseline {hold['baseline']}, best {hold['best']}", markup=False)
    for a in hold["alarms"]:
        console.print(f"  HOLDOUT DIVERGENCE at #{a['seq']} ({a['status']}): {info['metric']} "
                      f"{a['validation_change']:+.6g} while the holdout went {a['holdout_change']:+.6g} "
                      f"against #{a['against']} (noise threshold {a['threshold']:.3g})",
                      style="bold red", markup=False)
    if info["cost_usd"]:
        per = (f", ${info['cost_per_improvement']:.4f} per kept improvement"
               if info["cost_per_improvement"] is not None else "")
        console.print(f"  cost ${info['cost_usd']:.4f}{per} · tokens {info['tokens']['input']} in, "
                      f"{info['tokens']['output']} out")
    _print_yield(info["agents"])
    if info["slots"]:
        t = Table(title="slots", header_style="bold")
        for c in ("slot", "gpu", "running", "for", "proposal"):
            t.add_column(c)
        for sl in info["slots"]:
            running = sl["experiment"] is not None
            t.add_row(str(sl["slot"]), sl["gpu"] or "", f"#{sl['experiment']}" if running else "idle",
                      f"{sl['running_for']:.0f}s" if running else "", Text((sl["description"] or "")[:60]))
        console.print(t)
    kept = ledger.with_status(tag, Status.KEEP)
    if kept:
        console.print(experiments_table(kept, info["metric"], "kept experiments", base))
    return 0


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1 (got {limit})")


def cmd_notes(args) -> int:
    """The run's research notes (notes.py), verbatim: they are the agents' text."""
    _, ledger, tag = _open_run(args)
    text = ledger.research_notes(tag)
    if text:
        console.print(text, markup=False, highlight=False)
    else:
        console.print(f"no research notes in run {_e(tag)} yet")
    return 0


def cmd_log(args) -> int:
    from .export import row
    from .ui import experiments_table

    _check_limit(args.limit)
    target, ledger, tag = _open_run(args)
    exps = ledger.tail(tag, args.limit) if args.limit else ledger.experiments(tag)
    if args.json:
        print(dumps([row(e) for e in exps], indent=2))
        return 0
    base = ledger.by_seq(tag, 1)
    console.print(experiments_table(exps, target.spec.metric, f"run {tag}",
                                    base.metric if base else None))
    return 0


def cmd_show(args) -> int:
    from .summary import experiment_detail

    target, ledger, tag = _open_run(args)
    d = experiment_detail(ledger, tag, args.id, target.root, args.lines)
    if d is None:
        raise AutoresearchError(f"no experiment #{args.id} in run '{tag}' (it has {ledger.count(tag)})")
    console.print(f"[bold]#{d['seq']}[/] {_e(d['description'])}")
    console.print(f"  status   {d['status']}" + (f" — {d['reason']}" if d["reason"] else ""),
                  markup=False)
    console.print(f"  {target.spec.metric:<8} {d['metric']}", markup=False)
    console.print(f"  kind {d['kind']}, agent {d['agent']}, seed {d['seed']}, commit {d['commit']}, "
                  f"parent {d['parent']}", markup=False)
    if d["candidate_seq"] is not None:
        console.print(f"  measured for candidate #{d['candidate_seq']}")
    if d["node_seq"] is not None:
        console.print(f"  tree search: {d['operator']} of node #{d['node_seq']}", markup=False)
    if d["wall_time"] is not None:
        console.print(f"  wall {d['wall_time']:.2f}s, peak memory {d['peak_memory_mb'] or 0:.0f} MB, "
                      f"exit {d['exit_code']}")
    if d["input_tokens"] or d["cost_usd"]:
        console.print(f"  tokens {d['input_tokens']} in / {d['output_tokens']} out, "
                      f"${d['cost_usd']:.4f}")
    if d["metrics"]:
        console.print("  metrics  " + ", ".join(f"{k}={v:g}" if isinstance(v, (int, float))
                                                else f"{k}={v}"
                                                for k, v in sorted(d["metrics"].items())),
                      markup=False)
    if d["params"]:
        console.print("  params   " + ", ".join(f"{k}={v}" for k, v in d["params"].items()),
                      markup=False)
    if d["decision"]:
        dec = d["decision"]
        against = f" against best #{dec['against']}" if dec.get("against") else ""
        console.print(f"  decision {dec.get('verdict')}{against}: {dec.get('reason', '')}", markup=False)
        for title, block in (("evidence", dec.get("evidence")), ("estimate", dec.get("estimate"))):
            if isinstance(block, dict) and block:
                console.print(f"  {title:<8} " + ", ".join(
                    f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in block.items()), markup=False)
    if d["notes"]:
        console.print(f"  notes    {d['notes']}", markup=False)
    if d["repeats"]:
        console.print("  repeats  " + ", ".join(f"#{r['seq']}={r['metric']}" for r in d["repeats"]))
    if d["diff"] is not None or d["diff_error"]:
        console.print("[bold]diff against its parent[/]")
        console.print(d["diff_error"] or d["diff"] or "(no change)", markup=False)
    if d["log_tail"]:
        console.print(f"[bold]log tail[/] ({_e(d['log_path'])})")
        for ln in d["log_tail"]:
            console.print(ln, markup=False)
    return 0


def cmd_export(args) -> int:
    from .export import export_lines

    _check_limit(args.limit)
    target = _target(args)
    ledger = _ledger(target, readonly=True)
    tag = _tag(ledger, args) if args.tag or not args.all else None
    lines = export_lines(ledger, tag, args.format, target.spec, args.limit)
    if args.output:
        with open(args.output, "w") as fh:
            fh.writelines(lines)
        err_console.print(f"wrote {args.output}", markup=False)
    else:
        sys.stdout.writelines(lines)
    return 0


def cmd_plot(args) -> int:
    from .plot import plot_progress

    target, ledger, tag = _open_run(args)
    out = Path(args.output or target.root / "progress.png")
    from .summary import reported_values

    exps = ledger.experiments(tag)
    plot_progress(exps, target.spec.metric, target.spec.direction, out,
                  title=f"autoresearch {tag}", values=reported_values(ledger, tag, exps))
    console.print(f"wrote {out}", markup=False)
    return 0


def cmd_dashboard(args) -> int:
    from .dashboard import serve

    target = _target(args)
    console.print(f"dashboard for {_e(target.root)} on [bold]http://{args.host}:{args.port}/[/] (Ctrl-C stops it)")
    try:
        serve(target, host=args.host, port=args.port, tag=args.tag)
    except KeyboardInterrupt:
        pass
    return 0


# == promote ===================================================================================
def cmd_promote(args) -> int:
    from rich.table import Table

    from .promote import DOES_NOT, TRANSFERS, PromoteOptions, promote

    source = check_tag(args.source)
    target = _target(args)
    target.spec.at_scale(args.scale, target.config_path)   # an unknown scale: one error first
    tag = check_tag(args.tag or f"{source}-{args.scale}")
    for flag, value in (("--workers", args.workers), ("--repeats", args.repeats)):
        if value is not None and value < (2 if flag == "--repeats" else 1):
            raise ConfigError(f"{flag} must be at least {2 if flag == '--repeats' else 1} "
                              f"(got {value})")
    if args.budget is not None and args.budget <= 0:
        raise ConfigError(f"--budget must be above 0 (got {args.budget:g})")
    if args.min_effect is not None and args.min_effect < 0:
        raise ConfigError(f"--min-effect must be 0 or more (got {args.min_effect:g})")
    opts = PromoteOptions(source=source, scale=args.scale, tag=tag, budget=args.budget,
                          workers=args.workers, repeats=args.repeats, min_effect=args.min_effect,
                          gpus=[g.strip() for g in args.gpus.split(",")] if args.gpus else None)
    if not args.json:
        console.print(f"[bold]autoresearch promote[/] {_e(source)} to scale [cyan]{_e(args.scale)}"
                      f"[/] as run [cyan]{_e(tag)}[/], branch autoresearch/{_e(tag)}")
    say = None if args.json or args.quiet else (lambda text: console.print("  " + text,
                                                                          markup=False))
    try:
        report = promote(target, opts, say=say)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: runs in flight were recorded as interrupted; "
                      "resume with the same command")
        return 130
    if args.json:
        print(dumps(report.to_dict(), indent=2))
        return 0
    arms = report.arms
    for key, a in arms.items():
        failed = f", {a.failed} failed" if a.failed else ""
        if key in ("baseline", "best", "subset") and a.mean is not None:
            console.print(f"  {key:<9}{report.metric} {a.mean:.6f} (mean of {a.runs} run(s)"
                          f"{failed}, #{a.seq})", markup=False)
        elif a.failed and not a.runs:
            console.print(f"  #{a.seq} {a.description}: no run measured ({a.failed} failed; "
                          f"autoresearch show {a.seq} --tag {report.tag})", markup=False)
    t = Table(title=f"does each kept change of {source} transfer to scale {report.scale}? "
                    f"(improvement, {report.metric}, 95% interval)", header_style="bold")
    for c in ("change", f"at {report.source_scale or 'the run'}'s scale" if not report.source_scale
              else f"at {report.source_scale} (the run)", f"at {report.scale}",
              "verdict", "why"):
        t.add_column(c)
    colour = {TRANSFERS: "green", DOES_NOT: "red"}
    for c in report.changes:
        t.add_row(Text(f"#{c.seq} {c.description}"[:60]), Text(c.small.text()),
                  Text(c.large.text()),
                  Text(c.verdict, style=colour.get(c.verdict, "yellow")), Text(c.why))
    console.print(t)
    if report.promoted:
        console.print(f"[green]promoted[/]: {', '.join(f'#{s}' for s in report.subset)} on branch "
                      f"{_e(report.branch)} ({_e((report.commit or '')[:12])}); against the "
                      f"baseline {_e(report.subset_vs_baseline.text() if report.subset_vs_baseline else '')}")
    else:
        console.print(f"[yellow]not promoted[/]: {_e(report.note)}")
    return 0


# == demo ======================================================================================
def cmd_demo(args) -> int:
    from .plot import plot_progress
    from .ratchet import commit_all
    from .templates import program_md, write_template
    from .ui import Reporter, experiments_table

    args.tag = check_tag(args.tag or "demo")
    dest = Path(args.dir).resolve() if args.dir else Path(tempfile.mkdtemp(prefix="autoresearch-demo-"))
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"{dest} is not empty — give a new or empty directory")
    dest.mkdir(parents=True, exist_ok=True)
    write_template("quickstart", dest)
    unsandboxed = _demo_without_sandbox(dest)
    target = load_target(dest)
    (dest / PROGRAM_NAME).write_text(program_md(target.spec, "the quickstart target"))
    commit_all(dest, "autoresearch: the quickstart target")
    if unsandboxed:
        console.print(f"note: {unsandboxed}; the demo runs its own built-in code and the offline "
                      f"agent, so it runs without the sandbox (your runs need it)",
                      style="yellow", markup=False)
    console.print(f"[bold]autoresearch demo[/]: the quickstart target in {_e(dest)}, "
                  f"{args.experiments} experiments with the offline optuna agent")
    args.max_experiments = args.experiments
    reporter = Reporter(console, target.spec.metric, quiet=False)
    loop = build_loop(target, args, args.tag, reporter=reporter)
    t0 = time.time()
    code = _run_loop(loop, console)
    exps = loop.ledger.experiments(args.tag)
    base = exps[0].metric if exps else None
    console.print(experiments_table(exps, target.spec.metric, f"demo: {len(exps)} experiments "
                                    f"in {time.time() - t0:.0f}s", base))
    from .summary import reported_values

    png = plot_progress(exps, target.spec.metric, target.spec.direction, dest / "progress.png",
                        title="autoresearch demo (quickstart)",
                        values=reported_values(loop.ledger, args.tag, exps))
    _print_summary(loop.ledger, args.tag, target)
    console.print(f"  target     {dest}\n  results    {target.results_path}\n  plot       {png}\n"
                  f"  ledger     {target.state_dir / 'ledger.db'}\n  logs       {loop.log_dir}\n"
                  f"  branch     autoresearch/{args.tag} (git -C {dest} log --oneline autoresearch/{args.tag})",
                  markup=False)
    return code


def _demo_without_sandbox(dest: Path) -> str | None:
    """Where bubblewrap cannot run, the demo (built-in code, offline agent: nothing adversarial)
    turns the sandbox off in its own toml rather than fail on a fresh machine; returns why."""
    from . import sandbox

    try:
        sandbox.check()
        return None
    except AutoresearchError as e:
        toml = dest / "autoresearch.toml"   # first: a key after a [table] would belong to it
        toml.write_text("sandbox = false      # set by the demo: " +
                        str(e).replace("\n", " ")[:120] + "\n" + toml.read_text())
        return str(e)


# == argument parsing ==========================================================================
def _run_flags(p: argparse.ArgumentParser, *, tag_required: bool = False) -> None:
    p.add_argument("--tag", required=tag_required, help="run name; branch autoresearch/TAG (default: today, e.g. nov23)")
    p.add_argument("--agent", dest="agents", action="append", metavar="AGENT[:SLOTS]",
                   help="optuna (default), script:PATH, claude, codex, command:CMD, openai:MODEL, "
                        "anthropic:MODEL; repeat it for a portfolio, each with its share of the "
                        "slots: --agent claude:3 --agent optuna:1")
    p.add_argument("--max-experiments", type=int, help="stop after N experiments (the baseline and repeats count)")
    p.add_argument("--max-time", type=float, help="start no experiment after SECONDS")
    p.add_argument("--budget", type=float, help="training budget per experiment, seconds (overrides the toml)")
    p.add_argument("--policy", help="noise-aware (default), greedy or noise-aware-v1")
    _strategy_flag(p)
    p.add_argument("--prune", action="store_true", help="stop runs whose progress curve is clearly worse")
    p.add_argument("--max-cost", type=float, help="stop when the agent has cost USD")
    p.add_argument("--workers", type=int, default=1, help="experiments at once (one worktree each)")
    p.add_argument("--gpus", help="GPU indices, one per worker: 0,1,2,3")
    p.add_argument("--executor", default="local", help="local (default) or ray")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--ahead", type=int, help="proposals kept ready ahead of time (default: slots for slow agents)")
    p.add_argument("--seed", type=int, default=0, help="base value of AUTORESEARCH_SEED")
    p.add_argument("--scale", help="run at this [scales] entry of autoresearch.toml (its env, "
                                   "budget and timeout); a resumed run keeps its scale")
    p.add_argument("--results-format", choices=["native", "original"], default="native",
                   help="results.tsv: native (every experiment) or original (one row per candidate, "
                        "repeats folded into its mean, keep/discard/crash: the original's analysis.ipynb)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-experiment lines")


def _strategy_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", help="ratchet (default: every proposal improves the best) or tree "
                   "(AIDE-style search over a population of nodes; strategy in autoresearch.toml)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoresearch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"autoresearch {__version__}")
    parser.add_argument("-C", "--dir", dest="dir", help="the target directory (default: here)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="write autoresearch.toml and program.md (or a whole template)")
    p.add_argument("init_dir", nargs="?", metavar="DIR")
    p.add_argument("--template", help="quickstart, nanochat, sql, kernel, prompt, config or latency")
    p.add_argument("--editable", action="append", metavar="GLOB")
    p.add_argument("--locked", action="append", metavar="GLOB")
    p.add_argument("--setup", metavar="CMD", help="run once per run before the baseline")
    p.add_argument("--run", metavar="CMD")
    p.add_argument("--evaluate", metavar="CMD")
    p.add_argument("--constraint", action="append", metavar="EXPR",
                   help="e.g. 'peak_vram_mb <= 60000' (repeatable)")
    p.add_argument("--artifact", action="append", metavar="PATH",
                   help="a file the run step writes for the evaluator (repeatable)")
    p.add_argument("--metric", metavar="NAME")
    p.add_argument("--direction", choices=["minimize", "maximize"], default="minimize")
    p.add_argument("--budget", type=float, default=300, metavar="SECONDS")
    p.add_argument("--timeout", type=float, metavar="SECONDS")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("run", help="run the loop (resumes an existing tag)")
    _run_flags(p)
    _hub_run_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("start", help="agent-driven mode: create the branch and measure the baseline")
    _run_flags(p, tag_required=True)
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("try", help="agent-driven mode: evaluate the uncommitted changes as one experiment")
    p.add_argument("-m", "--message", required=True, help="what was changed and why")
    p.add_argument("--policy")
    p.add_argument("--budget", type=float)
    p.set_defaults(func=cmd_try)

    for name, fn, text in (("status", cmd_status, "summary of a run"),
                           ("log", cmd_log, "every experiment of a run")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--tag")
        p.add_argument("--json", action="store_true")
        if name == "log":
            p.add_argument("--limit", type=int)
        p.set_defaults(func=fn)

    p = sub.add_parser("notes", help="the research notes of a run, as its agents wrote them")
    p.add_argument("--tag")
    p.set_defaults(func=cmd_notes)

    p = sub.add_parser("show", help="one experiment: metrics, decision, diff, log tail")
    p.add_argument("id", type=int, help="experiment number (#N)")
    p.add_argument("--tag")
    p.add_argument("--lines", type=int, default=30, help="log lines to show")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("export", help="the ledger as tsv, csv or jsonl")
    p.add_argument("--format", choices=["tsv", "csv", "jsonl"], default="tsv")
    p.add_argument("--tag")
    p.add_argument("--all", action="store_true", help="every run, not only the latest")
    p.add_argument("--limit", type=int, help="only the last N experiments (of each run)")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("plot", help="the progress chart")
    p.add_argument("-o", "--output", help="PNG path (default: progress.png in the target)")
    p.add_argument("--tag")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("dashboard", help="a live web view of a run (needs autoresearch[dashboard])")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--tag", help="follow this run (default: the latest)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("promote", help="replay a run's kept changes at a larger [scales] entry; "
                                       "keep the ones that transfer")
    p.add_argument("--from", dest="source", required=True, metavar="TAG", help="the run to promote")
    p.add_argument("--scale", required=True, help="a [scales] entry of autoresearch.toml")
    p.add_argument("--tag", help="the promotion's run and branch (default: TAG-SCALE)")
    p.add_argument("--budget", type=float, help="training budget per run, seconds (default: the scale's)")
    p.add_argument("--workers", type=int, default=1, help="runs at once (one worktree each)")
    p.add_argument("--gpus", help="GPU indices, one per worker: 0,1,2,3")
    p.add_argument("--repeats", type=int, help="runs of each arm (default: the policy's baseline runs, at least 2)")
    p.add_argument("--min-effect", type=float,
                   help="smallest improvement that counts as transferring, in the metric's units "
                        "(default: [policy] min_effect)")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-run lines")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("demo", help="run the quickstart target end to end")
    p.add_argument("demo_dir", nargs="?", metavar="DIR")
    p.add_argument("--experiments", type=int, default=20)
    p.add_argument("--policy")
    p.add_argument("--tag")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results-format", choices=["native", "original"], default="native",
                   help="results.tsv format (see 'run --help')")
    p.set_defaults(func=cmd_demo)
    _hub_commands(sub)
    _research_commands(sub)
    return parser


# == distributed runs (hub/): `hub serve|add-user|leaderboard`, `verify`, `run --hub` ==========
def _hub_commands(sub) -> None:
    from .hub.commands import add_commands
    add_commands(sub)


def _hub_run_flags(p: argparse.ArgumentParser) -> None:
    from .hub.commands import add_run_flags
    add_run_flags(p)


def _hub_contributor(loop, args, reporter) -> None:
    from .hub.commands import attach_contributor
    attach_contributor(loop, args, say=reporter.message if reporter else None)


# == research organisations: `compare` and `evolve-program` (compare.py, evolve.py) ===========
def _research_commands(sub) -> None:
    p = sub.add_parser("compare", help="compare research organisations (program.md variants, "
                                       "each with its agent) on this target, with statistics")
    p.add_argument("programs", nargs="+", metavar="[NAME=]PROGRAM.md[@AGENT]",
                   help="an organisation: a program.md variant, optionally named and paired with "
                        "its agent (explorer.md@claude, tuner=program.md@optuna)")
    _compare_flags(p)
    p.add_argument("--name", help="the comparison's name (default: from its organisations); the "
                                  "same name continues it")
    p.add_argument("-o", "--output", help="directory for compare.json and compare.png "
                                          "(default: .autoresearch/compare/NAME)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("evolve-program", help="meta-research: an agent writes program.md variants, "
                                              "compare keeps a significantly better one")
    p.add_argument("--generations", type=int, default=1, help="rounds of write-and-compare")
    p.add_argument("--variants", type=int, default=1, help="new program.md variants per generation")
    p.add_argument("--writer", help="the agent that writes program.md variants: openai:MODEL, "
                                    "anthropic:MODEL, claude, codex, command:CMD, script:PATH "
                                    "(default: --agent)")
    p.add_argument("--tag", help="meta run name: branch autoresearch/meta-TAG (default: today)")
    p.add_argument("--program", help="the incumbent program.md (default: the target's program.md, "
                                     "or the meta branch's latest winner)")
    _compare_flags(p)
    p.set_defaults(func=cmd_evolve_program)


def _compare_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agent", action="append",
                   help="the agent of each organisation: once for all, or once per organisation "
                        "in order (default: optuna)")
    p.add_argument("--experiments", type=int, help="experiments per run (the baseline and repeats "
                                                   "count)")
    p.add_argument("--hours", type=float, help="wall time of the whole comparison, shared equally "
                                               "between its runs")
    p.add_argument("--repeats", type=int, default=3, help="independent runs per organisation")
    p.add_argument("--workers", type=int, default=1, help="slots shared by all runs, in turns")
    p.add_argument("--policy", help="acceptance policy of every run (default: noise-aware)")
    p.add_argument("--budget", type=float, help="training budget per experiment, seconds")
    p.add_argument("--seed", type=int, default=0, help="base seed (each run gets its own)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (Holm-corrected)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-experiment lines")


def _compare_spec(args, orgs) -> CompareSpec:
    from .compare import CompareSpec

    return CompareSpec(orgs=orgs, name=args.name, repeats=args.repeats,
                       experiments=args.experiments, hours=args.hours, workers=args.workers,
                       policy=args.policy, budget=args.budget, seed=args.seed, alpha=args.alpha)


def _turn_line(turn) -> None:
    console.print(f"  {turn.tag}: {turn.experiments} experiments, turn {turn.seconds:.1f}s — "
                  f"{turn.stopped}", markup=False)


def _reporter_for(target: Target, quiet: bool):
    from .ui import Reporter

    return lambda tag: None if quiet else Reporter(console, target.spec.metric)


def cmd_compare(args) -> int:
    from .compare import parse_organisations, report, run_comparison, write_report

    target = _target(args)
    _warn_uncommitted(target)
    orgs = parse_organisations(args.programs, args.agent, root=target.root)
    spec = _compare_spec(args, orgs)
    spec.check()
    ledger = _ledger(target)
    name = spec.resolved_name()
    console.print(f"[bold]autoresearch compare[/] {_e(name)}: {len(orgs)} organisations x "
                  f"{spec.repeats} repeats on {_e(target.root)} — "
                  + ", ".join(f"{_e(o.name)} ({_e(o.program)} @ {_e(o.agent)})" for o in orgs))
    try:
        record = run_comparison(target, ledger, spec, on_turn=_turn_line,
                                reporter_for=_reporter_for(target, args.quiet))
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: run the same command again to continue "
                      f"comparison {_e(name)}")
        return 130
    rep = report(ledger, record, spec.alpha, target.spec.policy)
    js, png = write_report(target, rep, Path(args.output) if args.output else None)
    if args.json:
        sys.stdout.write(dumps(rep, indent=2) + "\n")
    else:
        print_comparison(rep)
    console.print(f"  report {js}\n  plot   {png}", markup=False)
    return 0


def print_comparison(rep: dict) -> None:
    """The comparison as a table (one row per organisation) and one line per test."""
    from rich.table import Table

    from .compare import Interval

    a = rep["analysis"]
    level = 1 - a["alpha"]
    t = Table(title=f"compare {rep['name']}: {rep['metric']} ({a['metric_direction']}), pooled "
                    f"baseline {a['pooled_baseline'] if a['pooled_baseline'] is None else round(a['pooled_baseline'], 6)}; "
                    f"means over repeats [{level:.0%} t interval]", header_style="bold")
    for col in ("organisation", "runs", "improvement", "per experiment", "per hour", "best",
                "keep rate", "cost $", "failures"):
        t.add_column(col, justify="left" if col in ("organisation", "failures") else "right")
    for o in a["organisations"]:
        iv = {k: Interval(**o[k]) for k in ("improvement", "improvement_per_experiment",
                                            "improvement_per_hour", "best", "keep_rate",
                                            "cost_usd")}
        fails = ", ".join(f"{n} {s}" for s, n in sorted(o["failures"].items())) or "—"
        t.add_row(Text(o["org"]), str(o["runs"]), iv["improvement"].text(),
                  iv["improvement_per_experiment"].text(), iv["improvement_per_hour"].text(),
                  iv["best"].text("{:.6g}"), iv["keep_rate"].text("{:.2f}"),
                  iv["cost_usd"].text("{:.4f}"), Text(fails))
    console.print(t)
    for s in a["tests"]:
        if s["p"] is None:
            verdict = "not tested (each organisation needs 2+ runs with a result)"
        else:
            verdict = (f"{s['better']} is better" if s["significant"] else "no significant difference")
            verdict += (f" (difference {s['difference']:+.4g} [{s['low']:+.4g}, {s['high']:+.4g}], "
                        f"Welch p={s['p']:.3g}, Holm p={s['holm_p']:.3g}, "
                        f"Mann-Whitney p={s['mannwhitney_p']:.3g})")
        console.print(f"  {s['a']} vs {s['b']}: {verdict}", markup=False)


def cmd_evolve_program(args) -> int:
    from .evolve import EvolveSpec, evolve, meta_branch

    tag = check_tag(args.tag or default_tag())
    target = _target(args)
    _warn_uncommitted(target)
    agents = args.agent or ["optuna"]
    if len(agents) != 1:
        raise ConfigError("evolve-program takes one --agent (the research agent of every "
                          "organisation); the writer of program.md is --writer")
    writer = args.writer or agents[0]
    program = None
    if args.program:
        program = Path(args.program)
        if not program.is_file():
            raise ConfigError(f"--program {args.program!r}: no such file — give a program.md variant")
    spec = EvolveSpec(tag=tag, agent=agents[0], writer=writer, generations=args.generations,
                      variants=args.variants, program=program, repeats=args.repeats,
                      experiments=args.experiments, hours=args.hours, workers=args.workers,
                      policy=args.policy, budget=args.budget, seed=args.seed, alpha=args.alpha)
    spec.check()        # bad input leaves nothing behind
    ledger = _ledger(target)
    console.print(f"[bold]autoresearch evolve-program[/] {_e(tag)}: {spec.generations} generation(s) "
                  f"of {spec.variants} variant(s) written by {_e(writer)}, research agent "
                  f"{_e(spec.agent)}, {spec.repeats} repeats; meta branch "
                  f"autoresearch/{meta_branch(tag)}")

    def said(gen) -> None:
        won = (f"[green]{_e(gen.winner)} is significantly better[/]: committed "
               f"{(gen.commit or '')[:10]}" if gen.winner else "no variant is significantly "
               "better: the incumbent stays")
        cost = f" (writer ${gen.writer_cost:.4f})" if gen.writer_cost else ""
        console.print(f"generation {gen.generation}: variants {_e(', '.join(gen.variants) or '—')}"
                      f"{cost}; comparison {_e(gen.comparison)}; {won}")
        for f in gen.failures:
            console.print(f"  writer: {f}", markup=False)

    try:
        evolve(target, ledger, spec, on_turn=None if args.quiet else _turn_line,
               on_generation=said, reporter_for=_reporter_for(target, args.quiet))
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: run the same command again to continue "
                      f"evolve-program {_e(tag)}")
        return 130
    console.print(f"program.md of the winner: git show autoresearch/{meta_branch(tag)}:"
                  f"{PROGRAM_NAME}", markup=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "init":
        args.dir = args.init_dir or args.dir
    if args.command == "demo":
        args.dir = args.demo_dir
    try:
        return args.func(args) or 0
    except AutoresearchError as e:
        first, *rest = str(e).splitlines() or [type(e).__name__]
        err_console.print(Text.assemble(("error:", "bold red"), " ", first), highlight=False)
        for line in rest:
            err_console.print(line, markup=False, highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
