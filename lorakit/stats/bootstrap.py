r"""Bootstrap of several aligned score sets at once (seeds × test examples), and its p-value.

:func:`lorakit.stats.paired.paired_bootstrap` compares two methods through their seed-pooled task
accuracies. A run's metrics need more: normalized accuracy divides the merged model's accuracy by
the individual adapter's *of the same seed*, the floor-adjusted one also subtracts the head-only
floor, and a claim compares two such ratios. :func:`bootstrap_scores` therefore resamples any number
of named score sets :math:`x^{(k)}_{tsi}` (task :math:`t`, seed :math:`s` of :math:`S`, example
:math:`i` of :math:`n_t`, all scored on the same test examples) with *one* set of indices and hands
the statistic per-seed task accuracies, so ratios are taken seed by seed, as the run's tables do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import numpy as np

from ..errors import LorakitError
from .paired import Interval, check_level, row_counts

#: ``{name: (R, S, T) per-seed task accuracies}`` → (R,) values (NaN/inf allowed: dropped, counted)
ScoresStatistic = Callable[[Mapping[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True, eq=False)
class ScoresBootstrap:
    """Percentile CI of a statistic of several aligned score sets; ``resamples`` keeps its R values."""
    ci: Interval
    n_resamples: int
    n_undefined: int
    n_seeds: int
    tasks: tuple[str, ...]
    resamples: np.ndarray = field(repr=False)


def _check_scores(scores: Mapping[str, Mapping[str, np.ndarray]]) -> tuple[list[str], dict[str, list[np.ndarray]]]:
    """Task names and ``{name: [(S, n_t) float64 per task]}``, every name with the same tasks and shapes."""
    if not scores:
        raise LorakitError("bootstrap_scores needs at least one named score set ({name: {task: (S, n) array}})")
    names = list(scores)
    tasks = list(scores[names[0]])
    out: dict[str, list[np.ndarray]] = {}
    for name in names:
        if list(scores[name]) != tasks:
            raise LorakitError(f"score set {name!r} has tasks {list(scores[name])}, expected {tasks}; align them")
        out[name] = [np.asarray(scores[name][t], dtype=np.float64) for t in tasks]
    for t, task in enumerate(tasks):
        shapes = {out[name][t].shape for name in names}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2 or 0 in next(iter(shapes)):
            raise LorakitError(f"task {task}: every score set needs the same non-empty (n_seeds, n_examples) "
                               f"shape (same seeds, same test examples), got {sorted(shapes)}")
        if not all(np.all(np.isfinite(out[name][t])) for name in names):
            raise LorakitError(f"task {task}: scores contain NaN or inf; fix those entries")
    if not tasks or len({out[names[0]][t].shape[0] for t in range(len(tasks))}) != 1:
        raise LorakitError("every task needs the same number of seeds (a seed is one run), and at least one task")
    return tasks, out


#: the last stream of draws :func:`resampled_accuracies` made, ``{key: [(seed_idx, counts), ...]}``: every
#: claim of a report bootstraps with the same seed and shapes, so they share one stream
_DRAWS: dict[tuple, list] = {}
#: the most memory that stream may keep (counts as uint16); a larger stream is drawn afresh each time
DRAWS_CACHE_BYTES = 160 * 2**20


def _draw_blocks(seed: int, n_resamples: int, block: int, s: int,
                 ns: tuple[int, ...]) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """The documented random stream, block by block: ``(seed_idx (B, S) int32, [counts (B, n_t)])``.

    Per block: ``integers(0, S, (B, S), int32)``, then per task ``integers(0, n_t, (B, n_t), int32)``
    turned into example multiplicities. The same ``(seed, n_resamples, block, S, n)`` gives the same
    arrays, so the last stream is kept (read-only) when it fits in :data:`DRAWS_CACHE_BYTES`.
    """
    key = (int(seed), int(n_resamples), int(block), int(s), tuple(int(n) for n in ns))
    if key in _DRAWS:
        yield from _DRAWS[key]
        return
    keep = [] if n_resamples * (2 * sum(ns) + 4 * s) <= DRAWS_CACHE_BYTES else None
    rng = np.random.Generator(np.random.PCG64(seed))
    for start in range(0, n_resamples, block):
        size = min(block, n_resamples - start)
        seed_idx = rng.integers(0, s, size=(size, s), dtype=np.int32)
        counts = [row_counts(rng.integers(0, n, size=(size, n), dtype=np.int32), n).astype(np.uint16) for n in ns]
        for a in (seed_idx, *counts):
            a.flags.writeable = False
        if keep is not None:
            keep.append((seed_idx, counts))
        yield seed_idx, counts
    if keep is not None:
        _DRAWS.clear()
        _DRAWS[key] = keep


def resampled_accuracies(scores: Mapping[str, Mapping[str, np.ndarray]], *, n_resamples: int = 10_000,
                         seed: int = 0, block: int = 1000) -> Iterator[dict[str, np.ndarray]]:
    r"""The resamples of :func:`bootstrap_scores`, block by block: ``{name: (B, S, T) per-seed task accuracies}``.

    For several statistics of one bootstrap (the same draws), e.g. a run's three metrics. The draws
    depend only on ``seed``, ``n_resamples``, ``block``, S and the :math:`n_t` (:func:`_draw_blocks`),
    so every claim of a report reuses one stream.
    """
    if n_resamples < 1 or block < 1:
        raise LorakitError(f"need n_resamples ≥ 1 and block ≥ 1, got {n_resamples} and {block}")
    tasks, arrays = _check_scores(scores)
    names, s = list(arrays), arrays[next(iter(arrays))][0].shape[0]
    stacked = [np.concatenate([arrays[k][t] for k in names]) for t in range(len(tasks))]  # (K·S, n_t)
    ns = tuple(x.shape[1] for x in stacked)
    for seed_idx, counts in _draw_blocks(seed, n_resamples, block, s, ns):
        size = seed_idx.shape[0]
        acc = {k: np.empty((size, s, len(tasks))) for k in names}
        for t, (x, w) in enumerate(zip(stacked, counts)):
            sums = (w.astype(np.float64) @ x.T) / x.shape[1]  # (B, K·S): every set's every seed on the drawn examples
            for k, name in enumerate(names):
                acc[name][:, :, t] = np.take_along_axis(sums, seed_idx + k * s, axis=1)
        yield acc


def data_accuracies(scores: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The data's own per-seed task accuracies, ``{name: (1, S, T)}`` (the point estimate's input)."""
    _, arrays = _check_scores(scores)
    return {k: np.stack([u.mean(axis=1) for u in arrays[k]], axis=-1)[None] for k in arrays}


