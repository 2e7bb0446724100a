"""lorakit.stats.paired against independent implementations: scipy, brute-force loops and enumerations.

Every random draw in these tests is seeded; the coverage simulations are sized so that a correct
implementation passes with a wide margin (binomial sd of a 200-replication coverage is 0.015).
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.special
import scipy.stats

from lorakit.stats import paired as stats
from lorakit.stats import tdist
from lorakit.errors import LorakitError
from lorakit.stats.paired import floor_adjusted_normalized, holm, paired_bootstrap, paired_t_interval, sign_flip_test, tost_paired, verdict
from lorakit.stats.tdist import t_cdf, t_ppf


def gen(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


# ---------------------------------------------------------------- Student t


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 19, 60, 1000])
def test_t_ppf_and_cdf_equal_scipy(df):
    for q in [1e-10, 1e-4, 0.005, 0.025, 0.05, 0.2, 0.5, 0.7, 0.95, 0.975, 0.995, 1 - 1e-7]:
        expected = scipy.stats.t.ppf(q, df)
        assert t_ppf(q, df) == pytest.approx(expected, rel=1e-9, abs=1e-8)
    for x in [-40.0, -2.5, -0.3, 0.0, 0.01, 1.96, 12.0]:
        assert t_cdf(x, df) == pytest.approx(scipy.stats.t.cdf(x, df), rel=1e-9, abs=1e-12)


def test_betainc_equals_scipy_and_rejects_bad_arguments():
    for a, b, x in [(0.5, 0.5, 0.3), (2.0, 0.5, 0.99), (30.0, 0.5, 0.5), (1.5, 4.0, 0.01), (3.0, 3.0, 0.0)]:
        assert tdist.betainc(a, b, x) == pytest.approx(scipy.special.betainc(a, b, x), rel=1e-11, abs=1e-15)
    with pytest.raises(LorakitError, match="betainc needs"):
        tdist.betainc(1.0, 1.0, 1.5)
    with pytest.raises(LorakitError, match="0 < q < 1"):
        t_ppf(1.0, 3)
    with pytest.raises(LorakitError, match="degrees of freedom"):
        t_cdf(1.0, 0)


# ---------------------------------------------------------------- paired t interval


@pytest.mark.parametrize("m,level", [(2, 0.95), (5, 0.9), (8, 0.95), (30, 0.99)])
def test_paired_t_interval_equals_scipy(m, level):
    rng = gen(m)
    a, b = rng.normal(0.8, 0.05, m), rng.normal(0.78, 0.05, m)
    ci = paired_t_interval(a, b, level)
    ref = scipy.stats.ttest_rel(a, b).confidence_interval(confidence_level=level)
    assert (ci.low, ci.high) == pytest.approx((ref.low, ref.high), abs=1e-8)
    assert ci.estimate == pytest.approx(np.mean(a - b), abs=1e-15)
    assert ci.df == m - 1
    same = paired_t_interval(a - b, level=level)  # differences passed directly
    assert (same.low, same.high) == pytest.approx((ci.low, ci.high), abs=1e-15)


def test_paired_t_interval_degenerate_and_bad_input():
    ci = paired_t_interval([0.5, 0.5, 0.5], [0.4, 0.4, 0.4])
    assert (ci.low, ci.estimate, ci.high) == pytest.approx((0.1, 0.1, 0.1))
    with pytest.raises(LorakitError, match="at least 2"):
        paired_t_interval([0.1], [0.2])
    with pytest.raises(LorakitError, match="same length"):
        paired_t_interval([0.1, 0.2], [0.2, 0.3, 0.4])
    with pytest.raises(LorakitError, match="NaN"):
        paired_t_interval([0.1, np.nan], [0.2, 0.3])
    with pytest.raises(LorakitError, match="level"):
        paired_t_interval([0.1, 0.2], [0.2, 0.4], level=95)


# ---------------------------------------------------------------- TOST


@pytest.mark.parametrize("seed,delta", [(0, 0.02), (1, 0.005), (2, (0.01, 0.03)), (3, 0.05)])
def test_tost_equals_two_one_sided_scipy_tests(seed, delta):
    rng = gen(seed)
    base = rng.uniform(0.6, 0.9, 12)
    a, b = base + rng.normal(0.002, 0.01, 12), base
    lo, hi = (delta, delta) if np.isscalar(delta) else delta
    res = tost_paired(a, b, delta)
    p_lower = scipy.stats.ttest_rel(a + lo, b, alternative="greater").pvalue  # H0: mean(a-b) ≤ -lo
    p_upper = scipy.stats.ttest_rel(a - hi, b, alternative="less").pvalue  # H0: mean(a-b) ≥ +hi
    assert res.p_lower == pytest.approx(p_lower, rel=1e-9, abs=1e-14)
    assert res.p_upper == pytest.approx(p_upper, rel=1e-9, abs=1e-14)
    assert res.pvalue == max(res.p_lower, res.p_upper)
    ref = scipy.stats.ttest_rel(a, b).confidence_interval(confidence_level=0.90)
    assert (res.ci.low, res.ci.high) == pytest.approx((ref.low, ref.high), abs=1e-8)
    assert res.equivalent == (res.pvalue < 0.05) == (-lo < res.ci.low and res.ci.high < hi)


def test_tost_decides_both_ways_and_rejects_bad_margins():
    rng = gen(7)
    base = rng.uniform(0.6, 0.9, 20)
    close = tost_paired(base + rng.normal(0, 0.002, 20), base, delta=0.01)
    far = tost_paired(base - 0.03 + rng.normal(0, 0.002, 20), base, delta=0.01)
    assert close.equivalent and not far.equivalent and far.p_lower > 0.5
    with pytest.raises(LorakitError, match="margin"):
        tost_paired(base, base, delta=0.0)
    with pytest.raises(LorakitError, match="alpha"):
        tost_paired(base, base, delta=0.01, alpha=0.6)


# ---------------------------------------------------------------- Holm


def holm_rejections(p: list[float], alpha: float) -> set[int]:
    """Holm's step-down procedure as written in Holm (1979): reject in order until one fails."""
    m, rejected = len(p), set()
    for k, i in enumerate(sorted(range(m), key=lambda j: p[j])):
        if p[i] > alpha / (m - k):
            break
        rejected.add(i)
    return rejected


