"""The statistics a rollout's judge stands on: Mann-Whitney U, two-proportion tests, sample sizes.

Our own, vectorised with numpy (scipy is not a dependency of the platform; the tests compare every
number with scipy.stats where it is installed). Conventions follow scipy's, so a result can be checked
by anyone with a notebook:

- `mann_whitney_u(x, y)` reports U of `x` (U1 = R1 - n1(n1+1)/2, R1 the rank sum of `x`, ties at their
  average rank); `alternative="greater"` asks whether `x` tends to be larger than `y`: with `x` the
  candidate's latencies that is "the candidate is slower". Small samples without ties (one sample of
  at most 8) get the exact distribution of U; otherwise the normal approximation with the tie
  correction and a continuity correction of 0.5, as scipy's method "auto" does.
- The effect size is the common-language one, P(X > Y) + P(X = Y) / 2 = U1 / (n1 n2): 0.5 when the
  two samples are alike, 1.0 when every candidate value is above every baseline value. It is what
  Noether's sample-size formula needs, and a reader understands it without a table.
- `two_proportions` is the pooled two-sample z-test (no continuity correction, as statsmodels'
  `proportions_ztest`); `fisher_exact` the exact conditional test (two-sided: the sum of every table
  no more likely than the one seen, scipy's rule); `compare_proportions` picks Fisher when an expected
  cell count is below 5 (Cochran's rule), where the normal approximation is poor.
- Sample sizes (`samples_for_proportions`, `samples_for_mann_whitney`) say how many observations a
  version needs before a difference of a given size can be seen with the given power; the judge uses
  them as its "not enough data yet" floor when a check does not set one.

Every result is a frozen dataclass with `to_json()`, so a verdict can carry its numbers in an event.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

from stratolab.errors import InvalidInput

Alternative = Literal["two-sided", "greater", "less"]
ALTERNATIVES = ("two-sided", "greater", "less")
#: at most this many in one sample (and no ties) and Mann-Whitney's p-value is exact (scipy's rule)
EXACT_MAX = 8
#: the exact distribution is computed up to this many values of U (n1 n2): a forced "exact" beyond is a 400
EXACT_LIMIT = 200_000
#: scipy's relative tolerance when Fisher's two-sided test sums the tables "as or less likely"
FISHER_RTOL = 1 + 1e-7
_NORMAL = NormalDist()


@dataclass(frozen=True)
class MannWhitneyResult:
    u: float
    p_value: float
    #: P(x > y) + P(x = y) / 2 = U / (n_x n_y): 0.5 when alike
    effect_size: float
    n_x: int
    n_y: int
    z: float | None
    method: Literal["exact", "asymptotic"]
    alternative: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ProportionsResult:
    successes_x: int
    n_x: int
    successes_y: int
    n_y: int
    #: rate of x minus rate of y
    difference: float
    p_value: float
    z: float | None
    method: Literal["z-test", "fisher"]
    alternative: str

    @property
    def rate_x(self) -> float:
        return self.successes_x / self.n_x

    @property
    def rate_y(self) -> float:
        return self.successes_y / self.n_y

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "rate_x": self.rate_x, "rate_y": self.rate_y}


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal, accurate far in the tail (erfc, not 1 - cdf)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _alternative(value: str) -> str:
    if value not in ALTERNATIVES:
        raise InvalidInput(f"alternative must be one of {', '.join(ALTERNATIVES)}, not {value!r}", field="alternative")
    return value


def _sample(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    if array.size == 0:
        raise InvalidInput(f"{name} is empty", field=name)
    if not np.all(np.isfinite(array)):
        raise InvalidInput(f"{name} holds a value that is not a finite number", field=name)
    return array


def average_ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ranks from 1 with ties at their average, the size of every group of equal values)."""
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    del unique
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse], counts


