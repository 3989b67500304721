"""Research organisations compared: `autoresearch compare PROGRAM.md PROGRAM.md ...`.

An organisation is a program.md (what every agent of the run reads) paired with the agent that
reads it. `compare` runs each organisation R times on the same target and reports how fast each
one improves the metric, with confidence intervals and a test of significance.

Guarantees:
- Same target, same baseline, equal budgets: every run starts from one commit (the target's HEAD
  when the comparison was created, with the organisation's program.md committed on top of it, so
  only program.md differs) with the same policy, training budget, slots, and the same number of
  experiments (`--experiments N`) or the same share of the wall time (`--hours H`: the whole
  comparison's, split equally between its runs).
- Interleaved: runs advance in turns of `workers` experiments on the same slots, round-robin over
  organisation x repeat with the order rotated each round, so drift of the machine (load, heat,
  other jobs) hits every organisation alike.
- Independent repeats: each run has its own branch `autoresearch/cmp-NAME-ORG-rK`, its own seed,
  and its own rows in the ledger, tagged with the organisation (`runs.org`, `experiments.org`).
- Resumable: the comparison, its runs and the wall time each has used are in the ledger. The same
  command again continues every run where it stopped (a run killed mid-turn is repaired by its own
  resume); a different set of organisations under the same name is refused.
- One loop: each turn is an ordinary `autoresearch run` of that run's tag (RunRequest -> Loop).

The statistics (`analyse`, pure: it takes run records) are shared by the CLI, `evolve-program`
and bench/research.py: per organisation the mean over its repeats, with a t interval at 1-alpha,
of the improvement (the pooled baseline minus the best reached, signed so that more is better),
the improvement per experiment and per hour, the best reached, the keep rate and the cost; between
every pair of organisations Welch's t test on the per-repeat improvement (Mann-Whitney's p beside
it), Holm-corrected over the pairs.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from .config import PROGRAM_NAME, PolicySettings, Target
from .errors import ConfigError
from .experiment import Kind, Status
from .judge import AgentFailing
from .ledger import Ledger

DEFAULT_REPEATS = 3
DEFAULT_ALPHA = 0.05
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
_PREFIX = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,39})=(.+)", re.S)


# == organisations =============================================================================
@dataclass(frozen=True)
class Organisation:
    """A research organisation: a program.md and the agent that follows it."""

    name: str
    program: str        # the path as given
    text: str           # its content, committed as program.md for its runs
    agent: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def identity(self) -> dict[str, str]:
        """What makes it this organisation: its name, its program's text and its agent (not
        where the file lies, so a rerun from another directory continues it)."""
        return {"name": self.name, "sha256": self.digest, "agent": self.agent}


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:40] or "org"


def parse_organisations(items: list[str], agents: list[str] | None, *, root: Path,
                        default_agent: str = "optuna") -> list[Organisation]:
    """Organisations from the command line: `[NAME=]PROGRAM.md[@AGENT]` each, and `--agent`
    given once (the agent of every organisation without its own) or once per organisation (in
    order). One ConfigError names the item and the fix."""
    if len(items) < 2:
        raise ConfigError("compare needs at least two organisations, e.g. "
                          "'autoresearch compare program.md explorer.md@claude'")
    agents = agents or []
    if len(agents) not in (0, 1, len(items)):
        raise ConfigError(f"--agent was given {len(agents)} times for {len(items)} organisations — "
                          f"give it once (for all) or once per organisation, in order")
    parsed: list[tuple[str | None, str, str, str | None]] = []
    for i, item in enumerate(items):
        name, rest = None, item
        m = _PREFIX.fullmatch(item)
        if m and not _find(item, root):
            name, rest = m.group(1), m.group(2)
        path_text, agent = rest, None
        if not _find(rest, root) and "@" in rest:
            path_text, agent = rest.split("@", 1)
            if not agent.strip():
                raise ConfigError(f"compare: {item!r} has an empty agent after '@' — e.g. "
                                  f"{path_text}@optuna")
        path = _find(path_text, root)
        if path is None:
            raise ConfigError(f"compare: no program file {path_text!r} (looked in the current "
                              f"directory and in {root}) — give the path of a program.md variant")
        if len(agents) == len(items) and len(items) > 1:
            if agent is not None:
                raise ConfigError(f"compare: {item!r} names its agent and --agent is given per "
                                  f"organisation too — use one of the two")
            agent = agents[i]
        agent = agent or (agents[0] if len(agents) == 1 else default_agent)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"compare: cannot read {path} ({e}) — give a UTF-8 text file") from None
        parsed.append((name, path_text, text, agent.strip()))
    names = _names(parsed)
    return [Organisation(n, p, t, a) for n, (_, p, t, a) in zip(names, parsed, strict=True)]


def _find(text: str, root: Path) -> Path | None:
    for p in (Path(text), root / text):
        if p.is_file():
            return p
    return None


def _names(parsed: list[tuple[str | None, str, str, str | None]]) -> list[str]:
    """Given names, else the program's file stem; with the agent, then a number, when two clash."""
    given = [n for n, *_ in parsed if n]
    if len(set(given)) != len(given):
        raise ConfigError(f"compare: organisation name {next(n for n in given if given.count(n) > 1)!r} "
                          f"is given twice — name each organisation once")
    names = [n or _safe(Path(p).stem) for n, p, _, _ in parsed]
    stems = list(names)
    for i, (n, _, _, agent) in enumerate(parsed):
        if n is None and stems.count(stems[i]) > 1:
            names[i] = _safe(f"{stems[i]}-{agent or ''}")
    for i, (n, *_) in enumerate(parsed):       # a given name wins; a derived one gets a number
        base, k = names[i], 2
        while n is None and (names[i] in names[:i] or names[i] in given):
            names[i] = f"{base}-{k}"
            k += 1
    return names


