"""The sql, kernel, prompt, config and latency templates: init, gates, and a short offline loop.

Each loop test makes the target with `autoresearch init --template NAME`, shrinks its data through
the toml's [env] table (committed, as a user would), and runs `autoresearch run --agent optuna`
for a few experiments: the best kept metric must clearly beat the baseline. The gate tests
break the editable file the way a careless agent would and check the locked evaluator refuses it.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
from conftest import ar, commit_all, git, ledger_experiments

from autoresearch.config import load_spec
from autoresearch.templates import TEMPLATES, program_md, trains

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TRAINING = re.compile(r"\btrain(s|ed|ing)?\b", re.I)
NEW = ("sql", "kernel", "prompt", "config", "latency")

#: data sizes for the tests: small, so an experiment takes about a second
SMALL_ENV = {
    "sql": {"SQL_ORDERS": "40000", "SQL_CUSTOMERS": "4000"},
    "kernel": {"KERNEL_N": "768"},
    "prompt": {},
    "config": {"CONFIG_N": "160"},
    "latency": {"LATENCY_ITEMS": "20000", "LATENCY_REQUESTS": "120"},
}


def make(tmp_path: Path, name: str, env: dict[str, str] | None = None) -> Path:
    dest = tmp_path / name
    p = ar(tmp_path, "init", "--template", name, str(dest))
    assert p.returncode == 0, p.stderr
    env = {**SMALL_ENV[name], **(env or {})}
    if env:
        with (dest / "autoresearch.toml").open("a") as f:
            f.write("\n[env]\n" + "".join(f'{k} = "{v}"\n' for k, v in env.items()))
        commit_all(dest, "small data for the test")
    return dest


def run_loop(root: Path, n: int, *extra: str) -> tuple[float, float, list]:
    p = ar(root, "run", "--tag", "t", "--agent", "optuna", "--policy", "greedy",
           "--max-experiments", str(n), "--budget", "1", "--seed", "0", *extra, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = ledger_experiments(root, "t")
    base = next(e for e in rows if e.seq == 1)
    kept = [e.metric for e in rows if e.status.value == "keep" and e.metric is not None]
    return base.metric, kept, rows


def better(spec_direction: str, best: float, base: float, factor: float) -> bool:
    return best <= base / factor if spec_direction == "minimize" else best >= base * factor


# -- init ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NEW)
def test_init_template_writes_a_committed_target_with_a_domain_program(tmp_path, name):
    assert name in TEMPLATES
    dest = tmp_path / name
    p = ar(tmp_path, "init", "--template", name, str(dest))
    assert p.returncode == 0, p.stderr
    assert git(dest, "status", "--porcelain") == ""
    spec = load_spec(dest / "autoresearch.toml")
    assert spec.evaluate and spec.search, "every template has a locked evaluator and a [search]"
    tracked = set(git(dest, "ls-files").split())
    evaluator = spec.evaluate.split()[1]
    assert evaluator in tracked and evaluator in spec.locked
    program = (dest / "program.md").read_text()
    assert spec.metric in program
    assert not TRAINING.search(program.replace("data/train.jsonl", "")), \
        "a target that does not train hears nothing of training"
    assert not trains(spec)


def test_network_is_declared_only_by_the_prompt_template(tmp_path):
    for name in NEW:
        cfg = tomllib.loads((Path(__file__).parents[1] / "src/autoresearch/templates" / name
                             / "autoresearch.toml").read_text())
        assert cfg.get("network", False) == (name == "prompt"), name


# -- init flags ----------------------------------------------------------------------------------
def test_init_writes_setup_constraints_and_artifacts(tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    p = ar(root, "init", "--editable", "query.sql", "--setup", "python prepare.py",
           "--run", "python build.py", "--evaluate", "python evaluate.py", "--metric", "query_ms",
           "--constraint", "db_mb <= 200", "--constraint", "rows == 200000",
           "--artifact", "plan.txt", "--artifact", "out/result.bin")
    assert p.returncode == 0, p.stderr
    cfg = tomllib.loads((root / "autoresearch.toml").read_text())
    assert cfg["setup"] == "python prepare.py"
    assert cfg["constraints"] == ["db_mb <= 200", "rows == 200000"]
    assert cfg["artifacts"] == ["plan.txt", "out/result.bin"]
    program = (root / "program.md").read_text()
    assert not TRAINING.search(program)
    assert "`db_mb <= 200`" in program and "`rows == 200000`" in program
    assert "`plan.txt`" in program and "`python prepare.py` runs once" in program


def test_program_md_of_a_training_target_speaks_of_its_budget(tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    assert ar(root, "init", "--editable", "train.py", "--run", "python train.py",
              "--metric", "val_loss", "--budget", "120").returncode == 0
    program = (root / "program.md").read_text()
    assert "trains for a fixed budget of\n120 seconds" in program or \
        "trains for a fixed budget of 120 seconds" in program.replace("\n", " ")


@pytest.mark.parametrize("flags, fix", [
    (["--constraint", "db_mb < < 3"], "--constraint"),
    (["--constraint", "nonsense"], "--constraint"),
    (["--artifact", "/etc/passwd"], "--artifact"),
    (["--artifact", "../outside.bin"], "--artifact"),
])
def test_init_refuses_bad_constraints_and_artifacts_in_one_line(tmp_path, flags, fix):
    root = tmp_path / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    p = ar(root, "init", "--editable", "a.sql", "--run", "python r.py", "--metric", "m", *flags)
    assert p.returncode == 1
    assert p.stderr.startswith("error: ") and fix in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not (root / "autoresearch.toml").exists()


def test_program_md_helper_names_constraints_without_training(tmp_path):
    spec = load_spec_text(tmp_path, 'editable = ["k.py"]\nrun = "python bench.py"\n'
                          'metric = "kernel_ms"\nconstraints = ["gbps <= 50"]\n')
    text = program_md(spec, "k")
    assert not TRAINING.search(text) and "`gbps <= 50`" in text


def load_spec_text(tmp_path: Path, text: str):
    p = tmp_path / "autoresearch.toml"
    p.write_text(text)
    return load_spec(p)


# -- the offline loops ---------------------------------------------------------------------------
def test_sql_loop_finds_a_faster_plan_with_the_same_answer(tmp_path):
    root = make(tmp_path, "sql")
    base, kept, rows = run_loop(root, 4)
    assert min(kept) <= base / 3, (base, kept)
    best = min((e for e in rows if e.status.value == "keep"), key=lambda e: e.metric)
    assert "INDEXES" in (best.params or {})
    assert all(k in best.metrics for k in ("query_ms_iqr", "runs", "db_mb"))


def test_sql_gate_refuses_a_query_with_a_different_answer(tmp_path):
    root = make(tmp_path, "sql")
    assert ar(root, "run", "--tag", "t", "--max-experiments", "1", "--budget", "1").returncode == 0
    env_cache = root / ".autoresearch" / "cache"
    q = (root / "query.sql").read_text().replace("BETWEEN 970 AND 999", "BETWEEN 980 AND 999")
    out = _evaluate(root, {"query.sql": q}, env_cache)
    assert "eval_error: run 0: the result differs from the reference" in out
    out = _evaluate(root, {"indexes.sql": "DELETE FROM orders WHERE day < 900;\n"}, env_cache)
    assert "eval_error: indexes.sql may hold only CREATE INDEX" in out
    out = _evaluate(root, {"query.sql": "DELETE FROM orders;"}, env_cache)
    assert "eval_error: query.sql must hold exactly one SELECT" in out


def _evaluate(root: Path, files: dict[str, str], cache: Path, *args: str,
              env: dict[str, str] | None = None) -> str:
    """Run the template's evaluator on a scratch copy with some files replaced."""
    import os
    import subprocess

    scratch = root.parent / f"scratch-{len(list(root.parent.iterdir()))}"
    shutil.copytree(root, scratch, ignore=shutil.ignore_patterns(".git", ".autoresearch"))
    for rel, text in files.items():
        (scratch / rel).write_text(text)
    spec = load_spec(root / "autoresearch.toml")
    full_env = {**os.environ, **spec.env, "AUTORESEARCH_CACHE": str(cache),
                "AUTORESEARCH_BUDGET_SECONDS": "1", **(env or {})}
    p = subprocess.run([sys.executable, *spec.evaluate.split()[1:], *args], cwd=scratch,
                       capture_output=True, text=True, env=full_env, timeout=120)
    return p.stdout + p.stderr