def mann_whitney_u(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
                   alternative: Alternative = "two-sided",
                   method: Literal["auto", "exact", "asymptotic"] = "auto") -> MannWhitneyResult:
    """Mann-Whitney U test of `x` against `y` (scipy.stats.mannwhitneyu's numbers, our code)."""
    _alternative(alternative)
    xs, ys = _sample(x, "x"), _sample(y, "y")
    n1, n2 = xs.size, ys.size
    ranks, ties = average_ranks(np.concatenate([xs, ys]))
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2.0)
    u2 = n1 * n2 - u1
    if alternative == "greater":
        u, factor = u1, 1.0
    elif alternative == "less":
        u, factor = u2, 1.0
    else:
        u, factor = max(u1, u2), 2.0
    has_ties = bool(np.any(ties > 1))
    if method == "auto":
        method = "exact" if min(n1, n2) <= EXACT_MAX and not has_ties else "asymptotic"
    z: float | None = None
    if method == "exact":
        if n1 * n2 > EXACT_LIMIT or math.lgamma(n1 + n2 + 1) - math.lgamma(n1 + 1) - math.lgamma(n2 + 1) > 650:
            raise InvalidInput(f"the exact test is for small samples (n1 n2 at most {EXACT_LIMIT}); use asymptotic",
                               field="method")
        p = float(exact_u_sf(int(round(u)), n1, n2))
    else:
        n = n1 + n2
        tie_term = float(np.sum(ties.astype(float) ** 3 - ties))
        sigma = math.sqrt(n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1)))) if n > 1 else 0.0
        if sigma == 0.0:  # every value equal: nothing tells the samples apart
            z, p = 0.0, 1.0
            factor = 1.0
        else:
            z = (u - n1 * n2 / 2.0 - 0.5) / sigma
            p = normal_sf(z)
    p = min(max(p * factor, 0.0), 1.0)
    return MannWhitneyResult(u=u1, p_value=p, effect_size=u1 / (n1 * n2), n_x=n1, n_y=n2, z=z,
                             method=method, alternative=alternative)