# == the comparison's plan =====================================================================
@dataclass
class CompareSpec:
    orgs: list[Organisation]
    name: str | None = None             # default: from the organisations' identity
    repeats: int = DEFAULT_REPEATS
    experiments: int | None = None      # per run, the baseline and repeats included
    hours: float | None = None          # the whole comparison's wall time, shared equally
    workers: int = 1
    policy: str | None = None
    budget: float | None = None         # the training budget per experiment (toml's otherwise)
    seed: int = 0
    alpha: float = DEFAULT_ALPHA

    def check(self) -> None:
        if self.repeats < 1:
            raise ConfigError(f"--repeats must be at least 1 (got {self.repeats})")
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1 (got {self.workers})")
        if (self.experiments is None) == (self.hours is None):
            raise ConfigError("compare needs one budget: --experiments N (per run) or --hours H "
                              "(the whole comparison)")
        if self.experiments is not None and self.experiments < 2:
            raise ConfigError(f"--experiments must be at least 2: the baseline and one proposal "
                              f"(got {self.experiments})")
        if self.hours is not None and not self.hours > 0:
            raise ConfigError(f"--hours must be above 0 (got {self.hours:g})")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"--alpha must be between 0 and 1 (got {self.alpha:g})")
        if self.name is not None and not _NAME.fullmatch(self.name):
            raise ConfigError(f"--name {self.name!r}: use letters, digits, '.', '_' and '-', "
                              f"starting with a letter or digit, at most 40 characters")

    def identity(self) -> dict[str, Any]:
        """What must not change when a comparison is continued (the budgets may grow)."""
        return {"orgs": [o.identity() for o in self.orgs], "repeats": self.repeats,
                "workers": self.workers, "policy": self.policy, "budget": self.budget,
                "seed": self.seed}

    def resolved_name(self) -> str:
        if self.name:
            return self.name
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return "c" + hashlib.sha1(blob).hexdigest()[:8]


def run_tag(name: str, org: str, repeat: int) -> str:
    return f"cmp-{name}-{org}-r{repeat}"


def _seed(spec: CompareSpec, org_index: int, repeat: int) -> int:
    """Distinct per run, so that repeats (and identical organisations) are independent."""
    return spec.seed + 1000 * (repeat - 1) + 17 * org_index