@pytest.mark.parametrize("seed", range(6))
def test_holm_adjusted_pvalues_are_the_smallest_rejecting_alpha(seed):
    rng = gen(seed)
    p = list(rng.choice([0.001, 0.01, 0.02, 0.04, 0.3], size=7) * rng.uniform(0.5, 1.5, 7))
    p[0] = p[1]  # a tie
    adj = holm(p)
    thresholds = sorted({min(1.0, (len(p) - k) * x) for x in p for k in range(len(p))} | {1.0})
    for alpha in [t * f for t in thresholds for f in (1 - 1e-9, 1 + 1e-9) if t * f < 1]:  # fp-safe sides
        assert {i for i in range(len(p)) if adj[i] <= alpha} == holm_rejections(p, alpha), alpha
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0) and np.all(adj <= 1.0) and np.all(adj >= np.array(p))


def test_holm_hand_example_and_mapping():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm({"x": 0.5, "y": 0.4}) == pytest.approx({"x": 0.8, "y": 0.8})
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])
    with pytest.raises(LorakitError, match=r"\[0, 1\]"):
        holm([0.2, 1.2])


# ---------------------------------------------------------------- sign-flip test


def brute_force_sign_flip(d: np.ndarray) -> tuple[float, float, float]:
    """(greater, less, two-sided) p-values by enumerating every sign vector with itertools."""
    obs, tol = d.mean(), 1e-9 * np.abs(d).mean()
    null = np.array([np.mean(np.array(s) * d) for s in itertools.product([1, -1], repeat=d.size)])
    g, le = np.mean(null >= obs - tol), np.mean(null <= obs + tol)
    return g, le, min(1.0, 2 * min(g, le))


@pytest.mark.parametrize("d", [
    [0.3, -0.1, 0.5, 0.2, 0.05, 0.4, -0.2],
    [1.0, 2.0, -1.0, 0.0, 3.0, 1.0, -2.0, 2.0],  # ties and a zero, like count differences
    [-0.02, -0.01, -0.03, 0.005, -0.04, -0.01],
    [0.0, 0.0, 0.0],
])
def test_sign_flip_equals_enumeration_and_scipy(d):
    d = np.array(d)
    g, le, two = brute_force_sign_flip(d)
    for alt, expected in [("greater", g), ("less", le), ("two-sided", two)]:
        res = sign_flip_test(d, alt)
        assert res.exact and res.n_flips == 2 ** d.size
        assert res.pvalue == pytest.approx(expected, abs=1e-12)
        ref = scipy.stats.permutation_test((d,), np.mean, permutation_type="samples", alternative=alt,
                                           n_resamples=np.inf, vectorized=True)
        assert res.pvalue == pytest.approx(ref.pvalue, abs=1e-12)


