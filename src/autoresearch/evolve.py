"""Meta-research: `autoresearch evolve-program` writes program.md variants and keeps a better one.

Each generation:
1. a writer agent (any backend that writes text: openai:, anthropic:, claude, codex, command:,
   script:) reads the incumbent program.md and the last comparison's results (each
   organisation's figures and best-so-far curve, the changes its runs kept with their diffs, and
   its failure modes) and writes `--variants` new program.md variants; to the agent this is an
   ordinary proposal whose one editable file is program.md;
2. `compare` runs the incumbent and the variants (same target, baseline and budgets);
3. a variant that is significantly better than the incumbent (Welch, Holm-corrected over the
   variants' tests against the incumbent, at alpha) is committed as program.md on the meta branch `autoresearch/meta-TAG`, and
   becomes the incumbent; otherwise the incumbent stays.

Guarantees:
- The meta branch's tip always holds the incumbent: it is created at the target's HEAD (with
  `--program`'s text committed on top when given) and only ever moves to a significant winner,
  with the comparison's figures in the commit message. Git runs only in ratchet.py.
- Every generation is recorded in the ledger as it advances (the variants before they are
  compared, the winner before the branch moves, then the commit); the same command again
  continues where it stopped: written variants are not asked for again, a comparison started is
  continued, a winner recorded but not yet committed is committed once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .agents import AgentContext, AgentError, ProposalsExhausted, make_agent
from .compare import (
    DEFAULT_ALPHA,
    CompareSpec,
    Organisation,
    TurnReport,
    report,
    run_comparison,
    write_report,
)
from .config import Target
from .errors import ConfigError
from .experiment import HistoryEntry, Status
from .ledger import Ledger

REPORT_CHARS = 7_000         # the results shown to the writer, at most
TARGET_CHARS = 3_000         # the target's editable files shown to the writer, at most
DIFF_CHARS = 1_500           # per kept change
CURVE_POINTS = 12            # points of each best-so-far curve shown

META_PROGRAM = """\
You are improving a research organisation. program.md (the editable file below) is the whole of
the instructions that a research agent follows on this target: it proposes one change at a time
to the target's editable files ({editable}); a harness measures each change under a fixed budget
and keeps it only if `{metric}` gets better ({direction}).

Write a new version of program.md that should make that agent improve `{metric}` faster: more
improvement per experiment, fewer crashes and wasted experiments. Use the results below: what the
organisations' runs kept (and how much it gained), what failed and why, how fast each improved.
Keep what worked, drop what did not, and be concrete (which directions to explore, which to
avoid, how big a step to take). Edit program.md only.

{variant_note}

# Results of the last comparison
{results}

# The target's editable files at the start (for reference: you edit program.md only)
{target_files}
"""


@dataclass
class EvolveSpec:
    tag: str
    agent: str                         # the research agent of every organisation
    writer: str                        # the agent that writes program.md variants
    generations: int = 1
    variants: int = 1
    program: Path | None = None        # the first incumbent (default: the target's program.md)
    repeats: int = 3
    experiments: int | None = None
    hours: float | None = None         # per generation's comparison
    workers: int = 1
    policy: str | None = None
    budget: float | None = None
    seed: int = 0
    alpha: float = DEFAULT_ALPHA

    def check(self) -> None:
        if self.generations < 1:
            raise ConfigError(f"--generations must be at least 1 (got {self.generations})")
        if self.variants < 1:
            raise ConfigError(f"--variants must be at least 1 (got {self.variants})")
        if self.writer.split(":", 1)[0] == "optuna":
            raise ConfigError("--writer optuna cannot write program.md (it tunes numbers) — give "
                              "an agent that writes text: openai:MODEL, anthropic:MODEL, claude, "
                              "codex, command:CMD or script:PATH")
        self.compare_spec([], 1).check()

    def compare_spec(self, orgs: list[Organisation], generation: int) -> CompareSpec:
        return CompareSpec(orgs=orgs,
                           name=f"meta-{self.tag}-g{generation}"[:40], repeats=self.repeats,
                           experiments=self.experiments, hours=self.hours, workers=self.workers,
                           policy=self.policy, budget=self.budget,
                           seed=self.seed + 100_000 * generation, alpha=self.alpha)


@dataclass
class Generation:
    """What one generation did, for the caller's lines."""

    generation: int
    variants: list[str]
    comparison: str
    winner: str | None
    commit: str | None
    failures: list[str] = field(default_factory=list)
    writer_cost: float = 0.0           # USD the writer's answers cost (failed ones included)


def meta_branch(tag: str) -> str:
    return f"meta-{tag}"