def percentile_interval(resamples: np.ndarray, estimate: float, level: float, method: str) -> tuple[Interval, int]:
    """(equal-tailed percentile CI of the finite resamples, how many were not finite)."""
    level = check_level(level)
    finite = resamples[np.isfinite(resamples)]
    low, high = (np.quantile(finite, [(1 - level) / 2, (1 + level) / 2]).tolist() if finite.size
                 else (float("nan"), float("nan")))
    return Interval(float(estimate), low, high, level, method), int(resamples.size - finite.size)


def bootstrap_scores(scores: Mapping[str, Mapping[str, np.ndarray]], statistic: ScoresStatistic, *,
                     n_resamples: int = 10_000, level: float = 0.95, seed: int = 0,
                     block: int = 1000) -> ScoresBootstrap:
    r"""Two-level percentile bootstrap of ``statistic`` over seeds and test examples, all sets paired.

    ``scores[k][t]``: set :math:`k`'s (S, :math:`n_t`) per-example scores of task :math:`t`, seeds in
    the same order in every set. One resample draws seeds :math:`s^*_1..s^*_S` with replacement
    (shared by all sets and tasks: a seed is one run) and per task examples
    :math:`i^*_1..i^*_{n_t}` with replacement (shared by all sets and drawn seeds: the test split is
    fixed across seeds), and hands ``statistic`` the per-seed accuracies
    :math:`\bar x^{(k)*}_{jt} = \frac1{n_t}\sum_m x^{(k)}_{t s^*_j i^*_m}`, arrays of shape (R, S, T).
    The point estimate applies ``statistic`` to the data's (1, S, T) accuracies. CI: the α/2 and
    1 − α/2 quantiles of the finite resample values (numpy's linear interpolation); non-finite values
    (a ratio over a resampled zero) are dropped and counted in ``n_undefined``.

    Assumptions as :func:`lorakit.stats.paired.paired_bootstrap` with ``examples="shared"`` (crossed design,
    conservative); with S = 1 the CI covers test-example noise only. Random stream: exactly that of
    ``paired_bootstrap(..., examples="shared")`` (per block of ``block``: ``integers(0, S, (B, S),
    int32)``, then per task ``integers(0, n_t, (B, n_t), int32)``), so the mean difference of two sets
    gives the same resamples as it does.
    """
    check_level(level)
    point = float(np.asarray(statistic(data_accuracies(scores)), dtype=np.float64).reshape(-1)[0])
    parts = []
    for acc in resampled_accuracies(scores, n_resamples=n_resamples, seed=seed, block=block):
        values = np.asarray(statistic(acc), dtype=np.float64)
        size = next(iter(acc.values())).shape[0]
        if values.shape != (size,):
            raise LorakitError(f"statistic must map (R, S, T) accuracies to R values, got shape {values.shape}")
        parts.append(values)
    boot = np.concatenate(parts)
    ci, undefined = percentile_interval(boot, point, level, "bootstrap over seeds × examples (shared, percentile)")
    first = next(iter(scores.values()))
    return ScoresBootstrap(ci, n_resamples, undefined, np.shape(first[next(iter(first))])[0], tuple(first), boot)


def bootstrap_pvalue(resamples: np.ndarray, null: float = 0.0, alternative: str = "two-sided") -> float:
    r"""p-value of :math:`H_0: \theta = \theta_0` (``null``) by inverting the percentile bootstrap interval.

    With the R finite resample values :math:`\theta^*_r`: ``greater`` (evidence that
    :math:`\theta > \theta_0`): :math:`p = (1 + \#\{\theta^*_r \le \theta_0\})/(1 + R)`; ``less``:
    :math:`(1 + \#\{\theta^*_r \ge \theta_0\})/(1 + R)`; ``two-sided``: :math:`\min(1, 2\min(p_>, p_<))`.
    So :math:`p < 1 - \text{level}` exactly when :math:`\theta_0` lies outside the equal-tailed
    percentile interval at ``level`` (up to the +1 and the quantile interpolation): the p-value and the
    CI of one bootstrap never disagree about a verdict. The +1 keeps p ≥ 1/(R+1) (never 0).
    """
    values = np.asarray(resamples, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise LorakitError("no finite bootstrap resamples to compute a p-value from; check the statistic")
    p_greater = (1 + np.count_nonzero(values <= null)) / (1 + values.size)
    p_less = (1 + np.count_nonzero(values >= null)) / (1 + values.size)
    table = {"greater": p_greater, "less": p_less, "two-sided": min(1.0, 2.0 * min(p_greater, p_less))}
    if alternative not in table:
        raise LorakitError(f"alternative must be one of {', '.join(table)}, got {alternative!r}")
    return float(table[alternative])
