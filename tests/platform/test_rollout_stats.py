"""The rollout judge's statistics: textbook values, scipy.stats' numbers where scipy is installed, and the
sample-size formulas against the power they promise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stratolab.errors import InvalidInput
from stratolab.platform.rollout import stats

ALTERNATIVES = ["two-sided", "greater", "less"]


def test_mann_whitney_textbook_example_is_exact():
    """scipy's documented example (Conover): U = 17, exact two-sided p = 14 / 126."""
    males, females = [19, 22, 16, 29, 24], [20, 11, 17, 12]
    result = stats.mann_whitney_u(males, females)
    assert result.u == 17 and result.method == "exact" and result.z is None
    assert result.p_value == pytest.approx(14 / 126, abs=1e-15)
    assert result.effect_size == pytest.approx(17 / 20)
    assert stats.mann_whitney_u(males, females, "greater").p_value == pytest.approx(7 / 126, abs=1e-15)
    assert stats.mann_whitney_u(females, males, "less").p_value == pytest.approx(7 / 126, abs=1e-15)


def test_exact_distribution_counts_every_ordering():
    for n1, n2 in [(1, 1), (3, 5), (5, 3), (8, 8), (4, 30)]:
        counts = stats.exact_u_counts(n1, n2)
        assert counts.size == n1 * n2 + 1
        assert counts.sum() == math.comb(n1 + n2, n1)
        assert np.array_equal(counts, counts[::-1])  # U and n1 n2 - U are equally likely
    assert list(stats.exact_u_counts(2, 2)) == [1, 1, 2, 1, 1]


def test_asymptotic_with_ties_by_hand():
    """Ties at their average rank, the tie-corrected variance and the 0.5 continuity correction."""
    x, y = [1, 2, 2, 3, 3, 3, 4, 5, 6, 7], [1, 1, 2, 2, 2, 3, 3, 4, 4, 5]
    ranks, _ = stats.average_ranks(np.array(x + y, dtype=float))
    u1 = ranks[:10].sum() - 55
    _, ties = np.unique(x + y, return_counts=True)
    sigma = math.sqrt(100 / 12 * (21 - (ties ** 3 - ties).sum() / (20 * 19)))
    z = (u1 - 50 - 0.5) / sigma
    result = stats.mann_whitney_u(x, y, "greater")
    assert result.method == "asymptotic" and result.u == u1
    assert result.z == pytest.approx(z) and result.p_value == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))


def test_identical_values_are_no_evidence():
    result = stats.mann_whitney_u([5.0] * 20, [5.0] * 30, "greater")
    assert result.p_value == 1.0 and result.effect_size == 0.5


@pytest.mark.parametrize("n1,n2", [(3, 5), (8, 40), (1, 200), (9, 9), (50, 60), (400, 3600)])
@pytest.mark.parametrize("alternative", ALTERNATIVES)
@pytest.mark.parametrize("ties", [False, True])
def test_mann_whitney_matches_scipy(n1, n2, alternative, ties):
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(n1 * 1000 + n2)
    x, y = rng.lognormal(0.2, 1, n1), rng.lognormal(0, 1, n2)
    if ties:
        x, y = np.round(x * 2), np.round(y * 2)
    ours = stats.mann_whitney_u(x, y, alternative)
    theirs = scipy_stats.mannwhitneyu(x, y, alternative=alternative)
    assert ours.u == pytest.approx(float(theirs.statistic), abs=1e-9)
    assert ours.p_value == pytest.approx(float(theirs.pvalue), rel=1e-9, abs=1e-15)
    for method in ("exact", "asymptotic"):
        if method == "exact" and (ties or n1 * n2 > stats.EXACT_LIMIT):
            continue
        mine = stats.mann_whitney_u(x, y, alternative, method=method)
        scipy_p = scipy_stats.mannwhitneyu(x, y, alternative=alternative, method=method).pvalue
        assert mine.p_value == pytest.approx(float(scipy_p), rel=1e-9, abs=1e-15)


def test_fisher_lady_tasting_tea():
    """Fisher's own example: 3 of 4 cups right, one-sided p = 17/70, two-sided 34/70."""
    assert stats.fisher_exact(3, 4, 1, 4, "greater").p_value == pytest.approx(17 / 70)
    assert stats.fisher_exact(3, 4, 1, 4).p_value == pytest.approx(34 / 70)
    assert stats.fisher_exact(3, 4, 1, 4, "less").p_value == pytest.approx(69 / 70)


@pytest.mark.parametrize("table", [(3, 10, 9, 10), (0, 5, 5, 5), (1, 100, 10, 120), (30, 1000, 50, 1000),
                                   (0, 50, 0, 70), (7, 7, 2, 9), (2, 3000, 15, 27000)])
