"""lorakit.stats.correlation.group_correlation against scipy.stats and a brute-force permutation count."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lorakit.stats.correlation import group_correlation
from lorakit.errors import LorakitError

stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("n, seed", [(4, 0), (7, 1), (15, 2), (35, 3)])
def test_statistics_match_scipy(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = 0.4 * x + rng.normal(size=n)
    y[: n // 3] = np.round(y[: n // 3])  # some ties for the rank correlation
    x[-2:] = x[0]
    got = group_correlation(x.tolist(), y.tolist())
    assert got["n"] == n
    assert got["pearson"] == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert got["spearman"] == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


def test_exact_p_value_is_the_brute_force_permutation_share():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=6), rng.normal(size=6)
    got = group_correlation(x, y)
    for name, fn in (("pearson", lambda a, b: stats.pearsonr(a, b)[0]), ("spearman", lambda a, b: stats.spearmanr(a, b)[0])):
        observed = abs(fn(x, y))
        null = [abs(fn(x, y[list(p)])) for p in itertools.permutations(range(6))]
        want = sum(v >= observed - 1e-12 for v in null) / math.factorial(6)
        assert got[f"{name}_p"] == pytest.approx(want, abs=1e-12)


def test_smallest_p_value_of_four_groups():
    # a perfect monotone relation over 4 groups: only 2 of the 24 pairings are as extreme (±1)
    got = group_correlation([0.1, 0.2, 0.3, 0.5], [0.9, 0.8, 0.7, 0.6])
    assert got["spearman"] == pytest.approx(-1.0)
    assert got["spearman_p"] == pytest.approx(2 / 24)


def test_monte_carlo_p_value_is_reproducible_and_bounded():
    x = np.arange(20.0)
    got = group_correlation(x, 2 * x + 1, permutations=500, seed=3)
    assert got["pearson"] == pytest.approx(1.0)
    assert got["pearson_p"] == pytest.approx(1 / 501)  # only the observed pairing is that extreme
    rng = np.random.default_rng(0)
    y = rng.normal(size=20)
    a, b = group_correlation(x, y, permutations=500, seed=3), group_correlation(x, y, permutations=500, seed=3)
    assert a == b and 0 < a["spearman_p"] <= 1


def test_degenerate_inputs():
    assert math.isnan(group_correlation([1, 2], [3, 4])["pearson"])
    constant = group_correlation([1, 2, 3], [5, 5, 5])
    assert math.isnan(constant["pearson"]) and math.isnan(constant["spearman_p"])
    with pytest.raises(LorakitError, match="same length"):
        group_correlation([1, 2, 3], [1, 2])
    with pytest.raises(LorakitError, match="finite"):
        group_correlation([1, 2, float("nan")], [1, 2, 3])
