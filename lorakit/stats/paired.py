r"""Statistics that turn benchmark numbers into verdicts: paired bootstrap, sign-flip test, t and TOST.

Methods :math:`A`, :math:`B` are scored on the same examples: :math:`a_{tsi}, b_{tsi}` for task
:math:`t` (of :math:`T`), seed :math:`s` (of :math:`S`), test example :math:`i` (of :math:`n_t`), 1/0
correctness or any real score. Task accuracy :math:`\bar a_t = \frac{1}{S n_t}\sum_{s,i} a_{tsi}`. A
*seed* is one run of the pipeline (train every adapter, merge): seed :math:`s` of every task comes
from the same run, on test splits fixed across seeds (``lorakit.data.tasks.SPLIT_SEED``). Numpy only at
run time: the Student-t comes from a continued fraction of the incomplete beta (:func:`t_ppf`).
Draws use ``numpy.random.Generator(PCG64(seed))``: the same ``seed`` gives the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence, Union

import numpy as np

from ..errors import LorakitError
from .tdist import t_cdf, t_ppf

ArrayLike = Union[np.ndarray, Sequence]
TaskScores = Union[np.ndarray, Sequence[ArrayLike], Mapping[str, ArrayLike]]
Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]
ALTERNATIVES = ("two-sided", "greater", "less")


def check_level(level: float) -> float:
    if not 0.0 < float(level) < 1.0:
        raise LorakitError(f"level must be a confidence level strictly between 0 and 1 (e.g. 0.95), got {level!r}")
    return float(level)


def _vector(x: ArrayLike, name: str, min_len: int = 1) -> np.ndarray:
    """``x`` as a finite 1-D float64 array of at least ``min_len`` values, else a LorakitError."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size < min_len:
        raise LorakitError(f"{name} must be 1-D with at least {min_len} value(s) (one per task or seed), got shape "
                           f"{arr.shape}; flatten it or run more seeds")
    if not np.all(np.isfinite(arr)):
        raise LorakitError(f"{name} contains NaN or inf; drop or fix those entries before testing")
    return arr