def test_sign_flip_monte_carlo_beyond_max_exact_agrees_with_exact():
    d = gen(3).normal(0.15, 1.0, 16)
    exact = sign_flip_test(d, "greater")
    mc = sign_flip_test(d, "greater", max_exact=10, n_resamples=40_000, seed=1)
    assert not mc.exact and mc.n_flips == 40_000
    assert mc.pvalue == pytest.approx(exact.pvalue, abs=4 * math.sqrt(0.25 / 40_000))
    assert (mc.ci.low, mc.ci.high) == pytest.approx((exact.ci.low, exact.ci.high), abs=0.05)
    assert sign_flip_test(d, max_exact=10, seed=2).pvalue == sign_flip_test(d, max_exact=10, seed=2).pvalue


def test_sign_flip_ci_is_the_test_inversion():
    d = gen(4).normal(0.3, 1.0, 10)
    res = sign_flip_test(d, level=0.9)
    alpha, eps = 0.1, 1e-7

    def kept(mu):  # neither one-sided test of d - mu rejects at alpha/2
        return (sign_flip_test(d - mu, "greater").pvalue > alpha / 2
                and sign_flip_test(d - mu, "less").pvalue > alpha / 2)

    assert kept(res.ci.low) and kept(res.ci.high) and kept(res.ci.low + eps) and kept(res.ci.high - eps)
    assert not kept(res.ci.low - eps) and not kept(res.ci.high + eps)
    assert res.ci.low < d.mean() < res.ci.high
    grid = np.linspace(d.min(), d.max(), 301)
    inside = np.array([kept(mu) for mu in grid])
    assert np.array_equal(inside, (grid >= res.ci.low) & (grid <= res.ci.high))


def test_sign_flip_ci_is_unbounded_with_too_few_pairs_and_rejects_bad_input():
    res = sign_flip_test([0.1, 0.2, 0.3, 0.4, 0.5])  # 2^4 = 16 < 1/0.05
    assert res.pvalue == pytest.approx(2 / 32) and res.ci.low == -math.inf and res.ci.high == math.inf
    assert math.isfinite(sign_flip_test([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]).ci.low)  # 2^5 = 32 ≥ 20
    with pytest.raises(LorakitError, match="alternative"):
        sign_flip_test([0.1, 0.2], "bigger")
    with pytest.raises(LorakitError, match="at least 1"):
        sign_flip_test([])


# ---------------------------------------------------------------- two-level paired bootstrap


def brute_force_bootstrap(a, b, statistic, n_resamples, seed, examples, block):
    """The documented random stream, then each resample's statistic by plain indexing."""
    rng = gen(seed)
    s = a[0].shape[0]
    out = []
    for start in range(0, n_resamples, block):
        size = min(block, n_resamples - start)
        seeds = rng.integers(0, s, size=(size, s), dtype=np.int32)
        idx = [rng.integers(0, u.shape[1], size=(size if examples == "shared" else size * s, u.shape[1]),
                            dtype=np.int32) for u in a]
        for r in range(size):
            acc_a, acc_b = [], []
            for t, (u, v) in enumerate(zip(a, b)):
                ex = [idx[t][r] if examples == "shared" else idx[t][r * s + j] for j in range(s)]
                acc_a.append(np.mean([u[seeds[r, j], ex[j]] for j in range(s)]))
                acc_b.append(np.mean([v[seeds[r, j], ex[j]] for j in range(s)]))
            out.append(statistic(np.array([acc_a]), np.array([acc_b]))[0])
    return np.array(out)


