"""The first hour of a new user: every message quotes their text verbatim, bad input is one
error line with the fix, and the terminal output stays tidy. Real CLI subprocesses over tiny
targets in throwaway git repos."""

from __future__ import annotations

import pytest
from conftest import ar, build_target, commit_all, git, ledger_rows, train_source
from rich.console import Console

from autoresearch.config import TargetSpec, check_globs, load_spec
from autoresearch.errors import ConfigError
from autoresearch.experiment import Status
from autoresearch.ledger import Ledger
from autoresearch.metrics import missing_metric_reason
from autoresearch.ui import Reporter


def _one_error(p) -> str:
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in p.stderr, p.stderr
    return lines[0]


# == user text is printed verbatim ==============================================================
def test_a_config_error_keeps_its_brackets(tmp_path):
    root = build_target(tmp_path, extra_toml="[search]\nLIMIT_ROWS = 3\n")
    msg = _one_error(ar(root, "status"))
    assert "search.LIMIT_ROWS" in msg and "(got 3)" in msg


def test_an_unknown_table_is_named_with_its_brackets(tmp_path):
    root = build_target(tmp_path, extra_toml="[serach]\nx = 1\n")
    msg = _one_error(ar(root, "status"))
    assert "unknown key 'serach'" in msg and "did you mean 'search'?" in msg


def test_markup_in_an_error_message_is_not_interpreted(tmp_path):
    root = build_target(tmp_path, metric="[bold]score")
    msg = _one_error(ar(root, "status"))
    assert "'[bold]score'" in msg


def test_descriptions_and_reasons_with_brackets_are_shown_as_written(tmp_path):
    root = build_target(tmp_path)
    assert ar(root, "start", "--tag", "t", "--policy", "greedy").returncode == 0
    (root / "train.py").write_text(train_source(4.0))
    desc = "use [bold]x[/bold] and a[0] [red]not red[/]"
    p = ar(root, "try", "-m", desc)
    assert p.returncode == 0, p.stdout + p.stderr
    shown = ar(root, "show", "2").stdout
    assert shown.splitlines()[0] == f"#2 {desc}"
    assert desc in ar(root, "log").stdout
    assert desc in ar(root, "status").stdout


def test_the_live_line_prints_a_reason_with_brackets_verbatim():
    from rich.text import Text

    console = Console(record=True, width=200, force_terminal=False)
    rep = Reporter(console, "score")
    e = _exp(Status.CRASH, "[x] broke", "no 'score: <number>' line [see log]")
    rep.finished(e, None)
    out = console.export_text()
    assert "[x] broke" in out and "[no 'score: <number>' line [see log]]" in out
    assert isinstance(Text("x"), Text)


# == the terminal stays tidy ===================================================================
def _exp(status: Status, description: str = "d", reason: str = "", metric=None, seq: int = 3):
    from autoresearch.ledger import Experiment

    fields = {f: None for f in Experiment.__dataclass_fields__}
    fields.update(id=seq, tag="t", seq=seq, kind="candidate", description=description, status=status,
                  reason=reason, metric=metric, metrics={}, seed=0, input_tokens=0, output_tokens=0,
                  cost_usd=0.0, notes="")
    return Experiment(**fields)


@pytest.mark.parametrize("status", list(Status))
def test_no_status_runs_into_the_metric_name(status):
    console = Console(record=True, width=200, force_terminal=False)
    Reporter(console, "runtime_ms").finished(_exp(status), None)
    out = console.export_text()
    assert f"{status.value} " in out and f"{status.value}runtime_ms" not in out


# == tags ======================================================================================
@pytest.mark.parametrize("tag", ["nov/23", "../x", "a..b", ".hidden", "-x", "x.lock", "sp ace",
                                 "x" * 101, "a:b", "br@{1}"])
def test_a_tag_that_is_not_one_git_safe_segment_is_one_error_line(tmp_path, tag):
    root = build_target(tmp_path)
    msg = _one_error(ar(root, "run", f"--tag={tag}", "--max-experiments", "1"))
    assert msg.startswith(f"error: --tag {tag!r} is not a valid tag")
    assert not (root / ".autoresearch").exists()
    assert git(root, "branch", "--list", "autoresearch/*") == ""


def test_start_checks_the_tag_too(tmp_path):
    root = build_target(tmp_path)
    assert "no '/'" in _one_error(ar(root, "start", "--tag", "nov/23"))


def test_after_a_refused_slash_tag_its_prefix_still_works(tmp_path):
    root = build_target(tmp_path)
    _one_error(ar(root, "run", "--tag", "nov/23", "--max-experiments", "1"))
    p = ar(root, "run", "--tag", "nov", "--max-experiments", "1", "--policy", "greedy")
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("tag", ["nov23", "exp-1.2", "A_b", "v2"])
def test_ordinary_tags_are_accepted(tag):
    from autoresearch.cli import check_tag

    assert check_tag(tag) == tag