def _differences(a: ArrayLike, b: ArrayLike | None, min_len: int) -> np.ndarray:
    """``a − b`` (or ``a`` itself when ``b`` is None) as a checked 1-D array of paired differences."""
    a, b = _vector(a, "a", min_len), None if b is None else _vector(b, "b", min_len)
    if b is not None and a.shape != b.shape:
        raise LorakitError(f"paired samples need the same length, got {a.size} and {b.size}; pair them up first")
    return a if b is None else a - b


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

    :math:`\bar d \pm t_{1-\alpha/2,\,m-1}\, s_d/\sqrt m`: :math:`m` pairs (tasks or seeds), :math:`s_d`
    their standard deviation (ddof 1), α = 1 − level; ``b=None`` when ``a`` holds the differences.
    Assumes independent, roughly normal :math:`d_j`; :math:`s_d = 0` gives the point :math:`\bar d`.
    Equals ``scipy.stats.ttest_rel(a, b).confidence_interval(level)``.
    """
    level = check_level(level)
    d = _differences(a, b, min_len=2)
    m, est = d.size, float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(m))
    half = t_ppf(0.5 + level / 2.0, m - 1) * se
    return Interval(est, est - half, est + half, level, "paired t", se, float(m - 1))


@dataclass(frozen=True)
class TOSTResult:
    """Two one-sided paired t tests of equivalence within ``(-delta[0], +delta[1])``; ``ci`` at 1 − 2α."""
    ci: Interval
    p_lower: float
    p_upper: float
    pvalue: float
    delta: tuple[float, float]
    alpha: float
    equivalent: bool


def tost_paired(a: ArrayLike, b: ArrayLike | None = None, delta: float | tuple[float, float] = 0.01,
                alpha: float = 0.05) -> TOSTResult:
    r"""Equivalence (TOST) of paired samples: is the mean difference within :math:`(-\delta_L, +\delta_U)`?

    With :math:`d_j = a_j - b_j`, :math:`\mathrm{se} = s_d/\sqrt m`, :math:`\nu = m - 1`: for
    :math:`H_0: \mu \le -\delta_L`, :math:`p_L = 1 - F_\nu((\bar d + \delta_L)/\mathrm{se})`; for
    :math:`H_0: \mu \ge +\delta_U`, :math:`p_U = F_\nu((\bar d - \delta_U)/\mathrm{se})`. ``equivalent``
    iff :math:`\max(p_L, p_U) < \alpha`, i.e. iff the :math:`1-2\alpha` (90 %) paired t interval lies
    strictly inside the margin. ``delta``: in the data's units (0.01 = one accuracy
    point), one number or ``(delta_L, delta_U)``. For "preserves single-task accuracy within δ" pass
    ``a`` = merged, ``b`` = individual, one value per task.
    """
    if not 0.0 < alpha < 0.5:
        raise LorakitError(f"TOST alpha must be in (0, 0.5), e.g. 0.05, got {alpha!r}")
    lo_d, hi_d = (delta, delta) if np.isscalar(delta) else tuple(delta)  # type: ignore[misc]
    if not (lo_d > 0 and hi_d > 0 and math.isfinite(lo_d) and math.isfinite(hi_d)):
        raise LorakitError(f"the equivalence margin must be positive and finite, got {delta!r}")
    ci = paired_t_interval(a, b, level=1.0 - 2.0 * alpha)
    with np.errstate(divide="ignore", invalid="ignore"):  # se = 0: t = ±inf, p = 0 or 1
        t_low, t_high = (np.float64(ci.estimate) + [lo_d, -hi_d]) / np.float64(ci.se)
    p_lower, p_upper = t_cdf(-float(t_low), ci.df), t_cdf(float(t_high), ci.df)
    pvalue = max(p_lower, p_upper)
    return TOSTResult(ci, p_lower, p_upper, pvalue, (float(lo_d), float(hi_d)), alpha, bool(pvalue < alpha))


def holm(pvalues: ArrayLike | Mapping[str, float]) -> np.ndarray | dict[str, float]:
    r"""Holm step-down adjusted p-values (family-wise error control), in the input order.

    With :math:`p_{(1)} \le \dots \le p_{(m)}`: :math:`\tilde p_{(k)} = \min(1, \max_{j \le k} (m-j+1)\,
    p_{(j)})`, monotone in :math:`p`, capped at 1; reject :math:`k` at α iff :math:`\tilde p_k \le \alpha`.
    A mapping ``{claim: p}`` gives back ``{claim: adjusted p}``.
    """
    if isinstance(pvalues, Mapping):
        return dict(zip(pvalues, holm(list(pvalues.values())).tolist()))  # type: ignore[union-attr]
    p = _vector(pvalues, "p-values")
    if np.any((p < 0) | (p > 1)):
        raise LorakitError("p-values must lie in [0, 1]; check what produced them")
    order, out = np.argsort(p, kind="stable"), np.empty(p.size)
    out[order] = np.minimum(1.0, np.maximum.accumulate((p.size - np.arange(p.size)) * p[order]))
    return out


@dataclass(frozen=True)
class SignFlipResult:
    """Sign-flip test of the mean of paired differences and its test-inversion interval."""
    statistic: float
    pvalue: float
    alternative: str
    exact: bool
    n_flips: int
    ci: Interval


def _subset_sums(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum and size of every subset F of ``d`` (2^n of them; bit j of the index says j ∈ F)."""
    sums, sizes = np.zeros(1), np.zeros(1, dtype=np.int64)
    for x in d:
        sums, sizes = np.concatenate([sums, sums + x]), np.concatenate([sizes, sizes + 1])
    return sums, sizes


