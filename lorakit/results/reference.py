"""Committed reference runs (``data/reference/``) and the paper-claim check of notebook 06.

A reference run folder holds what ``lorakit run`` wrote (``results.json``, ``results.md``,
figures) plus a ``RUN.md`` naming machine, date, versions and command. :func:`claims_report`
turns one run's numbers into one row per paper claim, with effect, 95 % CI, p-value, Holm-adjusted
p and a three-valued verdict (:mod:`lorakit.results.claims` says how each is made), so the notebook's
discussion is computed from the data rather than typed by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from .claims import (
    DO_PAPER, OSRM_PAPER, ClaimsReport, Options, apply_holm, difference_row, equivalence_row, spread_row, variant_pairs,
)
from ..errors import LorakitError
from ..fsutil import checkout_data_dir
from .metrics import can_bootstrap, check_metric
from .tables import load_results, summary_rows
from ..eval.correctness import mean


def reference_dir() -> Path:
    """``data/reference`` of the source tree."""
    return checkout_data_dir() / "reference"


def reference_runs(folder: str | Path | None = None) -> dict[str, Path]:
    """``{run folder name: path}`` of every committed run (folders holding a ``results.json``), sorted."""
    folder = Path(folder) if folder else reference_dir()
    runs = {p.parent.name: p.parent for p in sorted(folder.glob("*/results.json"))}
    if not runs:
        raise LorakitError(f"no reference runs under {folder}; make one with `lorakit run --out {folder}/NAME`")
    return runs


def replicated_reference(folder: str | Path | None = None) -> tuple[str, dict]:
    """(name, results) of the committed run the notebooks quote: a ``gpu`` run if any, else ``cpu``;
    then per-task seeds, then the most seeds, then the newest folder name.

    A one-line LorakitError when no cpu or gpu run is committed.
    """
    runs = {name: load_results(path) for name, path in reference_runs(folder).items()}
    full = {n: r for n, r in runs.items() if r.get("profile") in ("gpu", "cpu")}
    if not full:
        raise LorakitError("no cpu or gpu reference run under data/reference; make one with `make run` and "
                           "commit its folder")
    name = max(full, key=lambda n: (full[n]["profile"] == "gpu", run_setting(full[n], "task_seeds", "shared") == "per_task",
                                    len(full[n]["seeds"]), n))
    return name, full[name]


def mean_individual(results: Mapping, init: str) -> float | None:
    """Mean test accuracy of the single-task adapters trained with ``init`` (over tasks and seeds)."""
    values = [r["test"] for info in results["tasks"].values() for r in info["individual"] if r["init"] == init]
    return mean(values) if values else None


def claims_report(results: Mapping, tolerance_pp: float = 1.0, *, metric: str = "normalized",
                  level: float = 0.95, n_resamples: int = 10_000, seed: int = 0,
                  osrm_inits: tuple[str, ...] = ("osrm",), adjust: bool = True,
                  do_claims: bool = True) -> ClaimsReport:
    """Check the papers' benchmark claims against one run's ``results.json``: one :class:`ClaimRow` each.

    * (i) each DO-Merging variant beats its base, standard init (:func:`variant_pairs`);
    * (ii) ``do`` beats ``ta_normeq`` (norm-equalized task arithmetic) when the run has it: is DO's
      gain more than equalizing the task vectors' magnitudes?
    * (iii) per method, each init in ``osrm_inits`` beats ``standard``;
    * (iv) … and beats the scale-matched ``random_orthonormal`` init, and the official OSRM code's
      baseline LoRA init ``gaussian`` (peft's ``N(0, 1/r²)``), when the run has them; a variant of
      OSRM in ``osrm_inits`` (``osrm_task_mean``: the official code's one mean feature per task;
      ``osrm_frozen``: ``A`` not trained) is also compared with the default ``osrm``. Pass the
      variants in their own report (``osrm_inits=("osrm_task_mean", "osrm_frozen")``): Holm's
      family is then the controls, not the papers' claims;
    * (v) it keeps single-task accuracy: equivalence within ±``tolerance_pp`` points (TOST);
    * (vi) it flattens the task-arithmetic λ curve (CI over seeds; one seed → inconclusive).

    ``metric``: ``normalized`` (default, the DO-Merging paper's), ``accuracy`` (the OSRM paper's kind)
    or ``floor_adjusted`` (runs with a head-only floor). CI and p: paired bootstrap over seeds × test
    examples with ``n_resamples`` draws from ``seed``; ``do_claims=False`` leaves out (i) and (ii) (a
    report of OSRM's variants alone); ``adjust``: Holm across all claims of the report
    (a held/contradicted verdict with Holm p ≥ 1 − ``level`` becomes inconclusive). Claims whose
    methods or inits are not in the run are skipped; caveats (λ at a grid edge) follow the rows.
    """
    opts = Options(check_metric(metric), level, n_resamples, seed)
    if not can_bootstrap(results):
        raise LorakitError("claims need results['tasks'] with n_test and individual scores; pass a whole "
                           "results.json (lorakit.results.tables.load_results)")
    inits, methods = list(results["inits"]), list(results["methods"])
    rows = []
    if "standard" in inits and do_claims:
        for do, base in variant_pairs(methods).items():
            if base in methods:
                rows.append(difference_row(results, f"DO-Merging ({do}) beats {base}", DO_PAPER,
                                           (do, "standard"), (base, "standard"), opts))
        if {"do", "ta_normeq"} <= set(methods):
            rows.append(difference_row(results, "DO-Merging (do) beats the norm-equalized control ta_normeq",
                                       "control: DO's gain is more than equal task-vector norms", ("do", "standard"),
                                       ("ta_normeq", "standard"), opts))
    for init in (i for i in osrm_inits if i in inits):
        label = "OSRM" if init == "osrm" else f"OSRM ({init})"
        bases = [("standard", "raises merged accuracy"),
                 ("random_orthonormal", "beats the scale-matched random_orthonormal init"),
                 ("gaussian", "beats the official code's gaussian LoRA init")]
        if init != "osrm":
            bases.append(("osrm", "beats the default OSRM (per-token features, A trained)"))
        for base, claim in bases:
            if base in inits:
                rows += [difference_row(results, f"{label} {claim} ({m})", OSRM_PAPER, (m, init), (m, base), opts)
                         for m in methods]
        if "standard" in inits:
            rows.append(equivalence_row(results, init, "standard", tolerance_pp, opts, label))
            if "task_arithmetic" in methods:
                rows.append(spread_row(results, init, "standard", opts, label))
    report = ClaimsReport([r for r in rows if r is not None])
    apply_holm(report.rows, 1.0 - level, adjust)
    report.caveats += _caveats(results, report, metric)
    return report


def _caveats(results: Mapping, report: ClaimsReport, metric: str) -> list[str]:
    out = []
    edge = grid_edge_choices(results)
    if edge:
        out.append("caveat: λ was chosen at the edge of the grid for " + ", ".join(edge)
                   + " — their best λ may lie outside it, so those methods may be under-tuned in this run")
    if run_setting(results, "task_seeds") == "shared":
        out.append("note: task_seeds = shared: adapters of tasks with the same label count start from the same A, "
                   "which favours DO-Merging's orthogonalisation (notebook 06 compares a per_task run)")
    if metric == "normalized" and any(r.claim.startswith("OSRM") for r in report.rows):
        out.append("note: normalized accuracy divides by each init's own single-task accuracy; the OSRM paper "
                   "reports absolute accuracy (claims_report(..., metric='accuracy'), and the metrics table)")
    return out


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
    tables = {label: {(r["method"], r["init"]): r["normalized_mean"] for r in summary_rows(res, ci=False)}
              for label, res in runs.items()}
    keys = list(dict.fromkeys(k for table in tables.values() for k in table))
    return [{"method": m, "init": i, **{label: table.get((m, i)) for label, table in tables.items()}} for m, i in keys]


def run_setting(results: Mapping, key: str, default=None):
    """One profile setting of a run (``task_seeds``, ``lam_grid``, ...), ``default`` for runs made before it existed."""
    return results.get("profile_config", {}).get(key, default)
