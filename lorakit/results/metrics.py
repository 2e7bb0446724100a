r"""A run's three accuracy metrics per (method, init), with confidence intervals from its per-example data.

For task :math:`t` and seed :math:`s`: :math:`m_{st}` the merged model's test accuracy, :math:`i_{st}`
the task's own adapter's (same init and seed), :math:`f_{st}` the head-only floor (base model with the
task's trained head, λ = 0; runs that record ``results["tasks"][t]["floor"]``). Over the S seeds and
T tasks (each :math:`(S, T)`):

* ``accuracy``: :math:`\frac1{ST}\sum_{s,t} m_{st}`, raw accuracy. The OSRM paper reports this kind of
  number: each GLUE task's own metric (accuracy; MCC for CoLA) and their mean over its 8 tasks;
  whether it also reports normalized scores could not be seen (docs/methods.md §2.9, §2.10);
* ``normalized``: :math:`\frac1{ST}\sum_{s,t} m_{st}/i_{st}`, merged ÷ individual. The DO-Merging
  paper's metric if it uses the KnOTS benchmark, whose evaluation scripts average per-task normalized
  accuracy (inferred, docs/methods.md §3.6; its headline numbers are "presumably average normalized
  accuracy", §3.7); lorakit's default (docs/methods.md §5.3), and the claims' default;
* ``floor_adjusted``: the mean over the tasks of :math:`(\bar m_t - \bar f_t)/(\bar i_t - \bar f_t)`,
  the bars means over the seeds (:func:`lorakit.stats.paired.floor_adjusted_normalized`; a task where
  :math:`\bar i_t \le \bar f_t` is left out): the share of what the adapter added over the head
  alone that the merge keeps (lorakit's own). The ratio is taken of seed means, not per seed
  [D]: one seed's gap :math:`i_{st} - f_{st}` can be a few points (the cpu reference's OSRM adapter
  of rt_subjectivity, seed 4: 0.04), and a per-seed ratio over it sends the CI past 1.9; with one
  seed the two are the same.

CI (95 % by default): the percentile bootstrap over seeds × test examples of the same statistic
(:func:`lorakit.stats.bootstrap.bootstrap_scores`), not a t interval over seeds: it works with one seed
(then it covers test-example noise only, and says so) and keeps each ratio seed by seed. Runs made
before per-example correctness was recorded get vectors rebuilt from each accuracy (``round(acc·n)``
ones at seeded random places): every score set then resamples as if independent of the others
(``recorded`` False), which widens the CI of a difference of positively correlated scores.
"""

from __future__ import annotations

import math
import statistics
import warnings
import zlib
from typing import Mapping, Sequence

import numpy as np

from ..eval.correctness import decode_correct
from ..errors import LorakitError
from ..stats.bootstrap import ScoresBootstrap, bootstrap_scores, data_accuracies, percentile_interval, resampled_accuracies
from ..stats.paired import floor_adjusted_normalized

METRICS = ("accuracy", "normalized", "floor_adjusted")
METRIC_LABELS = {"accuracy": "accuracy", "normalized": "normalized accuracy",
                 "floor_adjusted": "floor-adjusted normalized accuracy"}
TaskArrays = dict[str, np.ndarray]


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise LorakitError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    return metric


def records_of(results: Mapping, method: str, init: str) -> list[Mapping]:
    """The records of ``method`` with ``init``, sorted by seed."""
    return sorted((r for r in results.get("records", []) if r["method"] == method and r["init"] == init),
                  key=lambda r: r["seed"])


def seeds_of(results: Mapping, method: str, init: str) -> list[int]:
    return [r["seed"] for r in records_of(results, method, init)]


def has_floor(results: Mapping) -> bool:
    """Whether every task records its head-only floor (runs made before it was added do not)."""
    tasks = results.get("tasks") or {}
    return bool(tasks) and all(info.get("floor") for info in tasks.values())


