"""The progress chart: every outcome drawn distinctly and readably (tested on the figure)."""

from __future__ import annotations

import pytest

from autoresearch.experiment import Status
from autoresearch.ledger import Ledger
from autoresearch.plot import plot_progress, progress_figure

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def exps(tmp_path):
    """A SQL-speed run: a fast wrong query breaks the row-count constraint."""
    led = Ledger(tmp_path / "ledger.db")
    led.create_run("t", SHA, "ms", "minimize", "claude", "greedy", {})
    add = led.add_experiment
    add("t", kind="baseline", commit_sha=SHA, status=Status.KEEP, metric=120.0, description="baseline",
        decision={"at": 1.0})
    add("t", kind="repeat", commit_sha=SHA, status=Status.REPEAT, metric=121.0, description="re-measure")
    add("t", kind="candidate", commit_sha="b" * 40, status=Status.DISCARD, metric=125.0,
        description="add an index on name")
    add("t", kind="candidate", commit_sha="c" * 40, status=Status.DISCARD, metric=3.0,
        description="LIMIT 10 (wrong answer)", reason="constraint rows == 5000 violated: rows = 10")
    add("t", kind="candidate", commit_sha="d" * 40, status=Status.CRASH, description="syntax error",
        reason="run step exited with code 1")
    add("t", kind="candidate", commit_sha="e" * 40, status=Status.KEEP, metric=80.0,
        description="rewrite the correlated subquery as a join on the primary key, with a "
                    "covering index and a much longer description than fits",
        decision={"at": 2.0})
    add("t", kind="candidate", status=Status.INVALID, description="edit the evaluator",
        reason="changes file(s) outside the editable globs: evaluate.py")
    yield led.experiments("t")
    led.close()


def _series(fig):
    ax = fig.axes[0]
    return ax, {c.get_label(): c for c in ax.collections}


def test_each_outcome_has_its_own_series(exps):
    fig = progress_figure(exps, "ms", "minimize", "run t")
    ax, series = _series(fig)
    assert set(series) == {"kept", "discarded", "constraint violated (discarded)",
                           "repeat (noise estimate)", "crash / timeout", "invalid / agent error"}
    assert [tuple(p) for p in series["constraint violated (discarded)"].get_offsets()] == [(4, 3.0)]
    assert [tuple(p) for p in series["discarded"].get_offsets()] == [(3, 125.0)]
    assert sorted(tuple(p) for p in series["kept"].get_offsets()) == [(1, 120.0), (6, 80.0)]


def test_a_constraint_violation_below_the_best_is_not_drawn_like_a_discard(exps):
    fig = progress_figure(exps, "ms", "minimize")
    _, series = _series(fig)
    broken, discarded = series["constraint violated (discarded)"], series["discarded"]
    # a filled cross, not a hollow circle
    assert len(broken.get_paths()[0].vertices) != len(discarded.get_paths()[0].vertices)
    assert len(broken.get_facecolor()) == 1 and len(discarded.get_facecolor()) == 0


def test_crashes_sit_in_a_strip_below_the_values_not_at_the_best(exps):
    fig = progress_figure(exps, "ms", "minimize")
    ax, series = _series(fig)
    crash = series["crash / timeout"]
    # drawn in axes coordinates along the bottom: under every measured value
    assert crash.get_transform() is not ax.transData
    (x, y), = crash.get_offsets()
    assert x == 5 and y < 0.05
    fig.canvas.draw()
    _, crash_y = crash.get_transform().transform((x, y))
    _, lowest_y = ax.transData.transform((6, 3.0))
    assert crash_y < lowest_y


def test_x_ticks_are_whole_experiment_numbers(exps):
    fig = progress_figure(exps, "ms", "minimize")
    fig.canvas.draw()
    ticks = fig.axes[0].get_xticks()
    assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks)


def test_labels_stay_inside_the_plot_and_clear_of_the_title(exps):
    fig = progress_figure(exps, "ms", "minimize", "a title")
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    title = ax.title.get_window_extent(renderer)
    labels = [t for t in ax.texts if t.get_text()]
    assert labels and all(len(t.get_text()) <= 40 for t in labels)
    for t in labels:
        ext = t.get_window_extent(renderer)
        assert ext.y1 <= box.y1 + 1 and ext.y1 < title.y0, t.get_text()


def test_plot_writes_a_png(exps, tmp_path):
    out = plot_progress(exps, "ms", "minimize", tmp_path / "p.png", title="run t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
