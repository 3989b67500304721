"""results.tsv in the original's format, CSV / JSON Lines exports, and the progress plot."""

from __future__ import annotations

import csv
import io
import json

import pytest

from autoresearch.config import TargetSpec
from autoresearch.experiment import Status
from autoresearch.export import (
    append_results_tsv,
    export,
    memory_gb,
    results_tsv,
    write_results_tsv,
)
from autoresearch.ledger import Ledger
from autoresearch.plot import plot_progress

SHA = "0123456789abcdef0123456789abcdef01234567"


def spec(**extra) -> TargetSpec:
    return TargetSpec.model_validate({"editable": ["train.py"], "run": "true", "metric": "val_bpb",
                                      **extra})


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "ledger.db")
    led.create_run("t", SHA, "val_bpb", "minimize", "optuna", "greedy", {})
    led.add_experiment("t", kind="baseline", commit_sha=SHA, status=Status.KEEP, metric=0.9979,
                       description="baseline", peak_memory_mb=45060.2, metrics={"val_bpb": 0.9979},
                       decision={"at": 1.0})
    led.add_experiment("t", kind="candidate", commit_sha="b" * 40, status=Status.DISCARD,
                       metric=1.005, description="switch\tto GeLU\nactivation", peak_memory_mb=2048,
                       metrics={"val_bpb": 1.005, "vram_mb": 44000.0})
    led.add_experiment("t", kind="candidate", commit_sha="c" * 40, status=Status.CRASH,
                       description="double width (OOM)")
    led.add_experiment("t", kind="candidate", commit_sha="d" * 40, status=Status.KEEP, metric=0.99,
                       description="lr up", metrics={"val_bpb": 0.99}, decision={"at": 2.0})
    yield led
    led.close()


def test_results_tsv_has_the_original_columns_and_format(ledger):
    lines = results_tsv(ledger, "t", spec()).splitlines()
    assert lines[0].split("\t") == ["commit", "val_bpb", "memory_gb", "status", "description"]
    rows = [ln.split("\t") for ln in lines[1:]]
    assert all(len(r) == 5 for r in rows)
    assert rows[0] == ["0123456", "0.997900", "44.0", "keep", "baseline"]
    assert rows[1] == ["bbbbbbb", "1.005000", "2.0", "discard", "switch to GeLU activation"]
    assert rows[2] == ["ccccccc", "0.000000", "0.0", "crash", "double width (OOM)"]
    assert rows[3][3] == "keep"


def test_memory_gb_from_the_memory_metric(ledger):
    e = ledger.by_seq("t", 2)
    assert memory_gb(e, spec(memory_metric="vram_mb")) == pytest.approx(44000 / 1024)
    assert memory_gb(e, spec()) == pytest.approx(2.0)  # default: peak RSS
    # a run that did not record the memory metric falls back to peak RSS
    assert memory_gb(ledger.by_seq("t", 1), spec(memory_metric="vram_mb")) == pytest.approx(45060.2 / 1024)
    row = results_tsv(ledger, "t", spec(memory_metric="vram_mb")).splitlines()[2].split("\t")
    assert row[2] == "43.0"


def test_write_results_tsv_replaces_the_file(ledger, tmp_path):
    path = tmp_path / "results.tsv"
    path.write_text("old\n")
    write_results_tsv(ledger, "t", spec(), path)
    assert path.read_text() == results_tsv(ledger, "t", spec())
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_jsonl_export(ledger):
    rows = [json.loads(line) for line in export(ledger, "t", "jsonl", spec()).splitlines()]
    assert [r["seq"] for r in rows] == [1, 2, 3, 4]
    assert rows[1]["commit"] == "b" * 40
    assert rows[1]["status"] == "discard"
    assert rows[1]["metrics"] == {"val_bpb": 1.005, "vram_mb": 44000.0}
    assert rows[2]["metric"] is None


def test_csv_export_has_a_column_per_metric(ledger):
    rows = list(csv.DictReader(io.StringIO(export(ledger, "t", "csv", spec()))))
    assert len(rows) == 4
    assert rows[1]["vram_mb"] == "44000.0" and rows[0]["vram_mb"] == ""
    assert rows[1]["description"] == "switch\tto GeLU\nactivation"  # CSV quotes, never flattens
    assert rows[2]["status"] == "crash" and rows[2]["metric"] == ""


def test_unknown_export_format(ledger):
    with pytest.raises(ValueError):
        export(ledger, "t", "xml", spec())


def test_plot_progress_writes_a_png(ledger, tmp_path):
    out = plot_progress(ledger.experiments("t"), "val_bpb", "minimize", tmp_path / "progress.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000


def test_results_tsv_gets_one_line_appended_per_finished_experiment(ledger, tmp_path):
    path = tmp_path / "results.tsv"
    exps = ledger.experiments("t")
    for e in reversed(exps):              # in the order they finish, header first
        append_results_tsv(e, spec(), path)
    lines = path.read_text().splitlines()
    assert lines[0] == results_tsv(ledger, "t", spec()).splitlines()[0]
    assert sorted(lines[1:]) == sorted(results_tsv(ledger, "t", spec()).splitlines()[1:])
    write_results_tsv(ledger, "t", spec(), path)   # a resume or the end of a run: seq order
    assert path.read_text() == results_tsv(ledger, "t", spec())


def test_export_limit_gives_the_last_rows(ledger):
    text = export(ledger, "t", "jsonl", spec(), limit=2)
    assert [json.loads(ln)["seq"] for ln in text.splitlines()] == [3, 4]
