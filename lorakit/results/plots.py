"""Figures for run results and notebooks (matplotlib, Agg backend when headless)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping

import matplotlib.pyplot as plt  # matplotlib falls back to Agg without a display

from .metrics import METRIC_LABELS
from .tables import lambda_curve, summary_rows
from ..eval.correctness import mean
from ..stats.paired import paired_t_interval


def bars_normalized(results: Mapping, ax=None, metric: str = "normalized"):
    """A metric per method (default average normalized accuracy), one bar per init, with its 95 % CI.

    The CI is :func:`lorakit.results.tables.summary_rows`' bootstrap over seeds × test examples; with one seed
    it covers test-example noise only, and the legend says so. No bar gets a seed std from one seed.
    """
    rows = summary_rows(results)
    methods = list(results["methods"])
    inits = list(results["inits"])
    ax = ax or plt.subplots(figsize=(1.2 + 1.1 * len(methods), 3.4))[1]
    width = 0.8 / max(len(inits), 1)
    key = "normalized_mean" if metric == "normalized" else f"{metric}_mean"
    for k, init in enumerate(inits):
        found = [next((r for r in rows if r["method"] == m and r["init"] == init), None) for m in methods]
        vals = [math.nan if r is None or r[key] is None else r[key] for r in found]
        low = [math.nan if r is None or r.get(f"{metric}_low") is None else r[f"{metric}_low"] for r in found]
        high = [math.nan if r is None or r.get(f"{metric}_high") is None else r[f"{metric}_high"] for r in found]
        xs = [i + (k - (len(inits) - 1) / 2) * width for i in range(len(methods))]
        errs = [[max(v - lo, 0.0) for v, lo in zip(vals, low)], [max(hi - v, 0.0) for v, hi in zip(vals, high)]]
        has_ci = not all(math.isnan(x) for x in low)
        ax.bar(xs, vals, width, yerr=errs if has_ci else None, label=init, capsize=3)
    if metric != "accuracy":
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, rotation=30, ha="right")
    ax.set_ylabel(f"avg {METRIC_LABELS.get(metric, metric)}")
    ax.set_title(f"{METRIC_LABELS.get(metric, metric)} ({results['profile']} profile)")
    ax.legend(title=f"init; bars: {ci_caption(rows)}", fontsize=7, title_fontsize=7)
    return ax


def ci_caption(rows) -> str:
    """What the error bars are: the bootstrap CI, and over what (one seed: test examples only)."""
    seeds = {r["n_seeds"] for r in rows if r.get("ci_note")}
    if not seeds:
        return "no CI (no per-task scores)"
    return "95 % CI, test examples only (n = 1 seed)" if seeds == {1} else "95 % CI, seeds × test examples"


def per_task_accuracy(results: Mapping, init: str | None = None, ax=None):
    """Per-task test accuracy: majority, individual, and each method's merged model."""
    init = init or results["inits"][0]
    tasks = list(results["tasks"])
    ax = ax or plt.subplots(figsize=(1.5 + 1.2 * len(tasks), 3.4))[1]
    series = {"majority": [results["tasks"][t]["majority"] for t in tasks],
              "individual": [mean(r["test"] for r in results["tasks"][t]["individual"] if r["init"] == init) for t in tasks]}
    for m in results["methods"]:
        recs = [r for r in results["records"] if r["method"] == m and r["init"] == init]
        series[f"merged: {m}"] = [mean(r["accuracy"][t] for r in recs) for t in tasks]
    width = 0.8 / len(series)
    for k, (label, vals) in enumerate(series.items()):
        ax.bar([i + (k - (len(series) - 1) / 2) * width for i in range(len(tasks))], vals, width, label=label)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=30, ha="right")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"per-task accuracy (init {init})")
    ax.legend(fontsize=7, ncol=2)
    return ax