def evolve(target: Target, ledger: Ledger, spec: EvolveSpec, *,
           on_turn: Callable[[TurnReport], None] | None = None,
           on_generation: Callable[[Generation], None] | None = None,
           reporter_for: Callable[[str], Any] | None = None) -> list[Generation]:
    """Run (or continue) the generations; what each did."""
    from .ratchet import Ratchet

    spec.check()
    ratchet = Ratchet(target.root)
    try:
        _open_branch(target, ratchet, spec)
        out = []
        for g in range(1, spec.generations + 1):
            gen = _generation(target, ledger, ratchet, spec, g, on_turn, reporter_for)
            out.append(gen)
            if on_generation:
                on_generation(gen)
        return out
    finally:
        ratchet.close()


def _rel(target: Target) -> str:
    return target.program_path.relative_to(target.root).as_posix()


def _open_branch(target: Target, ratchet: Any, spec: EvolveSpec) -> None:
    branch = meta_branch(spec.tag)
    if ratchet.branch_commit(branch) is not None:
        return
    head = ratchet.head()
    start = head
    if spec.program is not None:
        text = spec.program.read_text(encoding="utf-8")
        if text != ratchet.read_files(head, [_rel(target)]).get(_rel(target)):
            start = ratchet.make_commit(head, f"autoresearch evolve-program {spec.tag}: the first "
                                              f"incumbent ({spec.program})",
                                        files={_rel(target): text}).sha
    ratchet.set_branch(branch, start)


def _incumbent(target: Target, ratchet: Any, spec: EvolveSpec) -> tuple[str, str]:
    tip = ratchet.branch_commit(meta_branch(spec.tag))
    text = ratchet.read_files(tip, [_rel(target)]).get(_rel(target), "")
    return tip, text


def _generation(target: Target, ledger: Ledger, ratchet: Any, spec: EvolveSpec, g: int,
                on_turn, reporter_for) -> Generation:
    meta = meta_branch(spec.tag)
    done = {r["generation"]: r for r in ledger.generations(meta)}
    rec = done.get(g)
    if rec is not None and rec.get("finished"):
        return Generation(g, [v["name"] for v in rec["variants"]], rec["comparison"],
                          rec.get("winner"), rec.get("commit"), rec.get("failures", []),
                          rec.get("writer_cost", 0.0))
    tip, incumbent = _incumbent(target, ratchet, spec)
    if rec is None:
        previous = done.get(g - 1)
        results = _previous_results(target, ledger, previous, ratchet) if previous else None
        variants, failures, cost = _write_variants(target, ratchet, spec, g, incumbent, tip,
                                                   results, list(done.values()))
        rec = {"generation": g, "incumbent_commit": tip, "incumbent": incumbent,
               "variants": variants, "failures": failures, "writer_cost": cost,
               "comparison": spec.compare_spec([], g).name, "finished": False}
        ledger.record_generation(meta, g, rec)
    where = target.state_dir / "meta" / spec.tag / f"g{g}"
    where.mkdir(parents=True, exist_ok=True)
    (where / "incumbent.md").write_text(rec["incumbent"])
    orgs = [Organisation("incumbent", str(where / "incumbent.md"), rec["incumbent"], spec.agent)]
    for v in rec["variants"]:
        path = where / f"{v['name']}.md"
        path.write_text(v["text"])
        orgs.append(Organisation(v["name"], str(path), v["text"], spec.agent))
    if len(orgs) < 2:
        rec.update(finished=True, winner=None, commit=None)
        ledger.record_generation(meta, g, rec)
        return Generation(g, [], rec["comparison"], None, None, rec["failures"],
                          rec["writer_cost"])
    cspec = spec.compare_spec(orgs, g)
    try:
        record = run_comparison(target, ledger, cspec, on_turn=on_turn, reporter_for=reporter_for)
    except ConfigError as e:         # a continued generation run with other settings
        raise ConfigError(str(e).replace("give another --name", "give another --tag")) from None
    rep = report(ledger, record, spec.alpha, target.spec.policy)
    write_report(target, rep, where)
    winner = _winner(rep, [v["name"] for v in rec["variants"]], spec.alpha)
    rec.update(winner=winner, analysis=rep["analysis"])
    ledger.record_generation(meta, g, rec)          # the winner, before the branch moves
    commit = None
    if winner is not None:
        text = next(v["text"] for v in rec["variants"] if v["name"] == winner)
        tip, current = _incumbent(target, ratchet, spec)
        if current == text:                          # committed before a kill: once is enough
            commit = tip
        else:
            figures = {o["org"]: o["improvement"] for o in rep["analysis"]["organisations"]}
            imp, inc = figures[winner], figures["incumbent"]
            commit = ratchet.make_commit(
                tip, f"program.md: generation {g} winner {winner} (evolve-program {spec.tag})\n\n"
                     f"improvement {_num(imp['mean'])} [{_num(imp['low'])}, {_num(imp['high'])}] "
                     f"against the incumbent's {_num(inc['mean'])} [{_num(inc['low'])}, "
                     f"{_num(inc['high'])}] in comparison {rec['comparison']} "
                     f"({spec.repeats} repeats each)", files={_rel(target): text}).sha
            ratchet.set_branch(meta, commit, expect=tip)
    rec.update(commit=commit, finished=True)
    ledger.record_generation(meta, g, rec)
    return Generation(g, [v["name"] for v in rec["variants"]], rec["comparison"], winner, commit,
                      rec["failures"], rec.get("writer_cost", 0.0))