@pytest.mark.runs_alone   # a time metric: other workers' load would blur it
def test_kernel_loop_finds_a_faster_kernel(tmp_path):
    root = make(tmp_path, "kernel")
    base, kept, rows = run_loop(root, 4)
    assert min(kept) <= base / 1.25, (base, kept)
    best = min((e for e in rows if e.status.value == "keep"), key=lambda e: e.metric)
    assert best.params["USE_ROLL"] == 0
    assert best.metrics["gbps"] < best.metrics["memcpy_gbps"]


@pytest.mark.runs_alone   # a time metric: under the suite's load -O2 measured 1.5x, not 2x
def test_config_loop_finds_faster_compiler_flags(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    root = make(tmp_path, "config")
    base, kept, rows = run_loop(root, 4)
    assert min(kept) <= base / 2, (base, kept)
    best = min((e for e in rows if e.status.value == "keep"), key=lambda e: e.metric)
    assert best.params["opt"] != "-O0"


def test_config_gate_refuses_flags_that_change_the_program(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    root = make(tmp_path, "config")
    cache = tmp_path / "cache"
    bad = '{"opt": "-O2", "march_native": false, "unroll_loops": false, "fast_math": false, ' \
          '"extra": "-DN=8"}'
    assert "extra flag '-DN=8' is not an allowed" in _evaluate(root, {"build.json": bad}, cache)
    plugin = bad.replace("-DN=8", "-fplugin=/tmp/x.so")
    assert "is not an allowed" in _evaluate(root, {"build.json": plugin}, cache)


@pytest.mark.runs_alone   # a time metric: other workers' load would blur it
def test_latency_loop_lowers_p99(tmp_path):
    root = make(tmp_path, "latency")
    base, kept, rows = run_loop(root, 4)
    assert min(kept) <= base / 2, (base, kept)


def test_latency_gate_checks_every_response(tmp_path):
    root = make(tmp_path, "latency")
    handler = (root / "handler.py").read_text().replace(
        "    return 200, body\n", "    body['results'] = body['results'][:9]\n    return 200, body\n")
    out = _evaluate(root, {"handler.py": handler}, tmp_path / "cache", "--check")
    assert "eval_error: request" in out and "wrong answer" in out


def test_prompt_loop_raises_accuracy_against_the_fake_server(tmp_path):
    from autoresearch.testing import FakeOpenAIServer

    sys.path.insert(0, str(Path(__file__).parents[1] / "src/autoresearch/templates/prompt"))
    try:
        import toy_model
    finally:
        sys.path.pop(0)
    with FakeOpenAIServer([], responder=toy_model.respond) as server:
        root = make(tmp_path, "prompt", {"OPENAI_BASE_URL": server.base_url})
        base, kept, rows = run_loop(root, 8)
        assert server.requests, "the evaluator talked to the endpoint"
        system = server.requests[0]["body"]["messages"][0]
        assert system["role"] == "system"
    assert base < 0.5 and max(kept) >= base + 0.3, (base, kept)


def test_prompt_gate_refuses_a_prompt_that_leaks_the_test_set(tmp_path):
    from autoresearch.testing import FakeOpenAIServer

    root = make(tmp_path, "prompt")
    leak = (root / "data/test.jsonl").read_text().splitlines()[3]
    import json
    text = json.loads(leak)["text"]
    prompt = (root / "prompt.toml").read_text().replace('hints = ""', f'hints = "{text} is negative"')
    with FakeOpenAIServer([], loop=True) as server:
        out = _evaluate(root, {"prompt.toml": prompt}, tmp_path / "cache",
                        env={"OPENAI_BASE_URL": server.base_url})
        assert "eval_error: the system prompt contains a review of the test set" in out
        assert server.requests == [], "the gate runs before any request"
