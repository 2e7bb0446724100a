r"""Read a committed magnitude-variance study (``tools/mv_study.py``) and say what it found.

The study's JSON (:func:`lorakit.run.mv_grid.run_study` plus the tool's machine, date and command) holds
every number behind claims (a), (b), (c) of docs/methods.md §3.5. Notebook 03 prints it with the
functions here, so its prose is generated from the file and stays true when the study is re-made:

* :func:`load_mv_study` — the JSON of one profile (``data/reference/mv_study_<profile>.json``);
* :func:`full_ft_rows`, :func:`claim_a_rows`, :func:`claim_c_rows` — one dict per table row;
* :func:`mv_verdict_sentences` — one Markdown bullet per claim, effect and 95 % CI quoted.

Claim directions (the paper's): (a) merged LoRA keeps *less* normalized accuracy than merged full FT
(effect LoRA − full FT < 0); (b) LoRA's bias-free magnitude variance is *larger* (> 0); (c) a larger
magnitude variance goes with a *worse* merge (slope β < 0 with task fixed effects; Spearman ρ < 0
within each group size).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import LorakitError
from ..fsutil import checkout_data_dir

REFERENCE_DIR = checkout_data_dir() / "reference"
CLAIM_TEXT = {
    "a": "(a) merged LoRA adapters keep less normalized accuracy than merged full fine-tunes",
    "b": "(b) LoRA updates vary more in magnitude across tasks than full fine-tuning",
    "c": "(c) a larger magnitude variance goes with a worse merge (task fixed effects)",
}


def mv_study_path(profile: str = "cpu", folder: str | Path | None = None) -> Path:
    """``<folder>/mv_study_<profile>.json`` (default folder: the package's ``data/reference``)."""
    return Path(folder or REFERENCE_DIR) / f"mv_study_{profile}.json"


def load_mv_study(profile: str = "cpu", folder: str | Path | None = None) -> dict:
    """The committed study of ``profile``; a one-line LorakitError saying how to make it when absent."""
    path = mv_study_path(profile, folder)
    if not path.is_file():
        raise LorakitError(f"no magnitude-variance study at {path}; make it with "
                           f"`python tools/mv_study.py --profile {profile}` (see its docstring)")
    rec = json.loads(path.read_text())
    missing = {"claim_a", "claim_b", "claim_c", "verdicts", "full_ft"} - set(rec)
    if missing:
        raise LorakitError(f"{path} is not a magnitude-variance study (no {', '.join(sorted(missing))}); "
                           "re-make it with tools/mv_study.py")
    return rec


def full_ft_rows(rec: Mapping) -> list[dict]:
    """Per task: the full-FT lr chosen on validation, its mean val accuracy over seeds, the val
    majority rate, whether it was kept (beats majority by the margin) and whether the lr sat at the
    sweep's edge."""
    rows = []
    for task, ft in rec["full_ft"].items():
        chosen = next(runs for lr, runs in ft["runs"].items() if abs(float(lr) - ft["chosen_lr"]) <= 1e-9 * ft["chosen_lr"])
        rows.append({"task": task, "lr": ft["chosen_lr"], "val_acc": float(np.mean([r["val_acc"] for r in chosen])),
                     "test_acc": float(np.mean([r["test_acc"] for r in chosen])), "n_seeds": len(chosen),
                     "majority_val": ft["majority_val"], "kept": ft["kept"], "at_edge": ft.get("at_edge", False),
                     "lrs_tried": sorted(float(lr) for lr in ft["runs"])})
    return rows


def claim_a_rows(rec: Mapping) -> list[dict]:
    """Per merge method: mean normalized accuracy of merged LoRA and merged full FT (over seeds), the
    difference LoRA − full FT with its CI, and the verdict (paper: < 0)."""
    rows = []
    for method, a in rec["claim_a"].items():
        if not isinstance(a, Mapping) or "effect" not in a:
            continue
        per_seed = a["normalized_per_seed"]
        rows.append({"method": method, "lora": float(np.mean(per_seed["lora"])),
                     "full_ft": float(np.mean(per_seed["full_ft"])), "effect": a["effect"], "ci": a["ci"],
                     "verdict": a["verdict"], "n_seeds": len(a["seeds"])})
    return rows


def claim_c_rows(rec: Mapping) -> list[dict]:
    """Per group size: n groups, Spearman ρ with its bootstrap CI and permutation p, the verdict (paper:
    ρ < 0) and the leave-one-task-out range of ρ (the task whose removal moves ρ most, and to what)."""
    rows = []
    for size, c in rec["claim_c"]["by_size"].items():
        row = {"size": int(size), "n": c["n"], "spearman": c.get("spearman"), "ci": c.get("spearman_ci"),
               "p": c.get("spearman_p"), "verdict": c.get("verdict", "inconclusive")}
        loto = {t: v["spearman"] for t, v in (c.get("leave_one_task_out") or {}).items()
                if v.get("spearman") is not None and np.isfinite(v["spearman"])}
        if loto and row["spearman"] is not None:
            carrier = max(loto, key=lambda t: abs(loto[t] - row["spearman"]))
            row |= {"loto_min": min(loto.values()), "loto_max": max(loto.values()), "carrier": carrier,
                    "without_carrier": loto[carrier]}
        rows.append(row)
    return rows


def _ci(effect: float, ci) -> str:
    return f"{effect:+.3f}, 95 % CI [{ci[0]:+.3f}, {ci[1]:+.3f}]"


def mv_verdict_sentences(rec: Mapping) -> str:
    """Markdown bullets, one per claim: the verdict of ``rec["verdicts"]``, the effect with its CI, what was
    compared; for (a) every method; for (c) also each group size's Spearman ρ. Generated from ``rec``."""
    v = rec["verdicts"]
    lines = []
    a_rows = claim_a_rows(rec)
    if a_rows:
        per = "; ".join(f"{r['method']} {r['lora']:.3f} vs {r['full_ft']:.3f} ({_ci(r['effect'], r['ci'])}, {r['verdict']})"
                        for r in a_rows)
        lines.append(f"* {CLAIM_TEXT['a']}: **{v['a']}** over the methods (held or contradicted only if every "
                     f"method agrees). Normalized accuracy, LoRA vs full FT, LoRA − full FT: {per}.")
    else:
        lines.append(f"* {CLAIM_TEXT['a']}: **{v['a']}** ({rec['claim_a'].get('skipped', 'not run')}).")
    b = rec["claim_b"]
    if "effect" in b:
        mv = b["mv_per_seed"]
        lines.append(f"* {CLAIM_TEXT['b']}: **{v['b']}**. Pairwise magnitude variance (mean over task pairs) "
                     f"LoRA {np.mean(mv['lora']):.3f} vs full FT {np.mean(mv['full_ft']):.3f}, difference "
                     f"{_ci(b['effect'], b['ci'])} ({b['ci_method']}, {len(b['seeds'])} seeds, {len(b['tasks'])} tasks); "
                     f"over tasks: {b['over_tasks']['verdict']}.")
    else:
        lines.append(f"* {CLAIM_TEXT['b']}: **{v['b']}** ({b.get('skipped', 'not run')}).")
    c = rec["claim_c"]
    sizes = "; ".join(f"{r['size']} tasks: ρ = {r['spearman']:+.2f} [{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}] over "
                      f"{r['n']} groups ({r['verdict']})" for r in claim_c_rows(rec)
                      if r["spearman"] is not None and r["ci"] is not None)
    fe = c.get("fixed_effects")
    slope = f"slope β = {_ci(fe['slope'], fe['ci'])} per unit of magnitude variance" if fe else \
        f"no fixed-effects slope ({c.get('fixed_effects_error', 'too few groups')})"
    lines.append(f"* {CLAIM_TEXT['c']}: **{v['c']}**; {slope}. Within each group size: {sizes or 'too few groups'}.")
    return "\n".join(lines)