# == autoresearch.toml =========================================================================
def test_a_non_utf8_byte_in_the_toml_is_one_error_line(tmp_path):
    root = build_target(tmp_path)
    toml = root / "autoresearch.toml"
    toml.write_bytes(toml.read_bytes() + b"# caf\xe9\n")
    msg = _one_error(ar(root, "status"))
    line = toml.read_bytes().count(b"\n")
    assert f"autoresearch.toml: line {line}, column 6: byte 0xe9 is not UTF-8" in msg
    assert "re-save it as UTF-8" in msg


def test_an_editable_glob_that_matches_nothing_is_refused_with_a_hint(tmp_path):
    root = build_target(tmp_path, editable=["trian.py"])
    msg = _one_error(ar(root, "run", "--tag", "t"))
    assert "editable glob 'trian.py' matches no file" in msg and "did you mean 'train.py'?" in msg
    assert not (root / ".autoresearch").exists()


def test_an_editable_glob_that_matches_only_locked_files_is_refused(tmp_path):
    root = build_target(tmp_path, editable=["train.py", "eval*.py"])
    msg = _one_error(ar(root, "run", "--tag", "t"))
    assert "editable glob 'eval*.py' matches only locked files (evaluate.py)" in msg


def test_globs_are_checked_against_the_committed_files(tmp_path):
    # an untracked file is not part of any experiment: a glob matching only it gives nothing
    root = build_target(tmp_path, editable=["train.py", "notes/*.md"])
    (root / "notes").mkdir()
    (root / "notes" / "ideas.md").write_text("x\n")
    assert "'notes/*.md' matches no file" in _one_error(ar(root, "run", "--tag", "t"))
    commit_all(root, "notes")
    assert ar(root, "run", "--tag", "t", "--max-experiments", "1", "--policy", "greedy").returncode == 0


def test_init_notes_a_glob_that_matches_nothing_and_run_refuses_it(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    git(root, "init", "-q")
    (root / "train.py").write_text("x = 1\n")
    p = ar(root, "init", "--editable", "trainn.py", "--run", "python train.py", "--metric", "loss")
    assert p.returncode == 0, p.stderr
    assert "note: editable glob 'trainn.py' matches no file" in p.stdout
    assert "did you mean 'train.py'?" in p.stdout
    commit_all(root, "target")
    assert "did you mean 'train.py'?" in _one_error(ar(root, "run", "--tag", "t"))


def test_check_globs_directly(tmp_path):
    spec = TargetSpec(editable=["src/**/*.py"], locked=["src/eval.py"], run="x", metric="m")
    check_globs(spec, tmp_path, tmp_path / "t.toml", files=["src/a/b.py", "src/eval.py"])
    with pytest.raises(ConfigError, match="matches only locked files"):
        check_globs(spec, tmp_path, tmp_path / "t.toml", files=["src/eval.py"])


def test_load_spec_reads_utf8_with_non_ascii_text(tmp_path):
    p = tmp_path / "autoresearch.toml"
    p.write_text('editable = ["train.py"]\nrun = "python train.py"  # café\nmetric = "loss"\n',
                 encoding="utf-8")
    assert load_spec(p).metric == "loss"


# == a misspelled metric =======================================================================
def test_a_misspelled_metric_lists_the_metrics_seen_and_the_closest(tmp_path):
    root = build_target(tmp_path, metric="scor")
    p = ar(root, "run", "--tag", "t", "--policy", "greedy", "--max-experiments", "1")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    msg = p.stderr.splitlines()[0]            # then the log's tail
    assert "no 'scor: <number>' line in the evaluate step's output" in msg
    assert "metrics seen: score 10" in msg and "did you mean 'score'?" in msg
    assert ledger_rows(root, "t")[0]["status"] == "crash"


def test_missing_metric_reason_without_any_metric_and_without_a_close_name():
    assert missing_metric_reason("val_bpb", {}, "run").endswith("(it printed no 'name: value' line at all)")
    r = missing_metric_reason("val_bpb", {"accuracy": 0.9, "step": 10}, "run")
    assert "metrics seen: accuracy 0.9, step 10" in r and "did you mean" not in r
    assert "did you mean 'Val_Loss'" in missing_metric_reason("val_loss", {"Val_Loss": 1.0}, "run")


def test_ledger_is_untouched_by_a_bad_tag(tmp_path):
    root = build_target(tmp_path)
    assert ar(root, "run", "--tag", "t", "--max-experiments", "1", "--policy", "greedy").returncode == 0
    before = ledger_rows(root, "t")
    _one_error(ar(root, "run", "--tag", "t/2"))
    assert ledger_rows(root, "t") == before
    Ledger(root / ".autoresearch" / "ledger.db", readonly=True).close()