def prepare(target: Target, ledger: Ledger, spec: CompareSpec) -> dict[str, Any]:
    """Create the comparison (its commits, branches and ledger rows) or check that a continued
    one is the same; returns its stored record."""
    from .ratchet import Ratchet

    spec.check()
    name = spec.resolved_name()
    stored = ledger.get_comparison(name)
    if stored is not None:
        _check_same(name, stored["identity"], spec.identity())
    ratchet = Ratchet(target.root)
    try:
        if stored is None:
            stored = _create(target, ledger, ratchet, spec, name)
        # the ledger first, then the branches: a kill in between is repaired here
        for r in ledger.comparison_runs(name):
            if ratchet.branch_commit(r["tag"]) is None and ledger.get_run(r["tag"]) is None:
                ratchet.set_branch(r["tag"], stored["commits"][r["org"]])
    finally:
        ratchet.close()
    return stored


def _create(target: Target, ledger: Ledger, ratchet: Any, spec: CompareSpec,
            name: str) -> dict[str, Any]:
    """A new comparison: one commit of each organisation's program.md on HEAD, recorded."""
    base = ratchet.head()
    rel = target.program_path.relative_to(target.root).as_posix()
    current = ratchet.read_files(base, [rel]).get(rel)
    runs = [(run_tag(name, org.name, k), org.name, k)
            for k in range(1, spec.repeats + 1) for org in spec.orgs]
    too_long = next((t for t, _, _ in runs if len(t) > 100), None)
    if too_long:
        raise ConfigError(f"compare: run tag {too_long!r} is longer than 100 characters — "
                          f"give shorter organisation names (NAME=PROGRAM.md) or --name")
    taken = [t for t, _, _ in runs if ratchet.branch_commit(t) is not None
             or ledger.get_run(t) is not None]
    if taken:
        raise ConfigError(f"compare: branch autoresearch/{taken[0]} already exists and belongs to "
                          f"no comparison named {name!r} — give another --name")
    commits: dict[str, str] = {}
    for org in spec.orgs:
        if org.text == current:
            commits[org.name] = base
        else:
            commits[org.name] = ratchet.make_commit(
                base, f"autoresearch compare {name}: {PROGRAM_NAME} of organisation "
                      f"{org.name} ({org.program})", files={rel: org.text}).sha
    record = {"name": name, "identity": spec.identity(), "base": base, "commits": commits,
              "programs": {o.name: o.program for o in spec.orgs},
              "metric": target.spec.metric, "direction": target.spec.direction,
              "created": time.time()}
    ledger.create_comparison(name, record, runs)
    return record


def _check_same(name: str, was: dict[str, Any], now: dict[str, Any]) -> None:
    for key in ("orgs", "repeats", "workers", "policy", "budget", "seed"):
        if was.get(key) != now.get(key):
            if key == "orgs":
                a = [f"{o['name']}@{o['agent']} (program sha256 {o['sha256']})" for o in was[key]]
                why = "organisations " + ", ".join(a)
            else:
                why = f"--{key} {was.get(key)}"
            raise ConfigError(f"comparison {name!r} was started with {why}; this command differs "
                              f"— rerun it as it was started to continue it, or give another --name")


# == the turns ================================================================================
@dataclass
class TurnReport:
    """One turn of one run, for the caller's progress line."""

    tag: str
    org: str
    repeat: int
    experiments: int
    seconds: float
    stopped: str


