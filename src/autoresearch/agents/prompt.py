"""The context builder shared by every agent: one bounded prompt from program, files and history.

Sections, in order: the goal, program.md (the role's own with a portfolio), the best run's
recorded metrics, under the tree strategy the operator and the node the proposal starts from
(its runs, its diff against the best), the experiment history (a compact table: the kept
experiments, best first, then the most recent, newest first; with a "by" column when several
agents share the run), the research notes and the summary of what was tried by theme
(notes.py), the last crash's log tail (the node's own under `debug`), the editable files at the
commit the proposal starts from, and the harness's feedback (e.g. "that duplicated experiment
#12"). The prompt never exceeds `max_chars`, whatever the length of the
history: a 1,000-experiment run sends a prompt the size of a 60-experiment one.
"""

from __future__ import annotations

from collections import Counter

from ..experiment import HistoryEntry, Status
from .base import AgentContext

# Shares of the budget that each variable-size section may take at most.
PROGRAM_SHARE = 0.25
HISTORY_SHARE = 0.25
CRASH_SHARE = 0.08
NOTES_SHARE = 0.12           # the research notes
TRIED_SHARE = 0.10           # the summary of what was tried
NODE_SHARE = 0.12            # the tree strategy's node section (its diff against the best)
DESCRIPTION_CHARS = 120      # per history row
BEST_ROWS_SHARE = 0.25       # of history_rows, reserved for the best experiments
TRUNCATED = "\n[... {n} characters cut to fit the prompt budget ...]\n"


