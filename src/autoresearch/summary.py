"""What a run amounts to: the best (as an estimate with its uncertainty), counts, cost, slots.

Shared by `autoresearch status`, the CLI's final lines, results.tsv, the plot and the dashboard,
so all report the same numbers. The loop asks the same questions of its in-memory run state
(`state.py`) through the pure functions here (`report_best`, `divergence`), which take samples,
not a ledger. The ledger views read a bounded number of rows through the ledger's indexed
queries (per kept experiment at most), however long the run.

There is ONE reported best (`ReportedBest`): the policy's estimate of the best over its runs
made under the latest measuring conditions, with its gain against the baseline taken from runs
of the same conditions.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import PolicySettings, TargetSpec
from .experiment import Kind, Status
from .ledger import MEASURED, Experiment, Ledger
from .policies import Estimate, Policy, PolicyContext, Sample, make_policy


def kept_order(e: Experiment) -> tuple[float, int]:
    """When an experiment was kept: keeps form a chain, and the last one is the best."""
    return (e.decision or {}).get("at", 0), e.seq


def best_of(exps: list[Experiment]) -> Experiment | None:
    """The incumbent: the most recently kept experiment."""
    kept = [e for e in exps if e.status == Status.KEEP]
    return max(kept, key=kept_order) if kept else None


def sample_from(e: Experiment, measurements: Iterable[Experiment]) -> Sample:
    """Every finite measurement of e's code (with when each was made, as experiment numbers),
    and how many of them selected it as the best. One rule for the run state and the ledger."""
    ms = [m for m in measurements if m.metric is not None and math.isfinite(m.metric)]
    selection, shrink = 0, 0.0
    if e.status == Status.KEEP and e.kind != Kind.BASELINE:
        # the runs that won it the keep: its own and the repeats made for it
        selection = sum(1 for m in ms if m.id == e.id or m.candidate_of == e.id)
        evidence = (e.decision or {}).get("evidence") or {}
        if isinstance(evidence.get("shrink"), (int, float)) and math.isfinite(evidence["shrink"]):
            shrink = float(evidence["shrink"])
    return Sample(values=[m.metric for m in ms], lines=e.code_lines or 0, selection=selection,
                  at=[m.seq for m in ms], shrink=shrink, seeds=[int(m.seed or 0) for m in ms])


def sample_of(ledger: Ledger, tag: str, e: Experiment) -> Sample:
    """sample_from, with the measurements read from the ledger."""
    return sample_from(e, ledger.measurements(tag, e.tree_sha))


def _context(ledger: Ledger, tag: str, settings: PolicySettings | None,
             policy_name: str | None = None) -> tuple[Policy, PolicyContext]:
    run = ledger.get_run(tag)
    policy = make_policy(policy_name or (run.policy if run and run.policy else "greedy"))
    ctx = PolicyContext(run.direction if run else "minimize", settings or PolicySettings(),
                        ledger.replicate_groups(tag))
    return policy, ctx


def best_estimate(ledger: Ledger, tag: str, best: Experiment, policy_name: str | None = None,
                  settings: PolicySettings | None = None) -> Estimate:
    """The best's value as the run's policy reports it: mean, n, and its uncertainty."""
    policy, ctx = _context(ledger, tag, settings, policy_name)
    sample = sample_of(ledger, tag, best)
    if not sample.values:
        return Estimate(best.metric if best.metric is not None else math.nan, 0)
    return policy.estimate(sample, ctx)


@dataclass
class ReportedBest:
    """THE best of a run, as every view reports it (live line, final line, `status`, the `try`
    verdict, the commit message, results.tsv, the plot and the dashboard).

    value: the mean of the best's runs made under the latest measuring conditions (the policy's
    `estimate`; greedy: all its runs); sem: its standard error where the noise is known; gain:
    value minus the baseline's mean, both taken from runs of the same conditions (the latest
    epoch in which both were measured), so a machine that got faster is not a gain.
    """

    seq: int
    value: float | None
    sem: float | None = None
    n: int = 0
    since: int | None = None
    gain: float | None = None
    gain_sem: float | None = None
    same_conditions: bool | None = None
    description: str = ""
    commit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def report_best(policy: Policy, ctx: PolicyContext, best: Experiment, sample: Sample,
                base: Experiment, base_sample: Sample) -> ReportedBest:
    """The reported best from the samples of the best and of the baseline (no ledger: the
    loop passes its in-memory samples, the views the ledger's)."""
    if not sample.values:
        return ReportedBest(best.seq, best.metric, description=best.description,
                            commit=best.commit_sha)
    est = policy.estimate(sample, ctx)
    gain, gain_sem, same = None, None, None
    if base.id == best.id:
        gain, gain_sem, same = 0.0, 0.0, True
    else:
        values, at = list(sample.values), list(sample.at)
        while values:
            cur_v, cur_at = policy.current(Sample(values, sample.lines, sample.selection, at,
                                                  sample.shrink), ctx)
            since = min(cur_at) if cur_at else 0
            base_now = [v for v, a in zip(base_sample.values, base_sample.at, strict=True) if a >= since]
            older = [(v, a) for v, a in zip(values, at, strict=True) if a < since]
            if base_now or not older:
                ref = base_now or base_sample.values
                if ref:
                    gain = sum(cur_v) / len(cur_v) - sum(ref) / len(ref)
                    same = bool(base_now) or len(cur_v) == len(values)
                    if est.sigma is not None:
                        gain_sem = est.sigma * math.sqrt(1 / len(cur_v) + 1 / len(ref))
                break
            values, at = [v for v, _ in older], [a for _, a in older]
    return ReportedBest(best.seq, est.mean, est.sem, est.n, est.since, gain, gain_sem, same,
                        best.description, best.commit_sha)


def reported_best(ledger: Ledger, tag: str, settings: PolicySettings | None = None
                  ) -> ReportedBest | None:
    """The run's reported best, read from the ledger (see ReportedBest)."""
    best = best_of(ledger.with_status(tag, Status.KEEP))
    base = ledger.by_seq(tag, 1)
    if best is None or base is None:
        return None
    policy, ctx = _context(ledger, tag, settings)
    return report_best(policy, ctx, best, sample_of(ledger, tag, best), base,
                       sample_of(ledger, tag, base))


def best_text(rep: ReportedBest | None) -> str:
    """`0.116488 ± 0.001200 (n=3) (#13), -0.756671 vs baseline`: the reported best in one line."""
    if rep is None or rep.value is None:
        return "—"
    text = f"{format_best(rep.value, rep.sem, rep.n)} (#{rep.seq})"
    if rep.gain is not None and rep.gain != 0:
        text += f", {rep.gain:+.6f}"
        if rep.gain_sem:
            text += f" ± {rep.gain_sem:.6f}"
        text += " vs baseline" + ("" if rep.same_conditions else
                                  " (measured under other conditions)")
    return text


def value_of(policy: Policy, ctx: PolicyContext, sample: Sample) -> float | None:
    """An experiment's value as the run reports it: the policy's estimate over its code's runs."""
    return policy.estimate(sample, ctx).mean if sample.values else None


def reported_values(ledger: Ledger, tag: str, exps: list[Experiment] | None = None
                    ) -> dict[int, float]:
    """experiment id -> its value as the run reports it (`value_of`) for every measured
    experiment but repeats; `exps` defaults to the run's kept experiments."""
    policy, ctx = _context(ledger, tag, None)
    out: dict[int, float] = {}
    for e in exps if exps is not None else ledger.with_status(tag, Status.KEEP):
        if e.metric is None or e.kind == Kind.REPEAT:
            continue
        v = value_of(policy, ctx, sample_of(ledger, tag, e))
        if v is not None:
            out[e.id] = v
    return out


def format_best(value: float | None, sem: float | None = None, n: int | None = None) -> str:
    """How the best is written everywhere: `0.123456 ± 0.000800 (n=3)`."""
    if value is None:
        return "—"
    text = f"{value:.6f}"
    if sem:
        text += f" ± {sem:.6f}"
    if n and n > 1:
        text += f" (n={n})"
    return text


def holdout_of(e: Experiment) -> float | None:
    """The holdout metric recorded in an experiment's decision, if any."""
    h = (e.decision or {}).get("holdout")
    return float(h) if isinstance(h, (int, float)) and math.isfinite(h) else None


def divergence(policy: Policy, ctx: PolicyContext, kept: Experiment, mine: Sample,
               refs: list[tuple[Experiment, Sample]]) -> dict[str, Any] | None:
    """The Goodhart alarm for a newly kept experiment, or None (pure: samples given).

    It fires when the validation metric improved against an earlier point of the kept chain
    (`refs`: the previous keep with a holdout value, and the baseline) while the holdout metric
    got worse by more than its noise: 3 * sqrt(2) holdout sds, the holdout sd taken to be the
    validation noise at the best's level scaled to the holdout's magnitude (the same relative
    noise), or the holdout's printed precision for a deterministic metric.
    """
    from .policies.noise import printed_resolution

    h = holdout_of(kept)
    if h is None or not mine.values:
        return None
    sign = 1.0 if ctx.direction == "maximize" else -1.0
    v = sum(mine.values) / mine.n
    sigma = policy.estimate(mine, ctx).sigma or 0.0
    for ref, rs in refs:
        h_ref = holdout_of(ref)
        if not rs.values or h_ref is None:
            continue
        v_ref = sum(rs.values) / rs.n
        dv, dh = sign * (v - v_ref), sign * (h - h_ref)
        noise = sigma * abs(h_ref) / abs(v_ref) if v_ref else 0.0
        threshold = (3 * math.sqrt(2) * noise if noise > 0
                     else max(printed_resolution(h), printed_resolution(h_ref)))
        if dv > 0 and -dh > threshold:
            return {"seq": kept.seq, "against": ref.seq, "validation_change": v - v_ref,
                    "holdout_change": h - h_ref, "holdout": h, "holdout_against": h_ref,
                    "threshold": threshold}
    return None


def holdout_refs(chain: list[Experiment]) -> list[Experiment]:
    """What a new keep's holdout is compared with: the latest earlier keep with a holdout value
    and the baseline (`chain`: the earlier keeps, in kept order)."""
    with_h = [e for e in chain if holdout_of(e) is not None]
    return ([with_h[-1]] if with_h else []) + [e for e in with_h[:1] if e.kind == Kind.BASELINE]


def holdout_divergence(ledger: Ledger, tag: str, spec: TargetSpec, kept: Experiment
                       ) -> dict[str, Any] | None:
    """`divergence` for a kept experiment, read from the ledger."""
    chain = sorted((e for e in ledger.with_status(tag, Status.KEEP) if e.id != kept.id),
                   key=kept_order)
    policy, ctx = _context(ledger, tag, spec.policy)
    return divergence(policy, ctx, kept, sample_of(ledger, tag, kept),
                      [(r, sample_of(ledger, tag, r)) for r in holdout_refs(chain)])


def holdout_alarms(exps: list[Experiment]) -> list[dict[str, Any]]:
    """Every divergence alarm among `exps`, oldest first."""
    return [dict((e.decision or {})["holdout_alarm"], status=e.status.value) for e in exps
            if (e.decision or {}).get("holdout_alarm")]


def run_summary(ledger: Ledger, tag: str, settings: PolicySettings | None = None) -> dict[str, Any]:
    """What `status` and the dashboard show; a handful of indexed queries, whatever the size."""
    run = ledger.get_run(tag)
    assert run is not None
    totals = ledger.totals(tag)
    kept = ledger.with_status(tag, Status.KEEP)
    kept_values = reported_values(ledger, tag, kept)
    best = best_of(kept)
    base = ledger.by_seq(tag, 1)
    cost, improvements = totals["cost_usd"], totals["improvements"]
    now = time.time()
    slot_rows = ledger.slots(tag)
    by_id = ledger.by_ids(s["experiment_id"] for s in slot_rows if s["experiment_id"])
    slots = []
    for s in slot_rows:
        e = by_id.get(s["experiment_id"]) if s["experiment_id"] else None
        slots.append({"slot": s["slot"], "gpu": s["gpu"], "host": s["host"],
                      "experiment": e.seq if e else None,
                      "description": e.description if e else None,
                      "running_for": round(now - s["since"], 1) if e else None})
    baseline = None
    base_values = sample_of(ledger, tag, base).values if base else []
    if base is not None and base.metric is not None:
        values = base_values or [base.metric]
        baseline = sum(values) / len(values)   # all its runs, not the first draw
    best_info = None
    if best is not None:
        est = best_estimate(ledger, tag, best, run.policy, settings)
        rep = reported_best(ledger, tag, settings)
        best_info = {"seq": best.seq, "metric": best.metric, "commit": best.commit_sha,
                     "description": best.description, "estimate": est.to_dict(),
                     "reported": rep.to_dict() if rep else None}
    return {
        "tag": tag, "metric": run.metric, "direction": run.direction, "agent": run.agent,
        "org": run.org,
        "policy": run.policy, "strategy": run.strategy or "ratchet",
        "operators": ledger.operator_counts(tag),
        "branch": f"autoresearch/{tag}", "experiments": totals["experiments"],
        "scale": run.scale, "source": run.source,
        "counts": totals["counts"], "baseline": baseline,
        "baseline_runs": len(base_values), "best": best_info,
        "improvements": improvements, "cost_usd": cost,
        "cost_per_improvement": cost / improvements if improvements else None,
        "tokens": {"input": totals["input_tokens"], "output": totals["output_tokens"]},
        "slots": slots,
        "running": ledger.running_seqs(tag),
        # kept experiments at their reported value (the plot's and the dashboard's best line)
        "kept_values": {str(e.seq): kept_values[e.id] for e in kept if e.id in kept_values},
        "holdout": {"baseline": holdout_of(base) if base else None,
                    "best": holdout_of(best) if best else None,
                    "alarms": holdout_alarms(ledger.with_decision_key(tag, "holdout_alarm"))},
        "updated": now,
    }


def experiment_detail(ledger: Ledger, tag: str, seq: int, root: Path,
                      log_lines: int) -> dict[str, Any] | None:
    """One experiment as `show` prints it and the dashboard's drawer shows it: its row, the
    candidate it was measured for, its repeats, its diff against its parent and its log tail.
    None when the run has no such experiment."""
    from .errors import AutoresearchError
    from .export import row
    from .metrics import tail_lines
    from .ratchet import Ratchet

    e = ledger.by_seq(tag, seq)
    if e is None:
        return None
    d = row(e)
    cand = ledger.get(e.candidate_of) if e.candidate_of is not None else None
    d["candidate_seq"] = cand.seq if cand is not None else None
    node = ledger.get(e.node_parent) if e.node_parent is not None else None
    d["node_seq"] = node.seq if node is not None else None     # tree search: its parent node
    d["repeats"] = [{"seq": r.seq, "status": r.status.value, "metric": r.metric}
                    for r in ledger.repeats_of(e.id)]
    d["diff"] = d["diff_error"] = None
    if e.commit_sha and e.parent:
        try:
            d["diff"] = Ratchet(root).diff(e.parent, e.commit_sha)
        except AutoresearchError as err:  # a commit gone after a gc, git missing
            d["diff_error"] = str(err)
    d["log_tail"] = tail_lines(Path(e.log_path), log_lines) if e.log_path else []
    return d


@dataclass
class AgentYield:
    """What one agent of a run (a portfolio member) brought: `status`, `compare` and the JSON."""

    agent: str
    role: str | None
    proposals: int            # its candidates: run, refused, failed and near-duplicates alike
    kept: int                 # of them, kept (directly or after a rebase)
    keep_rate: float | None   # kept / proposals
    improvement: float        # the best's gain it contributed (metric units, positive = better)
    cost_usd: float           # what its proposals cost, repeats of them excluded (they cost none)


def yield_by_agent(rows: list[Experiment], direction: str) -> list[AgentYield]:
    """Per agent and role, in order of first proposal. The improvement of a keep is the step
    it made along the kept chain (the mean of its measurements against the previous best's),
    credited to the agent that proposed it; the baseline is nobody's improvement."""
    by_tree: dict[str, list[float]] = {}
    for e in rows:
        if e.tree_sha and e.metric is not None and e.status in MEASURED:
            by_tree.setdefault(e.tree_sha, []).append(e.metric)
    counts: dict[tuple[str, str | None], tuple[int, float]] = {}
    for e in rows:
        if e.kind == Kind.CANDIDATE:
            n, cost = counts.get((e.agent or "-", e.role), (0, 0.0))
            counts[(e.agent or "-", e.role)] = (n + 1, cost + e.cost_usd)
    kept = [e for e in rows if e.status == Status.KEEP]
    return _yields(counts, kept, lambda e: by_tree.get(e.tree_sha or "", []), direction)


def agent_yield(ledger: Ledger, tag: str, direction: str) -> list[AgentYield]:
    """yield_by_agent of a run, read cheaply: counts and costs by one SQL aggregate, and the
    measurements of the kept experiments only (what `status` and its JSON print)."""
    counts = {(agent or "-", role): (n, cost)
              for agent, role, n, cost in ledger.proposals_by_agent(tag)}
    kept = ledger.with_status(tag, Status.KEEP)
    return _yields(counts, kept, lambda e: [m.metric for m in ledger.measurements(tag, e.tree_sha)
                                            if m.metric is not None], direction)


def _yields(counts: dict[tuple[str, str | None], tuple[int, float]], kept: list[Experiment],
            values: Any, direction: str) -> list[AgentYield]:
    """The one rule of both: proposals and cost per agent, gains along the kept chain."""
    sign = -1.0 if direction == "minimize" else 1.0
    out = {key: AgentYield(key[0], key[1], n, 0, None, 0.0, cost)
           for key, (n, cost) in counts.items()}

    def mean(e: Experiment) -> float | None:
        finite = [v for v in values(e) if math.isfinite(v)]
        return sum(finite) / len(finite) if finite else e.metric

    chain = sorted(kept, key=kept_order)
    for before, after in zip(chain, chain[1:], strict=False):
        if after.kind == Kind.BASELINE:
            continue
        key = (after.agent or "-", after.role)
        y = out.setdefault(key, AgentYield(key[0], key[1], 0, 0, None, 0.0, 0.0))
        y.kept += 1
        a, b = mean(before), mean(after)
        if a is not None and b is not None:
            y.improvement += sign * (b - a)
    for y in out.values():
        y.keep_rate = y.kept / y.proposals if y.proposals else None
    return list(out.values())
