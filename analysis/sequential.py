"""Adaptive seeds: add seeds in batches until every judged arm's verdict is settled.

A verdict is *settled* when the arm's interval lies wholly inside, above or below the expected
range (any verdict of ``analysis.verdicts.judge`` but ``inconclusive``); a study run with
``seeds=auto`` adds ``seeds_batch`` seeds to the models that still have an unsettled arm, until
every arm is settled or has ``seeds_max`` seeds.

Looking at the data after every batch and stopping when the interval clears a boundary would
make a fixed-``n`` 95 % interval wrong far more often than 5 % of the time (optional stopping).
The intervals used here are instead an **anytime-valid confidence sequence**: they cover the
true relative delta at *every* number of seeds simultaneously with probability >= 95 %, so a
verdict read at whatever point the procedure stopped is wrong with probability <= 5 %.

Method: the t-mixture confidence sequence of Lai (1976) for a normal mean with unknown
variance (T. L. Lai, "On confidence sequences", Annals of Statistics 4(2):265-280, 1976; see
also H. Wang and A. Ramdas, "Anytime-valid t-tests and confidence sequences for Gaussian means
with unknown variance", Sequential Analysis, 2025, arXiv:2310.03722). For a hypothesised mean
``mu`` the scale-invariant likelihood ratio of the standardised effect, mixed over a
``N(0, 1/c)`` prior, is the nonnegative test martingale

    M_n(mu) = sqrt(c / (n + c)) * (1 - S**2 / ((n + c) V)) ** (-n / 2),
    S = sum(x_i - mu),  V = sum((x_i - mu) ** 2),

and Ville's inequality gives ``P(exists n: M_n(mu_true) >= 1 / alpha) <= alpha``. The set
``{mu: M_n(mu) < 1 / alpha}`` is ``mean +- q_n * s / sqrt(n)`` with the closed form of
``lai_q2``. The relative delta (a ratio of paired means, see ``analysis.deltas``) is judged by
Fieller's construction on top: ``r`` is kept while the sequence for the mean of
``variant - baseline - r * baseline`` still holds 0, which keeps the anytime guarantee (the
true ``r`` makes that mean 0).

``simulate`` runs the whole procedure on many synthetic studies at once (vectorised) to measure
its error rate and the seeds it uses against a fixed design; ``tests/test_analysis_sequential``
checks both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from analysis.deltas import fieller_interval

# Prior precision of the standardised effect in Lai's mixture (effects of about 1/sqrt(c)
# standard deviations weigh most). Simulated studies of 3 to 40 seeds used the fewest seeds with
# 0.5 (0.2 and 1.0 were within a seed); any c keeps the guarantee.
MIXTURE_C = 0.5
SETTLED = "settled"
MAX_SEEDS = "seeds_max reached"


def lai_q2(n: np.ndarray | float, alpha: float = 0.05, c: float | None = None) -> np.ndarray:
    """``q**2`` such that ``mean +- q * s / sqrt(n)`` (s with ddof=1) is Lai's confidence
    sequence at level ``1 - alpha`` after ``n`` values; ``inf`` while it is still unbounded.

    From ``M_n < 1/alpha``: with ``B = sqrt((n + c) / c) / alpha`` and
    ``K = (n + c) * (1 - B ** (-2 / n))``, the set is ``n (mean - mu)^2 < K SS / (n - K)``
    (``SS`` the sum of squared deviations) when ``K < n``, and everything otherwise.
    """
    c = MIXTURE_C if c is None else c
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        b = np.sqrt((n + c) / c) / alpha
        k = (n + c) * (1.0 - b ** (-2.0 / n))
        q2 = np.where(k < n, k * (n - 1.0) / (n - k), np.inf)
    return np.where(n >= 2, q2, np.inf)


@dataclass(frozen=True)
class SeedSchedule:
    """How ``seeds=auto`` adds seeds: ``seeds_start`` first, then ``seeds_batch`` at a time,
    never more than ``seeds_max`` per arm.

    ``seeds_start`` is 4 by default: with 2 or 3 seeds Lai's sequence (5 % level) is unbounded,
    so a first look there could never settle a verdict. Simulated on planted effects with a seed
    spread of 1 % of the baseline, starting at 4 instead of 3 used 4.7 seeds per arm on average
    instead of 5.4; at 2 % and 4 % the two were within 0.3 seeds (``simulate``)."""

    seeds_start: int = 4
    seeds_batch: int = 2
    seeds_max: int = 20

    def __post_init__(self) -> None:
        if not np.isfinite(lai_q2(self.seeds_max)):
            raise ValueError(
                f"seeds=auto with seeds_max={self.seeds_max} can never settle a verdict: the "
                "anytime-valid interval needs at least 4 seeds; raise seeds_max"
            )
        if not 2 <= self.seeds_start <= self.seeds_max or self.seeds_batch < 1:
            raise ValueError(
                f"seeds=auto needs 2 <= seeds_start ({self.seeds_start}) <= seeds_max "
                f"({self.seeds_max}) and seeds_batch ({self.seeds_batch}) >= 1"
            )

    def looks(self) -> list[int]:
        """The numbers of seeds at which the verdicts are read."""
        looks = list(range(self.seeds_start, self.seeds_max, self.seeds_batch))
        return [*looks, self.seeds_max]

    def first_decisive_look(self, alpha: float = 0.05) -> int | None:
        """The first look whose confidence sequence is bounded, so that a verdict can settle
        there (4 seeds at the 5 % level: Lai's sequence is unbounded at 2 and 3); None if none."""
        bounded = [n for n in self.looks() if np.isfinite(lai_q2(n, alpha))]
        return bounded[0] if bounded else None

    def next_count(self, n: int) -> int:
        """How many seeds an unsettled arm with ``n`` seeds should have after the next batch."""
        return min(self.seeds_max, max(self.seeds_start, n + self.seeds_batch))


def stop_reason(verdict: str, n: int, schedule: SeedSchedule) -> str | None:
    """Why an arm stops getting seeds (``settled`` / ``seeds_max reached``), or None to go on.

    Arms without a range (controls, no expectation) never ask for seeds of their own.
    """
    from analysis.verdicts import INCONCLUSIVE

    if verdict != INCONCLUSIVE:
        return SETTLED
    if n >= schedule.seeds_max:
        return MAX_SEEDS
    return None


@dataclass(frozen=True)
class Simulation:
    """What ``simulate`` measured over ``studies`` synthetic studies of one scenario."""

    studies: int
    true_rel: tuple[float, ...]  # per arm, % of baseline
    settled: np.ndarray  # (studies, arms) bool
    wrong: np.ndarray  # (studies, arms) bool: settled on a verdict the truth contradicts
    seeds: np.ndarray  # (studies, arms) seeds used
    fixed_n: int  # seeds of the fixed design that settles every arm as often (95 % t)
    fixed_wrong_rate: float  # wrong settled verdicts per arm in that fixed design

    @property
    def error_rate(self) -> float:
        """Share of arms (over all studies) that settled on a wrong verdict."""
        return float(self.wrong.mean())

    @property
    def mean_seeds(self) -> float:
        return float(self.seeds.mean())


def simulate(
    true_rel: list[float] | tuple[float, ...],
    ranges: list[tuple[float, float]],
    sd_rel: float | list[float],
    schedule: SeedSchedule = SeedSchedule(),
    studies: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    baseline: float = 0.40,
    baseline_sd: float = 0.02,
    fixed_alpha: float | None = None,
) -> Simulation:
    """Run the adaptive procedure on ``studies`` synthetic studies (all at once, numpy).

    One arm per entry of ``true_rel`` (% of baseline) with expected range ``ranges[i]``; per
    seed the baseline AP is ``N(baseline, baseline_sd)`` and the variant is
    ``baseline * (1 + true_rel / 100) + N(0, sd_rel / 100 * baseline)``. Each arm stops at the
    first look where its anytime-valid verdict is settled (or at ``seeds_max``). The fixed design
    it is compared with reads a 95 % Student t / Fieller interval once, at the smallest common
    ``n`` that settles every arm at least as often as the adaptive procedure does (the same power
    and the same 5 % error bound; one point of Monte Carlo slack). ``fixed_alpha`` gives the
    fixed design another level, e.g. one whose error rate at a range boundary (``fixed_alpha / 2``)
    equals the adaptive procedure's measured one.
    """
    rng = np.random.default_rng(seed)
    true = np.asarray(true_rel, dtype=float)
    arms = true.size
    sd = np.broadcast_to(np.asarray(sd_rel, dtype=float), (arms,))
    n_max = schedule.seeds_max
    x = baseline + baseline_sd * rng.standard_normal((studies, arms, n_max))
    d = x * true[None, :, None] / 100 + (sd[None, :, None] / 100 * baseline) * rng.standard_normal(
        (studies, arms, n_max)
    )
    low = np.array([r[0] for r in ranges], dtype=float)
    high = np.array([r[1] for r in ranges], dtype=float)

    settled = np.zeros((studies, arms), bool)
    verdict_region = np.full((studies, arms), -1)
    seeds = np.full((studies, arms), n_max)
    for n in schedule.looks():
        region, decided = _judge_at(x[..., :n], d[..., :n], low, high, lai_q2(n, alpha))
        new = decided & ~settled
        verdict_region[new] = region[new]
        seeds[new] = n
        settled |= decided
    wrong = settled & ~_region_holds(verdict_region, true[None, :], low, high)

    target = settled.mean(0) - 0.01  # per arm, less Monte Carlo slack
    fixed_n, fixed_wrong = 10 * n_max, math.nan
    for n in range(2, 10 * n_max + 1):
        if n > n_max:  # draw more seeds for the fixed design when it needs them
            x2 = baseline + baseline_sd * rng.standard_normal((studies, arms, n))
            d2 = x2 * true[None, :, None] / 100 + (
                sd[None, :, None] / 100 * baseline
            ) * rng.standard_normal((studies, arms, n))
        else:
            x2, d2 = x[..., :n], d[..., :n]
        q2 = stats.t.ppf(1 - (fixed_alpha or alpha) / 2, n - 1) ** 2
        region, decided = _judge_at(x2, d2, low, high, q2)
        if (decided.mean(0) >= target).all():
            fixed_n = n
            fixed_wrong = float((decided & ~_region_holds(region, true[None, :], low, high)).mean())
            break
    return Simulation(studies, tuple(true), settled, wrong, seeds, fixed_n, fixed_wrong)


# Regions a settled verdict claims for the true relative delta: 0 within [low, high],
# 1 smaller drop (high, inf), 2 larger drop (-inf, low), 3 opposite sign (0, inf).
def _judge_at(x, d, low, high, q2):
    n = x.shape[-1]
    dm, xm = d.mean(-1), x.mean(-1)
    var_d, var_x = d.var(-1, ddof=1), x.var(-1, ddof=1)
    cov = ((d - dm[..., None]) * (x - xm[..., None])).sum(-1) / (n - 1)
    lo, hi = fieller_interval(np.full(dm.shape, n), dm, xm, var_d, var_x, cov, q2)
    lo, hi = 100 * lo, 100 * hi
    opposite = lo > 0
    within = ~opposite & (lo >= low) & (hi <= high)
    smaller = ~opposite & ~within & (lo > high)
    larger = ~opposite & ~within & ~smaller & (hi < low)
    region = np.select([within, smaller, larger, opposite], [0, 1, 2, 3], -1)
    return region, region >= 0


def _region_holds(region, true, low, high):
    return np.select(
        [region == 0, region == 1, region == 2, region == 3],
        [(true >= low) & (true <= high), true > high, true < low, true > 0],
        True,
    )
