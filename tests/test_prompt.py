"""The context builder: what is sent, and that its size is bounded whatever the history length."""

from autoresearch.agents.base import AgentContext
from autoresearch.agents.prompt import build_prompt
from autoresearch.config import TargetSpec
from autoresearch.experiment import HistoryEntry, Status

TRAIN = "LEARNING_RATE = 0.01\nBATCH_SIZE = 32\n" + "".join(f"# line {i}\n" for i in range(50))


def history(n: int) -> list[HistoryEntry]:
    out = []
    for i in range(1, n + 1):
        status = Status.KEEP if i % 10 == 1 else (Status.CRASH if i % 7 == 0 else Status.DISCARD)
        metric = None if status is Status.CRASH else 1.0 + ((i * 37) % 101) / 1000
        out.append(HistoryEntry(id=i, seq=i, status=status, metric=metric,
                                description=f"try number {i}: change something " + "x" * 300,
                                metrics={"val_loss": metric} if metric else {}))
    return out


def context(n: int, **kw) -> AgentContext:
    h = history(n)
    measured = [e for e in h if e.metric is not None]
    kept = [e for e in measured if e.status is Status.KEEP]
    best = min(kept, key=lambda e: e.metric) if kept else None
    spec = TargetSpec(editable=["train.py"], run="python train.py", metric="val_loss")
    return AgentContext(program="Make the loss go down.\n", files={"train.py": TRAIN}, history=h,
                        best=best, spec=spec, base_commit="abc123def4567", experiment_seq=n + 1, **kw)


def test_contains_program_files_best_metrics_and_goal():
    p = build_prompt(context(5), max_chars=20_000, history_rows=60)
    assert "Make the loss go down." in p
    assert TRAIN in p                            # the editable file in full
    assert "Minimize the metric `val_loss`" in p
    assert "# Best so far" in p and "val_loss:" in p
    assert "abc123def4" in p


def test_history_lists_best_first_then_most_recent():
    ctx = context(100)
    p = build_prompt(ctx, max_chars=48_000, history_rows=20)
    best_part, recent_part = p.split("Most recent experiments (newest first):")
    kept_rows = best_part.split("Kept experiments (best first):")[1]
    assert f"| {ctx.best.id} | keep | " in kept_rows.splitlines()[3]     # first row after the header
    assert "| discard |" not in kept_rows
    rows = [line for line in recent_part.splitlines() if line.startswith("| ") and line[2].isdigit()]
    ids = [int(r.split("|")[1]) for r in rows]
    assert ids[0] == 100 and ids == sorted(ids, reverse=True)
    assert "older experiments not shown" in p
    assert "100 experiments so far" in p


def test_delta_against_best_is_shown():
    ctx = context(12)                                  # keeps: #1 (1.037) and #11 (1.003)
    p = build_prompt(ctx, max_chars=20_000, history_rows=10)
    assert "| 11 | keep | 1.003 | +0 |" in p
    assert "| 1 | keep | 1.037 | +0.034 |" in p


def test_prompt_size_is_bounded_for_1000_vs_10_experiments():
    small = build_prompt(context(10), max_chars=12_000, history_rows=10)
    large = build_prompt(context(1000), max_chars=12_000, history_rows=10)
    huge = build_prompt(context(10_000), max_chars=12_000, history_rows=10)
    assert len(small) <= 12_000 and len(large) <= 12_000 and len(huge) <= 12_000
    assert len(large) <= len(small) + 200          # only the counts line may grow
    assert abs(len(huge) - len(large)) <= 200


def test_budget_holds_with_huge_files_and_crash_log():
    ctx = context(50, last_crash_log="Traceback\n" + "boom\n" * 50_000 + "ValueError: the end\n")
    ctx.files = {"train.py": "X = 1\n" * 40_000}
    p = build_prompt(ctx, max_chars=8_000, history_rows=60)
    assert len(p) <= 8_000
    assert "ValueError: the end" in p                # the tail of the crash is kept
    assert "cut to fit" in p


def test_feedback_is_passed_on():
    p = build_prompt(context(3, feedback="that duplicated experiment #2; propose something else"),
                     max_chars=10_000, history_rows=10)
    assert p.rstrip().endswith("that duplicated experiment #2; propose something else")


def test_first_proposal_says_baseline():
    p = build_prompt(context(0), max_chars=10_000, history_rows=10)
    assert "baseline" in p and "No measured run yet" in p


def test_notes_and_the_summary_are_in_the_prompt_and_bounded():
    notes = "\n".join(f"- #{i} (optuna): lesson {i}" for i in range(2000))       # ~50k chars
    tried = "| theme | tried |\n" + "\n".join(f"| train.py: C{i} | {i} |" for i in range(3000))
    ctx = context(200, research_notes=notes, notes_chars=4000, tried=tried, role="tuner")
    p = build_prompt(ctx, max_chars=20_000, history_rows=60, notes_how="EDIT THE NOTES FILE")
    assert len(p) <= 20_000
    assert "# Research notes (shared by every agent of this run, at most 4000 characters)" in p
    assert "lesson 1999" in p and "lesson 0\n" not in p       # the newest notes are kept
    assert "EDIT THE NOTES FILE" in p and "# What was tried, by theme" in p
    assert "| train.py: C0 | 0 |" in p                        # the summary's head is kept
    assert "# Program of your role, tuner" in p
    assert p.index("# History") < p.index("# Research notes") < p.index("# Editable files")


def test_without_notes_the_prompt_has_no_notes_section():
    p = build_prompt(context(3), max_chars=20_000, history_rows=60, notes_how="EDIT")
    assert "# Research notes" not in p and "EDIT" not in p


def test_the_history_names_the_proposer_when_several_agents_share_the_run():
    h = history(4)
    for e, (agent, role) in zip(h, [("optuna", None), ("claude", "explorer"),
                                    ("optuna", "tuner"), ("claude", "explorer")], strict=True):
        e.agent, e.role = agent, role
    ctx = AgentContext(program="p", files={"train.py": TRAIN}, history=h, best=None,
                       spec=TargetSpec(editable=["train.py"], run="x", metric="val_loss"),
                       base_commit="abc", experiment_seq=5)
    p = build_prompt(ctx, max_chars=20_000, history_rows=60)
    assert "| by |" in p and "| explorer |" in p and "| tuner |" in p
    assert "| by |" not in build_prompt(context(4), max_chars=20_000, history_rows=60)