@pytest.mark.parametrize("examples", ["shared", "nested"])
def test_bootstrap_equals_brute_force_loop(examples):
    rng = gen(11)
    sizes = [7, 12, 5]  # tasks of different sizes, 3 seeds
    a = [(rng.random((3, n)) < 0.7).astype(float) for n in sizes]
    b = [(rng.random((3, n)) < 0.6).astype(float) + rng.normal(0, 0.1, (3, n)) for n in sizes]  # real scores
    ratio = lambda x, y: (x / (y + 2.0)).mean(axis=-1)  # noqa: E731 - finite for every resample
    for stat in (None, ratio):
        res = paired_bootstrap(a, b, stat, n_resamples=23, seed=5, examples=examples, block=10)
        expected = brute_force_bootstrap(a, b, stat or stats.mean_difference, 23, 5, examples, 10)
        np.testing.assert_allclose(res.resamples, expected, rtol=1e-12, atol=1e-14)
        assert (res.ci.low, res.ci.high) == pytest.approx(tuple(np.quantile(expected, [0.025, 0.975])), abs=1e-12)
    truth = np.mean([u.mean() - v.mean() for u, v in zip(a, b)])
    assert paired_bootstrap(a, b, n_resamples=5, examples=examples).ci.estimate == pytest.approx(truth, abs=1e-14)


def test_bootstrap_is_deterministic_and_accepts_arrays_and_mappings():
    rng = gen(12)
    a = (rng.random((2, 3, 50)) < 0.7).astype(float)
    b = (rng.random((2, 3, 50)) < 0.7).astype(float)
    one = paired_bootstrap(a, b, n_resamples=300, seed=3)
    assert np.array_equal(one.resamples, paired_bootstrap(a, b, n_resamples=300, seed=3).resamples)
    assert not np.array_equal(one.resamples, paired_bootstrap(a, b, n_resamples=300, seed=4).resamples)
    as_map = paired_bootstrap({"x": a[0], "y": a[1]}, {"y": b[1], "x": b[0]}, n_resamples=300, seed=3)
    assert as_map.tasks == ("x", "y") and np.array_equal(as_map.resamples, one.resamples)
    single = paired_bootstrap(a[0], b[0], n_resamples=50)
    assert single.tasks == ("task0",) and single.ci.estimate == pytest.approx(a[0].mean() - b[0].mean())


def test_bootstrap_identical_and_equal_accuracy_methods():
    rng = gen(13)
    a = (rng.random((4, 3, 400)) < 0.75).astype(float)
    same = paired_bootstrap(a, a.copy(), n_resamples=500)
    assert same.ci.low == same.ci.high == same.ci.estimate == 0.0
    b = (rng.random((4, 3, 400)) < 0.75).astype(float)  # same true accuracy, independent errors
    res = paired_bootstrap(a, b, n_resamples=2000, seed=1)
    assert res.ci.low < 0 < res.ci.high
    centre = np.median(res.resamples) - res.ci.estimate
    assert abs((res.ci.high - res.ci.estimate) - (res.ci.estimate - res.ci.low)) < 0.25 * (res.ci.high - res.ci.low)
    assert abs(centre) < 0.05 * (res.ci.high - res.ci.low)


def test_bootstrap_covers_a_known_difference_with_large_n():
    rng = gen(14)
    a = (rng.random((8, 5, 4000)) < 0.82).astype(float)
    b = (rng.random((8, 5, 4000)) < 0.80).astype(float)
    res = paired_bootstrap(a, b, n_resamples=1000)  # sd of the estimate ≈ 0.002
    assert res.ci.low < 0.02 < res.ci.high and res.ci.high - res.ci.low < 0.012


# example kinds (P(A right), P(B right)) and their shares: easy, hard, A's, B's; truth 0.035
KINDS = np.array([[0.95, 0.95], [0.15, 0.15], [0.85, 0.35], [0.40, 0.80]])
SHARES = np.array([0.55, 0.20, 0.15, 0.10])
TRUTH = float(SHARES @ (KINDS[:, 0] - KINDS[:, 1]))


def crossed_sample(rng, s, n, seed_sd):
    """Seeds × examples like a benchmark: each test example keeps its kind in every seed."""
    kind = rng.choice(len(SHARES), size=n, p=SHARES)
    ua, ub = rng.uniform(-seed_sd, seed_sd, (2, s, 1))  # a run's own shift of each method
    a = rng.random((s, n)) < KINDS[kind, 0] + ua
    b = rng.random((s, n)) < KINDS[kind, 1] + ub
    return a.astype(float), b.astype(float)


