r"""Statistics for the magnitude-variance claims (docs/methods.md §3.5): ratio bootstrap, group correlations, fixed effects.

Claim (a) compares *normalized* accuracies, ratios :math:`\bar m_t / \bar i_t` of a merged and an
individual model scored on the same test examples, for two families (LoRA, full fine-tuning):
:func:`multi_bootstrap` resamples seeds and examples once for K paired score arrays, so numerator
and denominator move together (:func:`lorakit.stats.paired.paired_bootstrap` carries only two). Claim (c)
relates a per-group magnitude variance :math:`x_g` to the group's merged accuracy :math:`y_g` over
task groups :math:`g \subset \{1..T\}`: :func:`leave_one_task_out` and
:func:`fixed_effects_slope` separate an effect of :math:`x` from single tasks that sit in many
groups. Numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from .correlation import spearman_rho
from ..errors import LorakitError
from .paired import Interval
from .tdist import t_cdf, t_ppf

MultiStatistic = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class MultiBootstrap:
    """Percentile bootstrap ``ci`` of a statistic of K paired score arrays; ``resamples``: its R values."""
    ci: Interval
    n_resamples: int
    tasks: tuple[str, ...]
    resamples: np.ndarray = field(repr=False)


def _score_arrays(scores: Mapping[str, np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
    """``{task: (K, S, n_t)}`` checked: finite, K and S the same for every task."""
    if not scores:
        raise LorakitError("no tasks given; pass {task: (K arrays, S seeds, n examples)}")
    names, arrays = list(scores), [np.asarray(scores[t], dtype=np.float64) for t in scores]
    for t, a in zip(names, arrays):
        if a.ndim != 3 or a.size == 0 or not np.all(np.isfinite(a)):
            raise LorakitError(f"scores[{t}] must be a finite (K, S seeds, n examples) array, got shape {a.shape}")
    if len({a.shape[:2] for a in arrays}) != 1:
        raise LorakitError(f"every task needs the same K and seeds, got {[a.shape[:2] for a in arrays]}")
    return names, arrays


def multi_bootstrap(scores: Mapping[str, np.ndarray], statistic: MultiStatistic, *, n_resamples: int = 10_000,
                    level: float = 0.95, seed: int = 0, block: int = 1000) -> MultiBootstrap:
    r"""Paired bootstrap of ``statistic`` over K score arrays per task, seeds and examples resampled once for all K.

    ``scores[t]``: shape ``(K, S, n_t)``, e.g. K = 4 per-example correctness vectors (merged and
    individual model of two families) for S seeds on the same :math:`n_t` test examples. One resample
    draws seeds :math:`s^*_1..s^*_S` (shared by all tasks and all K) and, per task, examples
    :math:`i^*_1..i^*_{n_t}` (shared by all K and all drawn seeds, the crossed design of
    :func:`lorakit.stats.paired.paired_bootstrap`'s ``"shared"``):
    :math:`\bar a^*_{k t} = \frac{1}{S n_t}\sum_{j,l} a_{k, s^*_j, i^*_l}`. ``statistic`` maps the
    ``(K, R, T)`` resampled accuracies to ``(R,)``. The random stream is paired_bootstrap's (per block:
    seed indices ``(B, S)``, then per task example indices ``(B, n_t)``), so for K = 2 and
    ``statistic = a[0] − a[1]`` averaged over tasks the two give the same numbers.
    """
    if not 0.0 < level < 1.0 or n_resamples < 1 or block < 1:
        raise LorakitError(f"need 0 < level < 1, n_resamples ≥ 1 and block ≥ 1, got {level}, {n_resamples}, {block}")
    names, arrays = _score_arrays(scores)
    k, s = arrays[0].shape[:2]

    def apply(acc: np.ndarray) -> np.ndarray:
        out = np.asarray(statistic(acc), dtype=np.float64)
        if out.shape != acc.shape[1:2] or not np.all(np.isfinite(out)):
            raise LorakitError(f"statistic must map (K, R, T) accuracies to R finite values, got shape {out.shape}")
        return out

    point = float(apply(np.stack([a.mean(axis=(1, 2)) for a in arrays], axis=1)[:, None, :])[0])
    rng, boot = np.random.Generator(np.random.PCG64(seed)), np.empty(n_resamples)
    for start in range(0, n_resamples, block):
        size = min(block, n_resamples - start)
        seed_idx = rng.integers(0, s, size=(size, s), dtype=np.int32)
        acc = np.empty((k, size, len(arrays)))
        for t, a in enumerate(arrays):
            n = a.shape[2]
            idx = rng.integers(0, n, size=(size, n), dtype=np.int32)
            flat = (idx + (np.arange(size, dtype=np.int64) * n)[:, None]).ravel()
            w = np.bincount(flat, minlength=size * n).reshape(size, n).astype(np.float64)  # (B, n) multiplicities
            sums = np.einsum("bn,ksn->kbs", w, a)  # (K, B, S): per resample, per seed
            acc[:, :, t] = np.take_along_axis(sums, np.broadcast_to(seed_idx, (k, size, s)), axis=2).sum(2) / (s * n)
        boot[start:start + size] = apply(acc)
    low, high = np.quantile(boot, [(1.0 - level) / 2.0, (1.0 + level) / 2.0]).tolist()
    return MultiBootstrap(Interval(point, low, high, level, "paired bootstrap (shared, percentile), K arrays"),
                          n_resamples, tuple(names), boot)


def normalized_difference(acc: np.ndarray) -> np.ndarray:
    r"""``(4, R, T)`` → ``(R,)``: :math:`\frac1T\sum_t \bar m^A_t/\bar i^A_t - \frac1T\sum_t \bar m^B_t/\bar i^B_t`.

    Rows: merged A, individual A, merged B, individual B (a zero individual accuracy gives inf,
    which :func:`multi_bootstrap` refuses).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return (acc[0] / acc[1]).mean(-1) - (acc[2] / acc[3]).mean(-1)


