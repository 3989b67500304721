"""The target spec: autoresearch.toml, validated with errors that say the fix.

Every key is documented in the README ("autoresearch.toml reference"). Unknown keys are
refused with a "did you mean" hint, because a typo in `locked` must never silently unlock a file.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

CONFIG_NAME = "autoresearch.toml"
PROGRAM_NAME = "program.md"
ALWAYS_LOCKED = (CONFIG_NAME, PROGRAM_NAME)
STATE_DIR = ".autoresearch"
RESULTS_NAME = "results.tsv"

_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt,
        "==": operator.eq, "!=": operator.ne}
_CONSTRAINT_RE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(<=|>=|==|!=|<|>)\s*([-+0-9.eE]+|inf)\s*$")


@dataclass(frozen=True)
class Constraint:
    """`peak_vram_mb <= 60000`: an experiment whose recorded metric breaks it is discarded."""

    metric: str
    op: str
    bound: float

    @classmethod
    def parse(cls, text: str) -> Constraint:
        m = _CONSTRAINT_RE.match(text)
        if not m:
            raise ValueError(
                f"constraint {text!r} is not of the form 'name <= number' (ops: <=, <, >=, >, ==, !=)")
        return cls(m.group(1), m.group(2), float(m.group(3)))

    @classmethod
    def validated(cls, texts: list[str]) -> list[str]:
        """The texts, each checked to parse (a pydantic validator's body)."""
        for text in texts:
            cls.parse(text)
        return texts

    def check(self, metrics: dict[str, float]) -> str | None:
        """None when satisfied; otherwise the reason. A metric that was not recorded fails."""
        value = metrics.get(self.metric)
        if value is None:
            return f"constraint {self}: metric {self.metric!r} was not recorded"
        if not _OPS[self.op](value, self.bound):
            return f"constraint {self} violated: {self.metric} = {value:g}"
        return None

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SearchParam(_Strict):
    """One parameter of the optuna agent: where it lives (a locator) and what it may take.

    Without a locator the entry's name is a Python constant (`LR`, `_THRESHOLD`) or a dotted
    keyword default / class attribute (`detect.threshold`, `Config.WIDTH`) of an editable file.
    Without `low`/`high`/`choices` the range is chosen around the current value.
    """

    low: float | None = None
    high: float | None = None
    log: bool = False
    int_: bool = Field(False, alias="int")
    step: float | None = None
    choices: list[Any] | None = None
    file: str | None = None            # the editable file the locator reads; default: every one
    regex: str | None = None           # a regex whose one group is the value
    marker: bool = False               # a `# ar: NAME` marker (also `--`, `//`, `;`, `/*`)
    key: str | None = None             # a dotted key path in a TOML, YAML or JSON file

    @model_validator(mode="after")
    def _check(self) -> SearchParam:
        located = [k for k in ("regex", "marker", "key") if getattr(self, k) not in (None, False)]
        if len(located) > 1:
            raise ValueError(f"give one locator, not {' and '.join(located)}")
        if self.key is not None and self.file is None:
            raise ValueError("'key' needs 'file' (the TOML, YAML or JSON file that holds it)")
        if self.regex is not None:
            try:
                groups = re.compile(self.regex).groups
            except re.error as e:
                raise ValueError(f"'regex' does not compile ({e}) — fix the pattern") from None
            if groups != 1:
                raise ValueError(f"'regex' must have exactly one group around the value (it has "
                                 f"{groups}) — use (?:...) for the others")
        if self.choices is not None:
            if not self.choices:
                raise ValueError("'choices' must not be empty")
            return self
        if self.low is None and self.high is None:
            return self     # a range around the current value
        if self.low is None or self.high is None:
            raise ValueError("needs both 'low' and 'high' (or 'choices', or neither)")
        if not self.low < self.high:
            raise ValueError(f"'low' ({self.low:g}) must be below 'high' ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("'log = true' needs 'low' > 0")
        return self


class PolicySettings(_Strict):
    """[policy]: settings of the acceptance policies (see policies/)."""

    baseline_runs: int = Field(3, ge=1, le=50)        # noise-aware: evaluations of the baseline
    alpha: float = Field(0.01, gt=0, lt=0.5)          # noise-aware: false-keep rate per no-effect proposal (union bound over its looks)
    power_beta: float = Field(0.1, gt=0, lt=0.5)      # noise-aware: chance to miss a real improvement
    max_runs: int = Field(4, ge=1, le=100)            # noise-aware: cap on runs per candidate
    min_effect: float = Field(0.0, ge=0)              # in the metric's units
    min_effect_sigmas: float = Field(0.0, ge=0)       # as a multiple of the measured noise
    noise_floor: float = Field(0.0, ge=0)             # lower bound on the noise sd, metric units
    screen_z: float = Field(0.75)                     # noise-aware: first run must look this good (z)
    design_sigmas: float = Field(2.5, gt=0)           # noise-aware: improvement the test is tuned to, in noise sd
    confirm_runs: int = Field(2, ge=1, le=100)        # noise-aware: runs of a candidate before a keep
    refresh_runs: int = Field(3, ge=0, le=50)         # noise-aware-v1: fresh runs of a new best before it is judged by them
    remeasure_every: int = Field(20, ge=0)            # noise-aware: re-measure the best after this many experiments without a run of it (0: only on resume)
    drift_alpha: float = Field(1e-3, gt=0, lt=0.5)    # noise-aware: level of the test for a change of measuring conditions


class PruneSettings(_Strict):
    """[prune]: early stopping of runs from their `progress:` lines (with --prune)."""

    warmup: float = Field(0.2, ge=0, lt=1)            # no pruning before this share of progress
    metric: str | None = None                         # curve to compare; default: the run's first
    min_history: int = Field(1, ge=1)                 # finished runs needed before pruning
    margin_sigmas: float = Field(3.0, ge=0)           # how clearly worse counts as "clearly"
    catch_up: float = Field(0.5, ge=0)                # slack: a run may still learn this much faster than the best


class TreeSettings(_Strict):
    """[tree]: settings of the tree search (strategy = "tree"; see strategies.py)."""

    population: int = Field(16, ge=2, le=1000)        # nodes kept to propose from (the root and the best always among them)
    drafts: int = Field(3, ge=0, le=100)              # children of the root (fresh ideas) before any other node is improved
    exploration: float = Field(1.414, ge=0)           # UCB's exploration weight c (UCB1: sqrt 2)
    window: int = Field(50, ge=1, le=10_000)          # a node's latest children that its score counts
    debug_prob: float = Field(0.5, ge=0, le=1)        # chance that a proposal fixes a crashed node when one is open
    max_debug_depth: int = Field(3, ge=0, le=20)      # debug attempts in a row on one line of crashes
    max_steps_back: int = Field(2, ge=0, le=20)       # children worse than their parent in a row that may still be proposed from


class Price(_Strict):
    input: float = Field(ge=0)    # USD per million input tokens
    output: float = Field(ge=0)   # USD per million output tokens


class AgentSettings(_Strict):
    """[agent]: settings shared by every agent backend."""

    timeout: float = Field(900, gt=0)                 # seconds for one proposal
    stall_timeout: float = Field(120, gt=0)           # CLI agents: seconds without progress before a kill
    check: bool = True                                # one connectivity and auth check before the run
    max_consecutive_errors: int = Field(5, ge=1)
    context_chars: int = Field(48_000, ge=2_000)       # size budget of the prompt
    history_rows: int = Field(60, ge=1)
    max_retries: int = Field(4, ge=0)                 # HTTP retries with backoff
    max_tokens: int | None = Field(None, ge=256)     # None: fit the server's context (agents/llm.py)
    temperature: float | None = None
    command: str | None = None                        # default for --agent command
    prices: dict[str, Price] = Field(default_factory=dict)


class AgentEntry(_Strict):
    """One `[[agents]]` entry: an agent of a portfolio with its share of the slots (portfolio.py)."""

    agent: str                                        # an --agent value: optuna, claude, script:PATH...
    slots: int = Field(1, ge=1, le=1024)              # its share of the run's slots
    role: str | None = None                           # e.g. "explorer"; recorded on its rows
    program: str | None = None                        # its program.md (e.g. "explorer.md"); locked

    @field_validator("agent")
    @classmethod
    def _agent(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name an agent (optuna, claude, codex, script:PATH, ...)")
        return v.strip()

    @field_validator("role")
    @classmethod
    def _role(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z][\w\-]{0,39}", v):
            raise ValueError("must be a word such as 'explorer' (letters, digits, - and _)")
        return v

    @field_validator("program")
    @classmethod
    def _program(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or Path(v).is_absolute() or ".." in Path(v).parts
                              or any(c in v for c in "*?[")):
            raise ValueError("must be a file path inside the target, relative, without '..' or "
                             "wildcards (e.g. 'explorer.md')")
        return v


class NotesSettings(_Strict):
    """[notes]: research notes, the summary of what was tried, near-duplicates (notes.py, neardup.py)."""

    enabled: bool = True                              # notes and summary in every prompt
    max_chars: int = Field(4000, ge=200, le=100_000)  # the notes are cut to this size
    summary_chars: int = Field(3000, ge=200, le=100_000)  # the machine-made summary's size
    near_duplicates: bool = True                      # refuse near-duplicate proposals
    constant_tolerance: float = Field(0.01, ge=0, lt=1)  # relative: constants closer than this repeat
    similarity: float = Field(0.9, gt=0, le=1)        # Jaccard of changed lines (same base) that repeats


class Scale(_Strict):
    """[scales] NAME: one size of the experiment (`run --scale`, `promote --scale`).

    `env` is added to the toml's `env` for every command (the scale wins on a shared name);
    `budget` replaces the toml's budget (`--budget` still overrides both); `timeout` the hard
    limit (default: the toml's when the budget is the toml's, else 2 x budget + 60);
    `constraints` are added to the toml's (a check that the code really ran at this scale,
    e.g. "width == 128" on a width the locked evaluator reports).
    """

    env: dict[str, str] = Field(default_factory=dict)
    budget: float | None = Field(None, gt=0)          # seconds of training at this scale
    timeout: float | None = Field(None, gt=0)         # hard limit per command at this scale
    constraints: list[str] = Field(default_factory=list)

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, v: list[str]) -> list[str]:
        return Constraint.validated(v)


class TargetSpec(_Strict):
    """The contents of autoresearch.toml."""

    editable: list[str] = Field(min_length=1)
    locked: list[str] = Field(default_factory=list)
    setup: str | None = None
    run: str
    evaluate: str | None = None
    metric: str
    direction: Literal["minimize", "maximize"] = "minimize"
    holdout: str | None = None                        # locked command: a second metric the agent never sees
    holdout_metric: str | None = None                 # the name the holdout prints; default: metric
    holdout_every: int = Field(1, ge=1)               # run the holdout on every Nth candidate (and the baseline)
    on_divergence: Literal["warn", "stop", "revert"] = "warn"   # when validation improves but the holdout worsens
    holdout_setup: str | None = None                  # locked command: writes $AUTORESEARCH_HOLDOUT once
    holdout_data: list[str] = Field(default_factory=list)  # paths only the holdout step may read
    budget: float = Field(300, gt=0)                  # seconds of training per experiment
    timeout: float | None = Field(None, gt=0)         # hard limit; default 2 * budget + 60
    setup_timeout: float = Field(3600, gt=0)
    record: list[str] = Field(default_factory=list)   # extra metrics to keep from the output
    constraints: list[str] = Field(default_factory=list)
    memory_metric: str | None = None                  # results.tsv memory_gb; default: peak RSS
    log_cap_mb: float = Field(16, gt=0)               # per-experiment log size cap
    env: dict[str, str] = Field(default_factory=dict)
    # trust (README: "What you can trust, and why")
    sandbox: bool = Field(default_factory=lambda: sys.platform.startswith("linux"))  # bubblewrap
    sandbox_writable: list[str] = Field(default_factory=list)  # more writable paths in the sandbox
    network: bool = False                             # run/evaluate steps may use the network
    artifacts: list[str] = Field(default_factory=list)  # run-step outputs the evaluator may read
    artifacts_max_mb: float = Field(4096, gt=0)       # cap on the artifacts' total size
    budget_allowance: float | None = Field(None, ge=0)  # seconds past the budget; default max(30, budget/4)
    training_seconds_metric: str | None = "training_seconds"  # reported training time, checked too
    search: dict[str, SearchParam] = Field(default_factory=dict)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    strategy: Literal["ratchet", "tree"] = "ratchet"  # which node a proposal starts from (strategies.py)
    tree: TreeSettings = Field(default_factory=TreeSettings)
    prune: PruneSettings = Field(default_factory=PruneSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    agents: list[AgentEntry] = Field(default_factory=list)   # a portfolio (portfolio.py)
    notes: NotesSettings = Field(default_factory=NotesSettings)

    @field_validator("agents")
    @classmethod
    def _agents(cls, v: list[AgentEntry]) -> list[AgentEntry]:
        seen: set[tuple[str, str | None]] = set()
        for a in v:
            if (a.agent, a.role) in seen:
                raise ValueError(f"agent {a.agent!r} appears twice with the same role "
                                 f"({a.role or 'none'}) — give each entry its own role")
            seen.add((a.agent, a.role))
        return v

    scales: dict[str, Scale] = Field(default_factory=dict)   # run --scale, promote --scale

    @field_validator("scales")
    @classmethod
    def _scales(cls, v: dict[str, Scale]) -> dict[str, Scale]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}", name):
                raise ValueError(f"scale name {name!r} must be a word of letters, digits, '_' "
                                 f"and '-' (it becomes part of a tag and a branch name)")
        return v

    def at_scale(self, name: str | None, path: Path | str = CONFIG_NAME) -> TargetSpec:
        """This spec as it runs at scale `name` (None: unchanged): the scale's env added, its
        budget and timeout in force. An unknown name is one error with a "did you mean"."""
        if name is None:
            return self
        scale = self.scales.get(name)
        if scale is None:
            known = sorted(self.scales)
            guess = difflib.get_close_matches(name, known, n=1)
            hint = (f"did you mean '{guess[0]}'?" if guess else
                    f"known scales: {', '.join(known)}" if known else
                    "declare it, e.g. [scales] large = { env = { WIDTH = \"128\" }, budget = 900 }")
            raise ConfigError(f"{path}: no scale '{name}' in [scales] — {hint}")
        timeout = scale.timeout
        if timeout is None:
            timeout = self.timeout if scale.budget is None else 2 * scale.budget + 60
        return self.model_copy(update={
            "env": {**self.env, **scale.env},
            "budget": scale.budget if scale.budget is not None else self.budget,
            "timeout": timeout, "constraints": [*self.constraints, *scale.constraints]})

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, v: list[str]) -> list[str]:
        return Constraint.validated(v)

    @field_validator("artifacts")
    @classmethod
    def _artifacts(cls, v: list[str]) -> list[str]:
        for name in v:
            parts = Path(name).parts
            if not name.strip() or Path(name).is_absolute() or ".." in parts or any(
                    c in name for c in "*?["):
                raise ValueError(f"artifact {name!r} must be a file path inside the target, "
                                 f"relative, without '..' or wildcards (e.g. 'model.npz')")
        return v

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][\w.\-]*", v):
            raise ValueError(f"metric name {v!r} must be a word such as 'val_bpb'")
        return v

    @field_validator("holdout_data")
    @classmethod
    def _holdout_data(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name.strip() or any(c in name for c in "*?[") or Path(name).parts[:1] == ("..",):
                raise ValueError(f"holdout_data entry {name!r} must be a path (a file or folder, "
                                 f"relative to the target or absolute), without wildcards")
        return v

    @model_validator(mode="after")
    def _holdout_needs_command(self) -> TargetSpec:
        for key in ("holdout_setup", "holdout_data"):
            if getattr(self, key) and not self.holdout:
                raise ValueError(f"{key} is given but holdout is not: add the holdout command "
                                 f"that reads it, e.g. holdout = \"python evaluate.py --holdout\"")
        return self

    @field_validator("run", "setup", "evaluate", "holdout", "holdout_setup")
    @classmethod
    def _command(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("command must not be empty")
        return v

    @property
    def hard_timeout(self) -> float:
        return self.timeout if self.timeout is not None else 2 * self.budget + 60

    @property
    def locked_globs(self) -> list[str]:
        """program.md, the roles' programs and autoresearch.toml are always locked."""
        always = list(ALWAYS_LOCKED) + [a.program for a in self.agents
                                        if a.program and a.program not in ALWAYS_LOCKED]
        return always + [g for g in self.locked if g not in always]

    @property
    def parsed_constraints(self) -> list[Constraint]:
        return [Constraint.parse(c) for c in self.constraints]

    def better(self, a: float, b: float) -> bool:
        """True when metric value a is strictly better than b."""
        return a < b if self.direction == "minimize" else a > b


@dataclass
class Target:
    """A loaded target: the spec plus where it lives."""

    root: Path          # the directory holding autoresearch.toml
    spec: TargetSpec
    config_path: Path

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def holdout_dir(self) -> Path:
        """Where `holdout_setup` writes the holdout data ($AUTORESEARCH_HOLDOUT)."""
        return self.state_dir / "holdout"

    def holdout_paths(self) -> list[Path]:
        """Everything only the holdout step may read: the prepared holdout directory and the
        declared `holdout_data`, resolved (a symlink is hidden at its destination)."""
        return [self.holdout_dir.resolve(), *holdout_data_paths(self.spec, self.root)]

    @property
    def program_path(self) -> Path:
        return self.root / PROGRAM_NAME

    @property
    def results_path(self) -> Path:
        return self.root / RESULTS_NAME


def holdout_data_paths(spec: TargetSpec, root: Path) -> list[Path]:
    """The declared `holdout_data`, absolute and resolved (relative ones against root)."""
    return [(Path(p) if Path(p).is_absolute() else root / p).resolve() for p in spec.holdout_data]


def _all_fields(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


# tables whose keys the user names (constants, model names), and the model of each entry
_NAMED_TABLES: dict[tuple[str, ...], type[BaseModel]] = {
    ("search",): SearchParam, ("agent", "prices"): Price, ("scales",): Scale}


def _model_at(loc: tuple) -> type[BaseModel]:
    """The model that owns the last key of a validation error's location."""
    model: type[BaseModel] = TargetSpec
    parts = [str(p) for p in loc[:-1] if not isinstance(p, int)]
    path: tuple[str, ...] = ()
    i = 0
    while i < len(parts):
        path += (parts[i],)
        if path in _NAMED_TABLES:
            model = _NAMED_TABLES[path]
            i += 2          # past the table and the user's own entry name
            continue
        f = model.model_fields.get(parts[i])
        ann = f.annotation if f else None
        if typing.get_origin(ann) is list:      # [[agents]]: a list of tables
            ann = typing.get_args(ann)[0]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        i += 1
    return model


def _format_error(path: Path, err: dict) -> str:
    loc = tuple(err.get("loc", ()))
    key = ".".join(str(p) for p in loc) or "(top level)"
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        candidates = _all_fields(_model_at(loc))
        guess = difflib.get_close_matches(str(loc[-1]), candidates, n=1)
        hint = f"did you mean '{guess[0]}'?" if guess else f"known keys: {', '.join(candidates)}"
        return f"{path}: unknown key '{key}' — {hint}"
    if kind == "missing":
        return f"{path}: missing required key '{key}' — add it (see the README's autoresearch.toml reference)"
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    value = err.get("input")
    shown = f" (got {value!r})" if value is not None and not isinstance(value, dict) else ""
    if not loc:             # a rule across keys names them itself
        return f"{path}: {msg}"
    return f"{path}: key '{key}': {msg}{shown}"


def parse_spec(data: dict[str, Any], path: Path) -> TargetSpec:
    try:
        return TargetSpec.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        raise ConfigError(_format_error(path, errors[0])) from None


def load_target(start: Path | str | None = None) -> Target:
    """Find autoresearch.toml in `start` or its parents, and validate it."""
    here = Path(start or Path.cwd()).resolve()
    if here.is_file():
        here = here.parent
    for d in (here, *here.parents):
        p = d / CONFIG_NAME
        if p.is_file():
            return Target(root=d, spec=load_spec(p), config_path=p)
    raise ConfigError(
        f"no {CONFIG_NAME} in {here} or its parents — run 'autoresearch init' there first "
        f"(or 'autoresearch init --template quickstart DIR' for the example target)")


def load_spec(path: Path) -> TargetSpec:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(f"{path}: line {line}, column {col}: byte 0x{raw[e.start]:02x} is not UTF-8 "
                          f"— TOML files must be UTF-8; re-save it as UTF-8 (e.g. iconv -f latin1 "
                          f"-t utf-8)") from None
    return spec_from_text(text, path)


def spec_from_text(text: str, path: Path) -> TargetSpec:
    """A toml's text (a committed version of it, say) as a spec; errors name `path`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e} — fix the syntax at that line") from None
    return parse_spec(data, path)


# directories never searched for editable files: tool state, caches, environments
_WALK_SKIP = {".git", STATE_DIR, "__pycache__", ".pytest_cache", "node_modules", ".venv", "venv",
              ".mypy_cache", ".ruff_cache", ".tox"}
_WALK_LIMIT = 200_000      # files looked at before giving up on the check (a huge data directory)


def target_files(root: Path) -> list[str]:
    """Target-relative paths of the files under root (tool and cache directories skipped)."""
    import os

    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _WALK_SKIP)
        rel = Path(dirpath).relative_to(root).as_posix()
        for f in filenames:
            out.append(f if rel == "." else f"{rel}/{f}")
            if len(out) >= _WALK_LIMIT:
                return out
    return out


def check_globs(spec: TargetSpec, root: Path, path: Path, files: list[str] | None = None) -> None:
    """Refuse editable globs that give the agent nothing: one that matches no file, or only
    locked ones. A typo here would run a whole night of proposals that can never be kept."""
    from .globs import matches

    files = target_files(root) if files is None else files
    if len(files) >= _WALK_LIMIT:
        return
    locked = spec.locked_globs
    for glob in spec.editable:
        hit = [f for f in files if matches(f, [glob])]
        if hit and any(not matches(f, locked) for f in hit):
            continue
        if hit:
            raise ConfigError(f"{path}: editable glob {glob!r} matches only locked files "
                              f"({', '.join(hit[:3])}) — the agent could change nothing through it; "
                              f"remove it from 'locked' or fix the glob")
        free = [f for f in files if not matches(f, locked)]
        guess = difflib.get_close_matches(glob, free, n=1, cutoff=0.5)
        hint = (f"did you mean {guess[0]!r}?" if guess else
                "check the spelling and that the file is in the target directory")
        raise ConfigError(f"{path}: editable glob {glob!r} matches no file under {root} — {hint}")


def finite(x: float | None) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)