def _entry(entries: Sequence[Mapping], init: str, seed: int, what: str, task: str) -> Mapping:
    for e in entries:
        if e["init"] == init and e["seed"] == seed:
            return e
    raise LorakitError(f"task {task}: no {what} entry for init {init!r}, seed {seed}; the run is incomplete, re-run it")


def _vector(encoded: Mapping | None, acc: float, n: int, key: str) -> tuple[np.ndarray, bool]:
    """(per-example 0/1 scores, recorded?): decoded, or ``round(acc·n)`` ones placed by a seeded shuffle."""
    if encoded is not None:
        bits = decode_correct(encoded)
        if bits.size != n:
            raise LorakitError(f"{key}: {bits.size} per-example scores for {n} test examples; re-run the benchmark")
        return bits.astype(np.float64), True
    out = np.zeros(n)
    out[:int(round(acc * n))] = 1.0
    return np.random.default_rng(zlib.crc32(key.encode())).permutation(out), False


def merged_scores(results: Mapping, method: str, init: str, seeds: Sequence[int]) -> tuple[TaskArrays, bool]:
    """``({task: (S, n_t) merged correctness}, all recorded?)`` for ``seeds`` in that order."""
    recs = {r["seed"]: r for r in records_of(results, method, init)}
    out, recorded = {}, True
    for t, info in results["tasks"].items():
        rows = []
        for s in seeds:
            if s not in recs:
                raise LorakitError(f"{method} ({init}) has no record for seed {s}; compare common seeds only")
            enc = recs[s].get("test_correct", {}).get(t)
            v, ok = _vector(enc, recs[s]["accuracy"][t], info["n_test"], f"{method}|{init}|{s}|{t}")
            rows.append(v)
            recorded &= ok
        out[t] = np.stack(rows)
    return out, recorded


def entry_scores(results: Mapping, init: str, seeds: Sequence[int],
                 field: str = "individual") -> tuple[TaskArrays, bool]:
    """``({task: (S, n_t)}, all recorded?)`` of each task's ``individual`` adapter or head-only ``floor``."""
    out, recorded = {}, True
    for t, info in results["tasks"].items():
        rows = []
        for s in seeds:
            e = _entry(info.get(field) or [], init, s, field, t)
            v, ok = _vector(e.get("test_correct"), e["test"], info["n_test"], f"{field}|{init}|{s}|{t}")
            rows.append(v)
            recorded &= ok
        out[t] = np.stack(rows)
    return out, recorded


def side_scores(results: Mapping, method: str, init: str, seeds: Sequence[int], metric: str,
                prefix: str = "") -> tuple[dict[str, TaskArrays], bool]:
    """The score sets ``metric`` needs for (method, init): ``merged``, ``individual``, ``floor``, keys prefixed."""
    check_metric(metric)
    merged, ok = merged_scores(results, method, init, seeds)
    sets = {prefix + "merged": merged}
    if metric != "accuracy":
        sets[prefix + "individual"], ok_i = entry_scores(results, init, seeds, "individual")
        ok &= ok_i
    if metric == "floor_adjusted":
        if not has_floor(results):
            raise LorakitError("this run has no head-only floor (results['tasks'][t]['floor']); use "
                               "metric='normalized' or re-run with a lorakit that records it")
        sets[prefix + "floor"], ok_f = entry_scores(results, init, seeds, "floor")
        ok &= ok_f
    return sets, ok


