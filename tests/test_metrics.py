"""Metric parsing: the output protocol, what is rejected, and reading the end of big files."""

from __future__ import annotations

import math

import pytest

from autoresearch.metrics import MetricParser, parse_line, tail_lines


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("val_bpb: 0.997900", {"val_bpb": 0.9979}),
        ("progress: 0.40 train_loss: 3.21", {"progress": 0.4, "train_loss": 3.21}),
        ("progress: 0.5 | train_loss: 2", {"progress": 0.5, "train_loss": 2.0}),
        ("a: 1, b: -2, c: +3", {"a": 1.0, "b": -2.0, "c": 3.0}),
        ("  val_bpb:1e-3  ", {"val_bpb": 0.001}),
        ("lr: .5 steps: 00100 big: 1.5E+10", {"lr": 0.5, "steps": 100.0, "big": 1.5e10}),
        (
            "eval/val_bpb: 1.0 loss.total: 2.0 gpu-mem: 3",
            {"eval/val_bpb": 1.0, "loss.total": 2.0, "gpu-mem": 3.0},
        ),
        ("METRIC val_bpb=0.9979", {"val_bpb": 0.9979}),
        ("METRIC val_bpb=0.9979 peak_vram_mb=4500", {"val_bpb": 0.9979, "peak_vram_mb": 4500.0}),
        ("  METRIC a = 1 ", {"a": 1.0}),
        ("x: INF", {"x": math.inf}),
        ("x: -inf", {"x": -math.inf}),
        ("METRIC x=Infinity", {"x": math.inf}),
        ("a: 1 a: 2", {"a": 2.0}),
    ],
)
def test_parse_line_accepts_protocol_lines(line: str, expected: dict[str, float]) -> None:
    assert parse_line(line) == expected


def test_parse_line_keeps_nan_as_float() -> None:
    pairs = parse_line("val_bpb: NaN")
    assert list(pairs) == ["val_bpb"] and math.isnan(pairs["val_bpb"])
    assert math.isnan(parse_line("METRIC loss=nan")["loss"])


@pytest.mark.parametrize(
    "line",
    [
        "",
        "step 00100 | loss 3.2",
        "Epoch 1: starting",
        "val_bpb: fast",
        "acc: 95%",
        "a: 1.5.3",
        "time: 12:30",
        "loss: 3.2abc",
        "loss: 3.2 and more",
        "1st: 2",
        "METRIC",
        "METRIC val_bpb: 1.0",
        "metrics val=1",
        "val_bpb=0.99",
        "a: 1 b",
        "Traceback (most recent call last):",
    ],
)
def test_parse_line_rejects_non_metric_lines(line: str) -> None:
    assert parse_line(line) == {}


def test_metric_parser_last_value_wins_and_records_progress() -> None:
    parser = MetricParser()
    for line in [
        "loading data",
        "progress: 0.1 train_loss: 4.0",
        "val_bpb: 1.2",
        "progress: 0.5 | train_loss: 3.0 | lr: 0.01",
        "METRIC val_bpb=1.1",
        "step 7 | loss 9.9",
    ]:
        parser.feed(line)
    assert parser.values == {"progress": 0.5, "train_loss": 3.0, "lr": 0.01, "val_bpb": 1.1}
    assert parser.progress_points == [
        (0.1, {"train_loss": 4.0}),
        (0.5, {"train_loss": 3.0, "lr": 0.01}),
    ]


def test_metric_parser_feed_returns_the_line_pairs() -> None:
    parser = MetricParser()
    assert parser.feed("a: 1") == {"a": 1.0}
    assert parser.feed("hello") == {}


def test_metric_parser_bounds_progress_points() -> None:
    parser = MetricParser()
    for i in range(50_000):
        parser.feed(f"progress: {i / 50_000} loss: {i}")
    assert 1_000 < len(parser.progress_points) <= 10_001
    steps = [other["loss"] for _, other in parser.progress_points]
    assert steps == sorted(steps) and steps[0] == 0
    assert parser.values["loss"] == 49_999


def test_tail_lines_reads_only_the_end_of_a_large_file(tmp_path) -> None:
    path = tmp_path / "big.log"
    with open(path, "w") as f:
        for i in range(1_000_000):
            f.write(f"line {i}\n")
    assert tail_lines(path, n=3) == ["line 999997", "line 999998", "line 999999"]
    lines = tail_lines(path, n=10_000, max_bytes=1000)
    assert lines[-1] == "line 999999"
    assert all(line.startswith("line ") and len(line) == 11 for line in lines)
    assert len(lines) <= 1000 // 12 + 1


def test_tail_lines_small_and_missing_files(tmp_path) -> None:
    path = tmp_path / "small.log"
    path.write_text("one\ntwo\npartial")
    assert tail_lines(path) == ["one", "two", "partial"]
    assert tail_lines(tmp_path / "missing.log") == []
    assert tail_lines(path, n=0) == []
