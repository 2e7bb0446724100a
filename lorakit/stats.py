r"""Statistics that turn benchmark numbers into verdicts: paired bootstrap, sign-flip test, t and TOST.

Notation. Methods :math:`A` and :math:`B` are scored on the same test examples. For task
:math:`t` (of :math:`T`), seed :math:`s` (of :math:`S`) and test example :math:`i` (of
:math:`n_t`), :math:`a_{tsi}, b_{tsi}` are per-example scores (1/0 correctness, or any real score).
Task accuracy is :math:`\bar a_t = \frac{1}{S n_t}\sum_{s,i} a_{tsi}`; the default statistic is the
macro-averaged difference :math:`\theta = \frac1T\sum_t (\bar a_t - \bar b_t)`. A *seed* is one run
of the whole pipeline (train every adapter, merge), so seed :math:`s` of every task comes from the
same run; test splits are fixed across seeds (``lorakit.tasks.SPLIT_SEED``).

Everything here is numpy only (no scipy at run time): the Student-t distribution comes from a
continued fraction of the regularized incomplete beta function (:func:`t_cdf`, :func:`t_ppf`).
Random draws use ``numpy.random.Generator(PCG64(seed))``: the same ``seed`` gives the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence, Union

import numpy as np

from .errors import LorakitError

ArrayLike = Union[np.ndarray, Sequence]
TaskScores = Union[np.ndarray, Sequence[ArrayLike], Mapping[str, ArrayLike]]
Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]
ALTERNATIVES = ("two-sided", "greater", "less")


def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _check_level(level: float) -> float:
    if not 0.0 < float(level) < 1.0:
        raise LorakitError(f"level must be a confidence level strictly between 0 and 1 (e.g. 0.95), got {level!r}")
    return float(level)


def _check_alternative(alternative: str) -> str:
    if alternative not in ALTERNATIVES:
        raise LorakitError(f"alternative must be one of {', '.join(ALTERNATIVES)}, got {alternative!r}")
    return alternative


def _vector(x: ArrayLike, name: str, min_len: int = 1) -> np.ndarray:
    """``x`` as a finite 1-D float64 array of at least ``min_len`` values, else a LorakitError."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise LorakitError(f"{name} must be 1-D (one value per task or seed), got shape {arr.shape}; flatten it first")
    if arr.size < min_len:
        raise LorakitError(f"{name} needs at least {min_len} value(s), got {arr.size}; run more seeds or tasks")
    if not np.all(np.isfinite(arr)):
        raise LorakitError(f"{name} contains NaN or inf; drop or fix those entries before testing")
    return arr


def _differences(a: ArrayLike, b: ArrayLike | None, min_len: int) -> np.ndarray:
    """``a − b`` (or ``a`` itself when ``b`` is None) as a checked 1-D array of paired differences."""
    a = _vector(a, "a", min_len)
    if b is None:
        return a
    b = _vector(b, "b", min_len)
    if a.shape != b.shape:
        raise LorakitError(f"paired samples need the same length, got {a.size} and {b.size}; pair them up first")
    return a - b