def coverage(s, n, seed_sd, modes, reps=200):
    rng, hits = gen(15), dict.fromkeys(modes, 0)
    for rep in range(reps):
        a, b = crossed_sample(rng, s, n, seed_sd)
        for mode in modes:
            res = paired_bootstrap(a, b, n_resamples=400, seed=rep, examples=mode, block=400)
            hits[mode] += res.ci.low <= TRUTH <= res.ci.high
    return {mode: h / reps for mode, h in hits.items()}


def test_bootstrap_coverage_one_seed_is_nominal():
    cov = coverage(1, 250, 0.0, ["shared"])  # one seed: the plain paired bootstrap over examples
    assert 0.92 <= cov["shared"] <= 0.98, cov


def test_bootstrap_coverage_over_seeds_shared_versus_nested():
    """'shared' covers (conservatively); 'nested' under-covers because examples repeat across seeds."""
    cov = coverage(10, 200, 0.01, ["shared", "nested"])
    assert 0.93 <= cov["shared"] <= 0.995, cov
    assert cov["nested"] <= 0.90, cov


def test_bootstrap_is_fast_at_benchmark_size():
    rng = gen(16)
    a = (rng.random((8, 5, 2000)) < 0.8).astype(float)
    b = (rng.random((8, 5, 2000)) < 0.78).astype(float)
    start = time.perf_counter()
    res = paired_bootstrap(a, b, n_resamples=10_000)
    assert time.perf_counter() - start < 8.0  # about 1.5 s on one core; a gross-regression guard
    assert res.ci.low < res.ci.estimate < res.ci.high


def test_bootstrap_bad_input():
    a = np.ones((2, 10))
    with pytest.raises(LorakitError, match="same seeds and examples"):
        paired_bootstrap(a, np.ones((2, 11)))
    with pytest.raises(LorakitError, match="NaN"):
        paired_bootstrap(a, np.full((2, 10), np.nan))
    with pytest.raises(LorakitError, match="n_examples ≥ 1"):
        paired_bootstrap(np.ones((2, 0)), np.ones((2, 0)))
    with pytest.raises(LorakitError, match="x\\[None, :\\]"):
        paired_bootstrap(np.ones(10), np.ones(10))
    with pytest.raises(LorakitError, match="same number of seeds"):
        paired_bootstrap([np.ones((2, 5)), np.ones((3, 5))], [np.ones((2, 5)), np.ones((3, 5))])
    with pytest.raises(LorakitError, match="same tasks"):
        paired_bootstrap({"x": a}, {"y": a})
    with pytest.raises(LorakitError, match="shape"):
        paired_bootstrap(a, a, lambda x, y: x - y, n_resamples=10)
    with pytest.raises(LorakitError, match="finite"), np.errstate(divide="ignore"):
        paired_bootstrap(a, np.zeros((2, 10)), lambda x, y: (x / y).mean(-1), n_resamples=10)
    with pytest.raises(LorakitError, match="examples"):
        paired_bootstrap(a, a, examples="crossed")


# ---------------------------------------------------------------- verdict


@pytest.mark.parametrize("low,high,direction,effect,expected,smaller", [
    (0.01, 0.03, +1, None, "held", False),
    (0.01, 0.03, +1, 0.05, "held", True),  # real but smaller than the paper's effect: still held
    (0.01, 0.06, +1, 0.05, "held", False),
    (-0.03, -0.01, +1, 0.05, "contradicted", True),
    (-0.03, -0.01, -1, None, "held", False),
    (0.01, 0.03, -1, -0.02, "contradicted", True),
    (-0.01, 0.03, +1, 0.02, "inconclusive", False),
    (-0.03, 0.01, -1, -0.02, "inconclusive", False),
    (-0.01, 0.01, +1, 0.05, "inconclusive", True),  # straddles 0 and excludes the paper's effect
    (0.0, 0.03, +1, None, "inconclusive", False),  # touching 0 does not exclude it
    (-math.inf, math.inf, +1, None, "inconclusive", False),
])
def test_verdict_branches(low, high, direction, effect, expected, smaller):
    v = verdict(low, high, direction, effect, claim="DO-Merging > TA", level=0.9)
    assert v.verdict == expected and v.smaller_than_paper == smaller
    assert (v.claim, v.direction, v.effect, v.ci_low, v.ci_high, v.level) == (
        "DO-Merging > TA", direction, effect, low, high, 0.9)
    assert "90 %" in v.rule and v.rule.endswith(str(smaller) if effect is not None else expected)


