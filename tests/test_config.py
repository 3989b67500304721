"""autoresearch.toml validation: every error names the file and key and says the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoresearch.config import Constraint, load_spec, load_target, parse_spec
from autoresearch.errors import ConfigError

BASE = {"editable": ["train.py"], "run": "python train.py", "metric": "val_bpb"}
CFG = Path("proj/autoresearch.toml")


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_spec(data, CFG)
    return str(info.value)


def test_unknown_top_level_key_suggests_the_right_one():
    msg = _error({**BASE, "lockd": ["prepare.py"]})
    assert str(CFG) in msg
    assert "unknown key 'lockd'" in msg
    assert "did you mean 'locked'?" in msg


def test_unknown_policy_key_suggests_the_policy_field():
    msg = _error({**BASE, "policy": {"alpah": 0.1}})
    assert "unknown key 'policy.alpah'" in msg
    assert "did you mean 'alpha'?" in msg


def test_unknown_key_in_a_search_entry_suggests_the_search_field():
    msg = _error({**BASE, "search": {"LR": {"low": 1e-4, "hihg": 1e-2}}})
    assert "unknown key 'search.LR.hihg'" in msg
    assert "did you mean 'high'?" in msg


def test_search_entry_suggests_the_int_alias():
    msg = _error({**BASE, "search": {"N": {"low": 1, "high": 8, "intt": True}}})
    assert "did you mean 'int'?" in msg


def test_unknown_key_with_no_close_match_lists_known_keys():
    msg = _error({**BASE, "zzzzzz": 1})
    assert "known keys:" in msg and "editable" in msg


def test_missing_required_key_is_named():
    data = dict(BASE)
    del data["metric"]
    msg = _error(data)
    assert "missing required key 'metric'" in msg


def test_wrong_direction_value_is_refused():
    msg = _error({**BASE, "direction": "down"})
    assert "key 'direction'" in msg
    assert "'minimize' or 'maximize'" in msg
    assert "'down'" in msg


def test_bad_constraint_text_shows_the_expected_form():
    msg = _error({**BASE, "constraints": ["peak_vram_mb less than 5"]})
    assert "key 'constraints'" in msg
    assert "'name <= number'" in msg


def test_malformed_toml_names_file_and_line(tmp_path):
    cfg = tmp_path / "autoresearch.toml"
    cfg.write_text('editable = ["train.py"]\nrun = "python train.py"\nmetric = = 3\n')
    with pytest.raises(ConfigError) as info:
        load_spec(cfg)
    msg = str(info.value)
    assert str(cfg) in msg
    assert "line 3" in msg


def test_default_timeout_is_twice_the_budget_plus_a_minute():
    spec = parse_spec({**BASE, "budget": 100}, CFG)
    assert spec.timeout is None
    assert spec.hard_timeout == 260
    assert parse_spec({**BASE, "budget": 100, "timeout": 30}, CFG).hard_timeout == 30


def test_program_and_config_are_always_locked():
    spec = parse_spec({**BASE, "locked": ["prepare.py", "program.md"]}, CFG)
    assert spec.locked_globs[:2] == ["autoresearch.toml", "program.md"]
    assert spec.locked_globs.count("program.md") == 1
    assert "prepare.py" in spec.locked_globs
    assert parse_spec(BASE, CFG).locked_globs == ["autoresearch.toml", "program.md"]


@pytest.mark.parametrize("text,metrics,ok", [
    ("peak_vram_mb <= 60000", {"peak_vram_mb": 60000.0}, True),
    ("peak_vram_mb <= 60000", {"peak_vram_mb": 60000.5}, False),
    ("acc > 0.5", {"acc": 0.5}, False),
    ("acc >= 0.5", {"acc": 0.5}, True),
    ("loss != inf", {"loss": 3.0}, True),
    ("n == 3", {"n": 3.0}, True),
])
def test_constraint_check(text, metrics, ok):
    c = Constraint.parse(text)
    result = c.check(metrics)
    assert (result is None) == ok
    if not ok:
        assert "violated" in result


def test_constraint_on_an_unrecorded_metric_fails():
    reason = Constraint.parse("mem_mb < 10").check({"other": 1.0})
    assert reason is not None and "was not recorded" in reason


def test_constraint_parse_rejects_garbage():
    with pytest.raises(ValueError):
        Constraint.parse("mem_mb ≤ 10")


def test_load_target_searches_parent_directories(tmp_path):
    (tmp_path / "autoresearch.toml").write_text(
        'editable = ["train.py"]\nrun = "true"\nmetric = "score"\n')
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    target = load_target(deep)
    assert target.root == tmp_path.resolve()
    assert target.spec.metric == "score"
    assert target.results_path == tmp_path.resolve() / "results.tsv"


def test_load_target_without_a_config_says_to_run_init(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_target(tmp_path)
    assert "no autoresearch.toml" in str(info.value)
    assert "autoresearch init" in str(info.value)


def test_holdout_data_and_setup_need_a_holdout_command_and_paths_without_wildcards():
    base = {"editable": ["train.py"], "run": "python train.py", "metric": "loss"}
    with pytest.raises(ConfigError) as e:
        parse_spec({**base, "holdout_setup": "python prepare.py --holdout"}, Path("t.toml"))
    assert str(e.value).startswith("t.toml: holdout_setup is given but holdout is not")
    with pytest.raises(ConfigError) as e:
        parse_spec({**base, "holdout": "python evaluate.py --holdout",
                    "holdout_data": ["held/*.bin"]}, Path("t.toml"))
    assert "'holdout_data'" in str(e.value) and "without wildcards" in str(e.value)
    spec = parse_spec({**base, "holdout": "python evaluate.py --holdout",
                       "holdout_data": ["heldout", "/data/holdout.bin"]}, Path("t.toml"))
    assert spec.holdout_data == ["heldout", "/data/holdout.bin"]
