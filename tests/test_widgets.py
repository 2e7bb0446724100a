"""lorakit.course.widgets: the pure grid-point selection behind the explorer, and the explorer itself."""

from __future__ import annotations

import os
import subprocess
import sys

import matplotlib
import pytest
import torch

from lorakit.errors import LorakitError
from lorakit.eval.scorer import normalized_accuracy
from lorakit.eval.correctness import mean
from lorakit.run.search import select_and_report
from lorakit.course.widgets import (
    available_splits,
    bar_data,
    best_point,
    curve_series,
    explorer_figure,
    grid_values,
    lambda_explorer,
    select_point,
)

matplotlib.use("Agg")

TASKS = ("a", "b", "c")
IND_VAL = {"a": 0.9, "b": 0.8, "c": 0.5}


def acc(lam, density=None, offset=0.0):
    """A made-up accuracy table: task a likes large λ, task c small λ, density shifts b."""
    d = density or 0.0
    return {"a": 0.5 + 0.4 * lam + offset, "b": 0.6 + 0.2 * d, "c": 0.5 - 0.2 * lam}


def make_curves():
    ties = [{"params": {"lam": lam, "density": d}, "val_accuracy": acc(lam, d)}
            for lam in (0.3, 0.6, 1.0) for d in (0.2, 0.5)]
    ta = [{"params": {"lam": lam}, "val_accuracy": acc(lam, offset=0.01)} for lam in (0.3, 0.6, 1.0)]
    dare = [{"params": {"lam": lam, "drop_rate": 0.5, "combine": "linear"}, "val_accuracy": acc(lam)} for lam in (0.5, 1.0)]
    return {"task_arithmetic": ta, "ties": ties, "dare": dare}


