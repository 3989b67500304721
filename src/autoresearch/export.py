"""Views of the ledger: results.tsv (the original's format), CSV and JSON Lines exports.

results.tsv during a run gets one line appended per experiment as it finishes (constant cost
per experiment); it is rewritten whole, every row in seq order, only when a run opens or
resumes (repair) and when it stops. Exports read the ledger in pages, never all at once.

results.tsv comes in two formats. Native: one row per experiment (repeats and every status
included); a kept row shows the best's reported value (summary.reported_values). `original`
(`--results-format original`): the original's format, one row per candidate with its repeats
folded into its reported mean and statuses keep / discard / crash only, so the original's
analysis.ipynb reads it unmodified.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .config import TargetSpec
from .experiment import Kind, Status
from .ledger import Experiment, Ledger, dumps

TSV_COLUMNS = ("commit", "{metric}", "memory_gb", "status", "description")

#: how the original's analysis.ipynb reads statuses: keep, discard, crash and nothing else
ORIGINAL_STATUS = {Status.KEEP: "keep", Status.DISCARD: "discard", Status.REBASED: "discard",
                   Status.PRUNED: "discard", Status.CRASH: "crash", Status.TIMEOUT: "crash",
                   Status.INVALID: "crash", Status.AGENT_ERROR: "crash"}


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


def tsv_header(spec: TargetSpec) -> str:
    return "\t".join(c.format(metric=spec.metric) for c in TSV_COLUMNS) + "\n"


def tsv_line(e: Experiment, spec: TargetSpec, value: float | None = None,
             original: bool = False) -> str:
    """e's results.tsv line ("" when the original format has no row for it). `value`: its
    reported value (summary.reported_values), shown for a kept row and in the original format."""
    status, metric = e.status.value, e.metric
    if value is not None and (original or e.status == Status.KEEP):
        metric = value
    if original:
        if e.kind == Kind.REPEAT or e.status not in ORIGINAL_STATUS:
            return ""          # folded into its candidate, or not decided yet
        status = ORIGINAL_STATUS[e.status]
        if status == "crash":
            metric = None
    commit = (e.commit_sha or "-------")[:7]
    shown = f"{metric:.6f}" if metric is not None else "0.000000"
    return "\t".join([commit, shown, f"{memory_gb(e, spec):.1f}", status,
                      _clean(e.description)]) + "\n"


def results_tsv(ledger: Ledger, tag: str, spec: TargetSpec, original: bool = False) -> str:
    """results.tsv as the ledger has it (kept rows at their reported values)."""
    from .summary import reported_values

    exps = list(ledger.iter_experiments(tag))
    values = reported_values(ledger, tag, exps if original else None)
    return tsv_header(spec) + "".join(tsv_line(e, spec, values.get(e.id), original)
                                      for e in exps)


def write_results_tsv(ledger: Ledger, tag: str, spec: TargetSpec, path: Path,
                      rows: Iterable[Experiment] | None = None,
                      values: dict[int, float] | None = None, original: bool = False) -> None:
    """Atomically rewrite results.tsv (a reader never sees half a file); `rows` defaults to
    the run's rows in the ledger, `values` (reported values by id) to the ledger's."""
    if values is None:
        from .summary import reported_values

        values = reported_values(ledger, tag, None if not original else
                                 list(ledger.iter_experiments(tag)))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(tsv_header(spec))
        for e in (ledger.iter_experiments(tag) if rows is None else rows):
            fh.write(tsv_line(e, spec, values.get(e.id), original))
    os.replace(tmp, path)


def append_results_tsv(e: Experiment, spec: TargetSpec, path: Path, value: float | None = None,
                       original: bool = False) -> None:
    """Add one finished experiment's line (the header first, when the file is new)."""
    line = tsv_line(e, spec, value, original)
    with open(path, "a") as fh:
        if fh.tell() == 0:
            fh.write(tsv_header(spec))
        fh.write(line)


EXPORT_FIELDS = ("tag", "seq", "id", "kind", "status", "reason", "metric", "description", "commit",
                 "parent", "candidate_of", "agent", "role", "seed", "slot", "gpu", "wall_time",
                 "peak_memory_mb", "exit_code", "diff_added", "diff_removed", "code_lines",
                 "input_tokens", "output_tokens", "cost_usd", "started", "finished", "log_path",
                 "notes", "node_parent", "operator", "org")


def row(e: Experiment) -> dict:
    d = {f: getattr(e, f if f != "commit" else "commit_sha") for f in EXPORT_FIELDS}
    d["status"] = e.status.value
    d["kind"] = e.kind.value
    d["metrics"] = e.metrics
    d["params"] = e.params
    d["decision"] = e.decision
    return d


def export(ledger: Ledger, tag: str | None, fmt: str, spec: TargetSpec,
           limit: int | None = None) -> str:
    """The run (every run with no tag) as tsv, csv or jsonl; `limit`: its last rows only."""
    return "".join(export_lines(ledger, tag, fmt, spec, limit))


def export_lines(ledger: Ledger, tag: str | None, fmt: str, spec: TargetSpec,
                 limit: int | None = None) -> Iterator[str]:
    """The export as lines, read from the ledger a page at a time."""
    def rows() -> Iterable[Experiment]:
        if limit is not None and tag is not None:
            return ledger.tail(tag, limit)
        return ledger.iter_experiments(tag)

    if fmt == "tsv":
        if tag is not None:
            yield tsv_header(spec)
            yield from (tsv_line(e, spec) for e in rows())
        else:
            for t in ledger.runs():
                yield from export_lines(ledger, t.tag, fmt, spec, limit)
        return
    if fmt == "jsonl":
        yield from (dumps(row(e), sort_keys=True) + "\n" for e in rows())
        return
    if fmt == "csv":
        names = sorted({k for e in rows() for k in e.metrics})   # a first pass for the columns
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow([*EXPORT_FIELDS, *names])
        for e in rows():
            d = row(e)
            w.writerow([d[f] if d[f] is not None else "" for f in EXPORT_FIELDS]
                       + [e.metrics.get(n, "") for n in names])
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
        yield buf.getvalue()
        return
    raise ValueError(fmt)
