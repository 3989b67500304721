"""Locators of the optuna agent: any text file, exact rewrites, one-line errors; and failures told
to TPE as failures (constraint breaches, crashes, timeouts), live and after a resume."""

from __future__ import annotations

import json

import optuna
import pytest

from autoresearch.agents.base import AgentContext, AgentError
from autoresearch.agents.optuna_agent import OptunaAgent, constraint_values
from autoresearch.agents.params import (
    KeyPath,
    LocateError,
    MarkerSpan,
    PyDotted,
    RegexSpan,
    auto_params,
)
from autoresearch.config import Constraint, TargetSpec
from autoresearch.errors import ConfigError
from autoresearch.experiment import HistoryEntry, Outcome, Status

SQL = """-- the query
SELECT c.region, COUNT(*) AS n
-- ar: JOIN
FROM orders o JOIN customers c ON c.id = o.customer_id
-- ar: end
WHERE o.day > 900
LIMIT 50;  -- ar: LIMIT
PRAGMA cache_size = -2000;
"""

PY = '''"""chardet-like module."""
_MINIMUM_THRESHOLD = 0.20
_CHUNK = 64
__version__ = 3
MAX_LEN = 10
lower = 1


def detect(data, should_rename=False, threshold=0.2, *, window=16):
    return threshold


class Prober:
    CONFIDENCE = 0.5

    def feed(self, data, factor=1.5):
        return factor
'''


def spec(**extra) -> TargetSpec:
    return TargetSpec.model_validate(
        {"editable": ["*"], "run": "python run.py", "metric": "ms", **extra})


def ctx(s: TargetSpec, files: dict[str, str], history=()) -> AgentContext:
    return AgentContext(program="", files=files, history=list(history), best=None, spec=s,
                        base_commit="0" * 40, experiment_seq=len(history) + 1)


# -- locators ------------------------------------------------------------------------------------
def test_auto_constants_include_private_ones_but_not_dunders_or_lower_case():
    found = {n: p.value for n, p in auto_params({"mod.py": PY}).items()}
    assert found == {"_MINIMUM_THRESHOLD": 0.2, "_CHUNK": 64, "MAX_LEN": 10}


def test_keyword_defaults_and_class_attributes_by_dotted_path():
    for dotted, value, new in (("detect.threshold", 0.2, 0.35), ("detect.window", 16, 32),
                               ("Prober.CONFIDENCE", 0.5, 0.75), ("Prober.feed.factor", 1.5, 2.0),
                               ("detect.should_rename", False, True)):
        loc = PyDotted(dotted, "mod.py", dotted)
        assert loc.read(PY) == value
        loc.is_int = isinstance(value, int) and not isinstance(value, bool)
        out = loc.write(PY, new)
        assert loc.read(out) == new
        assert len(out.splitlines()) == len(PY.splitlines())   # one literal changed, in place
    with pytest.raises(LocateError, match="no argument 'nope'"):
        PyDotted("x", "mod.py", "detect.nope").read(PY)


def test_marker_block_is_replaced_by_an_alternative_text_and_nothing_else_changes():
    loc = MarkerSpan("JOIN", "q.sql", numeric=False)
    assert loc.read(SQL) == "FROM orders o JOIN customers c ON c.id = o.customer_id\n"
    other = "FROM customers c CROSS JOIN orders o ON o.customer_id = c.id\n"
    out = loc.write(SQL, other)
    assert out == SQL.replace("FROM orders o JOIN customers c ON c.id = o.customer_id\n", other)
    assert loc.read(out) == other


def test_inline_marker_holds_one_number_and_keeps_the_comment():
    loc = MarkerSpan("LIMIT", "q.sql", numeric=True)
    assert loc.read(SQL) == 50
    loc.is_int = True
    out = loc.write(SQL, 200)
    assert "\nLIMIT 200;  -- ar: LIMIT\n" in out
    with pytest.raises(LocateError, match="holds 2 numbers"):
        MarkerSpan("X", "a.sql", numeric=True).read("SELECT 1, 2;  -- ar: X\n")