def exact_u_counts(n1: int, n2: int) -> np.ndarray:
    """How many of the C(n1+n2, n1) orderings give U = 0 .. n1*n2 (no ties).

    The counts are the coefficients of the Gaussian binomial [n1+n2 choose n1]_q = prod over i of
    (1 - q^(n2+i)) / (1 - q^i); dividing by (1 - q^i) is a running sum with stride i, so each factor
    is two vector operations. Floats: the counts pass 2^53 only for samples where the p-value's
    relative error of about 1e-16 does not matter.
    """
    m, n = min(n1, n2), max(n1, n2)
    size = m * n + 1
    coeffs = np.zeros(size)
    coeffs[0] = 1.0
    for i in range(1, m + 1):
        shift = n + i
        if shift < size:
            coeffs[shift:] -= coeffs[:size - shift].copy()
        padded = np.zeros(-(-size // i) * i)
        padded[:size] = coeffs
        coeffs = np.cumsum(padded.reshape(-1, i), axis=0).ravel()[:size]
    return np.rint(coeffs) if coeffs.max() < 2.0 ** 53 else coeffs


def exact_u_sf(u: int, n1: int, n2: int) -> float:
    """P(U >= u) under the null hypothesis, from the exact distribution."""
    counts = exact_u_counts(n1, n2)
    if u <= 0:
        return 1.0
    if u >= counts.size:
        return 0.0
    return float(counts[u:].sum() / counts.sum())


def _counts(successes: int, n: int, name: str) -> tuple[int, int]:
    if isinstance(successes, bool) or isinstance(n, bool):
        raise InvalidInput(f"{name} must be whole numbers", field=name)
    if int(n) != n or int(successes) != successes or n <= 0 or not 0 <= successes <= n:
        raise InvalidInput(f"{name}: {successes} of {n} is not a count of successes out of a positive total",
                           field=name)
    return int(successes), int(n)


def two_proportions(successes_x: int, n_x: int, successes_y: int, n_y: int,
                    alternative: Alternative = "two-sided") -> ProportionsResult:
    """Pooled two-proportion z-test; `alternative="greater"` asks whether x's rate is the larger."""
    _alternative(alternative)
    a, n1 = _counts(successes_x, n_x, "x")
    b, n2 = _counts(successes_y, n_y, "y")
    p1, p2 = a / n1, b / n2
    pooled = (a + b) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0.0:  # both all successes or all failures: no evidence of a difference
        z, p = 0.0, 1.0
    else:
        z = (p1 - p2) / se
        if alternative == "greater":
            p = normal_sf(z)
        elif alternative == "less":
            p = normal_sf(-z)
        else:
            p = min(1.0, 2 * normal_sf(abs(z)))
    return ProportionsResult(a, n1, b, n2, p1 - p2, p, z, "z-test", alternative)


def _hypergeometric(total: int, successes: int, drawn: int) -> tuple[int, np.ndarray]:
    """(lowest k, probabilities of k = lowest.. successes among `drawn` of `total` holding `successes`)."""
    low, high = max(0, drawn - (total - successes)), min(drawn, successes)
    k = np.arange(low, high, dtype=float)
    # log P(k+1) - log P(k): the ratio of consecutive terms, summed from the lowest one
    steps = np.log((successes - k) * (drawn - k)) - np.log((k + 1) * (total - successes - drawn + k + 1))
    log_pmf = np.concatenate([[0.0], np.cumsum(steps)])
    log_pmf -= log_pmf.max()
    pmf = np.exp(log_pmf)
    return low, pmf / pmf.sum()


def fisher_exact(successes_x: int, n_x: int, successes_y: int, n_y: int,
                 alternative: Alternative = "two-sided") -> ProportionsResult:
    """Fisher's exact test on the 2x2 table [[a, n1-a], [b, n2-b]] (scipy.stats.fisher_exact's p-value)."""
    _alternative(alternative)
    a, n1 = _counts(successes_x, n_x, "x")
    b, n2 = _counts(successes_y, n_y, "y")
    low, pmf = _hypergeometric(n1 + n2, a + b, n1)
    index = a - low
    if alternative == "greater":
        p = float(pmf[index:].sum())
    elif alternative == "less":
        p = float(pmf[:index + 1].sum())
    else:
        p = float(pmf[pmf <= pmf[index] * FISHER_RTOL].sum())
    return ProportionsResult(a, n1, b, n2, a / n1 - b / n2, min(p, 1.0), None, "fisher", alternative)


def compare_proportions(successes_x: int, n_x: int, successes_y: int, n_y: int,
                        alternative: Alternative = "two-sided") -> ProportionsResult:
    """The z-test, or Fisher's exact test when an expected cell count is below 5 (Cochran's rule)."""
    a, n1 = _counts(successes_x, n_x, "x")
    b, n2 = _counts(successes_y, n_y, "y")
    pooled = (a + b) / (n1 + n2)
    expected = min(n1 * pooled, n1 * (1 - pooled), n2 * pooled, n2 * (1 - pooled))
    test = fisher_exact if expected < 5 else two_proportions
    return test(a, n1, b, n2, alternative)


def _z(probability: float, name: str) -> float:
    if not 0 < probability < 1:
        raise InvalidInput(f"{name} must be between 0 and 1", field=name)
    return _NORMAL.inv_cdf(probability)


def samples_for_proportions(baseline_rate: float, difference: float, *, alpha: float = 0.05, power: float = 0.8,
                            one_sided: bool = True) -> int:
    """Observations per version to see `baseline_rate` move by `difference` (the usual normal formula).

    n = (z_alpha sqrt(2 p q) + z_beta sqrt(p1 q1 + p2 q2))^2 / difference^2, p the mean of the two rates.
    """
    p1, p2 = baseline_rate, baseline_rate + difference
    if not 0 <= p1 <= 1 or not 0 <= p2 <= 1 or difference == 0:
        raise InvalidInput("baseline_rate and baseline_rate + difference must be rates from 0 to 1, and differ",
                           field="difference")
    z_alpha = _z(1 - alpha if one_sided else 1 - alpha / 2, "alpha")
    z_beta = _z(power, "power")
    mean = (p1 + p2) / 2
    root = z_alpha * math.sqrt(2 * mean * (1 - mean)) + z_beta * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return max(2, math.ceil(root ** 2 / difference ** 2))


def samples_for_mann_whitney(effect_size: float, *, alpha: float = 0.05, power: float = 0.8,
                             one_sided: bool = True, share_x: float = 0.5) -> tuple[int, int]:
    """(n_x, n_y) for Mann-Whitney to see P(X > Y) = `effect_size` (Noether, 1987).

    N = (z_alpha + z_beta)^2 / (12 c (1 - c) (effect_size - 1/2)^2), c the share of N in x: a canary
    at 10 % of the traffic has c = 0.1 and needs many more requests in all than an even split.
    """
    if not 0 <= effect_size <= 1 or effect_size == 0.5:
        raise InvalidInput("effect_size is P(X > Y): from 0 to 1, and not 0.5", field="effect_size")
    if not 0 < share_x < 1:
        raise InvalidInput("share_x must be between 0 and 1", field="share_x")
    z_alpha = _z(1 - alpha if one_sided else 1 - alpha / 2, "alpha")
    z_beta = _z(power, "power")
    total = (z_alpha + z_beta) ** 2 / (12 * share_x * (1 - share_x) * (effect_size - 0.5) ** 2)
    return max(2, math.ceil(total * share_x)), max(2, math.ceil(total * (1 - share_x)))


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The q-th percentile (0-100, linear interpolation as numpy's default and Prometheus' summaries)."""
    return float(np.percentile(_sample(values, "values"), q))
