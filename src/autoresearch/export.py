"""Views of the ledger: results.tsv (the original's format), CSV and JSON Lines exports."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from .config import TargetSpec
from .experiment import Status
from .ledger import Experiment, Ledger
from .summary import reported_values

TSV_COLUMNS = ("commit", "{metric}", "memory_gb", "status", "description")


def memory_gb(e: Experiment, spec: TargetSpec | None) -> float:
    name = spec.memory_metric if spec else None
    if name and name in e.metrics:
        v = e.metrics[name]
        if name.endswith("_mb"):
            return v / 1024
        if name.endswith("_kb"):
            return v / 1024**2
        if name.endswith("_bytes") or name.endswith("_b"):
            return v / 1024**3
        return v
    return (e.peak_memory_mb or 0.0) / 1024


def _clean(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


#: how the original's analysis.ipynb reads statuses: keep, discard, crash and nothing else
ORIGINAL_STATUS = {Status.KEEP: "keep", Status.DISCARD: "discard", Status.REBASED: "discard",
                   Status.PRUNED: "discard", Status.CRASH: "crash", Status.TIMEOUT: "crash",
                   Status.INVALID: "crash", Status.AGENT_ERROR: "crash"}


def results_tsv(ledger: Ledger, tag: str, spec: TargetSpec, original: bool = False) -> str:
    """results.tsv. Native: one row per experiment (repeats and every status included); a kept
    row shows the best's reported value. `original`: the original's format, one row per
    candidate with its repeats folded into its mean and statuses keep / discard / crash only, so
    the original's analysis.ipynb reads it unmodified."""
    lines = ["\t".join(c.format(metric=spec.metric) for c in TSV_COLUMNS)]
    exps = ledger.experiments(tag)
    values = reported_values(ledger, tag, exps)
    for e in exps:
        status = e.status.value
        value = e.metric
        if e.status == Status.KEEP or original:
            value = values.get(e.id, e.metric)
        if original:
            if e.kind == "repeat" or e.status not in ORIGINAL_STATUS:
                continue          # folded into its candidate, or not decided yet
            status = ORIGINAL_STATUS[e.status]
            if status == "crash":
                value = None
        commit = (e.commit_sha or "-------")[:7]
        metric = f"{value:.6f}" if value is not None else "0.000000"
        lines.append("\t".join([commit, metric, f"{memory_gb(e, spec):.1f}", status,
                                _clean(e.description)]))
    return "\n".join(lines) + "\n"


def write_results_tsv(ledger: Ledger, tag: str, spec: TargetSpec, path: Path,
                      original: bool = False) -> None:
    """Atomically rewrite results.tsv (a reader never sees half a file)."""
    text = results_tsv(ledger, tag, spec, original)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


EXPORT_FIELDS = ("tag", "seq", "id", "kind", "status", "reason", "metric", "description", "commit",
                 "parent", "candidate_of", "agent", "seed", "slot", "gpu", "wall_time",
                 "peak_memory_mb", "exit_code", "diff_added", "diff_removed", "code_lines",
                 "input_tokens", "output_tokens", "cost_usd", "started", "finished", "log_path",
                 "notes")


def row(e: Experiment) -> dict:
    d = {f: getattr(e, f if f != "commit" else "commit_sha") for f in EXPORT_FIELDS}
    d["status"] = e.status.value
    d["metrics"] = e.metrics
    d["params"] = e.params
    d["decision"] = e.decision
    return d


def export(ledger: Ledger, tag: str | None, fmt: str, spec: TargetSpec) -> str:
    exps = ledger.experiments(tag)
    if fmt == "tsv":
        return results_tsv(ledger, tag, spec) if tag else "".join(
            results_tsv(ledger, t.tag, spec) for t in ledger.runs())
    if fmt == "jsonl":
        return "".join(json.dumps(row(e), sort_keys=True) + "\n" for e in exps)
    if fmt == "csv":
        buf = io.StringIO()
        names = sorted({k for e in exps for k in e.metrics})
        w = csv.writer(buf)
        w.writerow([*EXPORT_FIELDS, *names])
        for e in exps:
            d = row(e)
            w.writerow([d[f] if d[f] is not None else "" for f in EXPORT_FIELDS]
                       + [e.metrics.get(n, "") for n in names])
        return buf.getvalue()
    raise ValueError(fmt)