def test_regex_locator_rewrites_its_one_group():
    loc = RegexSpan("CACHE", "q.sql", r"cache_size = (-?\d+)", numeric=True)
    loc.is_int = True
    assert loc.read(SQL) == -2000
    assert "PRAGMA cache_size = -8000;" in loc.write(SQL, -8000)
    with pytest.raises(LocateError, match="matches 0 times"):
        RegexSpan("X", "q.sql", r"mmap_size = (\d+)", numeric=True).read(SQL)


def test_key_paths_in_toml_yaml_and_json_keep_comments_and_layout():
    toml_text = '# server settings\n[server]\nworkers = 4  # per core\nmode = "fast"\n'
    loc = KeyPath("w", "c.toml", "server.workers")
    assert loc.read(toml_text) == 4
    loc.is_int = True
    assert loc.write(toml_text, 8) == toml_text.replace("workers = 4", "workers = 8")

    yaml_text = "# pipeline\nstages:\n  - name: a\n    size: 32   # rows\n  - name: b\n    size: 8\n"
    loc = KeyPath("s", "p.yaml", "stages.1.size")
    assert loc.read(yaml_text) == 8
    loc.is_int = True
    assert loc.write(yaml_text, 16) == yaml_text.replace("size: 8", "size: 16")

    json_text = json.dumps({"opt": "-O0", "flags": {"lto": False}}, indent=2) + "\n"
    loc = KeyPath("lto", "b.json", "flags.lto")
    assert loc.read(json_text) is False
    out = loc.write(json_text, True)
    assert json.loads(out) == {"opt": "-O0", "flags": {"lto": True}} and out.endswith("}\n")
    with pytest.raises(LocateError, match="has no key flags.nope"):
        KeyPath("x", "b.json", "flags.nope").read(json_text)


# -- the agent over any text file -----------------------------------------------------------------
FILES = {"query.sql": SQL, "mod.py": PY, "build.json": '{"opt": "-O0", "unroll": false}\n'}


def test_the_agent_tunes_sql_spans_json_keys_and_python_defaults_together():
    s = spec(search={
        "JOIN": {"marker": True, "file": "query.sql", "choices": [
            "FROM orders o JOIN customers c ON c.id = o.customer_id\n",
            "FROM customers c CROSS JOIN orders o ON o.customer_id = c.id\n"]},
        "LIMIT": {"marker": True, "low": 10, "high": 500, "int": True},
        "CACHE": {"regex": r"cache_size = (-?\d+)", "choices": [-2000, -64000]},
        "opt": {"file": "build.json", "key": "opt", "choices": ["-O0", "-O2", "-O3"]},
        "detect.threshold": {"low": 0.05, "high": 0.5},
        "_CHUNK": {},
    })
    agent = OptunaAgent(s, FILES, seed=1)
    assert agent.baseline_params()["JOIN"].startswith("FROM orders")
    assert agent.baseline_params()["_CHUNK"] == 64
    base = HistoryEntry(id=1, seq=1, status=Status.KEEP, metric=10.0, description="baseline",
                        params=agent.baseline_params())
    seen_joins = set()
    for i in range(8):
        p = agent.propose(ctx(s, FILES, [base]))
        files = {**FILES, **p.files}
        assert MarkerSpan("JOIN", "q", False).read(files["query.sql"]) == p.params["JOIN"]
        assert json.loads(files["build.json"])["opt"] == p.params["opt"]
        assert PyDotted("t", "m", "detect.threshold").read(files["mod.py"]) == \
            pytest.approx(p.params["detect.threshold"], rel=1e-3)
        # nothing else moved: the files differ from the originals only at the spans
        assert files["query.sql"].count("\n") == SQL.count("\n")
        assert set(p.files) <= set(FILES)
        seen_joins.add(p.params["JOIN"])
        agent.observe(p, Outcome(i + 2, Status.DISCARD, 11.0 + i))
    assert len(seen_joins) == 2


