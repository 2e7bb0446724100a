"""Committed reference runs (``data/reference/``) and the paper-claim check of notebook 06.

A reference run folder holds what ``lorakit run`` wrote (``results.json``, ``results.md``,
figures) plus a ``RUN.md`` naming machine, date, versions and command. :func:`claims_report`
turns one run's numbers into one line per paper claim, so the notebook's discussion is computed
from the data rather than typed by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from .errors import LorakitError
from .merge import METHODS, resolve_variant, variant_base
from .results import lambda_curve, mean, summary_rows


def variant_pairs(methods: Sequence[str]) -> dict[str, str]:
    """DO-Merging variant → the base method it must beat (same direction merge, no decoupling).

    Read from the merge registry: every name in ``methods`` that selects a method with
    ``variants`` (``do``, ``do_ties``, …) is paired with its base (``task_arithmetic``, ``ties``, …).
    """
    return {name: variant_base(name) for name in methods if METHODS[resolve_variant(name)[0]].variants}


def reference_dir() -> Path:
    """``data/reference`` of the source tree."""
    return Path(__file__).resolve().parents[1] / "data" / "reference"


def reference_runs(folder: str | Path | None = None) -> dict[str, Path]:
    """``{run folder name: path}`` of every committed run (folders holding a ``results.json``), sorted."""
    folder = Path(folder) if folder else reference_dir()
    runs = {p.parent.name: p.parent for p in sorted(folder.glob("*/results.json"))}
    if not runs:
        raise LorakitError(f"no reference runs under {folder}; make one with `lorakit run --out {folder}/NAME`")
    return runs


def _curve_spread(curve: Mapping[float, float], lams) -> float | None:
    """max − min of a λ curve (:func:`lambda_curve`) over the λ in ``lams`` (None with fewer than two)."""
    values = [v for lam, v in curve.items() if lam in lams]
    return max(values) - min(values) if len(values) >= 2 else None


def mean_individual(results: Mapping, init: str) -> float | None:
    """Mean test accuracy of the single-task adapters trained with ``init`` (over tasks and seeds)."""
    values = [r["test"] for info in results["tasks"].values() for r in info["individual"] if r["init"] == init]
    return mean(values) if values else None


@dataclass
class ClaimsReport:
    """One line per checked claim, plus the verdicts as data (``(claim, held: bool)``)."""

    lines: list[str] = field(default_factory=list)
    verdicts: list[tuple[str, bool]] = field(default_factory=list)

    def add(self, claim: str, detail: str, held: bool) -> None:
        self.verdicts.append((claim, held))
        self.lines.append(f"[{'held' if held else 'did not hold'}] {claim}: {detail}")


def claims_report(results: Mapping, tolerance_pp: float = 1.0) -> ClaimsReport:
    """Check the papers' benchmark claims against one run's ``results.json``.

    * DO-Merging beats its base method (standard init): ``do`` vs ``task_arithmetic``,
      ``do_ties`` vs ``ties``, ``do_dare`` vs ``dare`` — held if its normalized accuracy is higher.
    * OSRM raises merged accuracy: per method, ``osrm`` vs ``standard`` — held if higher.
    * OSRM leaves single-task accuracy nearly unchanged: held if the mean individual accuracy
      drops by at most ``tolerance_pp`` percentage points.
    * OSRM flattens the λ curve (task arithmetic): held if the curve's max − min is smaller.

    Claims whose methods or inits are not in the run are skipped.
    """
    report = ClaimsReport()
    inits, methods = set(results["inits"]), set(results["methods"])
    normalized = {(row["method"], row["init"]): row["normalized_mean"] for row in summary_rows(results)}

    if "standard" in inits:
        for do, base in variant_pairs(results["methods"]).items():
            if do in methods and base in methods:
                a, b = normalized.get((do, "standard")), normalized.get((base, "standard"))
                report.add(f"DO-Merging ({do}) beats {base}", f"normalized {a:.3f} vs {b:.3f} (standard init)", a > b)
    if {"standard", "osrm"} <= inits:
        for method in results["methods"]:
            a, b = normalized.get((method, "osrm")), normalized.get((method, "standard"))
            if a is not None and b is not None:
                report.add(f"OSRM raises merged accuracy ({method})", f"normalized {a:.3f} vs {b:.3f} standard", a > b)
        io, ist = mean_individual(results, "osrm"), mean_individual(results, "standard")
        if io is not None and ist is not None:
            diff = 100 * (io - ist)
            report.add("OSRM keeps single-task accuracy", f"mean individual accuracy {io:.3f} vs {ist:.3f} "
                       f"({diff:+.1f} pp; tolerance −{tolerance_pp:g} pp)", diff >= -tolerance_pp)
        if "task_arithmetic" in methods:
            # over the λ both curves tried (edge extensions may add different points to each)
            curve_o = lambda_curve(results, "task_arithmetic", "osrm")
            curve_s = lambda_curve(results, "task_arithmetic", "standard")
            common = curve_o.keys() & curve_s.keys()
            so, ss = _curve_spread(curve_o, common), _curve_spread(curve_s, common)
            if so is not None and ss is not None:
                report.add("OSRM flattens the λ curve (task arithmetic)",
                           f"max − min of normalized accuracy over λ in [{min(common):g}, {max(common):g}] "
                           f"{so:.3f} vs {ss:.3f} standard", so < ss)
    edge = grid_edge_choices(results)
    if edge:
        report.lines.append(
            "caveat: λ was chosen at the edge of the grid for " + ", ".join(edge)
            + " — their best λ may lie outside it, so those methods may be under-tuned in this run"
        )
    if not report.lines:
        report.lines.append("no claim could be checked: the run lacks the methods or inits they compare")
    return report


def grid_edge_choices(results: Mapping) -> list[str]:
    """``"method (init)"`` for every record whose chosen λ is the smallest or largest λ its curve tried."""
    found = []
    for r in results["records"]:
        lams = sorted({c["params"]["lam"] for c in r["curve"] if "lam" in c["params"]})
        chosen = r.get("params", {}).get("lam")
        if len(lams) > 2 and chosen in (lams[0], lams[-1]):
            label = f"{r['method']} ({r['init']}, λ={chosen:g})"
            if label not in found:
                found.append(label)
    return found


def compare_runs(runs: Mapping[str, Mapping]) -> list[dict]:
    """Normalized accuracy of every (method, init) side by side across runs (``{label: results}``).

    Rows ``{"method", "init", <label>: mean normalized or None, ...}`` in the first run's order, for
    the (method, init) pairs any run holds. Used to put a run beside a variant of itself (e.g.
    ``--task-seeds per_task``) with the numbers taken from each run's own records.
    """
    if not runs:
        raise LorakitError("compare_runs needs at least one run")
    tables = {label: {(r["method"], r["init"]): r["normalized_mean"] for r in summary_rows(res)}
              for label, res in runs.items()}
    keys = list(dict.fromkeys(k for table in tables.values() for k in table))
    return [{"method": m, "init": i, **{label: table.get((m, i)) for label, table in tables.items()}} for m, i in keys]


def run_setting(results: Mapping, key: str, default=None):
    """One profile setting of a run (``task_seeds``, ``lam_grid``, ...), ``default`` for runs made before it existed."""
    return results.get("profile_config", {}).get(key, default)