def sign_flip_test(d: ArrayLike, alternative: str = "two-sided", level: float = 0.95, *,
                   max_exact: int = 20, n_resamples: int = 100_000, seed: int = 0) -> SignFlipResult:
    r"""Sign-flip (paired permutation) test of :math:`H_0`: the differences are symmetric about 0.

    :math:`T = \bar d` over :math:`n` paired differences (per task or seed); under :math:`H_0` all
    :math:`2^n` sign vectors are equally likely, and flipping the set :math:`F` gives :math:`T^* \ge T
    \iff \sum_F d \le 0`. ``greater``: :math:`p = \#\{F: \sum_F d \le 0\}/2^n`; ``less``: :math:`\sum_F d
    \ge 0`; ``two-sided``: :math:`\min(1, 2\min(p_>, p_<))` as in scipy; ties within
    :math:`10^{-12}\sum|d|` count. Exact for :math:`n \le` ``max_exact``; beyond, ``n_resamples`` random
    flips and :math:`p = (1 + \#)/(1 + R)`, as ``scipy.stats.permutation_test``.

    ``ci`` inverts the test: keep :math:`\mu_0` iff neither one-sided test of :math:`d - \mu_0`
    rejects at α/2. As :math:`p_>(\mu_0) = (1 + \#\{F \ne \emptyset: \bar d_F \le \mu_0\})/2^n`, with
    :math:`K = \lfloor \alpha 2^{n-1} \rfloor - 1` the bounds are the :math:`(K+1)`-th smallest and largest
    of the :math:`2^n - 1` subset means :math:`\bar d_F`; :math:`\pm\infty` if :math:`K < 0` (n < 6 at
    95 %). Coverage ≥ level for differences symmetric about their centre. Monte Carlo: the α/2 and
    1 − α/2 quantiles of the random subsets' means (approximate).
    """
    if alternative not in ALTERNATIVES:
        raise LorakitError(f"alternative must be one of {', '.join(ALTERNATIVES)}, got {alternative!r}")
    level = check_level(level)
    d = _vector(d, "differences")
    n, alpha, tol = d.size, 1.0 - level, 1e-12 * float(np.abs(d).sum())
    if n <= max_exact:
        (sums, sizes), extra = _subset_sums(d), 0
    elif n_resamples >= 1:  # Monte Carlo: the observed flip counts once more, as in scipy
        rng = np.random.Generator(np.random.PCG64(seed))
        flipped = rng.integers(0, 2, size=(n_resamples, n), dtype=np.int8).astype(np.float64)
        sums, sizes, extra = flipped @ d, flipped.sum(axis=1), 1
    else:
        raise LorakitError(f"n_resamples must be at least 1, got {n_resamples}")
    p_greater = (extra + np.count_nonzero(sums <= tol)) / (extra + sums.size)
    p_less = (extra + np.count_nonzero(sums >= -tol)) / (extra + sums.size)
    means, k = np.sort(sums[sizes > 0] / sizes[sizes > 0]), math.floor(alpha * 2.0 ** (n - 1) + 1e-9) - 1
    if extra:
        low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0]).tolist()
    else:
        low, high = (float(means[k]), float(means[-1 - k])) if k >= 0 else (-math.inf, math.inf)
    p = {"greater": p_greater, "less": p_less, "two-sided": min(1.0, 2.0 * min(p_greater, p_less))}[alternative]
    ci = Interval(float(d.mean()), low, high, level, "sign-flip inversion" + " (Monte Carlo)" * extra)
    return SignFlipResult(float(d.mean()), float(p), alternative, not extra, int(sums.size), ci)


@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """Percentile bootstrap interval ``ci`` of a statistic; ``resamples`` holds its R bootstrap values."""
    ci: Interval
    n_resamples: int
    examples: str
    tasks: tuple[str, ...]
    resamples: np.ndarray = field(repr=False)