@pytest.mark.parametrize("entry, message", [
    ({"regex": r"cache_size = -?\d+"}, "exactly one group"),
    ({"regex": r"cache_size = (-?\d+"}, "does not compile"),
    ({"regex": r"mmap_size = (\d+)"}, "regex 'mmap_size = (\\\\d+)' matches in no editable file"),
    ({"marker": True, "regex": "(x)"}, "give one locator, not regex and marker"),
    ({"key": "opt"}, "'key' needs 'file'"),
    ({"key": "nope", "file": "build.json", "choices": [1]}, "has no key nope"),
    ({"marker": True, "file": "other.sql"}, "is not an editable file"),
    ({"low": 1}, "needs both 'low' and 'high'"),
])
def test_a_bad_locator_is_one_error_that_names_the_key_and_the_fix(tmp_path, entry, message):
    from autoresearch.config import load_spec

    name = "CACHE" if "marker" not in entry else "NOPE"
    cfg = tmp_path / "autoresearch.toml"
    cfg.write_text('editable = ["*"]\nrun = "python r.py"\nmetric = "ms"\n'
                   f"[search.{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n"
                                                   for k, v in entry.items()))
    with pytest.raises(ConfigError) as info:
        OptunaAgent(load_spec(cfg), FILES)
    text = str(info.value)
    assert message in text and name in text and "\n" not in text


def test_a_text_value_without_choices_is_refused_with_the_fix():
    s = spec(search={"JOIN": {"marker": True}})
    with pytest.raises(ConfigError, match=r"\[search\] JOIN: .* holds 0 numbers.* choices = "):
        OptunaAgent(s, FILES)


def test_no_tunables_names_the_locators_in_its_fix():
    with pytest.raises(ConfigError, match="add a \\[search\\] table with locators"):
        OptunaAgent(spec(), {"query.sql": SQL})


def test_a_locator_broken_by_a_kept_change_is_an_agent_error_not_a_crash():
    s = spec(search={"CACHE": {"regex": r"cache_size = (-?\d+)", "choices": [-2000, -64000]}})
    agent = OptunaAgent(s, FILES)
    changed = {**FILES, "query.sql": SQL.replace("cache_size", "page_size")}
    with pytest.raises(AgentError, match=r"\[search\] CACHE: regex .* matches 0 times"):
        agent.propose(ctx(s, changed))


# -- failures are failures -------------------------------------------------------------------------
def test_constraint_values_follow_optunas_sign_convention():
    cs = [Constraint.parse("acc >= 0.9"), Constraint.parse("mem_mb < 100"),
          Constraint.parse("rows == 5")]
    assert constraint_values(cs, {"acc": 0.95, "mem_mb": 50, "rows": 5}) == {
        "acc >= 0.9": pytest.approx(-0.05), "mem_mb < 100": -50, "rows == 5": 0}
    bad = constraint_values(cs, {"acc": 0.85, "mem_mb": 100})
    assert bad["acc >= 0.9"] == pytest.approx(0.05)
    assert bad["mem_mb < 100"] > 0          # at the bound of a strict operator
    assert bad["rows == 5"] == 1.0          # not recorded


def _study_view(agent: OptunaAgent) -> list[tuple]:
    return [(t.state, t.value, dict(sorted(t.params.items())), dict(sorted(t.constraints.items())))
            for t in agent.study.trials]