def pair_bootstrap_over_tasks(pair_values: np.ndarray, *, n_resamples: int = 10_000, level: float = 0.95,
                              seed: int = 0) -> Interval:
    r"""Bootstrap over tasks of the mean of a symmetric pair statistic :math:`D_{ik}` (``(T, T)``, diagonal unused).

    Estimate: :math:`\binom T2^{-1}\sum_{i<k} D_{ik}`. One resample draws T tasks with replacement
    and averages :math:`D` over the pairs :math:`j < l` of draws with distinct tasks (a task paired
    with itself has no value); resamples with one distinct task are redrawn. Percentile interval.
    """
    d = np.asarray(pair_values, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1] or d.shape[0] < 2:
        raise LorakitError(f"pair_values must be a (T, T) matrix with T ≥ 2 tasks, got shape {d.shape}")
    t = d.shape[0]
    iu = np.triu_indices(t, 1)
    if not np.all(np.isfinite(d[iu])) or not np.allclose(d[iu], d.T[iu]):
        raise LorakitError("pair_values must be finite and symmetric above the diagonal")
    rng, boot = np.random.Generator(np.random.PCG64(seed)), []
    dz = np.where(np.eye(t, dtype=bool), 0.0, d)
    while len(boot) < n_resamples:
        counts = np.bincount(rng.integers(0, t, size=t), minlength=t).astype(np.float64)
        weight = np.outer(counts, counts)  # [i, k]: ordered pairs of draws that are tasks i and k
        weight[np.eye(t, dtype=bool)] = 0.0  # a task drawn twice is not a pair
        if weight.sum() == 0:
            continue
        boot.append(float((weight * dz).sum() / weight.sum()))
    low, high = np.quantile(boot, [(1.0 - level) / 2.0, (1.0 + level) / 2.0]).tolist()
    return Interval(float(d[iu].mean()), low, high, level, "bootstrap over tasks (pairs of distinct tasks)")


