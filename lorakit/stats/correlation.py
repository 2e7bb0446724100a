r"""Correlation of paired per-group values: Spearman's ρ and permutation p-values.

Used by notebook 03 (magnitude variance against merged accuracy) and the magnitude-variance study
(:mod:`lorakit.run.mv_study`, :mod:`lorakit.stats.mv_study`). Pure numpy, float64; checked against
``scipy.stats`` and brute-force permutation counts in ``tests/test_correlation.py``.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

from ..errors import LorakitError


def _average_ranks(values):
    """Ranks 1..n of a 1-D array, ties given their average rank (scipy's ``rankdata`` default)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):
        tied = values == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def _pearson_rows(x, ys):
    """Pearson r of ``x`` (n,) with every row of ``ys`` (P, n); NaN where either is constant."""
    xc = x - x.mean()
    yc = ys - ys.mean(axis=-1, keepdims=True)
    denom = np.sqrt((xc**2).sum() * (yc**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (yc @ xc) / np.where(denom > 0, denom, 1.0), np.nan)


def spearman_rho(xs: Sequence[float], ys: Sequence[float]) -> float:
    r"""Spearman's :math:`\rho = r(\operatorname{rank} x, \operatorname{rank} y)` (average ranks for ties).

    NaN for fewer than 3 values or a constant side (as :func:`group_correlation`, without its p-value).
    """
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise LorakitError(f"xs and ys must be two lists of the same length, got shapes {x.shape} and {y.shape}")
    if len(x) < 3:
        return float("nan")
    return float(_pearson_rows(_average_ranks(x), _average_ranks(y)[None, :])[0])


def group_correlation(xs: Sequence[float], ys: Sequence[float], permutations: int = 10_000, seed: int = 0) -> dict:
    r"""Pearson and Spearman correlation of paired per-group values, with permutation p-values.

    For groups :math:`g = 1 \dots n` with :math:`x_g` (e.g. magnitude variance) and :math:`y_g`
    (e.g. merged normalized accuracy):

    .. math::

        r = \frac{\sum_g (x_g - \bar x)(y_g - \bar y)}
                 {\sqrt{\sum_g (x_g - \bar x)^2 \sum_g (y_g - \bar y)^2}}, \qquad
        \rho = r\big(\operatorname{rank}(x), \operatorname{rank}(y)\big)

    (ties get their average rank). Each two-sided p-value is the share of pairings of the
    ``y`` values with the ``x`` values whose ``|r|`` (``|ρ|``) is at least the observed one: all
    ``n!`` pairings when ``n! ≤ permutations`` (exact), otherwise ``permutations`` random ones
    drawn with ``seed`` plus the observed one. The p-values assume exchangeable groups; groups
    that share tasks are not independent, so read them as optimistic.

    Returns:
        ``{"n", "pearson", "pearson_p", "spearman", "spearman_p"}`` (NaN statistics when
        ``n < 3`` or either list is constant).
    """
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise LorakitError(f"xs and ys must be two lists of the same length, got shapes {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise LorakitError("xs and ys must be finite numbers; drop the groups with NaN first")
    n = len(x)
    out = {"n": n, "pearson": float("nan"), "pearson_p": float("nan"),
           "spearman": float("nan"), "spearman_p": float("nan")}
    if n < 3:
        return out
    rx, ry = _average_ranks(x), _average_ranks(y)
    if math.factorial(n) <= permutations:
        perms, extra = np.array(list(itertools.permutations(range(n)))), 0
    else:
        rng = np.random.default_rng(seed)
        perms, extra = np.array([rng.permutation(n) for _ in range(permutations)]), 1
    for name, a, b in (("pearson", x, y), ("spearman", rx, ry)):
        observed = float(_pearson_rows(a, b[None, :])[0])
        if math.isnan(observed):
            continue
        null = np.abs(_pearson_rows(a, b[perms]))
        hits = int((null >= abs(observed) - 1e-12).sum())
        out[name], out[f"{name}_p"] = observed, (hits + extra) / (len(perms) + extra)
    return out
