r"""Interactive explorers for the notebooks (ipywidgets), and the pure functions behind them.

An explorer shows results that were computed beforehand, so moving a slider is instant. Its input
is a *curve* per merge method, in the format :func:`lorakit.run.search.select_and_report` returns
under ``"curve"``: a list of grid points

.. code-block:: python

    {"params": {"lam": 0.5, "density": 0.2},               # the merge hyperparameters
     "val_accuracy": {task: acc, ...}, "val_normalized": float,
     "test_accuracy": {...}, "test_normalized": float}      # test_* only with test_curve=True

and the normalizer (each task's own adapter's accuracy on the same split). For task :math:`t` at a
grid point the explorer shows :math:`\text{acc}_t(\text{merged})` next to
:math:`\text{acc}_t(\text{individual})`, and the average normalized accuracy
:math:`\frac1T \sum_t \text{acc}_t(\text{merged}) / \text{acc}_t(\text{individual})` against λ.

Importing this module needs neither a display nor ipywidgets: matplotlib and ipywidgets are
imported inside the functions that draw.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ..errors import LorakitError

Point = Mapping[str, Any]
Curve = Sequence[Point]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def available_splits(curves: Mapping[str, Curve]) -> list[str]:
    """The splits (``"val"``, ``"test"``) that every point of every curve carries accuracies for."""
    points = [p for curve in curves.values() for p in curve]
    if not points:
        raise LorakitError("the curves hold no grid points; pass select_and_report(...)['curve'] per method")
    return [s for s in ("val", "test") if all(f"{s}_accuracy" in p for p in points)]


def grid_values(curves: Mapping[str, Curve] | Curve, name: str) -> list:
    """The sorted distinct values that hyperparameter ``name`` takes over the grid points.

    ``curves`` is one curve or ``{method: curve}``; points without ``name`` are skipped.
    """
    curve_list = list(curves.values()) if isinstance(curves, Mapping) else [curves]
    values = {p["params"][name] for curve in curve_list for p in curve if name in p["params"]}
    return sorted(values)


def select_point(curve: Curve, **wanted: Any) -> Point:
    r"""The grid point of ``curve`` closest to the ``wanted`` hyperparameters.

    Only the hyperparameters a point has are compared (``density`` is ignored for task
    arithmetic). The distance is :math:`\sum_k |p_k - w_k|` over numeric hyperparameters; a
    non-numeric one (``combine="ties"``) must match exactly. An exact match always wins; on ties
    the first point in grid order is returned.
    """
    if not curve:
        raise LorakitError("empty curve: no grid points to choose from")
    best, best_distance = None, math.inf
    for point in curve:
        params = point["params"]
        distance = 0.0
        for name, value in wanted.items():
            if name not in params or value is None:
                continue
            have = params[name]
            if _is_number(have) and _is_number(value):
                distance += abs(float(have) - float(value))
            elif have != value:
                distance = math.inf
                break
        if distance < best_distance:
            best, best_distance = point, distance
    if best is None:
        raise LorakitError(f"no grid point matches {wanted}; the curve's points have {[dict(p['params']) for p in curve]}")
    return best


def bar_data(point: Point, individual: Mapping[str, float], split: str = "val") -> dict:
    """What the bar chart shows at one grid point, per task (in ``individual``'s order).

    Returns ``{"tasks", "merged", "individual", "normalized", "avg_normalized"}``: merged and
    individual accuracy, their ratio per task, and the mean ratio.
    """
    key = f"{split}_accuracy"
    if key not in point:
        raise LorakitError(f"this grid point has no {split} accuracies; run select_and_report with test_curve=True "
                           "for test curves, or use split='val'")
    tasks = list(individual)
    merged = [float(point[key][t]) for t in tasks]
    ind = [float(individual[t]) for t in tasks]
    normalized = [m / i if i else float("nan") for m, i in zip(merged, ind)]
    finite = [v for v in normalized if v == v]
    return {"tasks": tasks, "merged": merged, "individual": ind, "normalized": normalized,
            "avg_normalized": sum(finite) / len(finite) if finite else float("nan")}


def curve_series(curve: Curve, individual: Mapping[str, float], split: str = "val",
                 x: str = "lam", by: str | None = "density") -> dict:
    """Average normalized accuracy against hyperparameter ``x``, one series per value of ``by``.

    Returns ``{by_value_or_None: (xs, ys)}`` with ``xs`` sorted; normalized with ``individual``
    (so the numbers equal :func:`bar_data`'s ``avg_normalized`` at each point).
    """
    series: dict[Any, list[tuple[float, float]]] = {}
    for point in curve:
        params = point["params"]
        if x not in params:
            continue
        group = params.get(by) if by else None
        series.setdefault(group, []).append((params[x], bar_data(point, individual, split)["avg_normalized"]))
    return {g: tuple(map(list, zip(*sorted(pts)))) for g, pts in series.items()}


def best_point(curve: Curve, individual: Mapping[str, float], split: str = "val") -> Point:
    """The grid point of highest average normalized accuracy on ``split`` (first one on ties)."""
    scores = [bar_data(p, individual, split)["avg_normalized"] for p in curve]
    return curve[max(range(len(curve)), key=lambda k: (scores[k], -k))]


def explorer_figure(curves: Mapping[str, Curve], individual: Mapping[str, float], method: str,
                    lam: float, density: float | None = None, split: str = "val"):
    """Two panels at the chosen grid point: accuracy per task (merged vs individual), and the λ curve.

    The right panel draws the average normalized accuracy against λ (one line per density for
    methods that have one), marks the selected point (●) and the best point on ``split`` (★).
    Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt  # lazy: importing lorakit.course.widgets needs no display (module docstring)

    if method not in curves:
        raise LorakitError(f"no curve for method {method!r}; have {', '.join(curves)}")
    curve = curves[method]
    point = select_point(curve, lam=lam, density=density)
    bars = bar_data(point, individual, split)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [3, 2]})
    xs = range(len(bars["tasks"]))
    ax.bar([x - 0.2 for x in xs], bars["individual"], 0.4, color="0.75", label="individual adapter")
    ax.bar([x + 0.2 for x in xs], bars["merged"], 0.4, color="C0", label="merged (number: merged ÷ individual)")
    for x, m, n in zip(xs, bars["merged"], bars["normalized"]):
        ax.text(x + 0.2, m + 0.02, f"{n:.2f}", ha="center", fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(bars["tasks"], fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel(f"{split} accuracy")
    shown = ", ".join(f"{k}={v}" for k, v in point["params"].items() if k in ("lam", "density", "drop_rate"))
    ax.set_title(f"{method} ({shown}): avg normalized {bars['avg_normalized']:.3f}", fontsize=9)
    ax.legend(loc="lower left", fontsize=7)
    series = curve_series(curve, individual, split)
    for group, (lams, ys) in sorted(series.items(), key=lambda kv: (kv[0] is None, kv[0])):
        ax2.plot(lams, ys, "o-", ms=4, label=f"density {group}" if group is not None else method)
    ax2.plot([point["params"]["lam"]], [bars["avg_normalized"]], "o", ms=11, mfc="none", mec="k", label="selected")
    best = best_point(curve, individual, split)
    ax2.plot([best["params"]["lam"]], [bar_data(best, individual, split)["avg_normalized"]], "*", ms=12,
             color="C3", label=f"best on {split}")
    ax2.axhline(1.0, color="k", lw=0.8, ls=":")
    ax2.set_xlabel("λ")
    ax2.set_ylabel(f"avg normalized ({split})")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig


def lambda_explorer(curves: Mapping[str, Curve], individual: Mapping[str, float], split: str = "val"):
    """An ipywidgets ``interactive``: a method menu and sliders over λ and density that redraw
    :func:`explorer_figure` from the precomputed ``curves`` (nothing is re-evaluated).

    The density slider applies to the methods whose grid points have a ``density`` and is
    disabled for the others. Needs ipywidgets (``pip install 'lorakit[notebooks]'``).
    """
    try:
        import ipywidgets as widgets  # lazy and optional: the notebooks extra
    except ImportError:  # pragma: no cover - ipywidgets is in the notebooks extra
        raise LorakitError("the explorer needs ipywidgets: pip install 'lorakit[notebooks]'") from None
    if split not in available_splits(curves):
        raise LorakitError(f"the curves have no {split} accuracies at every point; use one of {available_splits(curves)}")
    lams = grid_values(curves, "lam")
    if not lams:
        raise LorakitError("the curves have no 'lam' hyperparameter to put on a slider")
    densities = grid_values(curves, "density") or [None]
    methods = list(curves)
    method_w = widgets.Dropdown(options=methods, value=methods[0], description="method")
    lam_w = widgets.SelectionSlider(options=lams, value=lams[-1], description="λ", continuous_update=False)
    density_w = widgets.SelectionSlider(options=densities, value=densities[0], description="density",
                                        continuous_update=False)

    def _sync(_=None) -> None:
        density_w.disabled = not grid_values(curves[method_w.value], "density")

    method_w.observe(_sync, names="value")
    _sync()

    def draw(method: str, lam: float, density: float | None):
        import matplotlib.pyplot as plt  # lazy, as in explorer_figure

        fig = explorer_figure(curves, individual, method, lam, density, split)
        try:
            from IPython.display import display  # lazy: only inside a notebook kernel

            display(fig)
        finally:
            plt.close(fig)

    return widgets.interactive(draw, method=method_w, lam=lam_w, density=density_w)