def _groups_xy(groups: Sequence[Sequence[str]], xs: Sequence[float], ys: Sequence[float]):
    g = [tuple(x) for x in groups]
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or len(g) != len(x):
        raise LorakitError(f"groups, xs and ys need one entry per group, got {len(g)}, {x.shape}, {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise LorakitError("xs and ys must be finite; drop the groups with NaN first")
    return g, x, y


def leave_one_task_out(groups: Sequence[Sequence[str]], xs: Sequence[float], ys: Sequence[float]) -> dict[str, dict]:
    r"""Per task :math:`t`: Spearman's ρ of (x, y) over the groups that do **not** contain :math:`t`.

    Returns ``{task: {"n": groups left, "spearman": ρ}}`` (ρ NaN for fewer than 3 groups or a
    constant side). A ρ that moves far when one task is left out was carried by that task.
    """
    g, x, y = _groups_xy(groups, xs, ys)
    out = {}
    for task in sorted({t for grp in g for t in grp}):
        keep = np.array([task not in grp for grp in g])
        out[task] = {"n": int(keep.sum()), "spearman": spearman_rho(x[keep], y[keep])}
    return out


def bootstrap_spearman(xs: Sequence[float], ys: Sequence[float], *, n_resamples: int = 5000, level: float = 0.95,
                       seed: int = 0) -> Interval:
    """Percentile bootstrap CI of Spearman's ρ, resampling the (x, y) pairs (groups) with replacement.

    Groups that share tasks are not independent, so the interval is optimistic (too narrow); resamples
    where a side is constant are skipped. Estimate: ρ on the data.
    """
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 3:
        raise LorakitError(f"need two equal-length lists of at least 3 values, got shapes {x.shape} and {y.shape}")
    rng, boot = np.random.Generator(np.random.PCG64(seed)), []
    for _ in range(n_resamples):
        idx = rng.integers(0, len(x), size=len(x))
        r = spearman_rho(x[idx], y[idx])
        if not math.isnan(r):
            boot.append(r)
    if not boot:
        return Interval(spearman_rho(x, y), math.nan, math.nan, level, "bootstrap over groups (no valid resample)")
    low, high = np.quantile(boot, [(1.0 - level) / 2.0, (1.0 + level) / 2.0]).tolist()
    return Interval(spearman_rho(x, y), low, high, level, "bootstrap over groups (percentile; optimistic)")


def fixed_effects_design(groups: Sequence[Sequence[str]], xs: Sequence[float]) -> tuple[np.ndarray, list[str]]:
    r"""The design matrix of :func:`fixed_effects_slope` and its column names.

    Columns: ``mv`` (:math:`x_g`); ``size=k`` for each group size k but the smallest (a 0/1 dummy);
    ``task=t`` for every task, :math:`1[t \in g]/|g|` (membership, scaled so that :math:`\gamma_t` is
    task t's contribution to the group *mean*; the member columns of a row sum to 1 and act as the
    intercept).
    """
    g = [tuple(grp) for grp in groups]
    tasks = sorted({t for grp in g for t in grp})
    sizes = sorted({len(grp) for grp in g})
    names = ["mv"] + [f"size={k}" for k in sizes[1:]] + [f"task={t}" for t in tasks]
    X = np.zeros((len(g), len(names)))
    X[:, 0] = np.asarray(xs, dtype=np.float64)
    for row, grp in enumerate(g):
        if len(grp) != len(set(grp)):
            raise LorakitError(f"group {grp} lists a task twice; give each group's tasks once")
        if len(grp) != sizes[0]:
            X[row, names.index(f"size={len(grp)}")] = 1.0
        for t in grp:
            X[row, names.index(f"task={t}")] = 1.0 / len(grp)
    return X, names


def fixed_effects_slope(groups: Sequence[Sequence[str]], xs: Sequence[float], ys: Sequence[float],
                        level: float = 0.95) -> dict:
    r"""OLS of the group's merged accuracy on its magnitude variance with task-membership fixed effects.

    .. math:: y_g = \beta\,x_g + \sum_{k > k_{min}} \delta_k 1[|g| = k] + \frac{1}{|g|}\sum_{t \in g}\gamma_t + \varepsilon_g

    (design: :func:`fixed_effects_design`, ``n`` groups × ``p`` columns). :math:`\beta` is the
    change in merged accuracy per unit of magnitude variance *after* each task's own effect on every
    group it is in: a task that both raises x and lowers y of its groups no longer makes β negative.
    :math:`\hat\beta` by least squares, :math:`\mathrm{se} = \sqrt{\hat\sigma^2 [(X^\top X)^{-1}]_{11}}`
    with :math:`\hat\sigma^2 = \lVert y - X\hat b\rVert^2/(n - p)`; CI :math:`\hat\beta \pm t_{n-p}\,\mathrm{se}`
    and the two-sided t p-value. Assumes independent errors; groups share tasks, so read them as
    approximate. Needs a full-rank design with :math:`n > p`.
    """
    g, x, y = _groups_xy(groups, xs, ys)
    X, names = fixed_effects_design(g, x)
    n, p = X.shape
    if n <= p or np.linalg.matrix_rank(X) < p:
        raise LorakitError(f"the fixed-effects design ({n} groups × {p} columns) is rank-deficient or has no residual "
                           "degrees of freedom; use more tasks or group sizes")
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    df = n - p
    sigma2 = float(resid @ resid) / df
    se = math.sqrt(sigma2 * float(np.linalg.inv(X.T @ X)[0, 0]))
    half = t_ppf(0.5 + level / 2.0, df) * se
    pvalue = 2.0 * (1.0 - t_cdf(abs(coef[0]) / se, df)) if se > 0 else 0.0
    return {"slope": float(coef[0]), "se": se, "ci": [float(coef[0] - half), float(coef[0] + half)], "level": level,
            "df": df, "n": n, "p_value": float(pvalue), "columns": names,
            "coefficients": {k: float(v) for k, v in zip(names, coef)}}