@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_fisher_matches_scipy(table, alternative):
    scipy_stats = pytest.importorskip("scipy.stats")
    a, n1, b, n2 = table
    theirs = scipy_stats.fisher_exact([[a, n1 - a], [b, n2 - b]], alternative=alternative).pvalue
    assert stats.fisher_exact(a, n1, b, n2, alternative).p_value == pytest.approx(float(theirs), rel=1e-8, abs=1e-14)


def test_two_proportions_by_hand():
    """Pooled z: 30/1000 against 10/1000, p = 0.02, se = sqrt(.02 .98 (2/1000))."""
    result = stats.two_proportions(30, 1000, 10, 1000, "greater")
    z = 0.02 / math.sqrt(0.02 * 0.98 * 0.002)
    assert result.z == pytest.approx(z) and result.method == "z-test"
    assert result.p_value == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    assert result.difference == pytest.approx(0.02) and result.rate_x == 0.03
    assert stats.two_proportions(30, 1000, 10, 1000).p_value == pytest.approx(2 * result.p_value)
    assert stats.two_proportions(30, 1000, 10, 1000, "less").p_value == pytest.approx(1 - result.p_value)
    assert stats.two_proportions(0, 100, 0, 900).p_value == 1.0


def test_two_proportions_agrees_with_the_chi_square_test():
    """The two-sided pooled z-test is the 2x2 chi-square test without Yates' correction: z^2 = chi2."""
    scipy_stats = pytest.importorskip("scipy.stats")
    chi2, p, _, _ = scipy_stats.chi2_contingency([[45, 955], [30, 1470]], correction=False)
    result = stats.two_proportions(45, 1000, 30, 1500)
    assert result.z ** 2 == pytest.approx(chi2) and result.p_value == pytest.approx(p)


def test_compare_proportions_picks_fisher_for_small_counts():
    assert stats.compare_proportions(2, 40, 1, 60, "greater").method == "fisher"
    assert stats.compare_proportions(30, 1000, 10, 1000, "greater").method == "z-test"


def test_sample_sizes_textbook_values():
    """Fleiss' two-proportion formula: .5 vs .6, alpha .05 two-sided, power .8 -> 388 per group;
    Noether: P(X > Y) = .6 with the same alpha and power -> 262 in all, 131 each."""
    assert stats.samples_for_proportions(0.5, 0.1, one_sided=False) == 388
    assert stats.samples_for_mann_whitney(0.6, one_sided=False) == (131, 131)
    small, large = stats.samples_for_mann_whitney(0.6, share_x=0.1)
    assert small < large and small + large > 262  # an uneven split needs more in all


def test_mann_whitney_sample_size_gives_its_power():
    """Samples of Noether's size for P(X > Y) = 0.64 are found slower about 80 % of the time."""
    shift = math.sqrt(2) * 0.3584  # normal samples: P(X > Y) = Phi(shift / sqrt 2) = 0.64
    n_x, n_y = stats.samples_for_mann_whitney(0.64)
    rng = np.random.default_rng(7)
    found = sum(stats.mann_whitney_u(rng.normal(shift, 1, n_x), rng.normal(0, 1, n_y), "greater").p_value < 0.05
                for _ in range(300))
    assert 0.70 <= found / 300 <= 0.90


def test_bad_input_names_the_field():
    with pytest.raises(InvalidInput) as error:
        stats.mann_whitney_u([], [1.0])
    assert error.value.field == "x"
    with pytest.raises(InvalidInput) as error:
        stats.mann_whitney_u([1.0], [float("nan")])
    assert error.value.field == "y"
    with pytest.raises(InvalidInput) as error:
        stats.mann_whitney_u([1.0], [2.0], "bigger")  # type: ignore[arg-type]
    assert error.value.field == "alternative"
    with pytest.raises(InvalidInput) as error:
        stats.two_proportions(5, 3, 1, 10)
    assert error.value.field == "x"
    with pytest.raises(InvalidInput) as error:
        stats.fisher_exact(1, 10, 1, 0)
    assert error.value.field == "y"
    with pytest.raises(InvalidInput) as error:
        stats.mann_whitney_u(np.arange(1000), np.arange(1000) + 0.5, method="exact")
    assert error.value.field == "method"
    with pytest.raises(InvalidInput) as error:
        stats.samples_for_mann_whitney(0.5)
    assert error.value.field == "effect_size"
    with pytest.raises(InvalidInput) as error:
        stats.samples_for_proportions(0.5, 0.1, power=1.0)
    assert error.value.field == "power"


def test_results_are_json():
    import json

    json.dumps(stats.mann_whitney_u([1, 2, 3], [4, 5]).to_json())
    assert json.loads(json.dumps(stats.fisher_exact(3, 4, 1, 4).to_json()))["method"] == "fisher"