def lambda_curves(results: Mapping, method: str = "task_arithmetic", ax=None):
    """Normalized accuracy against λ for each init (the robustness curve), mean over seeds.

    With two or more seeds a band shows the 95 % t interval over seeds at each λ
    (:func:`lorakit.stats.paired.paired_t_interval` of the per-seed values); one seed gets no band.
    """
    ax = ax or plt.subplots(figsize=(4.2, 3.2))[1]
    n_seeds = 1
    for init in results["inits"]:
        curve = lambda_curve(results, method, init)
        if not curve:
            continue
        line = ax.plot(list(curve), list(curve.values()), marker="o", label=init)[0]
        per_seed = lambda_points(results, method, init)
        n_seeds = max(n_seeds, max(len(v) for v in per_seed.values()))
        band = [(lam, paired_t_interval(v)) for lam, v in per_seed.items() if len(v) >= 2]
        if band:
            ax.fill_between([lam for lam, _ in band], [ci.low for _, ci in band], [ci.high for _, ci in band],
                            color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("λ")
    split = "test" if any("test_normalized" in c for r in results["records"] for c in r["curve"]) else "validation"
    ax.set_ylabel(f"avg normalized {split} accuracy")
    ax.set_title(f"{method}: λ robustness" + (" (1 seed, no CI)" if n_seeds == 1 else " (band: 95 % t over seeds)"))
    ax.legend(title="init")
    return ax


def lambda_points(results: Mapping, method: str, init: str) -> dict[float, list[float]]:
    """``{λ: [one value per seed]}`` behind :func:`lorakit.results.tables.lambda_curve` (test where recorded)."""
    points: dict[float, list[float]] = {}
    for r in results["records"]:
        if r["method"] == method and r["init"] == init:
            for c in r["curve"]:
                if "lam" in c["params"]:
                    points.setdefault(c["params"]["lam"], []).append(c.get("test_normalized", c["val_normalized"]))
    return dict(sorted(points.items()))


def per_task_heatmap(results: Mapping, ax=None):
    """Heatmap of per-task normalized test accuracy (rows: method × init, columns: tasks), mean over seeds."""
    tasks = list(results["tasks"])
    rows, labels = [], []
    for init in results["inits"]:
        for method in results["methods"]:
            recs = [r for r in results["records"] if r["method"] == method and r["init"] == init]
            if recs:
                rows.append([mean(r["normalized"][t] for r in recs) for t in tasks])
                labels.append(f"{method} ({init})")
    ax = ax or plt.subplots(figsize=(1.6 + 1.0 * len(tasks), 0.9 + 0.32 * len(rows)))[1]
    image = ax.imshow(rows, cmap="viridis", vmin=0.0, vmax=1.05, aspect="auto")
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.6 else "black")
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_title("normalized test accuracy per task")
    ax.figure.colorbar(image, ax=ax, fraction=0.04)
    return ax


def variance_vs_accuracy(results: Mapping, ax=None):
    """Magnitude variance of each (init, seed) adapter set against each method's merged normalized accuracy.

    Not among :func:`plot_results`' figures: a run has one adapter set per (init, seed), so with two
    inits and one seed this is two points, too few for a relation (notebook 03 measures it over many
    task groups instead).
    """
    ax = ax or plt.subplots(figsize=(4.6, 3.4))[1]
    stats = {(s["init"], s["seed"]): s["magnitude_variance"] for s in results.get("adapter_stats", [])}
    markers = {"standard": "o", "gaussian": "s", "osrm": "^"}
    for k, method in enumerate(results["methods"]):
        for init in results["inits"]:
            pts = [(stats[(r["init"], r["seed"])], r["avg_normalized"]) for r in results["records"]
                   if r["method"] == method and r["init"] == init and (r["init"], r["seed"]) in stats]
            if pts:
                ax.scatter(*zip(*pts), color=f"C{k}", marker=markers.get(init, "o"),
                           label=f"{method} ({init})", s=22)
    ax.set_xlabel("magnitude variance of the adapters (CV of column norms)")
    ax.set_ylabel("avg normalized accuracy")
    ax.set_title("magnitude variance vs merged accuracy")
    ax.legend(fontsize=6, ncol=2)
    return ax


def plot_results(results: Mapping, folder: str | os.PathLike) -> list[Path]:
    """Write the standard figures of a run folder; returns their paths."""
    folder = Path(folder)
    paths = []
    for name, fn in (("normalized_accuracy.png", bars_normalized), ("per_task_accuracy.png", per_task_accuracy),
                     ("lambda_curves.png", lambda_curves), ("per_task_heatmap.png", per_task_heatmap)):
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        fn(results, ax=ax)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        paths.append(folder / name)
    return paths
