"""``lorakit diagnose``: look at N PEFT LoRA adapters before merging them (:mod:`lorakit.adapters.diagnose`).

::

    lorakit diagnose ADAPTER_DIR... [--json FILE] [--figure FILE.png] [--top K] [--no-progress]

Prints the overall numbers (norms, magnitude variance, ΔW cosines, A-subspace overlap, the
data-free interference estimate), the pairs, the ``--top`` most extreme layers and a short
verdict with its reason. ``--json`` writes everything, per layer; ``--figure`` a PNG. Both are
written atomically. Bad input (a missing folder, a single adapter, other base models or target
modules, NaN) is one line ``error: ...`` and status 2, as in ``lorakit merge``.
"""

from __future__ import annotations

import argparse
import json
from typing import Sequence

import numpy as np

from ..adapters.diagnose import SHARED_A, SHARED_A_COSINE, Diagnosis, diagnose_folders, diagnosis_figure
from ..errors import LorakitError
from ..fsutil import atomic_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``diagnose`` and its options to the ``lorakit`` subparsers."""
    p = sub.add_parser("diagnose", help="diagnose PEFT adapters before merging: norms, magnitude variance, "
                                        "cosines, A overlap, interference, and which method the numbers favour")
    p.add_argument("adapters", nargs="*", help="PEFT adapter folders (at least 2)")
    p.add_argument("--json", dest="json_out", metavar="FILE", help="write every number, per layer, to FILE")
    p.add_argument("--figure", metavar="FILE.png", help="write a figure (norms per layer, cosine/overlap matrices)")
    p.add_argument("--top", type=int, default=3, help="how many of the most extreme layers to list (default 3)")
    p.add_argument("--no-progress", action="store_true", help="hide the per-layer progress bar")
    p.set_defaults(func=run_diagnose)


def _row(values: Sequence[float], fmt: str = "{:.3f}") -> str:
    return "  ".join(fmt.format(v) for v in values)


def _offdiag(m) -> float:
    m = np.asarray(m)
    return float(m[~np.eye(len(m), dtype=bool)].mean())


def extreme_layers(d: Diagnosis, top: int) -> list:
    """The union of the ``top`` layers by pairwise magnitude variance, A overlap and interference."""
    keys = (lambda lay: lay.magnitude_variance_pairwise["column_in"], lambda lay: _offdiag(lay.a_overlap),
            lambda lay: float(np.mean(lay.to_dict()["interference_total"])))
    picked: list = []
    for key in keys:
        for lay in sorted(d.layers, key=key, reverse=True)[:top]:
            if lay not in picked:
                picked.append(lay)
    return picked


def format_report(d: Diagnosis, top: int = 3) -> str:
    """The table printed on stdout."""
    o = d.overall
    n = len(d.names)
    lines = [f"diagnosis of {n} adapters, {len(d.layers)} layers (from the factors, float64)"]
    lines += [f"  #{i}  {name}" for i, name in enumerate(d.names)]
    mv, mvp = o["magnitude_variance"], o["magnitude_variance_pairwise"]
    overlap = "n/a (A spans d_in)" if o["a_overlap_mean"] is None else (
        f"{o['a_overlap_mean']:.3f}  (random subspaces ~{o['a_overlap_random']:.3f})")
    shared = ", ".join(f"#{i}-#{j}" for i, j, *_ in o["shared_init_pairs"]) or "none"
    lines += [
        "overall",
        f"  ‖ΔW‖_F                  {_row(o['norm'])}",
        "  magnitude variance      " + "  ".join(f"{k} {mv[k]:.3f}" for k in mv) + "   (notebook 03 (3.2))",
        "    pairwise, bias-free   " + "  ".join(f"{k} {mvp[k]:.3f}" for k in mvp) + "   (mean over pairs)",
        f"  cosine of ΔW (mean)     {o['cosine_mean']:+.3f}",
        f"  A overlap (mean)        {overlap}",
        f"  shared initial A        {shared}   (a pair with A cosine >= {SHARED_A_COSINE} or A overlap >= {SHARED_A})",
        f"  interference (est.)     {_row(o['interference_total'])}   (per task: ‖Σ_j≠i ΔW_j P_i‖² / ‖ΔW_i‖², no data)",
        "pairs        cosine  A overlap  A cosine  share i←j  share j←i",
    ]
    for i in range(n):
        for j in range(i + 1, n):
            lines.append(f"  #{i}-#{j}      {o['cosine'][i][j]:+.3f}     {o['a_overlap'][i][j]:.3f}    "
                         f"{o['a_cosine'][i][j]:+.3f}      {o['energy_share'][i][j]:.3f}      {o['energy_share'][j][i]:.3f}")
    width = max([len(lay.name) for lay in d.layers] + [5])
    lines.append(f"layers: the top {top} by MV, A overlap, interference".ljust(width + 2)
                 + "  MV pairwise  A overlap  cosine  interference  ‖ΔW‖_F")
    for lay in extreme_layers(d, max(top, 0)):
        row = lay.to_dict()
        lines.append(f"  {lay.name:<{width}}  {lay.magnitude_variance_pairwise['column_in']:11.3f}  "
                     f"{row['a_overlap_mean']:9.3f}  {_offdiag(row['cosine']):+6.3f}  "
                     f"{float(np.mean(row['interference_total'])):12.3f}  {_row(lay.norm, '{:.2f}')}")
    lines += ["verdict", *("  " + line for line in d.verdict.text().splitlines())]
    return "\n".join(lines)


def run_diagnose(args: argparse.Namespace) -> int:
    """``lorakit diagnose``: read, check, diagnose, print; then the JSON and the figure."""
    if args.figure and not str(args.figure).lower().endswith(".png"):
        raise LorakitError(f"--figure writes a PNG; give a file name ending in .png, got {args.figure!r}")
    if args.top < 0:
        raise LorakitError(f"--top must be >= 0, got {args.top}")
    d = diagnose_folders(args.adapters, progress=False if args.no_progress else None)
    print(format_report(d, args.top))
    if args.json_out:
        with atomic_file(args.json_out) as tmp:
            tmp.write_text(json.dumps(d.to_dict(), indent=1, ensure_ascii=False))
        print(f"wrote {args.json_out}")
    if args.figure:
        fig = diagnosis_figure(d)
        with atomic_file(args.figure) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        print(f"wrote {args.figure}")
    return 0