def run_comparison(target: Target, ledger: Ledger, spec: CompareSpec, *,
                   on_turn: Callable[[TurnReport], None] | None = None,
                   reporter_for: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Run (or continue) the comparison until every run has spent its budget; its record."""
    from .request import RunRequest

    record = prepare(target, ledger, spec)
    name = record["name"]
    orgs = {o.name: (i, o) for i, o in enumerate(spec.orgs)}
    step = spec.workers
    runs = ledger.comparison_runs(name)
    share = spec.hours * 3600 / len(runs) if spec.hours is not None else None
    rounds = 0
    while True:
        # a run spent by the budget is not marked done: a larger budget continues it
        active = [r for r in ledger.comparison_runs(name) if not r["done"]
                  and not _spent(spec, ledger.count(r["tag"]), r["seconds"], share)]
        if not active:
            break
        shift = rounds % len(active)
        for r in active[shift:] + active[:shift]:
            tag, (index, org) = r["tag"], orgs[r["org"]]
            count = ledger.count(tag)
            cap = count + step if spec.experiments is None else min(spec.experiments, count + step)
            left = share - r["seconds"] if share is not None else None
            request = RunRequest(tag=tag, agent=org.agent, policy=spec.policy, max_experiments=cap,
                                 max_time=left, budget=spec.budget, workers=spec.workers,
                                 seed=_seed(spec, index, r["repeat"]), ahead=0, org=org.name)
            t0 = time.time()
            done = None
            loop = request.build(target, reporter=reporter_for(tag) if reporter_for else None)
            try:
                stopped = loop.run_forever()
            except AgentFailing as e:          # this organisation's agent gave up: its result
                stopped = done = str(e)
            except BaseException:              # Ctrl-C, a stop: the time spent still counts
                ledger.update_comparison_run(name, tag, add_seconds=time.time() - t0)
                raise
            finally:
                if loop.reporter is not None:
                    loop.reporter.close()
            if not stopped.startswith(("reached --max-experiments", "reached --max-time")):
                done = stopped                 # the agent ran out of proposals, ...
            used = time.time() - t0
            ledger.update_comparison_run(name, tag, add_seconds=used, done=done)
            if on_turn:
                on_turn(TurnReport(tag, org.name, r["repeat"], ledger.count(tag), used,
                                   done or stopped))
        rounds += 1
    return record


def _spent(spec: CompareSpec, count: int, seconds: float, share: float | None) -> str | None:
    if spec.experiments is not None and count >= spec.experiments:
        return f"reached {spec.experiments} experiments"
    if share is not None and seconds >= share:
        return f"reached its share of --hours ({share:.0f} s)"
    return None


# == what each run amounts to ==================================================================
@dataclass
class RunResult:
    """One run of a comparison as the statistics see it."""

    org: str
    repeat: int
    tag: str
    experiments: int
    seconds: float
    baseline: float | None              # the mean of the baseline's measurements
    best: float | None                  # the reported best (summary.reported_best)
    curve: list[float]                  # best so far after each experiment (1..experiments)
    proposals: int                      # candidates the agent proposed
    kept: int                           # of them kept
    cost: float
    failures: dict[str, int] = field(default_factory=dict)   # failed statuses by count
    done: str | None = None


def collect(ledger: Ledger, name: str, settings: PolicySettings | None = None
            ) -> list[RunResult]:
    """Every run of a comparison, read from the ledger (`settings`: the toml's [policy])."""
    from .summary import kept_order, reported_best, reported_values, sample_of

    out = []
    for r in ledger.comparison_runs(name):
        tag = r["tag"]
        exps = ledger.experiments(tag)
        if not exps:
            out.append(RunResult(r["org"], r["repeat"], tag, 0, r["seconds"], None, None, [],
                                 0, 0, 0.0, done=r["done"]))
            continue
        base = exps[0]
        values = sample_of(ledger, tag, base).values
        baseline = sum(values) / len(values) if values else None
        rep = reported_best(ledger, tag, settings)
        best = rep.value if rep is not None and rep.value is not None else baseline
        kept = sorted((e for e in exps if e.status == Status.KEEP), key=kept_order)
        shown = reported_values(ledger, tag, kept)
        value_at = {e.seq: shown.get(e.id, e.metric) for e in kept if e.kind != Kind.BASELINE}
        curve: list[float] = []
        current = baseline
        for e in exps:
            if value_at.get(e.seq) is not None:
                current = value_at[e.seq]
            curve.append(current if current is not None else math.nan)
        if rep is not None and rep.value is not None and curve:
            curve[-1] = rep.value             # the final point is the reported best
        totals = ledger.totals(tag)
        failures = {s: n for s, n in totals["counts"].items() if Status(s).failed}
        proposals = sum(1 for e in exps if e.kind == Kind.CANDIDATE)
        out.append(RunResult(r["org"], r["repeat"], tag, len(exps), r["seconds"], baseline, best,
                             curve, proposals, totals["improvements"], totals["cost_usd"],
                             failures, r["done"]))
    return out


# == the statistics ============================================================================
@dataclass
class Interval:
    """A mean over repeats with its two-sided t interval at `level` (None bounds: n < 2)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int

    def text(self, fmt: str = "{:.3g}") -> str:
        if self.mean is None:
            return "—"
        if self.low is None or self.high is None:
            return fmt.format(self.mean) + " (n=1)"
        return f"{fmt.format(self.mean)} [{fmt.format(self.low)}, {fmt.format(self.high)}]"


def interval(values: list[float], level: float = 0.95,
             bounds: tuple[float, float] = (-math.inf, math.inf)) -> Interval:
    """The mean and its t interval, clipped to `bounds` (a rate lies in [0, 1])."""
    from scipy import stats

    xs = [v for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return Interval(None, None, None, 0)
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return Interval(m, None, None, 1)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, len(xs) - 1)) * sd / math.sqrt(len(xs))
    return Interval(m, max(bounds[0], m - half), min(bounds[1], m + half), len(xs))


def welch(a: list[float], b: list[float], alpha: float) -> dict[str, Any]:
    """Welch's t test of mean(a) - mean(b), its interval at 1-alpha, and Mann-Whitney's p."""
    from scipy import stats

    out: dict[str, Any] = {"difference": None, "low": None, "high": None, "p": None,
                           "mannwhitney_p": None}
    if not a or not b:
        return out
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    out["difference"] = ma - mb
    if len(a) < 2 or len(b) < 2:
        return out
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    se2 = va / len(a) + vb / len(b)
    if se2 == 0:                 # deterministic metric: equal or not, with certainty
        out.update(low=ma - mb, high=ma - mb, p=1.0 if ma == mb else 0.0)
    else:
        df = se2 ** 2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
        half = float(stats.t.ppf(1 - alpha / 2, df)) * math.sqrt(se2)
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
        out.update(low=ma - mb - half, high=ma - mb + half, p=p)
    out["mannwhitney_p"] = float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    return out


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (None stays None, and does not count)."""
    known = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))
        adjusted[i] = running
    return adjusted