def test_verdict_bad_input():
    with pytest.raises(LorakitError, match="ci_low ≤ ci_high"):
        verdict(0.2, 0.1)
    with pytest.raises(LorakitError, match="NaN"):
        verdict(float("nan"), 0.1)
    with pytest.raises(LorakitError, match="paper_direction"):
        verdict(0.1, 0.2, 0)
    with pytest.raises(LorakitError, match="sign of paper_direction"):
        verdict(0.1, 0.2, +1, -0.02)


def test_verdict_is_inconclusive_for_methods_of_equal_accuracy():
    rng = gen(17)
    verdicts = []
    for rep in range(100):
        a = (rng.random((3, 3, 200)) < 0.7).astype(float)
        b = (rng.random((3, 3, 200)) < 0.7).astype(float)
        res = paired_bootstrap(a, b, n_resamples=400, seed=rep, block=400)
        verdicts.append(verdict(res.ci.low, res.ci.high, +1).verdict)
    assert verdicts.count("inconclusive") >= 88, verdicts.count("inconclusive")
    assert set(verdicts) <= {"inconclusive", "held", "contradicted"}


# ---------------------------------------------------------------- floor-adjusted normalized accuracy


def test_floor_adjusted_normalized_values_and_nan_rule():
    assert floor_adjusted_normalized(0.8, 0.9, 0.5) == pytest.approx(0.75)  # (0.8-0.5)/(0.9-0.5)
    assert floor_adjusted_normalized(0.4, 0.9, 0.5) == pytest.approx(-0.25)  # worse than no adapter
    out = floor_adjusted_normalized([0.8, 0.6, 0.7, 0.9], [0.9, 0.5, 0.7, 1.0], [0.5, 0.5, 0.7, 0.5])
    assert out[0] == pytest.approx(0.75) and out[3] == pytest.approx(0.8)
    assert math.isnan(out[1]) and math.isnan(out[2])  # individual == floor and individual < floor... both NaN
    by_task = floor_adjusted_normalized({"a": 0.7, "b": 0.6}, {"a": 0.8, "b": 0.5}, {"a": 0.6, "b": 0.55})
    assert by_task["a"] == pytest.approx(0.5) and math.isnan(by_task["b"])
    with pytest.raises(LorakitError, match="same shape"):
        floor_adjusted_normalized([0.1, 0.2], [0.3], [0.0])
    with pytest.raises(LorakitError, match="finite"):
        floor_adjusted_normalized([0.1], [np.nan], [0.0])
    with pytest.raises(LorakitError, match="same tasks"):
        floor_adjusted_normalized({"a": 0.1}, {"b": 0.2}, {"a": 0.0})


def test_stats_imports_no_scipy_at_run_time():
    """numpy only: the t quantiles come from lorakit's own incomplete beta, not scipy."""
    code = "import sys, lorakit.stats.paired; assert 'scipy' not in sys.modules, 'scipy was imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- lorakit.stats.bootstrap: several aligned score sets


def test_bootstrap_scores_draws_exactly_what_paired_bootstrap_draws():
    """Mean difference of two sets: the same resamples as paired_bootstrap(shared) from the same seed."""
    from lorakit.stats.bootstrap import bootstrap_scores

    rng = gen(21)
    a = {f"t{t}": (rng.random((3, 40 + 7 * t)) < 0.7).astype(float) for t in range(3)}
    b = {t: (rng.random(v.shape) < 0.6).astype(float) for t, v in a.items()}
    ref = paired_bootstrap(a, b, n_resamples=2500, seed=5, block=700)
    got = bootstrap_scores({"a": a, "b": b}, lambda x: (x["a"] - x["b"]).mean(axis=(1, 2)),
                           n_resamples=2500, seed=5, block=700)
    assert np.allclose(got.resamples, ref.resamples, atol=1e-12, rtol=0)
    assert got.ci.estimate == pytest.approx(ref.ci.estimate, abs=1e-12)
    assert (got.ci.low, got.ci.high) == pytest.approx((ref.ci.low, ref.ci.high), abs=1e-12)
    assert got.n_seeds == 3 and got.tasks == ("t0", "t1", "t2") and got.n_undefined == 0


