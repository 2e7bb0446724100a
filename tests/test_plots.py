"""lorakit.results.plots: error bars are the bootstrap CIs of results.summary_rows, never a std of one seed."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lorakit.results import plots  # noqa: E402
from lorakit.results.tables import summary_rows  # noqa: E402
from lorakit.stats.paired import paired_t_interval  # noqa: E402
from test_results import bernoulli, lose, make_run  # noqa: E402


def run(n_seeds: int) -> dict:
    rng = np.random.default_rng(n_seeds)
    ind = {i: bernoulli(rng, 0.85, n_seeds) for i in ("standard", "osrm")}
    merged = {(m, i): lose(rng, ind[i], f) for m, f in (("task_arithmetic", 0.3), ("do", 0.1)) for i in ind}
    curves = {(m, i): [[(0.5, 0.6 + 0.01 * s + 0.1 * k), (1.0, 0.7 - 0.02 * s)] for s in range(n_seeds)]
              for k, (m, i) in enumerate(merged)}
    return make_run(merged, ind, curves=curves)


def error_bars(ax) -> list[tuple[float, float]]:
    """(low, high) of every vertical error bar drawn on ``ax``, in drawing order."""
    out = []
    for container in ax.containers:
        if getattr(container, "errorbar", None) is not None:
            for seg in container.errorbar.lines[2][0].get_segments():
                out.append((float(seg[0][1]), float(seg[1][1])))
    return out


@pytest.mark.parametrize("n_seeds", [1, 3])
def test_bars_carry_the_bootstrap_ci(n_seeds):
    res = run(n_seeds)
    fig, ax = plt.subplots()
    plots.bars_normalized(res, ax=ax)
    rows = {(r["method"], r["init"]): r for r in summary_rows(res)}
    expected = [(rows[(m, i)]["normalized_low"], rows[(m, i)]["normalized_high"])
                for i in res["inits"] for m in res["methods"]]
    assert np.allclose(error_bars(ax), expected, atol=1e-9, rtol=0)
    title = ax.get_legend().get_title().get_text()
    assert ("test examples only (n = 1 seed)" in title) == (n_seeds == 1)
    plt.close(fig)


def test_lambda_band_only_with_seeds():
    for n_seeds in (1, 3):
        res = run(n_seeds)
        fig, ax = plt.subplots()
        plots.lambda_curves(res, "task_arithmetic", ax=ax)
        bands = ax.collections
        if n_seeds == 1:
            assert not bands and "1 seed, no CI" in ax.get_title()
        else:
            assert len(bands) == 2
            values = [c["val_normalized"] for r in res["records"] if r["method"] == "task_arithmetic"
                      and r["init"] == "standard" for c in r["curve"] if c["params"]["lam"] == 0.5]
            ci = paired_t_interval(values)
            ys = bands[0].get_paths()[0].vertices[:, 1]
            assert ys.min() == pytest.approx(ci.low) and len(values) == 3
        plt.close(fig)


def test_plot_results_leaves_out_the_two_point_variance_figure(tmp_path):
    paths = plots.plot_results(run(1), tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["lambda_curves.png", "normalized_accuracy.png", "per_task_accuracy.png", "per_task_heatmap.png"]
    assert all(p.stat().st_size > 1000 for p in paths) and not (tmp_path / "variance_vs_accuracy.png").exists()