def analyse(results: list[RunResult], orgs: list[str], direction: str,
            alpha: float = DEFAULT_ALPHA) -> dict[str, Any]:
    """The comparison's statistics (see the module docstring); pure, JSON-ready."""
    sign = 1.0 if direction == "minimize" else -1.0
    baselines = [r.baseline for r in results if r.baseline is not None and math.isfinite(r.baseline)]
    pooled = sum(baselines) / len(baselines) if baselines else None
    level = 1 - alpha

    def improvement(r: RunResult) -> float | None:
        if pooled is None or r.best is None or not math.isfinite(r.best):
            return None
        return sign * (pooled - r.best)

    per_org: dict[str, list[RunResult]] = {o: [r for r in results if r.org == o] for o in orgs}
    summaries = []
    gains: dict[str, list[float]] = {}
    for o, rs in per_org.items():
        imp = [improvement(r) for r in rs]
        gains[o] = [v for v in imp if v is not None]
        per_exp = [v / r.experiments for v, r in zip(imp, rs, strict=True)
                   if v is not None and r.experiments]
        per_hour = [v / (r.seconds / 3600) for v, r in zip(imp, rs, strict=True)
                    if v is not None and r.seconds > 0]
        rates = [r.kept / r.proposals for r in rs if r.proposals]
        failures: dict[str, int] = {}
        for r in rs:
            for s, n in r.failures.items():
                failures[s] = failures.get(s, 0) + n
        summaries.append({
            "org": o, "runs": len(rs), "experiments": sum(r.experiments for r in rs),
            "improvement": asdict(interval(gains[o], level)),
            "improvement_per_experiment": asdict(interval(per_exp, level)),
            "improvement_per_hour": asdict(interval(per_hour, level)),
            "best": asdict(interval([r.best for r in rs if r.best is not None], level)),
            "keep_rate": asdict(interval(rates, level, (0.0, 1.0))),
            "cost_usd": asdict(interval([r.cost for r in rs], level, (0.0, math.inf))),
            "failures": failures})
    tests = []
    for a, b in combinations(orgs, 2):
        t = welch(gains[a], gains[b], alpha)
        tests.append({"a": a, "b": b, **t})
    for t, adj in zip(tests, holm([t["p"] for t in tests]), strict=True):
        t["holm_p"] = adj
        t["significant"] = adj is not None and adj < alpha
        t["better"] = (t["a"] if t["difference"] > 0 else t["b"]) if t["significant"] else None
    return {"metric_direction": direction, "alpha": alpha, "pooled_baseline": pooled,
            "improvement": "pooled baseline minus the best reached, signed: more is better",
            "organisations": summaries, "tests": tests}