def test_reused_draws_are_the_stream_itself(monkeypatch):
    """The second claim of a report reuses the first one's draws: same resamples as a fresh stream, and
    as paired_bootstrap; a stream over DRAWS_CACHE_BYTES is not kept; the kept draws are read-only."""
    from lorakit.stats import bootstrap as resample

    rng = gen(8)
    shape = {f"t{t}": (4, 30 + 11 * t) for t in range(3)}
    sets = [{k: (rng.random(v) < q).astype(float) for k, v in shape.items()} for q in (0.8, 0.5, 0.65)]
    diff = lambda x: (x["a"] - x["b"]).mean(axis=(1, 2))  # noqa: E731
    resample._DRAWS.clear()
    first = resample.bootstrap_scores({"a": sets[0], "b": sets[1]}, diff, n_resamples=900, seed=3, block=400)
    assert len(resample._DRAWS) == 1
    again = resample.bootstrap_scores({"a": sets[2], "b": sets[1]}, diff, n_resamples=900, seed=3, block=400)
    ref = paired_bootstrap(sets[2], sets[1], n_resamples=900, seed=3, block=400)
    assert np.allclose(again.resamples, ref.resamples, atol=1e-12, rtol=0)
    monkeypatch.setattr(resample, "DRAWS_CACHE_BYTES", 0)
    resample._DRAWS.clear()
    fresh = resample.bootstrap_scores({"a": sets[0], "b": sets[1]}, diff, n_resamples=900, seed=3, block=400)
    assert np.array_equal(fresh.resamples, first.resamples) and not resample._DRAWS
    monkeypatch.undo()
    list(resample._draw_blocks(3, 900, 400, 4, (30, 41, 52)))
    seed_idx, counts = next(iter(resample._DRAWS.values()))[0]
    assert not seed_idx.flags.writeable and not counts[0].flags.writeable
    assert counts[0].sum(axis=1).tolist() == [30] * 400            # multiplicities of 30 draws


def test_bootstrap_scores_per_seed_ratio_and_undefined_resamples():
    """The statistic sees per-seed accuracies (a ratio seed by seed); non-finite resamples are dropped, counted."""
    from lorakit.stats.bootstrap import bootstrap_scores

    m = {"t": np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])}  # seed 0: 1/4, seed 1: 3/4
    i = {"t": np.array([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])}  # 2/4, 4/4
    one = {"t": np.array([[1.0, 0.0, 0.0]])}
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 in some resamples, on purpose
        res = bootstrap_scores({"m": m, "i": i}, lambda x: (x["m"] / x["i"]).mean(axis=(1, 2)), n_resamples=400)
        zero_prone = bootstrap_scores({"m": one, "i": one}, lambda x: (x["m"] / x["i"]).mean(axis=(1, 2)),
                                      n_resamples=2000)
    assert res.ci.estimate == pytest.approx((0.5 + 0.75) / 2)  # not the pooled 4/6
    assert 0 < zero_prone.n_undefined < 2000  # a resample without example 0 divides 0 by 0
    assert zero_prone.ci.low == zero_prone.ci.high == 1.0
    with pytest.raises(LorakitError, match="same non-empty"):
        bootstrap_scores({"a": m, "b": one}, lambda x: x["a"].mean(axis=(1, 2)))
    with pytest.raises(LorakitError, match="expected"):
        bootstrap_scores({"a": m, "b": {"u": m["t"]}}, lambda x: x["a"].mean(axis=(1, 2)))


def test_bootstrap_pvalue_agrees_with_the_percentile_interval():
    from lorakit.stats.bootstrap import bootstrap_pvalue

    values = gen(3).normal(0.05, 0.02, 20_000)
    low, high = np.quantile(values, [0.025, 0.975])
    for null in (low - 1e-3, low + 1e-3, 0.05, high - 1e-3, high + 1e-3):
        assert (bootstrap_pvalue(values, null) < 0.05) == (not low < null < high)
    assert bootstrap_pvalue(values, 0.0, "greater") == pytest.approx((1 + (values <= 0).sum()) / 20_001)
    assert bootstrap_pvalue(values, 1.0, "greater") == 1.0 and bootstrap_pvalue(np.ones(9), 1.0) == 1.0
    with pytest.raises(LorakitError, match="alternative"):
        bootstrap_pvalue(values, 0.0, "bigger")
    with pytest.raises(LorakitError, match="no finite"):
        bootstrap_pvalue(np.array([np.nan]))