def _winner(rep: dict[str, Any], variants: list[str], alpha: float) -> str | None:
    """The variant with the largest mean improvement among those significantly better than the
    incumbent (Welch, Holm over the variant-against-incumbent tests only); None when none is."""
    from .compare import holm

    a = rep["analysis"]
    against = [t for t in a["tests"] if "incumbent" in (t["a"], t["b"])]
    better = []
    for t, p in zip(against, holm([t["p"] for t in against]), strict=True):
        variant = t["b"] if t["a"] == "incumbent" else t["a"]
        gain = t["difference"] if t["a"] == variant else -t["difference"]
        if p is not None and p < alpha and gain > 0 and variant in variants:
            better.append(variant)
    if not better:
        return None
    mean = {o["org"]: o["improvement"]["mean"] for o in a["organisations"]}
    return max(better, key=lambda v: mean.get(v) if mean.get(v) is not None else -math.inf)


# == the writer ================================================================================
def _write_variants(target: Target, ratchet: Any, spec: EvolveSpec, g: int, incumbent: str,
                    tip: str, results: str | None, history: list[dict[str, Any]]
                    ) -> tuple[list[dict[str, Any]], list[str], float]:
    """Ask the writer for `spec.variants` new program.md texts; (variants, why others failed,
    what the writer cost in USD)."""
    rel = _rel(target)
    code = _target_files(editable_files(target, ratchet, tip))
    agent = make_agent(spec.writer, target, files={rel: incumbent}, seed=spec.seed + g)
    agent.check()
    # to the writer, program.md is the editable file and the research's improvement the metric
    meta_spec = target.spec.model_copy(update={
        "editable": [rel], "metric": f"improvement of {target.spec.metric}",
        "direction": "maximize"})
    variants: list[dict[str, Any]] = []
    failures: list[str] = []
    cost = 0.0
    entries = _history(history)
    last = max(history, key=lambda r: r["generation"]) if history else None
    mine = ((last or {}).get("analysis") or {}).get("organisations", [])
    now = ((last or {}).get("winner")) or "incumbent"     # the incumbent now, last compared as
    incumbent_gain = next((o["improvement"]["mean"] for o in mine if o["org"] == now), None)
    best = HistoryEntry(id=0, seq=0, status=Status.KEEP, metric=incumbent_gain,
                        description="the incumbent program.md (the meta branch's tip)")
    where = target.state_dir / "meta" / spec.tag / f"g{g}"
    try:
        for i in range(1, spec.variants + 1):
            note = (f"This is variant {i} of {spec.variants} of generation {g}: make it differ "
                    f"from the others in its approach." if spec.variants > 1 else "")
            program = META_PROGRAM.format(
                editable=", ".join(target.spec.editable), metric=target.spec.metric,
                direction=target.spec.direction, variant_note=note, target_files=code,
                results=results or "No comparison has run yet: this is the first generation. "
                                   "Judge from program.md and the target itself.")

            def workspace(i: int = i) -> Path:
                ws = where / f"writer-{i}"
                ws.mkdir(parents=True, exist_ok=True)
                (ws / rel).parent.mkdir(parents=True, exist_ok=True)
                (ws / rel).write_text(incumbent)
                (ws / "RESULTS.md").write_text(results or "No comparison has run yet.\n")
                (ws / "TARGET.md").write_text(code)
                return ws

            ctx = AgentContext(program=program, files={rel: incumbent}, history=entries,
                               best=best, spec=meta_spec,
                               base_commit=tip, experiment_seq=len(entries) + i,
                               workspace=workspace, editable=lambda p: p == rel,
                               log_dir=where / "writer")
            try:
                proposal = agent.propose(ctx)
            except ProposalsExhausted as e:
                failures.append(f"variant {i}: the writer has no more proposals ({e})")
                break
            except AgentError as e:
                failures.append(f"variant {i}: {e.reason}")
                cost += e.usage.cost_usd
                continue
            cost += proposal.usage.cost_usd
            text = (proposal.files or {}).get(rel)
            if proposal.patch and text is None:
                failures.append(f"variant {i}: the writer sent a patch; program.md variants are "
                                f"whole files or SEARCH/REPLACE edits")
                continue
            if not text or not text.strip() or text == incumbent:
                failures.append(f"variant {i}: the writer left program.md empty or unchanged")
                continue
            if any(text == v["text"] for v in variants):
                failures.append(f"variant {i}: the same text as an earlier variant")
                continue
            variants.append({"name": f"g{g}v{i}", "text": text,
                             "description": proposal.description,
                             "cost_usd": proposal.usage.cost_usd})
    finally:
        agent.close()
    return variants, failures, cost


