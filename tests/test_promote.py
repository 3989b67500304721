"""[scales] and `autoresearch promote`: real runs, real git, real processes, offline agents.

The quickstart target is the scale's subject: its hidden width comes from WIDTH, and the test
declares small = 4 units, large = 16. A scripted run at the small scale keeps two changes whose
fate at the large scale is known by construction:
- "lr 0.02, momentum 0.9" trains the network at any width (val_loss ~1.09 -> ~0.15): transfers;
- "at least 16 hidden units" widens a narrower model: a large gain at width 4, and at width 16 it
  changes nothing at all: it does not transfer.
The promotion must say so, with intervals, and write a branch holding the first change only.
(The test's scales leave out the template's `width == N` constraints, which would discard the
widening as building another size than the scale's.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    EVALUATE_PY,
    ar,
    build_target,
    cli_env,
    commit_all,
    git,
    ledger_rows,
    proposal,
    train_source,
    write_script,
)

from autoresearch.cli import main
from autoresearch.config import parse_spec
from autoresearch.errors import ConfigError
from autoresearch.ledger import Ledger

BASE = {"editable": ["train.py"], "run": "python train.py", "metric": "val_bpb"}
CFG = Path("proj/autoresearch.toml")

SCALES = ('[scales]\nsmall = { env = { WIDTH = "4" }, budget = 0.5 }\n'
          'large = { env = { WIDTH = "16" }, budget = 0.5 }\n')
WIDTH_LINE = 'WIDTH = int(os.environ.get("WIDTH", HIDDEN_SIZE))'


# == [scales] in autoresearch.toml ===============================================================
def _config_error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_spec(data, CFG)
    return str(info.value)


def test_a_scale_adds_its_env_and_sets_budget_and_timeout():
    spec = parse_spec({**BASE, "env": {"A": "1", "WIDTH": "2"}, "budget": 10, "timeout": 30,
                       "scales": {"big": {"env": {"WIDTH": "128"}, "budget": 900},
                                  "same": {"env": {"WIDTH": "64"}},
                                  "slow": {"budget": 5, "timeout": 99}}}, CFG)
    big = spec.at_scale("big")
    assert big.env == {"A": "1", "WIDTH": "128"}
    assert (big.budget, big.timeout) == (900, 2 * 900 + 60)   # the toml's 30 s would kill it
    same = spec.at_scale("same")
    assert (same.env["WIDTH"], same.budget, same.timeout) == ("64", 10, 30)
    assert (spec.at_scale("slow").budget, spec.at_scale("slow").timeout) == (5, 99)
    assert spec.at_scale(None) is spec and spec.env["WIDTH"] == "2"


def test_a_scale_adds_its_constraints_to_the_tomls():
    spec = parse_spec({**BASE, "constraints": ["mem <= 10"],
                       "scales": {"big": {"constraints": ["width == 128"]}}}, CFG)
    assert [str(c) for c in spec.at_scale("big").parsed_constraints] == ["mem <= 10",
                                                                         "width == 128"]
    assert "scales.big.constraints" in _config_error(
        {**BASE, "scales": {"big": {"constraints": ["width is 128"]}}})


def test_unknown_key_in_a_scale_suggests_the_scale_field():
    msg = _config_error({**BASE, "scales": {"large": {"budgt": 900}}})
    assert "unknown key 'scales.large.budgt'" in msg and "did you mean 'budget'?" in msg


def test_a_scale_env_value_must_be_text_and_its_name_a_word():
    assert "scales.large.env.WIDTH" in _config_error(
        {**BASE, "scales": {"large": {"env": {"WIDTH": 128}}}})
    assert "must be a word" in _config_error({**BASE, "scales": {"a/b": {}}})
    assert "scales.large.budget" in _config_error({**BASE, "scales": {"large": {"budget": 0}}})


def test_an_unknown_scale_name_is_one_error_with_a_did_you_mean():
    spec = parse_spec({**BASE, "scales": {"large": {}, "small": {}}}, CFG)
    with pytest.raises(ConfigError, match=r"no scale 'lrage' in \[scales\] — did you mean "
                                          r"'large'"):
        spec.at_scale("lrage", CFG)
    with pytest.raises(ConfigError, match="declare it"):
        parse_spec(BASE, CFG).at_scale("large", CFG)


# == the report's arithmetic ======================================================================
def test_an_effect_is_an_improvement_with_a_t_interval_whatever_the_direction():
    from scipy import stats

    from autoresearch.promote import DOES_NOT, TRANSFERS, UNCLEAR, effect, verdict_of

    with_, without = [4.0, 4.2], [5.0, 5.2]
    groups = [with_, without]
    lo = effect(with_, without, groups, "minimize")
    hi = effect(without, with_, groups, "maximize")       # the same gain, read the other way
    sigma = (0.02 + 0.02) ** 0.5 / 2 ** 0.5                # pooled sd: 0.1414 (2 df)
    half = stats.t.ppf(0.975, 2) * sigma * (1 / 2 + 1 / 2) ** 0.5
    for e in (lo, hi):
        assert e.value == pytest.approx(1.0) and e.runs == (2, 2)
        assert (e.low, e.high) == (pytest.approx(1.0 - half), pytest.approx(1.0 + half))
    assert verdict_of(lo, 0.0) == TRANSFERS            # 1 - 0.61 > 0
    assert verdict_of(lo, 0.5) == UNCLEAR              # the interval holds 0.5
    assert verdict_of(lo, 2.0) == DOES_NOT             # below the smallest gain worth having
    # a metric that repeats exactly: no interval to speak of, a zero effect does not transfer
    same = effect([3.0, 3.0], [3.0, 3.0], [[3.0, 3.0], [3.0, 3.0]], "minimize")
    assert (same.value, same.low, same.high, verdict_of(same, 0.0)) == (0.0, 0.0, 0.0, DOES_NOT)
    # measured once each, no noise estimate: unclear, however large the difference looks
    once = effect([1.0], [9.0], [], "minimize")
    assert (once.value, once.low, verdict_of(once, 0.0)) == (8.0, None, UNCLEAR)
    assert effect([], [9.0], [], "minimize").value is None


# == run --scale: the env reaches both steps, and the run keeps its scale ==========================
TRAIN_ENV = ('import os\nUNUSED = 1.0\n'
             'open("out.txt", "w").write(os.environ.get("WIDTH", "0") + " "\n'
             '                           + os.environ["AUTORESEARCH_BUDGET_SECONDS"])\n')
EVAL_ENV = ('import os\nwidth, budget = open("out.txt").read().split()\n'
            'print(f"score: {width}")\nprint(f"budget_seen: {budget}")\n'
            'print(f"eval_width: {os.environ.get(\'WIDTH\', \'0\')}")\n')


def test_run_at_a_scale_gives_its_env_to_the_run_and_evaluate_steps_and_is_resumed_at_it(tmp_path):
    root = build_target(tmp_path, files={"train.py": TRAIN_ENV, "evaluate.py": EVAL_ENV},
                        record=["eval_width", "budget_seen"],
                        extra_toml='env = { WIDTH = "3" }\n'
                                   '[scales]\nbig = { env = { WIDTH = "128" }, budget = 2 }\n')
    p = ar(root, "run", "--tag", "s", "--scale", "big", "--max-experiments", "1", "-q")
    assert p.returncode == 0, p.stdout + p.stderr
    (row,) = ledger_rows(root, "s")
    assert row["metric"] == 128.0                         # the run step saw the scale's WIDTH
    assert row["metrics"]["eval_width"] == 128.0          # and so did the locked evaluator
    assert row["metrics"]["budget_seen"] == 2.0           # the scale's budget
    ledger = Ledger(root / ".autoresearch" / "ledger.db", readonly=True)
    assert ledger.get_run("s").scale == "big"
    ledger.close()
    # resumed without --scale: at its recorded scale; with another one: refused, nothing run
    p = ar(root, "run", "--tag", "s", "--max-experiments", "2", "-q")
    assert p.returncode == 0, p.stdout + p.stderr
    assert [r["metric"] for r in ledger_rows(root, "s")] == [128.0, 128.0]
    p = ar(root, "run", "--tag", "plain", "--max-experiments", "1", "-q")
    assert [r["metric"] for r in ledger_rows(root, "plain")] == [3.0]   # the toml's own env
    bad = ar(root, "run", "--tag", "plain", "--scale", "big", "--max-experiments", "3", "-q")
    assert bad.returncode == 1 and "was made without a scale" in bad.stderr
    assert len(ledger_rows(root, "plain")) == 1
    typo = ar(root, "run", "--tag", "t2", "--scale", "bgi", "-q")
    assert typo.returncode == 1 and "did you mean 'big'?" in typo.stderr
    ledger = Ledger(root / ".autoresearch" / "ledger.db", readonly=True)
    assert ledger.get_run("t2") is None
    ledger.close()


def test_a_scale_constraint_discards_a_change_that_builds_another_size(tmp_path):
    root = build_target(tmp_path, files={"train.py": TRAIN_ENV, "evaluate.py": EVAL_ENV},
                        extra_toml='[scales]\nbig = { env = { WIDTH = "128" }, '
                                   'constraints = ["score == 128"] }\n')
    fixed = TRAIN_ENV.replace('os.environ.get("WIDTH", "0")', '"4"')
    script = write_script(tmp_path / "p.jsonl", [{"description": "always 4 units",
                                                  "files": {"train.py": fixed}}])
    p = ar(root, "run", "--tag", "s", "--scale", "big", "--agent", f"script:{script}",
           "--policy", "greedy", "-q")
    assert p.returncode == 0, p.stdout + p.stderr
    base, cand = ledger_rows(root, "s")
    assert base["status"] == "keep" and base["metric"] == 128.0
    assert cand["status"] == "discard" and "score == 128" in cand["reason"], cand


# == promote on the quickstart target ===========================================================
def _quickstart(tmp_path: Path) -> tuple[Path, Path]:
    """The quickstart target with [scales] small (4 units) and large (16), and the script of
    the two changes (module docstring)."""
    root = tmp_path / "qs"
    assert ar(tmp_path, "init", "--template", "quickstart", str(root)).returncode == 0
    toml = (root / "autoresearch.toml").read_text()
    assert "[scales]" in toml and WIDTH_LINE in (root / "train.py").read_text()
    (root / "autoresearch.toml").write_text(toml[:toml.index("[scales]")] + SCALES)
    commit_all(root, "scales for the test")
    src = (root / "train.py").read_text()
    lr = src.replace("LEARNING_RATE = 0.002 ", "LEARNING_RATE = 0.02  ").replace(
        "MOMENTUM = 0.5 ", "MOMENTUM = 0.9 ")
    wide = lr.replace(WIDTH_LINE, 'WIDTH = max(int(os.environ.get("WIDTH", HIDDEN_SIZE)), 16)')
    assert src != lr != wide
    script = write_script(tmp_path / "script.jsonl", [
        {"description": "lr 0.02, momentum 0.9", "files": {"train.py": lr}},
        {"description": "at least 16 hidden units", "files": {"train.py": wide}}])
    return root, script


def _small_run(root: Path, script: Path) -> list[dict]:
    p = ar(root, "run", "--tag", "src", "--scale", "small", "--agent", f"script:{script}", "-q",
           timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = ledger_rows(root, "src")
    kept = [r["description"] for r in rows if r["status"] == "keep"]
    assert kept == ["baseline", "lr 0.02, momentum 0.9", "at least 16 hidden units"], rows
    return rows


def _promote(root: Path, *extra: str, timeout: float = 300) -> dict:
    p = ar(root, "promote", "--from", "src", "--scale", "large", "--min-effect", "0.3",
           "--json", *extra, timeout=timeout)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout)


def _branch_train(root: Path, ref: str) -> str:
    return git(root, "show", f"{ref}:train.py")


@pytest.mark.slow
def test_promote_keeps_the_change_that_transfers_and_drops_the_one_tied_to_the_small_width(
        tmp_path):
    root, script = _quickstart(tmp_path)
    src_rows = _small_run(root, script)
    report = _promote(root, "--workers", "2")

    by_desc = {c["description"]: c for c in report["changes"]}
    lr, wide = by_desc["lr 0.02, momentum 0.9"], by_desc["at least 16 hidden units"]
    assert lr["verdict"] == "transfers", report
    # its interval lies below --min-effect: 0.3, a third of what the learning rate brings, so
    # that the noise of a loaded machine (wall-clock training) does not make it "unclear"
    assert wide["verdict"] == "does not", report
    # both helped at the small scale, each with an interval from the run's own repeats
    for c in (lr, wide):
        small = c["small"]
        assert small["value"] > 0.05 and small["low"] is not None and small["low"] <= \
            small["value"] <= small["high"], c
    # at the large scale: the learning rate is most of the gain, the widening nothing
    assert lr["large"]["low"] > 0.5, lr
    # (the same network at 16 units: its interval holds 0 about 95% of the time, so only its
    # size and its place below --min-effect are pinned)
    assert abs(wide["large"]["value"]) < 0.1 and wide["large"]["high"] < 0.3, wide
    assert report["repeats"] == 3 and all(a["runs"] == 3 for a in report["arms"].values())
    assert report["promoted"] and report["subset"] == [lr["seq"]]

    # the branch holds the change that transfers, on the run's baseline, and nothing else
    branch = "autoresearch/src-large"
    assert report["branch"] == branch
    assert git(root, "rev-parse", branch) == report["commit"]
    train = _branch_train(root, branch)
    assert "LEARNING_RATE = 0.02 " in train and "MOMENTUM = 0.9 " in train
    assert "max(int(" not in train
    base = src_rows[0]["commit"]
    assert git(root, "rev-parse", f"{branch}^") == base
    assert report["subset_vs_baseline"]["low"] > 0.5

    # the ledger: a run of its own, seen by status, log and show
    ledger = Ledger(root / ".autoresearch" / "ledger.db", readonly=True)
    run = ledger.get_run("src-large")
    assert (run.source, run.scale, run.base_commit) == ("src", "large", base)
    ledger.close()
    rows = ledger_rows(root, "src-large")
    assert not [r for r in rows if r["status"] in ("running", "pending", "interrupted")]
    # the locked evaluator saw the scale's width: 4 units in the run, 16 in the promotion
    assert src_rows[0]["metrics"]["width"] == 4.0
    assert {r["metrics"]["width"] for r in rows} == {16.0}
    kept = [r for r in rows if r["status"] == "keep"]
    assert [r["description"] for r in kept][0] == "baseline"
    assert kept[-1]["commit"] == report["commit"]
    status = ar(root, "status", "--tag", "src-large", "--json")
    info = json.loads(status.stdout)
    assert info["best"]["commit"] == report["commit"]
    assert (info["scale"], info["source"]) == ("large", "src")
    assert info["holdout"]["best"] is not None      # the verdict kept what the run had recorded
    ablation = next(r for r in rows if r["description"].startswith("the best without #"
                                                                   f"{wide['seq']}"))
    shown = ar(root, "show", str(ablation["seq"]), "--tag", "src-large")
    assert shown.returncode == 0 and "does not" in shown.stdout
    assert "max(int(" in shown.stdout       # its diff against the best: the widening removed

    # promoting again measures nothing more and says the same; other settings are refused
    other = ar(root, "promote", "--from", "src", "--scale", "large", "--min-effect", "0")
    assert other.returncode == 1 and "was made with --min-effect 0.3" in other.stderr
    other = ar(root, "promote", "--from", "src", "--scale", "large", "--budget", "0.7")
    assert other.returncode == 1 and "budget of 0.5s, not 0.7s" in other.stderr
    again = json.loads(ar(root, "promote", "--from", "src", "--scale", "large", "--json",
                          check=True).stdout)
    assert again["min_effect"] == 0.3
    assert len(ledger_rows(root, "src-large")) == len(rows)
    assert [c["verdict"] for c in again["changes"]] == [c["verdict"] for c in report["changes"]]
    assert again["commit"] == report["commit"] and again["promoted"]


@pytest.mark.slow
def test_a_promotion_killed_mid_run_resumes_and_loses_nothing(tmp_path):
    root, script = _quickstart(tmp_path)
    _small_run(root, script)
    args = [sys.executable, "-m", "autoresearch.cli", "promote", "--from", "src", "--scale",
            "large", "--min-effect", "0.3", "--json"]
    proc = subprocess.Popen(args, cwd=root, env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    db = root / ".autoresearch" / "ledger.db"
    deadline = time.time() + 120
    while time.time() < deadline:   # until some runs are recorded and one is running
        if db.exists():
            ledger = Ledger(db, readonly=True)
            rows = ledger.experiments("src-large") if ledger.get_run("src-large") else []
            ledger.close()
            if sum(r.metric is not None for r in rows) >= 4 and \
                    any(r.status.value == "running" and r.started for r in rows):
                break
        time.sleep(0.05)
    else:
        pytest.fail("the promotion never got going")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    before = {r["seq"]: r for r in ledger_rows(root, "src-large")}
    left_running = [s for s, r in before.items() if r["status"] == "running"]
    assert left_running

    report = _promote(root)
    rows = {r["seq"]: r for r in ledger_rows(root, "src-large")}
    for seq, r in before.items():       # nothing recorded was lost or changed its measurement
        if r["metric"] is not None:
            assert rows[seq]["metric"] == r["metric"], (seq, r, rows[seq])
    for seq in left_running:             # the runs the kill cut short were measured again
        assert rows[seq]["metric"] is not None, rows[seq]
    assert not [r for r in rows.values() if r["status"] in ("running", "pending", "interrupted")]
    assert report["promoted"] and all(a["runs"] == 3 for a in report["arms"].values())
    verdicts = {c["description"]: c["verdict"] for c in report["changes"]}
    assert verdicts["lr 0.02, momentum 0.9"] == "transfers", report
    assert verdicts["at least 16 hidden units"] != "transfers", report   # noise decides "does
    assert report["subset"] == [report["changes"][0]["seq"]], report     # not" or "unclear"


# == promote on a tiny deterministic target: ablation conflicts, bad input =====================
def _tiny_run(tmp_path: Path, values: list[float], extra: str = "") -> Path:
    root = build_target(tmp_path, extra_toml='[scales]\nbig = { env = { WIDTH = "9" } }\n' + extra)
    script = write_script(tmp_path / "p.jsonl", [proposal(v) for v in values])
    p = ar(root, "run", "--tag", "t", "--agent", f"script:{script}", "--policy", "greedy", "-q")
    assert p.returncode == 0, p.stdout + p.stderr
    return root


def test_a_change_that_cannot_be_left_out_is_measured_added_onto_the_best_before_it(tmp_path):
    # both changes rewrite the same line: the first cannot be dropped from the best
    root = _tiny_run(tmp_path, [8.0, 6.0])
    p = ar(root, "promote", "--from", "t", "--scale", "big", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(p.stdout)
    first, second = report["changes"]
    rows = ledger_rows(root, "t-big")
    invalid = [r for r in rows if r["status"] == "invalid"]
    assert len(invalid) == 1 and "cannot be dropped cleanly" in invalid[0]["reason"]
    assert invalid[0]["description"].startswith(f"the best without #{first['seq']}")
    # so it is measured added one by one: the run's best after it against the baseline (10 -> 8)
    assert "added onto the best before it" in first["why"]
    assert any(r["description"].startswith(f"the best of t after #{first['seq']}") for r in rows)
    # the metric repeats exactly: intervals are points
    assert (first["large"]["value"], first["large"]["low"], first["verdict"]) == \
        (2.0, 2.0, "transfers")
    assert (second["large"]["value"], second["verdict"]) == (2.0, "transfers")
    assert "left out of the best" in second["why"]
    # both transfer: the branch holds the run's best, replayed change by change
    assert report["promoted"] and report["subset"] == [first["seq"], second["seq"]]
    assert git(root, "rev-parse", "autoresearch/t-big^{tree}") == \
        git(root, "rev-parse", "autoresearch/t^{tree}")
    assert len(git(root, "log", "--format=%s", "autoresearch/t-big").splitlines()) == 3


def test_independent_changes_are_each_judged_and_all_promoted_when_all_transfer(tmp_path):
    root = build_target(tmp_path, files={"train.py": train_source(10.0) + "BONUS = 0\n",
                                         "evaluate.py": EVALUATE_PY},
                        extra_toml='[scales]\nbig = { env = { WIDTH = "9" } }\n')
    lower = train_source(8.0) + "BONUS = 0\n"
    both = train_source(8.0) + "BONUS = 0\nopen('out.txt', 'w').write(str(VALUE - 1))\n"
    script = write_script(tmp_path / "p.jsonl", [
        {"description": "lower value", "files": {"train.py": lower}},
        {"description": "minus one", "files": {"train.py": both}}])
    p = ar(root, "run", "--tag", "t", "--agent", f"script:{script}", "--policy", "greedy", "-q")
    assert p.returncode == 0, p.stdout + p.stderr
    p = ar(root, "promote", "--from", "t", "--scale", "big", "--json", "--repeats", "2")
    report = json.loads(p.stdout)
    assert [(c["large"]["value"], c["verdict"]) for c in report["changes"]] == \
        [(2.0, "transfers"), (1.0, "transfers")]
    assert report["promoted"] and report["subset"] == [c["seq"] for c in report["changes"]]
    # one commit per change on the branch, replayed in order onto the baseline
    log = git(root, "log", "--format=%s", "autoresearch/t-big").splitlines()
    assert log[:2] == ["minus one", "lower value"]
    # every change transferred: the branch holds the run's best, exactly
    assert git(root, "rev-parse", "autoresearch/t-big^{tree}") == \
        git(root, "rev-parse", "autoresearch/t^{tree}")


def test_promote_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys):
    root = _tiny_run(tmp_path, [8.0])
    cases = {("--from", "nope", "--scale", "big"): "no run with tag 'nope'",
             ("--from", "t", "--scale", "bgi"): "did you mean 'big'?",
             ("--from", "t", "--scale", "big", "--repeats", "1"): "--repeats must be at least 2",
             ("--from", "t", "--scale", "big", "--workers", "0"): "--workers must be at least 1",
             ("--from", "t", "--scale", "big", "--budget", "0"): "--budget must be above 0",
             ("--from", "t/x", "--scale", "big"): "not a valid tag",
             ("--from", "t", "--scale", "big", "--tag", "t"): "already taken by another run",
             ("--from", "t", "--scale", "big", "--workers", "2", "--gpus", "0"):
                 "needs at least 2 GPUs"}
    for args, msg in cases.items():      # in process: the CLI's own error path, without start-ups
        code = main(["-C", str(root), "promote", *args])
        err = capsys.readouterr().err
        assert code == 1 and msg in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err
    ledger = Ledger(root / ".autoresearch" / "ledger.db", readonly=True)
    assert [r.tag for r in ledger.runs()] == ["t"]
    ledger.close()


def test_a_run_with_no_kept_change_has_nothing_to_promote(tmp_path):
    root = _tiny_run(tmp_path, [12.0])
    p = ar(root, "promote", "--from", "t", "--scale", "big")
    assert p.returncode == 1 and "kept no change" in p.stderr


def test_scales_added_after_the_run_may_be_promoted_but_other_toml_changes_are_refused(tmp_path):
    root = build_target(tmp_path)
    script = write_script(tmp_path / "p.jsonl", [proposal(8.0)])
    assert ar(root, "run", "--tag", "t", "--agent", f"script:{script}", "--policy", "greedy",
              "-q").returncode == 0
    toml = root / "autoresearch.toml"
    toml.write_text(toml.read_text() + '[scales]\nbig = { env = { WIDTH = "9" } }\n')
    commit_all(root, "declare a scale after the run")
    p = ar(root, "promote", "--from", "t", "--scale", "big", "--json", "--repeats", "2")
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout)["promoted"]
    toml.write_text(toml.read_text().replace('metric = "score"', 'metric = "other"'))
    commit_all(root, "another metric")
    p = ar(root, "promote", "--from", "t", "--scale", "big", "--tag", "again")
    assert p.returncode == 1 and "only [scales] may change" in p.stderr and "metric" in p.stderr


def test_a_baseline_that_fails_at_the_scale_stops_the_promotion_with_its_reason(tmp_path):
    crash = ("import os, sys\nif os.environ.get('WIDTH') == '9':\n"
             "    sys.exit('out of memory at width 9')\n")
    root = build_target(tmp_path, files={"train.py": train_source(10.0, extra=crash)},
                        extra_toml='[scales]\nbig = { env = { WIDTH = "9" } }\n')
    script = write_script(tmp_path / "p.jsonl", [proposal(8.0, extra=crash)])
    assert ar(root, "run", "--tag", "t", "--agent", f"script:{script}", "--policy", "greedy",
              "-q").returncode == 0
    p = ar(root, "promote", "--from", "t", "--scale", "big", "--repeats", "2")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "the baseline of 't' failed at scale big" in p.stderr
    assert "out of memory at width 9" in p.stderr
    rows = ledger_rows(root, "t-big")
    assert [r["status"] for r in rows if r["kind"] == "baseline"] == ["crash"]


def test_when_the_changes_do_not_separate_the_branch_takes_the_longest_transferring_start(
        tmp_path):
    # a: 10 -> 8 everywhere; b: one better in the run, one worse at the scale (WIDTH 9);
    # c: rewrites b's line into an unconditional -2. c transfers but cannot be replayed without b
    # (nor b reverted under c): the branch takes the run's own best after a
    line = 'import os\n'
    b_line = 'VALUE = VALUE - 1 if os.environ.get("WIDTH") != "9" else VALUE + 1\n'
    root = build_target(tmp_path, files={"train.py": train_source(10.0, extra=line)},
                        extra_toml='[scales]\nbig = { env = { WIDTH = "9" } }\n')
    script = write_script(tmp_path / "p.jsonl", [
        {"description": "a", "files": {"train.py": train_source(8.0, extra=line)}},
        {"description": "b", "files": {"train.py": train_source(8.0, extra=line + b_line)}},
        {"description": "c", "files": {"train.py": train_source(
            8.0, extra=line + "VALUE = VALUE - 2\n")}}])
    p = ar(root, "run", "--tag", "t", "--agent", f"script:{script}", "--policy", "greedy", "-q")
    assert p.returncode == 0, p.stdout + p.stderr
    src = {r["description"]: r for r in ledger_rows(root, "t")}
    assert [src[d]["status"] for d in "abc"] == ["keep"] * 3
    p = ar(root, "promote", "--from", "t", "--scale", "big", "--json", "--repeats", "2")
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(p.stdout)
    got = {c["description"]: (c["large"]["value"], c["verdict"]) for c in report["changes"]}
    assert got == {"a": (2.0, "transfers"), "b": (-1.0, "does not"), "c": (3.0, "transfers")}
    assert "added onto the best before it" in report["changes"][1]["why"]
    assert report["promoted"] and report["subset"] == [src["a"]["seq"]]
    assert report["commit"] == src["a"]["commit"] == git(root, "rev-parse", "autoresearch/t-big")
    assert report["subset_vs_baseline"]["value"] == 2.0