def mean_difference(acc_a: np.ndarray, acc_b: np.ndarray) -> np.ndarray:
    r"""The default statistic :math:`\frac1T\sum_t(\bar a_t - \bar b_t)`, over the last axis (tasks)."""
    return (acc_a - acc_b).mean(axis=-1)


def _task_arrays(x: TaskScores, name: str) -> dict[str, np.ndarray]:
    """``{task: checked (S, n_t) float64 array}`` from an (S, n) or (T, S, n) array, a list or a mapping."""
    if not isinstance(x, Mapping):
        x = {f"task{t}": v for t, v in enumerate([x] if isinstance(x, np.ndarray) and x.ndim != 3 else x)}
    out = {str(t): np.asarray(v, dtype=np.float64) for t, v in x.items()}
    if not out:
        raise LorakitError(f"{name} has no tasks; pass an (n_seeds, n_examples) array per task")
    for t, v in out.items():
        if v.ndim != 2 or v.size == 0 or not np.all(np.isfinite(v)):
            bad = " with NaN or inf" if v.ndim == 2 and v.size else ""
            raise LorakitError(f"{name}[{t}] must be a finite (n_seeds ≥ 1, n_examples ≥ 1) array, got shape "
                               f"{v.shape}{bad}; for one seed pass x[None, :]")
    return out


def _paired_tasks(a: TaskScores, b: TaskScores) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    xa, xb = _task_arrays(a, "a"), _task_arrays(b, "b")
    if set(xa) != set(xb):
        raise LorakitError(f"a and b must score the same tasks, got {list(xa)} and {list(xb)}")
    for t in xa:
        if xa[t].shape != xb[t].shape:
            raise LorakitError(f"task {t}: a has shape {xa[t].shape} and b {xb[t].shape}; both methods must "
                               "score the same seeds and examples (paired)")
    if len({u.shape[0] for u in xa.values()}) != 1:
        raise LorakitError(f"every task needs the same number of seeds (a seed is one run), got "
                           f"{[len(u) for u in xa.values()]}")
    return list(xa), list(xa.values()), [xb[t] for t in xa]


