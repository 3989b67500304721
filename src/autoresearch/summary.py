"""What a run amounts to: the best (as an estimate with its uncertainty), counts, cost, slots.

Shared by the loop (samples for the policy), `autoresearch status` and the dashboard, so all
three report the same numbers.
"""

from __future__ import annotations

import math
import time
from typing import Any

from .config import PolicySettings
from .experiment import Status
from .ledger import MEASURED, Experiment, Ledger
from .policies import PolicyContext, Sample, make_policy


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
    if e.status == Status.KEEP and e.kind != "baseline":
        # the runs that won it the keep: its own and the repeats made for it
        selection = sum(1 for m in ms if m.id == e.id or m.candidate_of == e.id)
    return Sample(values=[m.metric for m in ms], lines=e.code_lines or 0, selection=selection,
                  at=[m.seq for m in ms])


def replicate_groups(ledger: Ledger, tag: str) -> list[list[float]]:
    groups: dict[str, list[float]] = {}
    exps = ledger.experiments(tag)
    for e in exps:
        if e.metric is not None and e.status in MEASURED:
            groups.setdefault(e.tree_sha or "", []).append(e.metric)
    return [g for g in groups.values() if len(g) >= 2]


def _context(ledger: Ledger, tag: str, settings: PolicySettings | None) -> tuple[Any, PolicyContext]:
    run = ledger.get_run(tag)
    policy = make_policy(run.policy if run and run.policy else "greedy")
    ctx = PolicyContext(run.direction if run else "minimize", settings or PolicySettings(),
                        replicate_groups(ledger, tag))
    return policy, ctx


def best_estimate(ledger: Ledger, tag: str, best: Experiment, policy_name: str | None = None,
                  settings: PolicySettings | None = None) -> dict[str, Any]:
    """The best's value as the run's policy reports it: mean, n, and its uncertainty."""
    policy, ctx = _context(ledger, tag, settings)
    if policy_name:
        policy = make_policy(policy_name)
    sample = sample_of(ledger, tag, best)
    if not sample.values:
        return {"mean": best.metric, "n": 0, "sem": None}
    return policy.estimate(sample, ctx)


def reported_best(ledger: Ledger, tag: str, settings: PolicySettings | None = None
                  ) -> dict[str, Any] | None:
    """THE best of a run, as every view reports it (live line, final line, `status`, the `try`
    verdict, the commit message, results.tsv, the plot and the dashboard).

    value: the mean of the best's runs made under the latest measuring conditions (the policy's
    `estimate`; greedy: all its runs); sem: its standard error where the noise is known;
    gain: value minus the baseline's mean, both taken from runs of the same conditions (the
    latest epoch in which both were measured), so a machine that got faster is not a gain.
    """
    exps = ledger.experiments(tag)
    best = best_of(exps)
    if best is None:
        return None
    policy, ctx = _context(ledger, tag, settings)
    sample = sample_of(ledger, tag, best)
    if not sample.values:
        return {"seq": best.seq, "value": best.metric, "sem": None, "n": 0, "gain": None,
                "gain_sem": None, "same_conditions": None}
    est = policy.estimate(sample, ctx)
    base = exps[0]
    gain, gain_sem, same = None, None, None
    if base.id == best.id:
        gain, gain_sem, same = 0.0, 0.0, True
    else:
        values, at = list(sample.values), list(sample.at)
        bs = sample_of(ledger, tag, base)
        while values:
            cur_v, cur_at = policy.current(Sample(values, sample.lines, at=at), ctx)
            since = min(cur_at) if cur_at else 0
            base_now = [v for v, a in zip(bs.values, bs.at, strict=True) if a >= since]
            older = [(v, a) for v, a in zip(values, at, strict=True) if a < since]
            if base_now or not older:
                ref = base_now or bs.values
                if ref:
                    gain = sum(cur_v) / len(cur_v) - sum(ref) / len(ref)
                    same = bool(base_now) or len(cur_v) == len(values)
                    sigma = est.get("sigma")
                    if sigma is not None:
                        gain_sem = sigma * math.sqrt(1 / len(cur_v) + 1 / len(ref))
                break
            values, at = [v for v, _ in older], [a for _, a in older]
    return {"seq": best.seq, "value": est.get("mean"), "sem": est.get("sem"), "n": est.get("n"),
            "since": est.get("since"), "gain": gain, "gain_sem": gain_sem,
            "same_conditions": same, "description": best.description,
            "commit": best.commit_sha}


def best_text(rep: dict[str, Any] | None) -> str:
    """`0.116488 ± 0.001200 (n=3) (#13), -0.756671 vs baseline`: the reported best in one line."""
    if rep is None or rep.get("value") is None:
        return "—"
    text = f"{format_best(rep['value'], rep.get('sem'), rep.get('n'))} (#{rep['seq']})"
    if rep.get("gain") is not None and rep["gain"] != 0:
        text += f", {rep['gain']:+.6f}"
        if rep.get("gain_sem"):
            text += f" ± {rep['gain_sem']:.6f}"
        text += " vs baseline" + ("" if rep.get("same_conditions") else
                                  " (measured under other conditions)")
    return text