def report(ledger: Ledger, record: dict[str, Any], alpha: float,
           settings: PolicySettings | None = None) -> dict[str, Any]:
    """The whole report of a comparison, JSON-ready: its setup, statistics and runs."""
    results = collect(ledger, record["name"], settings)
    orgs = [o["name"] for o in record["identity"]["orgs"]]
    return {"name": record["name"], "metric": record["metric"], "base_commit": record["base"],
            "organisations": [{**o, "program": record.get("programs", {}).get(o["name"])}
                              for o in record["identity"]["orgs"]],
            "repeats": record["identity"]["repeats"],
            "analysis": analyse(results, orgs, record["direction"], alpha),
            "runs": [asdict(r) for r in results]}


# == the plot ==================================================================================
def plot_comparison(rep: dict[str, Any], path: Path) -> Path:
    """Each organisation's best-so-far curve over experiments: the mean over its repeats, with
    its t band at 1-alpha (runs that stopped early carry their last value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    level = 1 - rep["analysis"]["alpha"]
    fig, ax = plt.subplots(figsize=(10, 6), dpi=110)
    for i, org in enumerate(o["name"] for o in rep["organisations"]):
        curves = [r["curve"] for r in rep["runs"] if r["org"] == org and r["curve"]]
        if not curves:
            continue
        length = max(len(c) for c in curves)
        padded = [c + [c[-1]] * (length - len(c)) for c in curves]
        xs, mean, low, high = [], [], [], []
        for x in range(length):
            iv = interval([c[x] for c in padded], level)
            if iv.mean is None:
                continue
            xs.append(x + 1)
            mean.append(iv.mean)
            low.append(iv.low if iv.low is not None else iv.mean)
            high.append(iv.high if iv.high is not None else iv.mean)
        if xs:                                 # the last value holds to the end of its step
            xs, mean, low, high = xs + [xs[-1] + 1], mean + mean[-1:], low + low[-1:], \
                high + high[-1:]
        colour = f"C{i % 10}"
        ax.step(xs, mean, where="post", color=colour, lw=2,
                label=f"{org} (n={len(curves)})")
        ax.fill_between(xs, low, high, step="post", color=colour, alpha=0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("experiment (each step: the best after it)")
    ax.set_ylabel(f"best {rep['metric']} so far")
    ax.set_title(f"autoresearch compare {rep['name']}: mean of the repeats, "
                 f"{level:.0%} band")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def output_dir(target: Target, name: str) -> Path:
    """Where a comparison's report files go: .autoresearch/compare/NAME/."""
    return target.state_dir / "compare" / name


def write_report(target: Target, rep: dict[str, Any], out: Path | None = None) -> tuple[Path, Path]:
    """compare.json and compare.png of a report; their paths."""
    from .ledger import dumps

    where = Path(out) if out else output_dir(target, rep["name"])
    where.mkdir(parents=True, exist_ok=True)
    js = where / "compare.json"
    js.write_text(dumps(rep, indent=2) + "\n")
    png = plot_comparison(rep, where / "compare.png")
    return js, png