# ---------------------------------------------------------------- Student t without scipy


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of :math:`I_x(a, b)` (modified Lentz), valid for ``x < (a+1)/(a+b+2)``."""
    tiny, eps = 1e-300, 1e-16
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise LorakitError(f"incomplete beta did not converge for a={a}, b={b}, x={x}; report this")  # pragma: no cover


def betainc(a: float, b: float, x: float) -> float:
    r"""Regularized incomplete beta :math:`I_x(a,b) = \frac{1}{B(a,b)}\int_0^x u^{a-1}(1-u)^{b-1}du`."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise LorakitError(f"betainc needs a > 0, b > 0 and 0 ≤ x ≤ 1, got a={a}, b={b}, x={x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _t_tail(x: float, df: float) -> float:
    r"""Upper tail :math:`1 - F_\nu(x)` for ``x ≥ 0``, accurate also when it is tiny."""
    return 0.5 * betainc(df / 2.0, 0.5, df / (df + x * x)) if x < math.inf else 0.0


def t_cdf(x: float, df: float) -> float:
    r"""Student-t CDF :math:`F_\nu(x)`: with :math:`z = \nu/(\nu+x^2)`, the tail is :math:`\tfrac12 I_z(\nu/2, 1/2)`."""
    if not df > 0:
        raise LorakitError(f"degrees of freedom must be positive, got {df!r}")
    if math.isnan(x):
        return math.nan
    tail = _t_tail(abs(x), df)
    return 1.0 - tail if x > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """Student-t quantile: the ``x`` with ``t_cdf(x, df) == q``, by bracketing and bisection to the last bit."""
    if not 0.0 < q < 1.0:
        raise LorakitError(f"a t quantile needs 0 < q < 1, got {q!r}")
    if not df > 0:
        raise LorakitError(f"degrees of freedom must be positive, got {df!r}")
    p = min(q, 1.0 - q)  # the tail probability to hit, kept exact for tiny q
    if p == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while _t_tail(hi, df) > p:
        lo, hi = hi, hi * 2.0
    for _ in range(2000):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if _t_tail(mid, df) > p else (lo, mid)
    x = hi if abs(_t_tail(hi, df) - p) <= abs(_t_tail(lo, df) - p) else lo
    return x if q > 0.5 else -x


# ---------------------------------------------------------------- t interval and TOST


@dataclass(frozen=True)
class Interval:
    """A confidence interval ``[low, high]`` at ``level`` for ``estimate``; ``method`` says how it was made."""

    estimate: float
    low: float
    high: float
    level: float
    method: str
    se: float = math.nan
    df: float = math.nan


def paired_t_interval(a: ArrayLike, b: ArrayLike | None = None, level: float = 0.95) -> Interval:
    r"""Two-sided paired t interval of the mean difference :math:`\bar d` of :math:`d_j = a_j - b_j`.

    :math:`\bar d \pm t_{1-\alpha/2,\,m-1}\, s_d/\sqrt m` with :math:`m` pairs (tasks or seeds),
    :math:`s_d` the sample standard deviation (ddof 1) and :math:`\alpha = 1 - \text{level}`. Pass
    ``b=None`` when ``a`` already holds the differences. Assumes the :math:`d_j` are independent
    and roughly normal; with :math:`s_d = 0` the interval is the single point :math:`\bar d`.
    Equals ``scipy.stats.ttest_rel(a, b).confidence_interval(level)``.
    """
    level = _check_level(level)
    d = _differences(a, b, min_len=2)
    m = d.size
    se = float(d.std(ddof=1) / math.sqrt(m))
    est = float(d.mean())
    half = t_ppf(0.5 + level / 2.0, m - 1) * se
    return Interval(est, est - half, est + half, level, "paired t", se, float(m - 1))


@dataclass(frozen=True)
class TOSTResult:
    """Two one-sided paired t tests of equivalence within ``[-delta_low, +delta_high]``."""

    estimate: float
    p_lower: float
    p_upper: float
    pvalue: float
    ci_low: float
    ci_high: float
    level: float
    delta_low: float
    delta_high: float
    alpha: float
    equivalent: bool


def tost_paired(a: ArrayLike, b: ArrayLike | None = None, delta: float | tuple[float, float] = 0.01,
                alpha: float = 0.05) -> TOSTResult:
    r"""Equivalence (TOST) of paired samples: is the mean difference within :math:`(-\delta_L, +\delta_U)`?

    With :math:`d_j = a_j - b_j`, :math:`\mathrm{se} = s_d/\sqrt m`, :math:`\nu = m - 1`:

    * lower test, :math:`H_0: \mu \le -\delta_L`: :math:`p_L = 1 - F_\nu((\bar d + \delta_L)/\mathrm{se})`;
    * upper test, :math:`H_0: \mu \ge +\delta_U`: :math:`p_U = F_\nu((\bar d - \delta_U)/\mathrm{se})`.

    ``equivalent`` iff :math:`\max(p_L, p_U) < \alpha`, which is the same as the
    :math:`1-2\alpha` (90 % for α = 0.05) paired t interval lying strictly inside
    :math:`(-\delta_L, +\delta_U)`. ``delta`` is a margin in the units of the data (accuracy 0.01 =
    one point), one number for a symmetric margin or ``(delta_low, delta_high)``. Use it for "the
    merged model preserves single-task accuracy within δ" with ``a`` = merged, ``b`` = individual.
    """
    if not 0.0 < alpha < 0.5:
        raise LorakitError(f"TOST alpha must be in (0, 0.5), e.g. 0.05, got {alpha!r}")
    lo_d, hi_d = (delta, delta) if np.isscalar(delta) else tuple(delta)  # type: ignore[misc]
    if not (lo_d > 0 and hi_d > 0 and math.isfinite(lo_d) and math.isfinite(hi_d)):
        raise LorakitError(f"the equivalence margin must be positive and finite, got {delta!r}")
    ci = paired_t_interval(a, b, level=1.0 - 2.0 * alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_low = np.float64(ci.estimate + lo_d) / np.float64(ci.se)
        t_high = np.float64(ci.estimate - hi_d) / np.float64(ci.se)
    p_lower = t_cdf(-float(t_low), ci.df)
    p_upper = t_cdf(float(t_high), ci.df)
    pvalue = max(p_lower, p_upper)
    return TOSTResult(ci.estimate, p_lower, p_upper, pvalue, ci.low, ci.high, ci.level,
                      float(lo_d), float(hi_d), alpha, bool(pvalue < alpha))


# ---------------------------------------------------------------- Holm


def holm(pvalues: ArrayLike | Mapping[str, float]) -> np.ndarray | dict[str, float]:
    r"""Holm step-down adjusted p-values (family-wise error control), in the input order.

    Sort :math:`p_{(1)} \le \dots \le p_{(m)}`; then
    :math:`\tilde p_{(k)} = \min\bigl(1, \max_{j \le k} (m - j + 1)\, p_{(j)}\bigr)`, so the
    adjusted values are monotone in :math:`p` and capped at 1. Reject hypothesis :math:`k` at level
    α iff :math:`\tilde p_k \le \alpha`. A mapping ``{claim: p}`` gives back ``{claim: adjusted p}``.
    """
    if isinstance(pvalues, Mapping):
        keys = list(pvalues)
        return dict(zip(keys, holm([pvalues[k] for k in keys]).tolist()))  # type: ignore[union-attr]
    p = _vector(pvalues, "p-values")
    if np.any((p < 0) | (p > 1)):
        raise LorakitError("p-values must lie in [0, 1]; check what produced them")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = (m - np.arange(m)) * p[order]
    adjusted = np.minimum(1.0, np.maximum.accumulate(scaled))
    out = np.empty(m)
    out[order] = adjusted
    return out


# ---------------------------------------------------------------- sign-flip test


@dataclass(frozen=True)
class SignFlipResult:
    """Sign-flip test of the mean of paired differences and its test-inversion interval."""

    statistic: float
    pvalue: float
    alternative: str
    exact: bool
    n_flips: int
    ci_low: float
    ci_high: float
    level: float


def _subset_sums(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum and size of every subset F of ``d`` (2^n of them; bit j of the index says j ∈ F)."""
    sums, sizes = np.zeros(1), np.zeros(1, dtype=np.int64)
    for x in d:
        sums = np.concatenate([sums, sums + x])
        sizes = np.concatenate([sizes, sizes + 1])
    return sums, sizes


def sign_flip_test(d: ArrayLike, alternative: str = "two-sided", level: float = 0.95, *,
                   max_exact: int = 20, n_resamples: int = 100_000, seed: int = 0) -> SignFlipResult:
    r"""Sign-flip (paired permutation) test of :math:`H_0`: the differences are symmetric about 0.

    Statistic :math:`T = \bar d` over the :math:`n` paired differences (one per task or seed). Under
    :math:`H_0` every sign vector :math:`\varepsilon \in \{\pm1\}^n` is equally likely; flipping the
    set :math:`F` gives :math:`T^* \ge T \iff \sum_{j \in F} d_j \le 0`. So

    * ``greater``: :math:`p = \#\{F: \sum_F d \le 0\}/2^n`, ``less``: :math:`\#\{F: \sum_F d \ge 0\}/2^n`,
    * ``two-sided``: :math:`\min(1, 2\min(p_\text{greater}, p_\text{less}))` (scipy's definition),

    with ties counted (a tolerance of :math:`10^{-12}\sum|d_j|`). Exact over all :math:`2^n` flips for
    :math:`n \le` ``max_exact``; beyond, ``n_resamples`` random sign vectors and
    :math:`p = (1 + \#)/(1 + R)` as in ``scipy.stats.permutation_test``.

    The interval inverts the test: :math:`\mu_0` is kept iff neither one-sided test of
    :math:`d - \mu_0` rejects at :math:`\alpha/2`. Since :math:`p_\text{greater}(\mu_0) = (1 +
    \#\{F \ne \emptyset: \bar d_F \le \mu_0\})/2^n`, the bounds are order statistics of the
    :math:`2^n - 1` subset means :math:`\bar d_F`: with :math:`K = \lfloor \alpha 2^{n-1} \rfloor - 1`,
    low = the :math:`(K+1)`-th smallest, high = the :math:`(K+1)`-th largest; :math:`\pm\infty` when
    :math:`K < 0` (too few pairs: :math:`2^{n-1} < 1/\alpha`, e.g. n < 6 at 95 %). Coverage is at
    least ``level`` when the differences are symmetric about their centre. Beyond ``max_exact`` the
    bounds are the α/2 and 1 − α/2 quantiles of the random subsets' means (approximate).
    """
    alternative = _check_alternative(alternative)
    level = _check_level(level)
    d = _vector(d, "differences")
    n = d.size
    tol = 1e-12 * float(np.abs(d).sum())
    alpha = 1.0 - level
    if n <= max_exact:
        sums, sizes = _subset_sums(d)
        p_greater = float(np.count_nonzero(sums <= tol)) / sums.size
        p_less = float(np.count_nonzero(sums >= -tol)) / sums.size
        means = np.sort(sums[1:] / sizes[1:])
        k = math.floor(alpha * 2.0 ** (n - 1) + 1e-9) - 1
        low, high = (float(means[k]), float(means[-1 - k])) if k >= 0 else (-math.inf, math.inf)
        exact, flips = True, 2 ** n
    else:
        if n_resamples < 1:
            raise LorakitError(f"n_resamples must be at least 1, got {n_resamples}")
        flipped = _rng(seed).integers(0, 2, size=(n_resamples, n), dtype=np.int8).astype(np.float64)
        sums, sizes = flipped @ d, flipped.sum(axis=1)
        p_greater = (1.0 + np.count_nonzero(sums <= tol)) / (1.0 + n_resamples)
        p_less = (1.0 + np.count_nonzero(sums >= -tol)) / (1.0 + n_resamples)
        means = sums[sizes > 0] / sizes[sizes > 0]
        low, high = (float(v) for v in np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0]))
        exact, flips = False, n_resamples
    p = {"greater": p_greater, "less": p_less, "two-sided": min(1.0, 2.0 * min(p_greater, p_less))}[alternative]
    return SignFlipResult(float(d.mean()), float(p), alternative, exact, flips, low, high, level)


# ---------------------------------------------------------------- two-level paired bootstrap


@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """Percentile bootstrap interval of a statistic; ``resamples`` holds the R bootstrap values."""

    estimate: float
    low: float
    high: float
    level: float
    method: str
    n_resamples: int
    examples: str
    tasks: tuple[str, ...]
    resamples: np.ndarray = field(repr=False)


def mean_difference(acc_a: np.ndarray, acc_b: np.ndarray) -> np.ndarray:
    r"""The default statistic: :math:`\frac1T\sum_t(\bar a_t - \bar b_t)`, over the last axis (tasks)."""
    return (acc_a - acc_b).mean(axis=-1)


def _task_arrays(x: TaskScores, name: str) -> tuple[list[str], list[np.ndarray]]:
    """Task names and per-task finite (S, n_t) float64 arrays from a 2-D/3-D array, list or mapping."""
    if isinstance(x, Mapping):
        names, items = [str(k) for k in x], list(x.values())
    elif isinstance(x, np.ndarray):
        items = list(x) if x.ndim == 3 else [x]  # 2-D: one task; other ndims fail below
    else:
        items = [x] if len(x) and np.ndim(x[0]) <= 1 else list(x)  # a list of rows is one task
    if not isinstance(x, Mapping):
        names = [f"task{t}" for t in range(len(items))]
    if not items:
        raise LorakitError(f"{name} has no tasks; pass an (n_seeds, n_examples) array per task")
    out = []
    for t, item in zip(names, items):
        v = np.asarray(item, dtype=np.float64)
        if v.ndim != 2:
            raise LorakitError(f"{name}[{t}] must be 2-D (n_seeds, n_examples), got shape {v.shape}; "
                               "for one seed pass x[None, :]")
        if v.size == 0:
            raise LorakitError(f"{name}[{t}] is empty (shape {v.shape}); every task needs ≥ 1 seed and ≥ 1 example")
        if not np.all(np.isfinite(v)):
            raise LorakitError(f"{name}[{t}] contains NaN or inf; score every example (0/1) before bootstrapping")
        out.append(v)
    return names, out


def _check_pairs(a: TaskScores, b: TaskScores) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    names, xa = _task_arrays(a, "a")
    names_b, xb = _task_arrays(b, "b")
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(names) != set(names_b):
            raise LorakitError(f"a and b must score the same tasks, got {sorted(names)} and {sorted(names_b)}")
        xb = [np.asarray(b[t], dtype=np.float64) for t in names]
    elif len(xa) != len(xb):
        raise LorakitError(f"a has {len(xa)} task(s) and b has {len(xb)}; pass the same tasks in the same order")
    for t, u, v in zip(names, xa, xb):
        if u.shape != v.shape:
            raise LorakitError(f"task {t}: a has shape {u.shape} and b {v.shape}; both methods must score the "
                               "same seeds and examples (paired)")
    if len({u.shape[0] for u in xa}) != 1:
        raise LorakitError("every task needs the same number of seeds (a seed is one run of all tasks), got "
                           f"{[u.shape[0] for u in xa]}")
    return names, xa, xb


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """Row-wise counts: ``idx`` (rows, k) of values in [0, n) → (rows, n) float64 multiplicities."""
    rows = idx.shape[0]
    flat = (idx + (np.arange(rows, dtype=np.int64) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


def _block_accuracies(rng: np.random.Generator, xa: list[np.ndarray], xb: list[np.ndarray],
                      size: int, examples: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-task resampled accuracies (size, T) of A and B for one block of resamples (see the stream)."""
    s = xa[0].shape[0]
    seed_idx = rng.integers(0, s, size=(size, s), dtype=np.int32)
    seed_w = _counts(seed_idx, s)  # (size, S): how often each seed was drawn
    acc_a, acc_b = np.empty((size, len(xa))), np.empty((size, len(xa)))
    for t, (u, v) in enumerate(zip(xa, xb)):
        n = u.shape[1]
        both = np.concatenate([u, v])  # (2S, n)
        if examples == "shared":
            w = _counts(rng.integers(0, n, size=(size, n), dtype=np.int32), n)  # (size, n)
            sums = w @ both.T  # (size, 2S): Σ_i w_i x_si for every seed
            acc_a[:, t] = (seed_w * sums[:, :s]).sum(axis=1) / (s * n)
            acc_b[:, t] = (seed_w * sums[:, s:]).sum(axis=1) / (s * n)
        else:
            w = _counts(rng.integers(0, n, size=(size * s, n), dtype=np.int32), n)  # (size·S, n)
            sums = (w @ both.T).reshape(size, s, 2 * s)  # [r, j, seed]: draw j's weights on every seed
            rows = np.arange(size)[:, None], np.arange(s)[None, :]
            acc_a[:, t] = sums[rows[0], rows[1], seed_idx].sum(axis=1) / (s * n)
            acc_b[:, t] = sums[rows[0], rows[1], seed_idx + s].sum(axis=1) / (s * n)
    return acc_a, acc_b


def _apply(statistic: Statistic, acc_a: np.ndarray, acc_b: np.ndarray) -> np.ndarray:
    out = np.asarray(statistic(acc_a, acc_b), dtype=np.float64)
    if out.shape != acc_a.shape[:1]:
        raise LorakitError(f"statistic must map (R, T) task accuracies to shape ({acc_a.shape[0]},) "
                           f"(reduce over axis -1), got shape {out.shape}")
    return out


def paired_bootstrap(a: TaskScores, b: TaskScores, statistic: Statistic | None = None, *,
                     n_resamples: int = 10_000, level: float = 0.95, seed: int = 0,
                     examples: str = "shared", block: int = 1000) -> BootstrapResult:
    r"""Paired two-level percentile bootstrap CI of ``statistic(acc_a, acc_b)`` (default: mean difference).

    ``a``, ``b``: per task, scores of shape (S seeds, :math:`n_t` examples): a (S, n) array for one
    task, a (T, S, n) array, a list of (S, n_t) arrays, or a mapping ``{task: (S, n_t)}``. One
    resample :math:`r`:

    1. draw seeds :math:`s^*_1..s^*_S` with replacement (once, shared by all tasks: a seed is a run);
    2. per task, draw examples :math:`i^*_1..i^*_{n_t}` with replacement; ``examples="shared"``
       (default) uses one draw for every drawn seed, ``"nested"`` a fresh draw per drawn seed;
    3. :math:`\bar a^*_t = \frac{1}{S n_t}\sum_{j,k} a_{t s^*_j i^*_{(j)k}}`, the same indices for B
       (paired), and :math:`\theta^*_r` = ``statistic(acc_a, acc_b)`` on the (R, T) accuracies.

    ``statistic`` gets (R, T) arrays and must return (R,), e.g. ``lambda a, b: (a / b).mean(-1)``
    for the mean over tasks of accuracy ratios. CI: the :math:`\alpha/2` and :math:`1-\alpha/2`
    quantiles of :math:`\theta^*` (numpy's linear interpolation); ``estimate`` is the statistic on
    the data.

    Independence assumed: seeds are exchangeable runs; test examples are i.i.d. draws from a
    task's population, independent across tasks; tasks are fixed (not resampled: the claim is
    about these tasks). Test splits are the same in every seed here, so example effects are
    shared across seeds: ``"shared"`` resamples them once (crossed design; mildly conservative, it
    counts the seed × example noise twice), ``"nested"`` would divide their variance by S and is
    only right when every seed has its own test sample. With few seeds (S ≤ 5) the seed level is
    under-resampled (percentile intervals are then too narrow by about :math:`\sqrt{(S-1)/S}`).

    Random stream (fixed for a ``seed``), per block of ``block`` resamples (the last may be
    shorter): ``integers(0, S, (B, S), int32)``, then for each task in order
    ``integers(0, n_t, (B, n_t), int32)`` (shared) or ``(B·S, n_t)`` (nested, row ``r·S + j``).
    """
    level = _check_level(level)
    if examples not in ("shared", "nested"):
        raise LorakitError(f"examples must be 'shared' (one draw for all seeds) or 'nested', got {examples!r}")
    if n_resamples < 1 or block < 1:
        raise LorakitError(f"n_resamples and block must be ≥ 1, got {n_resamples} and {block}")
    names, xa, xb = _check_pairs(a, b)
    statistic = statistic or mean_difference
    point = _apply(statistic, np.array([[u.mean() for u in xa]]), np.array([[v.mean() for v in xb]]))[0]
    rng = _rng(seed)
    boot = np.empty(n_resamples)
    for start in range(0, n_resamples, block):
        size = min(block, n_resamples - start)
        boot[start:start + size] = _apply(statistic, *_block_accuracies(rng, xa, xb, size, examples))
    if not np.all(np.isfinite(boot)):
        raise LorakitError("the statistic gave NaN or inf on some resamples (e.g. a ratio over a zero "
                           "accuracy); make it finite for every resample")
    alpha = 1.0 - level
    low, high = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BootstrapResult(float(point), float(low), float(high), level, "percentile", n_resamples,
                           examples, tuple(names), boot)


# ---------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Verdict:
    """The verdict on one paper claim from a CI of (ours − baseline); ``rule`` says how it was reached."""

    claim: str
    direction: int
    effect: float | None
    ci_low: float
    ci_high: float
    level: float
    verdict: str
    smaller_than_paper: bool
    rule: str


def verdict(ci_low: float, ci_high: float, paper_direction: int = +1, paper_effect: float | None = None, *,
            claim: str = "", level: float = 0.95) -> Verdict:
    r"""Three-valued verdict from the CI ``[ci_low, ci_high]`` of a difference the paper claims has sign ``paper_direction``.

    Orient the interval so the paper's direction is positive:
    :math:`[L', U'] = [L, U]` if direction = +1, :math:`[-U, -L]` if −1. Then

    * ``held``: :math:`L' > 0` (the CI excludes 0 on the paper's side);
    * ``contradicted``: :math:`U' < 0` (the CI excludes 0 on the other side);
    * ``inconclusive``: otherwise, :math:`L' \le 0 \le U'` (the CI contains or touches 0).

    ``paper_effect`` is the paper's reported difference in the same units and sign convention (its
    sign must match the direction; 0 is not an effect). ``smaller_than_paper`` is
    :math:`U' < |\text{paper\_effect}|`: the CI excludes the paper's effect size from below. It never
    changes the verdict (a real but smaller effect is still ``held``); it is False without an effect.
    """
    lo, hi = float(ci_low), float(ci_high)
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise LorakitError(f"a verdict needs a CI with ci_low ≤ ci_high and no NaN, got [{ci_low}, {ci_high}]")
    if paper_direction not in (1, -1):
        raise LorakitError(f"paper_direction must be +1 (paper says ours > baseline) or -1, got {paper_direction!r}")
    level = _check_level(level)
    if paper_effect is not None:
        if not math.isfinite(paper_effect) or paper_effect == 0 or np.sign(paper_effect) != paper_direction:
            raise LorakitError(f"paper_effect {paper_effect!r} must be finite, non-zero and have the sign of "
                               f"paper_direction {paper_direction:+d}")
    lo_o, hi_o = (lo, hi) if paper_direction == 1 else (-hi, -lo)
    side = "above" if paper_direction == 1 else "below"
    other = "below" if paper_direction == 1 else "above"
    result = "held" if lo_o > 0 else "contradicted" if hi_o < 0 else "inconclusive"
    smaller = paper_effect is not None and hi_o < abs(paper_effect)
    pct = f"{100 * level:g} %"
    rule = (f"held if the {pct} CI lies entirely {side} 0 (the paper's direction), contradicted if entirely "
            f"{other} 0, inconclusive if it contains 0; here [{lo:.4g}, {hi:.4g}] → {result}")
    if paper_effect is not None:
        rule += (f"; smaller_than_paper if the CI's end on the paper's side is short of the paper's effect "
                 f"{paper_effect:.4g} → {smaller}")
    return Verdict(claim, int(paper_direction), None if paper_effect is None else float(paper_effect),
                   lo, hi, level, result, bool(smaller), rule)


# ---------------------------------------------------------------- floor-adjusted normalized accuracy


def floor_adjusted_normalized(merged, individual, floor):
    r"""Normalized accuracy above the head-only floor: :math:`(m_t - f_t)/(i_t - f_t)` per task.

    :math:`m_t` the merged model's accuracy, :math:`i_t` task :math:`t`'s own adapter, :math:`f_t`
    the floor: the same task head on the base model without any LoRA update (λ = 0). 1 means the
    merge keeps all of what the adapter added, 0 none of it, < 0 worse than no adapter at all.

    NaN rule: where :math:`i_t \le f_t` the adapter added nothing to normalize by, so the value is
    NaN (never ±inf); average with ``np.nanmean`` and report how many tasks were NaN. Inputs are
    floats, equal-shape arrays, or mappings with the same tasks (→ dict); NaN inputs are an error.
    """
    if isinstance(merged, Mapping):
        if not (isinstance(individual, Mapping) and isinstance(floor, Mapping)
                and set(merged) == set(individual) == set(floor)):
            raise LorakitError("merged, individual and floor must be mappings with the same tasks")
        keys = list(merged)
        vals = floor_adjusted_normalized([merged[k] for k in keys], [individual[k] for k in keys],
                                         [floor[k] for k in keys])
        return dict(zip(keys, np.asarray(vals).tolist()))
    m, i, f = (np.asarray(v, dtype=np.float64) for v in (merged, individual, floor))
    if not (m.shape == i.shape == f.shape):
        raise LorakitError(f"merged, individual and floor need the same shape, got {m.shape}, {i.shape}, {f.shape}")
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(i)) and np.all(np.isfinite(f))):
        raise LorakitError("merged, individual and floor accuracies must be finite numbers; evaluate the missing ones")
    gain = i - f
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(gain > 0, (m - f) / np.where(gain > 0, gain, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out
