"""What a run amounts to: the best (as an estimate with its uncertainty), counts, cost, slots.

Shared by `autoresearch status` and the dashboard, so both report the same numbers (the loop
asks the same questions of its in-memory run state, `state.py`). Every function here reads a
bounded number of rows through the ledger's indexed queries, however long the run.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from .config import PolicySettings
from .experiment import Kind, Status
from .ledger import Experiment, Ledger
from .policies import Estimate, PolicyContext, Sample, make_policy


def kept_order(e: Experiment) -> tuple[float, int]:
    """When an experiment was kept: keeps form a chain, and the last one is the best."""
    return (e.decision or {}).get("at", 0), e.seq


def best_of(exps: list[Experiment]) -> Experiment | None:
    """The incumbent: the most recently kept experiment."""
    kept = [e for e in exps if e.status == Status.KEEP]
    return max(kept, key=kept_order) if kept else None


def sample_of(ledger: Ledger, tag: str, e: Experiment) -> Sample:
    """Every finite measurement of e's code, and how many of them selected it as the best."""
    ms = [m for m in ledger.measurements(tag, e.tree_sha)
          if m.metric is not None and math.isfinite(m.metric)]
    selection = 0
    if e.status == Status.KEEP and e.kind != Kind.BASELINE:
        # the runs that won it the keep: its own and the repeats made for it
        selection = sum(1 for m in ms if m.id == e.id or m.candidate_of == e.id)
    return Sample(values=[m.metric for m in ms], lines=e.code_lines or 0, selection=selection)


def best_estimate(ledger: Ledger, tag: str, best: Experiment, policy_name: str | None,
                  settings: PolicySettings | None = None) -> Estimate:
    """The best's value as the run's policy reports it: mean, n, and its uncertainty."""
    run = ledger.get_run(tag)
    policy = make_policy(policy_name or (run.policy if run and run.policy else "greedy"))
    ctx = PolicyContext(run.direction if run else "minimize", settings or PolicySettings(),
                        ledger.replicate_groups(tag))
    sample = sample_of(ledger, tag, best)
    if not sample.values:
        return Estimate(best.metric if best.metric is not None else math.nan, 0)
    return policy.estimate(sample, ctx)


def run_summary(ledger: Ledger, tag: str, settings: PolicySettings | None = None) -> dict[str, Any]:
    """What `status` and the dashboard show; a handful of indexed queries, whatever the size."""
    run = ledger.get_run(tag)
    assert run is not None
    totals = ledger.totals(tag)
    best = best_of(ledger.with_status(tag, Status.KEEP))
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
        best_info = {"seq": best.seq, "metric": best.metric, "commit": best.commit_sha,
                     "description": best.description, "estimate": est.to_dict()}
    return {
        "tag": tag, "metric": run.metric, "direction": run.direction, "agent": run.agent,
        "policy": run.policy, "branch": f"autoresearch/{tag}", "experiments": totals["experiments"],
        "counts": totals["counts"], "baseline": baseline,
        "baseline_runs": len(base_values), "best": best_info,
        "improvements": improvements, "cost_usd": cost,
        "cost_per_improvement": cost / improvements if improvements else None,
        "tokens": {"input": totals["input_tokens"], "output": totals["output_tokens"]},
        "slots": slots,
        "running": ledger.running_seqs(tag),
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