def reported_values(ledger: Ledger, tag: str, exps: list[Experiment] | None = None
                    ) -> dict[int, float]:
    """experiment id -> its value as the run reports it: the policy's estimate over its commit's
    runs (for the best, `reported_best`'s value) for every measured experiment but repeats."""
    policy, ctx = _context(ledger, tag, None)
    out: dict[int, float] = {}
    for e in exps if exps is not None else ledger.experiments(tag):
        if e.metric is None or e.kind == "repeat":
            continue
        sample = sample_of(ledger, tag, e)
        if sample.values:
            mean = policy.estimate(sample, ctx).get("mean")
            if mean is not None:
                out[e.id] = mean
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


def _holdout_of(e: Experiment) -> float | None:
    h = (e.decision or {}).get("holdout")
    return float(h) if isinstance(h, (int, float)) and math.isfinite(h) else None


def holdout_divergence(ledger: Ledger, tag: str, spec: Any, kept: Experiment
                       ) -> dict[str, Any] | None:
    """The Goodhart alarm for a newly kept experiment, or None.

    It fires when the validation metric improved against an earlier point of the kept chain
    (the previous keep with a holdout value, and the baseline) while the holdout metric got
    worse by more than its noise: 3 * sqrt(2) holdout sds, the holdout sd taken to be the
    validation noise at the best's level scaled to the holdout's magnitude (the same relative
    noise), or the holdout's printed precision for a deterministic metric.
    """
    from .policies.noise import printed_resolution

    h = _holdout_of(kept)
    if h is None:
        return None
    sign = 1.0 if spec.direction == "maximize" else -1.0
    exps = ledger.experiments(tag)
    chain = sorted((e for e in exps if e.status == Status.KEEP and e.id != kept.id
                    and _holdout_of(e) is not None), key=kept_order)
    refs = ([chain[-1]] if chain else []) + [e for e in chain[:1] if e.kind == "baseline"]
    policy, ctx = _context(ledger, tag, spec.policy)
    mine = sample_of(ledger, tag, kept)
    if not mine.values:
        return None
    v = sum(mine.values) / mine.n
    sigma = policy.estimate(mine, ctx).get("sigma") or 0.0
    for ref in refs:
        rs = sample_of(ledger, tag, ref)
        h_ref = _holdout_of(ref)
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


def holdout_alarms(exps: list[Experiment]) -> list[dict[str, Any]]:
    """Every divergence alarm of a run, oldest first."""
    return [dict((e.decision or {})["holdout_alarm"], status=e.status.value) for e in exps
            if (e.decision or {}).get("holdout_alarm")]


def run_summary(ledger: Ledger, tag: str, settings: PolicySettings | None = None) -> dict[str, Any]:
    run = ledger.get_run(tag)
    assert run is not None
    exps = ledger.experiments(tag)
    counts: dict[str, int] = {}
    for e in exps:
        counts[e.status.value] = counts.get(e.status.value, 0) + 1
    best = best_of(exps)
    base = exps[0] if exps else None
    cost = sum(e.cost_usd for e in exps)
    improvements = sum(1 for e in exps if e.status == Status.KEEP and e.kind != "baseline")
    now = time.time()
    by_id = {e.id: e for e in exps}
    slots = []
    for s in ledger.slots(tag):
        e = by_id.get(s["experiment_id"]) if s["experiment_id"] else None
        slots.append({"slot": s["slot"], "gpu": s["gpu"], "host": s["host"],
                      "experiment": e.seq if e else None,
                      "description": e.description if e else None,
                      "running_for": round(now - s["since"], 1) if e else None})
    baseline = None
    if base is not None and base.metric is not None:
        values = sample_of(ledger, tag, base).values or [base.metric]
        baseline = sum(values) / len(values)   # all its runs, not the first draw
    best_info = None
    if best is not None:
        est = best_estimate(ledger, tag, best, run.policy, settings)
        best_info = {"seq": best.seq, "metric": best.metric, "commit": best.commit_sha,
                     "description": best.description, "estimate": est,
                     "reported": reported_best(ledger, tag, settings)}
    return {
        "tag": tag, "metric": run.metric, "direction": run.direction, "agent": run.agent,
        "policy": run.policy, "branch": f"autoresearch/{tag}", "experiments": len(exps),
        "counts": counts, "baseline": baseline,
        "baseline_runs": len(sample_of(ledger, tag, base).values) if base else 0, "best": best_info,
        "improvements": improvements, "cost_usd": cost,
        "cost_per_improvement": cost / improvements if improvements else None,
        "tokens": {"input": sum(e.input_tokens for e in exps),
                   "output": sum(e.output_tokens for e in exps)},
        "slots": slots,
        # kept experiments at their reported value (the plot's and the dashboard's best line)
        "kept_values": {str(e.seq): v for e in exps if e.status == Status.KEEP
                        for v in [reported_values(ledger, tag, [e]).get(e.id)] if v is not None},
        "holdout": {"baseline": _holdout_of(base) if base else None,
                    "best": _holdout_of(best) if best else None,
                    "alarms": holdout_alarms(exps)},
        "running": [e.seq for e in exps if e.status == Status.RUNNING],
        "updated": now,
    }
