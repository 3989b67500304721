"""`noise-aware` (the default): keep what is really better, deciding on a posterior.

The rule, in order (d = candidate mean - best mean, signed so that d > 0 is better; theta = the
candidate's true effect in noise sds):

1. Deterministic metrics, comparable conditions, local noise: as in noise-aware-v2
   (policies/sequential.py). A metric that repeats exactly is compared exactly, once per
   candidate; only the best's runs of the latest epoch count; sigma is the noise where the
   comparison is made (policies/noise.py). A keep needs a run of the best made after the
   candidate's first run, so every keep is judged against the best as measured now.
2. Prior. The run's own first runs (each earlier candidate's first run against the best of its
   time, `PolicyContext.first_runs`) are deconvolved into a distribution of effects on a grid
   with a point mass at 0 (policies/prior.py), shrunk toward a conservative default; with no
   history the default alone. Most proposals do not help, and the prior says how many.
3. Pairing and posterior. The loop gives a commit's k-th run seed k, so a candidate's runs and
   the best's share seeds; where part of the noise follows the seed it cancels between runs at
   one seed (policies/pairing.py). The share of the noise that follows the seed is learned from
   the run's own commits measured at common seeds, at a lower confidence bound (0 until the data
   show it), and d is the generalised least-squares difference of the two commits' runs of the
   current epoch under that covariance, with its variance var (in sd^2; 1/n_c + 1/n_b when
   nothing is shared). The posterior over theta, given d with standard error sigma * sqrt(var)
   (Student's t with the noise estimate's df); the look-ahead counts the seeds the next runs
   will get.
4. Stop or go on. Keeping is worth K = E[theta] - m - `KEEP_PENALTY` * P(theta <= m): the
   expected gain beyond m, less a penalty on the chance that the candidate is no better, where m is
   `min_effect` for a candidate of the same size or larger and -`min_effect` for one with fewer
   lines (so the simplicity rule keeps a shorter candidate only when it is shown no worse than
   the negligible effect the user declared: it never keeps code that is worse at the policy's
   confidence). Discarding is worth 0. Going on for j more runs is worth E[max(K', 0)] after them
   less j times the price of a run, `RUN_PRICE` * the prior's expected gain per proposal (the
   gain a run could buy elsewhere). The policy takes the best of the three, looking ahead up
   to the run cap: most candidates are discarded after one run, a promising one runs again
   until it is kept or is no longer worth a run. The penalty, KEEP_PENALTY * 0.01 / `alpha`,
   holds the rate at which no-effect proposals are kept under `alpha` (calibrated at the
   default 1% on the benchmark's streams, which measure the realized rate; a smaller alpha asks
   a keep to be surer in proportion); there is no fixed schedule of looks.
5. More runs go to the side with fewer runs (the best on a tie: its runs serve every later
   candidate too); a keep waiting for a run of the best beside the candidate gets it last, so a
   candidate discarded on its own runs costs no run of the best. At `max_runs` runs of the
   candidate (and of the best beside it) it is kept if keeping is worth it, else discarded.
6. The winner's curse. A keep records `shrink`, half its observed gain beyond the posterior
   mean (the candidate's runs were selected for looking good); the runs that selected the best
   are moved back by it wherever the best is compared with or reported (the ledger reads it back
   into `Sample.shrink`). Half: the full posterior shrinkage, under a prior that leans toward "no
   effect", left the best about 0.2-0.5 sd pessimistic in the benchmark, and a pessimistic best
   lets no-effect candidates look better than it.
7. Reported best: the mean of the best's runs of the latest epoch (its selection runs moved
   back), with sem = sigma / sqrt(n).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .base import Decision, PolicyContext, Sample, Verdict
from .pairing import next_seed, paired_difference, paired_variance, seed_share
from .prior import GRID, REFIT_EVERY, WINDOW, Prior, learned_prior, posterior
from .sequential import SequentialPolicy

KEEP_PENALTY = 2.0      # sd of gain a keep of a no-better candidate costs (holds false keeps <= 1%)
ALPHA_CALIBRATED = 0.01   # the `alpha` KEEP_PENALTY was calibrated for (see keep_penalty)
RUN_PRICE = 0.25        # a run's price, as a share of the prior's expected gain per proposal
SHRINK_SHARE = 0.5      # share of the posterior's shrinkage a keep records (see rule 6)
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(10)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


@lru_cache(maxsize=64)
def _prior(z: tuple[float, ...], v: tuple[float, ...]) -> Prior:
    return learned_prior(z, v)


def run_prior(ctx: PolicyContext) -> Prior:
    """The prior over effects this run has learned from its candidates' first runs."""
    end = (len(ctx.first_runs) // REFIT_EVERY) * REFIT_EVERY
    z, v = [], []
    for f in ctx.first_runs[max(0, end - WINDOW):end]:
        if f.sigma > 0 and f.best_runs > 0 and math.isfinite(f.effect):
            z.append(f.effect / f.sigma)
            v.append(f.var if f.var is not None and f.var > 0 else 1.0 + 1.0 / f.best_runs)
    return _prior(tuple(z), tuple(v))


def keep_penalty(alpha: float) -> float:
    """The keep penalty for a tolerated false-keep rate `alpha`: KEEP_PENALTY at the default
    0.01, inversely proportional to alpha (a keep must be about that much surer)."""
    return KEEP_PENALTY * ALPHA_CALIBRATED / alpha


def keep_value(post: np.ndarray, margin: float, penalty: float = KEEP_PENALTY) -> float:
    """E[theta] - margin - penalty * P(theta <= margin) under the posterior `post`."""
    return float(post @ GRID - margin - penalty * post[GRID <= margin + 1e-12].sum())


def value_after(post: np.ndarray, var_now: float, var_next: float, margin: float,
                penalty: float = KEEP_PENALTY) -> float:
    """E[max(K, 0)] once more runs bring the variance of d (sd^2) from var_now to var_next."""
    w = 1.0 / (1.0 / var_next - 1.0 / var_now)        # variance of the new runs' information
    live = post > 1e-9
    theta, p = GRID[live], post[live]
    y = (theta[:, None] + math.sqrt(w) * _NODES[None, :]).ravel()    # the new information
    new = np.exp(-0.5 * (y[:, None] - GRID[None, :]) ** 2 / w) * post[None, :]
    new /= new.sum(axis=1, keepdims=True)
    k = new @ GRID - margin - penalty * new[:, GRID <= margin + 1e-12].sum(axis=1)
    return float(p @ (np.maximum(k, 0.0).reshape(theta.size, _NODES.size) @ _WEIGHTS))


def futures(n_c: int, n_b: int, fresh: int, max_runs: int, need_fresh: bool) -> list[list[str]]:
    """The runs a candidate may still get, as sequences of sides ("candidate", "incumbent"),
    one per length: the side with fewer runs first (the best on a tie: its runs serve every
    later candidate too); while a keep waits for a run of the best beside the candidate, the
    last run is that one. At most max_runs runs of the candidate, and of the best beside it."""
    base: list[str] = []
    nc, nb, nf = n_c, n_b, fresh
    while nc < max_runs or nf < max_runs:
        if nf < max_runs and (nb <= nc or nc >= max_runs):
            base.append("incumbent")
            nb, nf = nb + 1, nf + 1
        else:
            base.append("candidate")
            nc += 1
    out = []
    for j in range(1, len(base) + 1):
        seq = base[:j]
        if need_fresh and "incumbent" not in seq:
            seq = [*seq[:-1], "incumbent"]
        out.append(seq)
    return out


def _seeds(sample: Sample) -> list[int] | None:
    """The seed of each of the sample's runs, None when unknown."""
    return list(sample.seeds) if len(sample.seeds) == sample.n and sample.n else None


def _epoch_seeds(incumbent: Sample, best_at: list[int]) -> list[int] | None:
    """The seeds of the best's runs compared with (those made at `best_at`)."""
    seeds = _seeds(incumbent)
    if seeds is None or len(incumbent.at) != incumbent.n:
        return None
    by_at = dict(zip(incumbent.at, seeds, strict=True))
    return [by_at[a] for a in best_at] if all(a in by_at for a in best_at) else None


class PosteriorPolicy(SequentialPolicy):
    name = "noise-aware"

    def decide(self, candidate: Sample, incumbent: Sample, ctx: PolicyContext) -> Decision:
        j = self._judgement(candidate, incumbent, ctx)
        if (early := j.without_a_test()) is not None:
            return early
        s, done, keep, ev = j.settings, j.done, j.keep, j.evidence
        n_c, n_b, sigma, df, d, margin, fresh = j.n_c, j.n_b, j.sigma, j.df, j.d, j.margin, j.fresh

        # pairing: runs at a seed the best also ran at share the noise that follows the seed
        fit = seed_share(ctx.seeded_groups)
        rho = fit.rho
        cand_seeds, best_seeds = _seeds(candidate), _epoch_seeds(incumbent, j.best_at)
        paired = cand_seeds is not None and best_seeds is not None and rho > 0
        if paired:
            assert cand_seeds is not None and best_seeds is not None
            d_raw, var = paired_difference(candidate.values, cand_seeds, j.best, best_seeds, fit,
                                           abs(sum(j.best) / n_b))
        else:
            d_raw = sum(candidate.values) / n_c - sum(j.best) / n_b
            var = 1.0 / n_c + 1.0 / n_b
        sign = 1.0 if ctx.direction == "maximize" else -1.0
        d = j.d = ev["effect"] = sign * d_raw
        if n_c == 1:   # one draw of this proposal's effect, for the run's prior
            ev["first_run"] = {"effect": d, "sigma": sigma, "best_runs": n_b, "var": var}
        prior = run_prior(ctx)
        se = math.sqrt(var)                                # in sd
        z, m = d / sigma, margin / sigma
        post = posterior(prior.weights, z, se, df)
        penalty = keep_penalty(s.alpha)
        k_now = keep_value(post, m, penalty)
        p_bad = float(post[GRID <= m + 1e-12].sum())
        price = RUN_PRICE * float(prior.weights @ np.maximum(GRID, 0.0))
        timed = bool(candidate.at and incumbent.at)
        need_fresh = timed and not fresh
        next_c = next_seed(cand_seeds or [])
        next_b = next_seed(_seeds(incumbent) or [])

        go, go_runs, first = -math.inf, 0, None
        # more runs cannot be worth more than E[(theta - m)+] now (the posterior mean is a
        # martingale): when that does not pay for one run, no look ahead is needed
        upside = float(post @ np.maximum(GRID - m, 0.0))
        for seq in futures(n_c, n_b, len(fresh), s.max_runs, need_fresh) \
                if upside > price else []:
            nc = n_c + seq.count("candidate")
            nb = n_b + seq.count("incumbent")
            if paired:
                assert cand_seeds is not None and best_seeds is not None
                after = paired_variance(
                    [*cand_seeds, *range(next_c, next_c + nc - n_c)],
                    [*best_seeds, *range(next_b, next_b + nb - n_b)], fit)
            else:
                after = 1.0 / nc + 1.0 / nb
            v = value_after(post, se * se, min(after, se * se * (1 - 1e-9)), m, penalty) \
                - len(seq) * price
            if v > go:
                go, go_runs, first = v, len(seq), seq[0]
        stop = 0.0 if need_fresh else max(k_now, 0.0)
        ev.update(se=se * sigma, statistic=z / se, p_value=None, posterior_bad=p_bad,
                  posterior_mean=float(post @ GRID), keep_value=k_now, go_value=go,
                  keep_penalty=penalty,
                  run_price=price, prior=prior.summary(), fresh_best_runs=len(fresh),
                  seed_share=rho, seed_share_estimate=fit.rho_hat, seed_share_df=fit.df,
                  paired=paired)
        post_text = f"P(no better) = {p_bad:.3g}, E[effect] = {float(post @ GRID):+.2f} sd"
        if first is not None and go > stop:
            rerun = first
            rule = "conditions" if need_fresh else "continue"
            what = ("measuring the best again beside it, under the same conditions"
                    if need_fresh else "measuring " + ("the best" if rerun == "incumbent"
                                                       else "it") + " again")
            return done(Verdict.MORE, rule, f"worth {go_runs} more run(s) ({post_text}); {what}",
                        rerun)
        if not need_fresh and k_now > 0:
            # the winner's curse: its runs look better than the posterior believes
            # (the grid's end stands for "this far or farther": there the observed effect)
            effects = GRID.copy()
            effects[-1], effects[0] = max(effects[-1], z), min(effects[0], z)
            ev["shrink"] = SHRINK_SHARE * (d - float(post @ effects) * sigma)
            return keep("posterior", f"better ({post_text})")
        rule = "screen" if n_c == 1 else ("cap" if first is None else "futility")
        return done(Verdict.DISCARD, rule, f"not worth another run ({post_text})")

    def current(self, incumbent: Sample, ctx: PolicyContext) -> tuple[list[float], list[int]]:
        """The best's runs of the latest epoch (values, at), oldest first, the runs that selected
        it moved back by the shrinkage its keep recorded (the winner's curse)."""
        values = list(incumbent.values)
        if incumbent.selection and incumbent.shrink and len(incumbent.at) == incumbent.n:
            sign = 1.0 if ctx.direction == "maximize" else -1.0
            chosen = set(sorted(incumbent.at)[:incumbent.selection])
            values = [v - sign * incumbent.shrink if a in chosen else v
                      for v, a in zip(incumbent.values, incumbent.at, strict=True)]
        return self._latest_epoch(values, list(incumbent.at), incumbent, ctx)