def editable_files(target: Target, ratchet: Any, commit: str) -> dict[str, str]:
    """The target's editable files at a commit."""
    from .globs import matches

    spec = target.spec
    paths = [p for p in ratchet.list_files(commit)
             if matches(p, spec.editable) and not matches(p, spec.locked_globs)]
    return ratchet.read_files(commit, paths)


def _target_files(files: dict[str, str]) -> str:
    text = "\n\n".join(f"{p}\n```\n{t}\n```" for p, t in sorted(files.items()))
    return text if len(text) <= TARGET_CHARS else text[:TARGET_CHARS] + "\n[... cut ...]"


def _history(records: list[dict[str, Any]]) -> list[HistoryEntry]:
    """Earlier generations' variants as the writer's history: kept (won) or discarded, with
    their mean improvement as the metric."""
    out: list[HistoryEntry] = []
    for rec in sorted(records, key=lambda r: r["generation"]):
        orgs = {o["org"]: o for o in (rec.get("analysis") or {}).get("organisations", [])}
        for v in rec.get("variants", []):
            mean = (orgs.get(v["name"]) or {}).get("improvement", {}).get("mean")
            status = Status.KEEP if rec.get("winner") == v["name"] else Status.DISCARD
            out.append(HistoryEntry(id=len(out) + 1, seq=len(out) + 1, status=status,
                                    metric=mean, description=f"{v['name']}: {v['description']}"))
    return out


def _previous_results(target: Target, ledger: Ledger, rec: dict[str, Any],
                      ratchet: Any) -> str | None:
    """The previous generation's comparison as the writer reads it."""
    from .compare import collect

    record = ledger.get_comparison(rec["comparison"])
    if record is None:
        return None
    settings = target.spec.policy
    rep = report(ledger, record, (rec.get("analysis") or {}).get("alpha", DEFAULT_ALPHA), settings)
    return results_text(ledger, rep, ratchet, collect(ledger, record["name"], settings))


def results_text(ledger: Ledger, rep: dict[str, Any], ratchet: Any, runs: list[Any],
                 max_chars: int = REPORT_CHARS) -> str:
    """A comparison for a reader: figures, curves, kept changes with diffs, failure modes."""
    a = rep["analysis"]
    lines = [f"Comparison {rep['name']}: metric {rep['metric']} ({a['metric_direction']}), pooled "
             f"baseline {a['pooled_baseline']}. Improvement = pooled baseline minus the best "
             f"reached (more is better); means over repeats with {1 - a['alpha']:.0%} intervals."]
    for o in a["organisations"]:
        imp, kr = o["improvement"], o["keep_rate"]
        lines.append(f"\n## {o['org']}: improvement {_num(imp['mean'])} [{_num(imp['low'])}, "
                     f"{_num(imp['high'])}], keep rate {_num(kr['mean'])}, {o['runs']} runs, "
                     f"{o['experiments']} experiments; failures: "
                     + (", ".join(f"{n} {s}" for s, n in o["failures"].items()) or "none"))
        for r in (r for r in runs if r.org == o["org"]):
            step = max(1, len(r.curve) // CURVE_POINTS)
            curve = ", ".join(_num(v) for v in r.curve[::step])
            lines.append(f"- run {r.tag}: best {_num(r.best)}; best so far: {curve}")
            for e in ledger.with_status(r.tag, Status.KEEP):
                if e.parent and e.commit_sha:
                    diff = ratchet.diff(e.parent, e.commit_sha)
                    lines.append(f"  kept #{e.seq} ({e.description}), {rep['metric']} "
                                 f"{_num(e.metric)}:\n```diff\n{diff[:DIFF_CHARS]}\n```")
            reasons = {}
            for e in ledger.experiments(r.tag):
                if e.status.failed and e.reason:
                    reasons.setdefault(e.status.value, e.reason.splitlines()[0][:200])
            for s, why in reasons.items():
                lines.append(f"  {s}: {why}")
    for t in a["tests"]:
        if t["p"] is not None:
            lines.append(f"\n{t['a']} vs {t['b']}: difference {_num(t['difference'])}, Holm p "
                         f"{_num(t['holm_p'])}" + (f": {t['better']} is better"
                                                    if t["significant"] else ""))
    text = "\n".join(lines)
    return text if len(text) <= max_chars else text[:max_chars] + "\n[... cut ...]"


def _num(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4g}"


__all__ = ["EvolveSpec", "Generation", "evolve", "meta_branch", "results_text"]