def _cut(text: str, limit: int, *, keep: str = "head") -> str:
    """`text` within `limit` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    note = TRUNCATED.format(n=len(text) - limit)
    room = max(0, limit - len(note))
    return text[:room] + note if keep == "head" else note + text[len(text) - room:]


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def _one_line(text: str, limit: int = DESCRIPTION_CHARS) -> str:
    s = " ".join(text.split()).replace("|", "/")
    return s if len(s) <= limit else s[:limit - 3] + "..."


def _rank_key(ctx: AgentContext):
    sign = 1.0 if ctx.spec.direction == "minimize" else -1.0
    return lambda e: sign * e.metric


def history_table(ctx: AgentContext, rows: int, max_chars: int) -> str:
    """The history as a markdown table: best experiments first, then the most recent ones."""
    history = ctx.history
    if not history:
        return "No experiment has finished yet: the first one measures the unchanged code (the baseline)."
    counts = Counter(str(e.status) for e in history)
    summary = (f"{len(history)} experiments so far (" +
               ", ".join(f"{n} {s}" for s, n in counts.most_common()) + ").")
    kept = [e for e in history if e.metric is not None and e.status is Status.KEEP]
    n_best = max(1, int(rows * BEST_ROWS_SHARE))
    best = sorted(kept, key=_rank_key(ctx))[:n_best]
    chosen_ids = {e.id for e in best}
    recent = [e for e in reversed(history) if e.id not in chosen_ids][:max(0, rows - len(best))]
    best_metric = ctx.best.metric if ctx.best is not None else None
    several = len({(e.agent, e.role) for e in history if e.agent}) > 1
    header = ["| id | status | metric | vs best |" + (" by |" if several else "") +
              " description |", "|---|---|---|---|" + ("---|" if several else "") + "---|"]

    def row(e: HistoryEntry) -> str:
        delta = "-" if e.metric is None or best_metric is None else f"{e.metric - best_metric:+.4g}"
        by = f" {_one_line(e.role or e.agent or '-', 30)} |" if several else ""
        return (f"| {e.id} | {e.status} | {_fmt(e.metric)} | {delta} |{by} "
                f"{_one_line(e.description)} |")

    parts = [summary]
    shown = 0
    used = len(summary) + 200
    blocks = [("Kept experiments (best first):", best), ("Most recent experiments (newest first):", recent)]
    for title, entries in blocks:
        lines = []
        for e in entries:
            r = row(e)
            if used + len(r) + 1 > max_chars:
                break
            lines.append(r)
            used += len(r) + 1
        if lines:
            parts.append("\n".join([title, *header, *lines]))
            shown += len(lines)
    if shown < len(history):
        parts.append(f"({len(history) - shown} older experiments not shown.)")
    return "\n\n".join(parts)


def _files_section(files: dict[str, str], limit: int) -> str:
    """Every editable file in full, or, over budget, each cut to a fair share of `limit`."""
    whole = "\n\n".join(_fenced(p, t) for p, t in sorted(files.items()))
    if len(whole) <= limit:
        return whole
    share = max(200, limit // max(1, len(files)) - 60)
    out = [_fenced(f"{p} (cut to fit: {len(t)} characters in all)", _cut(t, share))
           for p, t in sorted(files.items())]
    return _cut("\n\n".join(out), limit)


def _fenced(title: str, text: str) -> str:
    return f"{title}\n```\n{text}{'' if not text or text.endswith(chr(10)) else chr(10)}```"


def research_section(ctx: AgentContext, max_chars: int, how: str = "") -> str:
    """The research notes (shared by the run's agents) and the summary of what was tried.
    `how`: how this kind of agent writes its notes ("" when it cannot)."""
    if not ctx.notes_chars:
        return ""
    notes = ctx.research_notes.strip() or "(none yet)"
    parts = [f"# Research notes (shared by every agent of this run, at most {ctx.notes_chars} "
             f"characters)\n" + _cut(notes, int(max_chars * NOTES_SHARE), keep="tail")]
    if how:
        parts.append(how)
    if ctx.tried:
        parts.append("# What was tried, by theme (made by the harness from the ledger)\n" +
                     _cut(ctx.tried, int(max_chars * TRIED_SHARE)))
    return "\n\n".join(parts)


#: what each operator of the tree strategy asks (strategies.py)
OPERATOR_TASKS = {
    "draft": "DRAFT: propose a fresh idea, different from what the history shows was tried, "
             "starting from the baseline code below.",
    "improve": "IMPROVE: refine this node with one change. It need not be the best: a step "
               "that is worse alone may set up a larger gain, and the harness keeps whatever "
               "ends up measurably better than the best.",
    "debug": "DEBUG: this node's run failed (its log tail is below). Fix what broke while "
             "keeping its idea, so that it runs and can be measured.",
}


def node_section(ctx: AgentContext, limit: int) -> str:
    """The tree strategy's operator and node: its runs and its diff against the best ("" under
    the ratchet)."""
    if ctx.operator is None or ctx.parent is None:
        return ""
    n = ctx.parent
    runs = ", ".join(_fmt(v) for v in ctx.parent_values) or "none (it did not run to the end)"
    best = f" #{ctx.best.id}" if ctx.best is not None else ""
    if ctx.parent_diff is None or (ctx.best is not None and ctx.best.id == n.id):
        diff = "It is the best."
    elif not ctx.parent_diff.strip():
        diff = "Its editable files equal the best's."
    else:
        diff = (f"Its diff against the best{best}:\n```diff\n" +
                _cut(ctx.parent_diff.rstrip(), max(200, limit - 600)) + "\n```")
    text = (f"# Operator: {ctx.operator} (tree search)\n{OPERATOR_TASKS.get(ctx.operator, '')}\n"
            f"You start from node #{n.id} ({_one_line(n.description)}; {n.status}): "
            f"`{ctx.spec.metric}` over its runs: {runs}.\n{diff}")
    return _cut(text, limit)


def build_prompt(ctx: AgentContext, *, max_chars: int, history_rows: int,
                 notes_how: str = "") -> str:
    """The context for one proposal, at most `max_chars` characters."""
    spec = ctx.spec
    goal = (f"# Goal\n{spec.direction.capitalize()} the metric `{spec.metric}`. Propose ONE change "
            f"to the editable files ({', '.join(spec.editable)}); the harness runs it with a fixed "
            f"training budget of {spec.budget:g} seconds and keeps it only if `{spec.metric}` gets "
            f"better. Experiment #{ctx.experiment_seq} is next.")
    if ctx.best is not None:
        b = ctx.best
        metrics = "\n".join(f"- {k}: {_fmt(v)}" for k, v in sorted(b.metrics.items())) or "(none recorded)"
        best = (f"# Best so far\nExperiment #{b.id} ({_one_line(b.description)}): "
                f"{spec.metric} = {_fmt(b.metric)}.\nRecorded metrics of that run:\n{metrics}")
    else:
        best = "# Best so far\nNo measured run yet."
    feedback = f"# Note from the harness\n{ctx.feedback}" if ctx.feedback else ""
    fixed = len(goal) + len(best) + len(feedback) + 200
    if fixed > max_chars // 2:          # absurdly many metrics or a huge feedback
        best, feedback = _cut(best, max_chars // 8), _cut(feedback, max_chars // 8)
        fixed = len(goal) + len(best) + len(feedback) + 200

    role = f" of your role, {ctx.role}" if ctx.role else " (program.md)"
    program = f"# Program{role}\n" + _cut(ctx.program.strip(), int(max_chars * PROGRAM_SHARE))
    history = "# History\n" + history_table(ctx, history_rows, int(max_chars * HISTORY_SHARE))
    research = research_section(ctx, max_chars, notes_how)
    crash = ""
    if ctx.last_crash_log:
        crash = ("# Log tail of the last crash\n```\n" +
                 _cut(ctx.last_crash_log.rstrip(), int(max_chars * CRASH_SHARE), keep="tail") + "\n```")
    node = node_section(ctx, int(max_chars * NODE_SHARE))
    at = f"node #{ctx.parent.id}" if ctx.parent is not None else "the best commit"
    title = f"# Editable files at {at} ({ctx.base_commit[:10]})\n"
    room = (max_chars - fixed - len(program) - len(node) - len(history) - len(research)
            - len(crash) - len(title))
    files = title + _files_section(ctx.files, max(0, room))

    sections = [goal, program, best, node, history, research, crash, files, feedback]
    text = "\n\n".join(s for s in sections if s) + "\n"
    return _cut(text, max_chars)