def row_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """Row-wise counts: ``idx`` (rows, k) of values in [0, n) → (rows, n) float64 multiplicities."""
    flat = (idx + (np.arange(idx.shape[0], dtype=np.int64) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=idx.shape[0] * n).reshape(idx.shape[0], n).astype(np.float64)


def _block(rng: np.random.Generator, xa: list[np.ndarray], xb: list[np.ndarray], size: int,
           nested: bool) -> tuple[np.ndarray, np.ndarray]:
    """Resampled per-task accuracies, two (size, T) arrays, for one block of the documented stream."""
    s = xa[0].shape[0]
    seed_idx = rng.integers(0, s, size=(size, s), dtype=np.int32)  # [r, j]: resample r's j-th seed
    r, j = np.arange(size)[:, None], (np.arange(s) if nested else np.zeros(s, dtype=np.int64))[None, :]
    acc = np.empty((2, size, len(xa)))
    for t, (u, v) in enumerate(zip(xa, xb)):
        k, n = (s if nested else 1), u.shape[1]
        w = row_counts(rng.integers(0, n, size=(size * k, n), dtype=np.int32), n)  # example multiplicities
        sums = (w @ np.concatenate([u, v]).T).reshape(size, k, 2 * s)  # [r, draw, seed of A | of B]
        acc[:, :, t] = sums[r, j, seed_idx].sum(axis=1) / (s * n), sums[r, j, seed_idx + s].sum(axis=1) / (s * n)
    return acc[0], acc[1]


def _apply(statistic: Statistic, acc_a: np.ndarray, acc_b: np.ndarray) -> np.ndarray:
    out = np.asarray(statistic(acc_a, acc_b), dtype=np.float64)
    if out.shape != acc_a.shape[:1] or not np.all(np.isfinite(out)):
        raise LorakitError(f"statistic must map (R, T) task accuracies to R finite values (reduce over axis -1), "
                           f"got shape {out.shape} (a ratio over a zero accuracy gives inf)")
    return out


def paired_bootstrap(a: TaskScores, b: TaskScores, statistic: Statistic | None = None, *,
                     n_resamples: int = 10_000, level: float = 0.95, seed: int = 0,
                     examples: str = "shared", block: int = 1000) -> BootstrapResult:
    r"""Paired two-level percentile bootstrap CI of ``statistic(acc_a, acc_b)`` (default: mean difference).

    ``a``, ``b``: scores per task, (S seeds, :math:`n_t` examples): an (S, n) array (one task), a (T, S,
    n) array, a list of (S, n_t) arrays or ``{task: (S, n_t)}``. One resample draws
    seeds :math:`s^*_1..s^*_S` with replacement (shared by all tasks: a seed is a run), then per task
    examples :math:`i^*_1..i^*_{n_t}` with replacement, one draw for all drawn seeds (``"shared"``) or a
    fresh one per drawn seed (``"nested"``); :math:`\bar a^*_t = \frac{1}{S n_t}\sum_{j,k}
    a_{t s^*_j i^*_{(j)k}}`, with the same indices for B (paired). ``statistic`` maps the (R, T) task
    accuracies to (R,), e.g. ``lambda a, b: (a / b).mean(-1)`` (mean of per-task ratios). CI: the α/2
    and 1 − α/2 quantiles of the R values (numpy's linear interpolation); estimate: on the data.

    Assumed independent: seeds (exchangeable runs) and test examples (i.i.d., within and across
    tasks); tasks are fixed (the claim is about these tasks). Test splits repeat across seeds, so
    each example's effect does too: ``"shared"`` resamples it once (crossed design), conservatively
    (seed × example noise counts twice: 97–99 % coverage at nominal 95 % in tests/test_stats.py);
    ``"nested"`` divides the example variance by S and under-covers then, so it is right only when
    each seed has its own test sample. Few seeds shrink the seed part by about :math:`\sqrt{(S-1)/S}`.

    Random stream, per block of ``block`` resamples (the last may be shorter): ``integers(0, S, (B,
    S), int32)``, then per task in order ``integers(0, n_t, (B·k, n_t), int32)`` with k = 1 (shared)
    or k = S (nested; row ``r·S + j`` for the j-th drawn seed of resample r).
    """
    level = check_level(level)
    if examples not in ("shared", "nested") or n_resamples < 1 or block < 1:
        raise LorakitError(f"need examples 'shared' or 'nested', n_resamples ≥ 1 and block ≥ 1, got "
                           f"{examples!r}, {n_resamples}, {block}")
    names, xa, xb = _paired_tasks(a, b)
    statistic = statistic or mean_difference
    point = float(_apply(statistic, np.array([[u.mean() for u in xa]]), np.array([[v.mean() for v in xb]]))[0])
    rng, boot = np.random.Generator(np.random.PCG64(seed)), np.empty(n_resamples)
    for start in range(0, n_resamples, block):
        size = min(block, n_resamples - start)
        boot[start:start + size] = _apply(statistic, *_block(rng, xa, xb, size, examples == "nested"))
    low, high = np.quantile(boot, [(1.0 - level) / 2.0, (1.0 + level) / 2.0]).tolist()
    return BootstrapResult(Interval(point, low, high, level, f"paired bootstrap ({examples}, percentile)"),
                           n_resamples, examples, tuple(names), boot)


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
    r"""Three-valued verdict from a CI ``[L, U]`` of a difference the paper says has sign ``paper_direction``.

    Orient the CI so the paper's direction is positive, :math:`[L', U'] = [L, U]` for +1 and
    :math:`[-U, -L]` for −1: ``held`` iff :math:`L' > 0` (the CI excludes 0 on the paper's side);
    ``contradicted`` iff :math:`U' < 0` (it excludes 0 on the other side); ``inconclusive`` otherwise,
    :math:`L' \le 0 \le U'` (it contains or touches 0). ``paper_effect``: the paper's difference, same
    units and sign (non-zero). ``smaller_than_paper`` iff :math:`U' < |\text{paper\_effect}|` (the CI
    excludes the paper's effect size from below); it never changes the verdict (a real but smaller
    effect is still ``held``) and is False without an effect. ``level``: the CI's, for the record.
    """
    lo, hi = float(ci_low), float(ci_high)
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise LorakitError(f"a verdict needs a CI with ci_low ≤ ci_high and no NaN, got [{ci_low}, {ci_high}]")
    if paper_direction not in (1, -1):
        raise LorakitError(f"paper_direction must be +1 (paper says ours > baseline) or -1, got {paper_direction!r}")
    level = check_level(level)
    if paper_effect is not None and not (math.isfinite(paper_effect) and np.sign(paper_effect) == paper_direction):
        raise LorakitError(f"paper_effect {paper_effect!r} must be finite, non-zero and have the sign of "
                           f"paper_direction {paper_direction:+d}")
    lo_o, hi_o = (lo, hi) if paper_direction == 1 else (-hi, -lo)
    result = "held" if lo_o > 0 else "contradicted" if hi_o < 0 else "inconclusive"
    smaller = paper_effect is not None and hi_o < abs(paper_effect)
    side, other = ("above", "below")[::paper_direction]
    rule = (f"held if the {100 * level:g} % CI lies entirely {side} 0 (the paper's direction), contradicted "
            f"if entirely {other} 0, inconclusive if it contains 0; here [{lo:.4g}, {hi:.4g}] → {result}")
    if paper_effect is not None:
        rule += f"; smaller_than_paper if its {side} end is short of the paper's {paper_effect:.4g} → {smaller}"
    return Verdict(claim, int(paper_direction), None if paper_effect is None else float(paper_effect),
                   lo, hi, level, result, bool(smaller), rule)


Accuracies = Union[float, ArrayLike, Mapping[str, float]]


def floor_adjusted_normalized(merged: Accuracies, individual: Accuracies,
                              floor: Accuracies) -> float | np.ndarray | dict[str, float]:
    r"""Normalized accuracy above the head-only floor, :math:`(m_t - f_t)/(i_t - f_t)` per task.

    :math:`m_t`: the merged model's accuracy; :math:`i_t`: task :math:`t`'s own adapter; :math:`f_t`:
    the floor, the task's head on the base model without LoRA (λ = 0). 1: the merge keeps all the
    adapter added; 0: none; < 0: worse than no adapter. NaN rule: where :math:`i_t \le f_t` the
    adapter added nothing to normalize by, so the value is NaN (never ±inf); average with
    ``np.nanmean`` and report how many were NaN. Floats, equal-shape arrays, or mappings with the
    same tasks (→ dict); NaN inputs are an error.
    """
    if isinstance(merged, Mapping):
        if not all(isinstance(x, Mapping) and set(x) == set(merged) for x in (individual, floor)):
            raise LorakitError("merged, individual and floor must be mappings with the same tasks")
        vals = floor_adjusted_normalized(*([x[k] for k in merged] for x in (merged, individual, floor)))
        return dict(zip(merged, np.asarray(vals).tolist()))
    m, i, f = (np.asarray(v, dtype=np.float64) for v in (merged, individual, floor))
    if not m.shape == i.shape == f.shape:
        raise LorakitError(f"merged, individual and floor need the same shape, got {m.shape}, {i.shape}, {f.shape}")
    if not all(np.all(np.isfinite(x)) for x in (m, i, f)):
        raise LorakitError("merged, individual and floor accuracies must be finite numbers; evaluate the missing ones")
    gain = i - f
    out = np.where(gain > 0, (m - f) / np.where(gain > 0, gain, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out
