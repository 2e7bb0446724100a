"""lorakit.results.tables / lorakit.results.metrics: the three metrics with bootstrap CIs, results.md, tasks lost to majority.

``make_run`` builds a synthetic ``results.json`` from explicit per-example correctness, so every
number a test checks can be recomputed here by hand (plain numpy loops), independently of the code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lorakit.errors import LorakitError
from lorakit.results.metrics import metric_interval, metric_row, tasks_at_or_below_majority
from lorakit.results.tables import format_table, summary_rows
from lorakit.eval.correctness import encode_correct

TASKS = {"a": 240, "b": 160, "c": 200}


def bernoulli(rng, p: float, seeds: int, tasks=TASKS) -> dict[str, np.ndarray]:
    """``{task: (seeds, n) bool}`` with each example right with probability ``p``."""
    return {t: rng.random((seeds, n)) < p for t, n in tasks.items()}


def lose(rng, x: dict, frac: float) -> dict:
    """``x`` with each right answer turned wrong with probability ``frac`` (paired with ``x``)."""
    return {t: v & (rng.random(v.shape) >= frac) for t, v in x.items()}


def make_run(merged: dict, individual: dict, floor: dict | None = None, seeds=None, curves=None,
             majority: float = 0.3, per_example: bool = True) -> dict:
    """A results.json: ``merged[(method, init)][task]`` and ``individual[init][task]``: (S, n) correctness.

    ``floor[init][task]`` (optional) likewise; ``curves[(method, init)]``: per seed a list of
    ``(λ, val_normalized)``. ``per_example=False`` leaves out every ``test_correct`` (an old run).
    """
    first = next(iter(individual.values()))
    tasks = {t: v.shape[1] for t, v in first.items()}
    n_seeds = next(iter(first.values())).shape[0]
    seeds = list(seeds if seeds is not None else range(n_seeds))
    inits = list(dict.fromkeys([i for _, i in merged] + list(individual)))
    methods = list(dict.fromkeys(m for m, _ in merged))

    def entry(init, k, x, t):
        e = {"init": init, "seed": seeds[k], "test": float(x[t][k].mean()), "val": 0.0}
        return e | ({"test_correct": encode_correct(x[t][k])} if per_example else {})

    info = {t: {"majority": majority, "n_test": n, "n_val": 10, "num_labels": 2,
                "individual": [entry(i, k, individual[i], t) for i in individual for k in range(len(seeds))]}
            for t, n in tasks.items()}
    for t in tasks:
        info[t]["individual_accuracy"] = float(np.mean([e["test"] for e in info[t]["individual"]]))
        if floor is not None:
            info[t]["floor"] = [entry(i, k, floor[i], t) for i in floor for k in range(len(seeds))]
    records = []
    for (method, init), x in merged.items():
        for k, seed in enumerate(seeds):
            acc = {t: float(x[t][k].mean()) for t in tasks}
            norm = {t: acc[t] / float(individual[init][t][k].mean()) for t in tasks}
            points = (curves or {}).get((method, init), [[]] * len(seeds))[k]
            curve = [{"params": {"lam": lam}, "val_normalized": v} for lam, v in points]
            rec = {"method": method, "init": init, "seed": seed, "params": {"lam": 0.5}, "accuracy": acc,
                   "normalized": norm, "avg_accuracy": float(np.mean(list(acc.values()))),
                   "avg_normalized": float(np.mean(list(norm.values()))), "curve": curve}
            if per_example:
                rec["test_correct"] = {t: encode_correct(x[t][k]) for t in tasks}
            records.append(rec)
    return {"profile": "test", "model": "none", "machine": {"device": "cpu", "processor": "x"}, "date": "today",
            "seeds": seeds, "inits": inits, "methods": methods, "tasks": info, "records": records,
            "timings": {"total_seconds": 1.0}, "profile_config": {"task_seeds": "per_task"}}


def brute_bootstrap(sets: dict, statistics: dict, n_resamples: int, seed: int = 123) -> dict[str, np.ndarray]:
    """Plain-loop bootstrap: per resample draw seeds, then per task examples, shared by every set.

    ``statistics``: ``{name: f({set: (S, T) per-seed task accuracies}) → float}``, all on the same draws.
    """
    rng = np.random.default_rng(seed)
    first = next(iter(sets.values()))
    s = next(iter(first.values())).shape[0]
    out = {name: np.empty(n_resamples) for name in statistics}
    for r in range(n_resamples):
        drawn = rng.integers(0, s, s)
        acc = {k: np.zeros((s, len(first))) for k in sets}
        for t, task in enumerate(first):
            idx = rng.integers(0, first[task].shape[1], first[task].shape[1])
            for k in sets:
                acc[k][:, t] = sets[k][task][drawn][:, idx].mean(axis=1)
        for name, f in statistics.items():
            out[name][r] = f(acc)
    return out


@pytest.fixture(scope="module")
def run3():
    rng = np.random.default_rng(7)
    ind = bernoulli(rng, 0.85, 3)
    ind_o = bernoulli(rng, 0.84, 3)
    floor = bernoulli(rng, 0.4, 3)
    merged = {("task_arithmetic", "standard"): lose(rng, ind, 0.25), ("do", "standard"): lose(rng, ind, 0.08),
              ("task_arithmetic", "osrm"): lose(rng, ind_o, 0.2)}
    return make_run(merged, {"standard": ind, "osrm": ind_o}, floor={"standard": floor, "osrm": floor}), \
        (merged, ind, floor)


def test_metric_cis_match_a_brute_force_bootstrap(run3):
    """Normalized, raw and floor-adjusted CIs of one (method, init) agree with plain loops (20k resamples)."""
    res, (merged, ind, floor) = run3
    m = {t: v.astype(float) for t, v in merged[("task_arithmetic", "standard")].items()}
    sets = {"m": m, "i": {t: v.astype(float) for t, v in ind.items()}, "f": {t: v.astype(float) for t, v in floor.items()}}
    stats = {"accuracy": lambda a: a["m"].mean(),
             "normalized": lambda a: (a["m"] / a["i"]).mean(),
             "floor_adjusted": lambda a: np.nanmean([(m - f) / (i - f) if i > f else np.nan for m, i, f in
                                                     zip(a["m"].mean(0), a["i"].mean(0), a["f"].mean(0))])}
    row = metric_row(res, "task_arithmetic", "standard", n_resamples=20_000)
    brutes = brute_bootstrap(sets, stats, 20_000)
    for metric, stat in stats.items():
        low, high = np.quantile(brutes[metric], [0.025, 0.975])
        data = {k: np.stack([v[t].mean(1) for t in TASKS], 1) for k, v in sets.items()}  # (S, T) each
        assert row[metric]["mean"] == pytest.approx(stat(data), abs=1e-12)
        assert row[metric]["low"] == pytest.approx(low, abs=0.01) and row[metric]["high"] == pytest.approx(high, abs=0.01)
        assert row[metric]["high"] - row[metric]["low"] > 0.01  # a real interval, not a point
    assert row["n_seeds"] == 3 and row["recorded"] and "3 seeds" in row["note"]


def test_summary_rows_means_are_the_records_and_ci_brackets_them(run3):
    res, _ = run3
    rows = {(r["method"], r["init"]): r for r in summary_rows(res, n_resamples=500)}
    row = rows[("do", "standard")]
    recs = [r for r in res["records"] if r["method"] == "do" and r["init"] == "standard"]
    assert row["normalized_mean"] == pytest.approx(np.mean([r["avg_normalized"] for r in recs]), abs=1e-12)
    assert row["normalized_std"] == pytest.approx(np.std([r["avg_normalized"] for r in recs], ddof=1))
    for metric in ("normalized", "accuracy", "floor_adjusted"):
        value = row["normalized_mean" if metric == "normalized" else f"{metric}_mean"]
        assert row[f"{metric}_low"] < value < row[f"{metric}_high"]
    assert summary_rows(res, ci=False)[0]["normalized_low"] is None


def test_one_seed_prints_the_example_ci_never_a_zero_std():
    rng = np.random.default_rng(1)
    ind = bernoulli(rng, 0.8, 1)
    res = make_run({("ties", "standard"): lose(rng, ind, 0.2)}, {"standard": ind})
    (row,) = summary_rows(res)  # what results.md prints
    assert math.isnan(row["normalized_std"]) and row["floor_adjusted_mean"] is None
    assert row["normalized_high"] - row["normalized_low"] > 0.02  # test-example noise is still there
    text = format_table(res)
    assert "± 0.000" not in text and "n = 1 seed" in text
    assert f"{row['normalized_mean']:.3f} [{row['normalized_low']:.3f}, {row['normalized_high']:.3f}]" in text
    assert "| — | 1 |" in text  # floor-adjusted: no floor in this run


def test_floor_adjusted_needs_a_floor():
    rng = np.random.default_rng(2)
    ind = bernoulli(rng, 0.8, 2)
    res = make_run({("ties", "standard"): lose(rng, ind, 0.2)}, {"standard": ind})
    with pytest.raises(LorakitError, match="no head-only floor.*metric='normalized'"):
        metric_interval(res, "ties", "standard", "floor_adjusted")
    with pytest.raises(LorakitError, match="metric must be one of"):
        metric_interval(res, "ties", "standard", "f1")


def test_old_runs_without_per_example_data_get_unpaired_cis(run3):
    res_new, (merged, ind, floor) = run3
    res_old = make_run(merged, {"standard": ind, "osrm": ind}, per_example=False)
    new = metric_interval(res_new, "do", "standard", "normalized", n_resamples=2000)[0]
    old, recorded = metric_interval(res_old, "do", "standard", "normalized", n_resamples=2000)
    assert not recorded and old.ci.estimate == pytest.approx(new.ci.estimate, abs=1e-12)
    # merged is a subset of individual's right answers: paired, the ratio is much less noisy
    assert old.ci.high - old.ci.low > 1.5 * (new.ci.high - new.ci.low)
    assert "no per-example data" in format_table(res_old)


def test_tasks_at_or_below_majority():
    rng = np.random.default_rng(3)
    ind = bernoulli(rng, 0.9, 2)
    merged = lose(rng, ind, 0.1)
    merged["b"] = np.zeros_like(merged["b"])  # task b lost entirely
    merged["c"][:, :] = False
    merged["c"][:, :60] = True  # 60 / 200 = 0.3 = majority: "at" counts
    res = make_run({("ties", "standard"): merged}, {"standard": ind}, majority=0.3)
    assert tasks_at_or_below_majority(res, "ties", "standard") == ["b", "c"]
    assert tasks_at_or_below_majority(res, "dare", "standard") == []
    assert "- ties (standard): b, c" in format_table(res)


def test_per_task_table_has_a_column_only_for_what_the_run_holds():
    rng = np.random.default_rng(4)
    ind = bernoulli(rng, 0.8, 2)
    res = make_run({("ties", "standard"): lose(rng, ind, 0.2), ("do", "standard"): lose(rng, ind, 0.1),
                    ("ties", "osrm"): lose(rng, ind, 0.2)}, {"standard": ind, "osrm": lose(rng, ind, 0.3)})
    text = format_table(res)
    per_task = text.split("## Per task")[1].split("\n## ")[0]
    tables = {init: per_task.split(f"### init `{init}`")[1].split("###")[0] for init in ("standard", "osrm")}
    header = {i: next(line for line in tab.splitlines() if line.startswith("| task |")) for i, tab in tables.items()}
    assert header["standard"].endswith("| individual | ties | do |") and header["osrm"].endswith("| individual | ties |")
    assert "nan" not in per_task  # no record of do × osrm: no column (it used to print nan)
    # each init's own individual accuracy, not one column averaged over the inits
    for init, tab in tables.items():
        for t in TASKS:
            row = next(line for line in tab.splitlines() if line.startswith(f"| {t} |"))
            own = np.mean([e["test"] for e in res["tasks"][t]["individual"] if e["init"] == init])
            assert row.split("|")[4].strip() == f"{own:.3f}"