def test_import_needs_no_display_and_no_ipywidgets():
    code = ("import sys; sys.modules['ipywidgets'] = None\n"
            "import lorakit.course.widgets as w\n"
            "assert 'ipywidgets' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "print('ok')")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND", "WAYLAND_DISPLAY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_grid_values_is_the_sorted_union():
    curves = make_curves()
    assert grid_values(curves, "lam") == [0.3, 0.5, 0.6, 1.0]
    assert grid_values(curves, "density") == [0.2, 0.5]
    assert grid_values(curves["task_arithmetic"], "density") == []


def test_select_point_exact_nearest_and_ignored_params():
    curves = make_curves()
    p = select_point(curves["ties"], lam=0.6, density=0.5)
    assert p["params"] == {"lam": 0.6, "density": 0.5}
    # task arithmetic has no density: it is ignored, λ still picks the point
    assert select_point(curves["task_arithmetic"], lam=1.0, density=0.5)["params"] == {"lam": 1.0}
    # a λ that is not on this method's grid: the nearest one
    assert select_point(curves["dare"], lam=0.6)["params"]["lam"] == 0.5
    assert select_point(curves["ties"], lam=0.9, density=0.45)["params"] == {"lam": 1.0, "density": 0.5}
    # equal distance: first point in grid order
    tie = [{"params": {"lam": 0.25}}, {"params": {"lam": 0.75}}]  # exact in binary: equal distances
    assert select_point(tie, lam=0.5)["params"] == {"lam": 0.25}
    # None means "don't care"
    assert select_point(curves["ties"], lam=0.3, density=None)["params"]["lam"] == 0.3


def test_select_point_non_numeric_params_must_match():
    curve = [{"params": {"lam": 1.0, "combine": "linear"}}, {"params": {"lam": 0.5, "combine": "ties"}}]
    assert select_point(curve, lam=1.0, combine="ties")["params"]["combine"] == "ties"
    with pytest.raises(LorakitError, match="no grid point matches"):
        select_point(curve, combine="mean")
    with pytest.raises(LorakitError, match="empty curve"):
        select_point([], lam=1.0)


def test_bar_data_matches_normalized_accuracy_of_evaluate():
    point = make_curves()["ties"][3]
    bars = bar_data(point, IND_VAL)
    want = normalized_accuracy(point["val_accuracy"], IND_VAL)
    assert bars["tasks"] == list(TASKS)
    assert bars["normalized"] == pytest.approx([want[t] for t in TASKS])
    assert bars["avg_normalized"] == pytest.approx(mean(want.values()))
    assert bars["merged"] == pytest.approx([point["val_accuracy"][t] for t in TASKS])
    with pytest.raises(LorakitError, match="test_curve=True"):
        bar_data(point, IND_VAL, "test")


def test_curve_series_groups_by_density_and_sorts_lambda():
    curves = make_curves()
    series = curve_series(list(reversed(curves["ties"])), IND_VAL)
    assert set(series) == {0.2, 0.5}
    lams, ys = series[0.5]
    assert lams == [0.3, 0.6, 1.0]
    for lam, y in zip(lams, ys):
        assert y == pytest.approx(bar_data(select_point(curves["ties"], lam=lam, density=0.5), IND_VAL)["avg_normalized"])
    assert set(curve_series(curves["task_arithmetic"], IND_VAL)) == {None}


class TableEvaluator:
    """Stands in for lorakit.eval.encoder.Evaluator: accuracies looked up from a table by the merge params."""

    def __init__(self, table):
        self.table = table

    def score_tasks(self, deltas, adapters, split="test"):
        return dict(self.table[deltas])

    def correct_tasks(self, deltas, adapters, split="test"):
        """A one-element "correctness" per task whose mean is the table's accuracy (how test is read)."""
        return {t: torch.tensor([acc], dtype=torch.float64) for t, acc in self.table[deltas].items()}


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare"])
def test_best_point_is_the_point_select_and_report_chooses(method):
    curve = make_curves()[method]
    table = {tuple(sorted(p["params"].items())): p["val_accuracy"] for p in curve}
    rec = select_and_report(TableEvaluator(table), {t: None for t in TASKS},
                            lambda **params: tuple(sorted(params.items())),
                            [p["params"] for p in curve], IND_VAL, IND_VAL)
    assert best_point(curve, IND_VAL)["params"] == rec["params"]
    assert bar_data(best_point(curve, IND_VAL), IND_VAL)["avg_normalized"] == pytest.approx(rec["val_normalized"])


def test_available_splits():
    curves = make_curves()
    assert available_splits(curves) == ["val"]
    for curve in curves.values():
        for p in curve:
            p["test_accuracy"] = p["val_accuracy"]
    assert available_splits(curves) == ["val", "test"]
    with pytest.raises(LorakitError):
        available_splits({"ta": []})


def test_explorer_figure_draws_the_selected_point():
    import matplotlib.pyplot as plt

    curves = make_curves()
    fig = explorer_figure(curves, IND_VAL, "ties", lam=0.6, density=0.2)
    try:
        bars_ax, curve_ax = fig.axes
        heights = [p.get_height() for p in bars_ax.patches]
        bars = bar_data(select_point(curves["ties"], lam=0.6, density=0.2), IND_VAL)
        assert heights == pytest.approx(bars["individual"] + bars["merged"])
        assert len(curve_ax.lines) >= 2 + 2  # two density series, the selected marker, the best star
    finally:
        plt.close(fig)
    with pytest.raises(LorakitError, match="no curve"):
        explorer_figure(curves, IND_VAL, "knots", lam=1.0)


def test_lambda_explorer_builds_sliders_over_the_grid_and_redraws():
    import matplotlib.pyplot as plt

    ipywidgets = pytest.importorskip("ipywidgets")
    curves = make_curves()
    before = len(plt.get_fignums())
    w = lambda_explorer(curves, IND_VAL)
    assert isinstance(w, ipywidgets.interactive)
    method_w, lam_w, density_w = w.kwargs_widgets
    assert list(lam_w.options) == grid_values(curves, "lam")
    assert list(density_w.options) == [0.2, 0.5]
    assert density_w.disabled  # the first method, task arithmetic, has no density
    method_w.value = "ties"
    assert not density_w.disabled
    lam_w.value = 0.3
    density_w.value = 0.5
    assert w.kwargs == {"method": "ties", "lam": 0.3, "density": 0.5}
    assert len(plt.get_fignums()) == before  # every redraw closes its figure
    with pytest.raises(LorakitError, match="test"):
        lambda_explorer(curves, IND_VAL, split="test")