def metric_values(acc: Mapping[str, np.ndarray], metric: str, prefix: str = "") -> np.ndarray:
    r"""``metric`` of (R, S, T) per-seed task accuracies ``acc[prefix + "merged" | "individual" | "floor"]`` → (R,).

    The mean over seeds and tasks of :math:`m` or :math:`m/i`; for ``floor_adjusted`` the mean over
    tasks of :math:`(\bar m - \bar f)/(\bar i - \bar f)` of the seed means (over the tasks where it is
    defined; NaN where none is).
    """
    m = acc[prefix + "merged"]
    if metric == "accuracy":
        return m.mean(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "normalized":
            return (m / acc[prefix + "individual"]).mean(axis=(1, 2))
    per = floor_adjusted_normalized(m.mean(axis=1), acc[prefix + "individual"].mean(axis=1),
                                    acc[prefix + "floor"].mean(axis=1))  # (R, T): ratios of seed means
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice → NaN, counted as undefined
        return np.nanmean(per, axis=1)


def metric_interval(results: Mapping, method: str, init: str, metric: str = "normalized", *,
                    n_resamples: int = 4000, level: float = 0.95, seed: int = 0) -> tuple[ScoresBootstrap, bool]:
    """``(bootstrap of metric for (method, init) over its seeds × test examples, per-example data recorded?)``."""
    seeds = seeds_of(results, method, init)
    if not seeds:
        raise LorakitError(f"no records of {method} with init {init}; pick a (method, init) the run holds")
    sets, recorded = side_scores(results, method, init, seeds, metric)
    boot = bootstrap_scores(sets, lambda acc: metric_values(acc, metric), n_resamples=n_resamples,
                            level=level, seed=seed)
    return boot, recorded


def ci_note(n_seeds: int, recorded: bool) -> str:
    """How a CI was made, in words: what noise it covers."""
    note = (f"n = 1 seed: the CI covers test-example noise only" if n_seeds == 1
            else f"{n_seeds} seeds × test examples")
    if not recorded:
        note += "; no per-example data in this run, so scores resample unpaired (wider CI)"
    return note


def can_bootstrap(results: Mapping) -> bool:
    """Whether ``results`` holds what a CI needs: tasks with ``n_test`` and individual entries."""
    tasks = results.get("tasks")
    return bool(tasks) and all("n_test" in info and info.get("individual") for info in tasks.values())


def metric_row(results: Mapping, method: str, init: str, *, n_resamples: int = 2000, level: float = 0.95,
               seed: int = 0) -> dict:
    """Every metric of (method, init) with its CI, from one bootstrap (the same draws for all three).

    ``{metric: {"mean", "low", "high", "n_undefined"} | None}`` (None: floor-adjusted without a floor),
    ``n_seeds``, ``recorded`` (per-example data, not rebuilt) and ``note`` (what the CI covers).
    """
    seeds = seeds_of(results, method, init)
    if not seeds:
        raise LorakitError(f"no records of {method} with init {init}; pick a (method, init) the run holds")
    metrics = [m for m in METRICS if m != "floor_adjusted" or has_floor(results)]
    sets, recorded = side_scores(results, method, init, seeds, metrics[-1])
    point = data_accuracies(sets)
    boots = [np.concatenate(v) for v in zip(*([metric_values(acc, m) for m in metrics]
                                                for acc in resampled_accuracies(sets, n_resamples=n_resamples,
                                                                                seed=seed)))]
    row: dict = {"method": method, "init": init, "n_seeds": len(seeds), "recorded": recorded,
                 "note": ci_note(len(seeds), recorded), "floor_adjusted": None}
    for m, boot in zip(metrics, boots):
        ci, undefined = percentile_interval(boot, float(metric_values(point, m)[0]), level, "bootstrap")
        row[m] = {"mean": ci.estimate, "low": ci.low, "high": ci.high, "n_undefined": undefined}
    return row


def seed_std(values: Sequence[float]) -> float:
    """Standard deviation over seeds (ddof 1); NaN for one seed (no spread to report)."""
    return statistics.stdev(values) if len(values) > 1 else math.nan


def tasks_at_or_below_majority(results: Mapping, method: str, init: str) -> list[str]:
    """Tasks whose merged test accuracy (mean over seeds) is at or below the majority-class baseline.

    Such a task is lost by the merge: its head on the merged weights does no better than always
    answering the most frequent class. In task order; ``[]`` when (method, init) has no records.
    """
    recs = records_of(results, method, init)
    if not recs:
        return []
    return [t for t, info in results["tasks"].items()
            if statistics.fmean(r["accuracy"][t] for r in recs) <= info["majority"]]