def test_breaches_crashes_and_timeouts_are_never_told_as_successes_live_or_after_resume():
    s = TargetSpec.model_validate({
        "editable": ["train.py"], "run": "python train.py", "metric": "loss",
        "constraints": ["accuracy >= 0.9"]})
    source = "LR = 0.01\nWIDTH = 64\n"
    files = {"train.py": source}
    live = OptunaAgent(s, files, seed=0)
    base = HistoryEntry(id=1, seq=1, status=Status.KEEP, metric=1.0, description="baseline",
                        metrics={"loss": 1.0, "accuracy": 0.95}, params=live.baseline_params())
    history = [base]
    outcomes = [   # (status, metric, metrics): the loop's verdicts
        (Status.DISCARD, 0.2, {"loss": 0.2, "accuracy": 0.5}),   # great loss, breaks the constraint
        (Status.CRASH, None, {}),
        (Status.TIMEOUT, None, {}),
        (Status.DISCARD, 1.2, {"loss": 1.2, "accuracy": 0.93}),  # feasible, worse
        (Status.KEEP, 0.8, {"loss": 0.8, "accuracy": 0.91}),     # feasible, better
        (Status.DISCARD, 0.1, {"loss": 0.1}),                    # accuracy not recorded
    ]
    for i, (status, metric, metrics) in enumerate(outcomes):
        p = live.propose(ctx(s, files, history))
        reason = "constraint" if status == Status.DISCARD and metrics.get("accuracy", 0) < 0.9 else ""
        live.observe(p, Outcome(i + 2, status, metric, reason, metrics=metrics))
        history.append(HistoryEntry(id=i + 2, seq=i + 2, status=status, metric=metric,
                                    description=p.description, metrics=metrics, params=p.params))

    view = _study_view(live)
    by_metric = {v[1]: v for v in view if v[1] is not None}
    assert by_metric[0.2][3]["accuracy >= 0.9"] > 0, "a breach is infeasible, not a success"
    assert by_metric[0.1][3]["accuracy >= 0.9"] > 0
    assert by_metric[0.8][3]["accuracy >= 0.9"] <= 0
    states = [v[0] for v in view]
    assert states.count(optuna.trial.TrialState.FAIL) == 2      # the crash and the timeout
    # TPE's best feasible trial is 0.8, not the breaching 0.2 or 0.1
    feasible = [t for t in live.study.trials if t.state == optuna.trial.TrialState.COMPLETE
                and all(c <= 0 for c in t.constraints.values())]
    assert min(t.value for t in feasible) == 0.8

    resumed = OptunaAgent(s, files, seed=0)
    resumed.resume(history)
    assert _study_view(resumed) == view, "the same view after a restart"


def test_after_resuming_breaches_tpe_proposes_away_from_them():
    # the user's report: after a resume, 13 of 14 proposals broke the accuracy constraint
    s = TargetSpec.model_validate({
        "editable": ["train.py"], "run": "python train.py", "metric": "loss",
        "constraints": ["accuracy >= 0.9"],
        "search": {"X": {"low": 0.0, "high": 1.0}}})
    files = {"train.py": "X = 0.5\n"}

    def measure(x: float) -> dict[str, float]:   # low loss for high X, but X > 0.6 breaks accuracy
        return {"loss": 1.0 - x, "accuracy": 0.95 if x <= 0.6 else 0.5}

    history, rng = [], optuna.samplers.RandomSampler(seed=3)
    study = optuna.create_study(sampler=rng)
    for i in range(20):
        x = study.ask({"X": optuna.distributions.FloatDistribution(0, 1)}).params["X"]
        m = measure(x)
        status = Status.DISCARD if m["accuracy"] < 0.9 else Status.KEEP
        history.append(HistoryEntry(id=i + 1, seq=i + 1, status=status, metric=m["loss"],
                                    description="", metrics=m, params={"X": x}))
    def breaches_after_resume(agent_spec: TargetSpec) -> int:
        agent = OptunaAgent(agent_spec, files, seed=0)
        agent.resume(history)
        n = 0
        for i in range(14):
            p = agent.propose(ctx(agent_spec, files, history))
            m = measure(p.params["X"])
            n += m["accuracy"] < 0.9
            agent.observe(p, Outcome(100 + i, Status.DISCARD if m["accuracy"] < 0.9
                                     else Status.KEEP, m["loss"], metrics=m))
        return n

    fixed = breaches_after_resume(s)
    # the old behaviour: breaches learned as successes (as if there were no constraint)
    naive = breaches_after_resume(s.model_copy(update={"constraints": []}))
    assert naive >= 11, naive
    assert fixed <= 8 and fixed <= naive - 4, (fixed, naive)
