"""Reference run of notebook 03's analysis (sections 3 and 4) in one profile, written to JSON.

For every task of the profile it trains (or loads from the cache) a LoRA adapter and a full
fine-tuning of the same target modules, then for each family:

* the magnitude variance of all tasks (axis "in", axis "out", Frobenius) and ‖ΔW‖_F per task;
* for every group of 2 and 3 tasks: the magnitude variance of the group and the task-arithmetic
  normalized test accuracy with λ chosen on validation from the profile's grid;
* Pearson and Spearman correlations over the groups (per family and pooled).

The notebook reads ``data/reference/magnitude_variance_<profile>.json`` and shows it beside its
live run. The cpu profile needs, by our estimate from timing its evaluations, over an hour of one
core (mostly evaluating merged models; ``--lora-only`` saves about half)::

    LORAKIT_PROFILE=cpu OMP_NUM_THREADS=1 LORAKIT_THREADS=1 .venv/bin/python tools/reference_magnitude_variance.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV_KEYS = ("LORAKIT_PROFILE", "LORAKIT_THREADS", "OMP_NUM_THREADS")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the platform's processor string."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None, help="profile name (default: LORAKIT_PROFILE, else cpu)")
    ap.add_argument("--out", default=None, help="JSON path (default: data/reference/magnitude_variance_<profile>.json)")
    ap.add_argument("--lora-only", action="store_true", help="skip the full fine-tuning groups (halves the time)")
    args = ap.parse_args()

    import torch

    from lorakit.analysis import magnitude_variance
    from lorakit.correlation import group_correlation
    from lorakit.benchmark import machine_description, method_grid
    from lorakit.evaluate import Evaluator, select_and_report
    from lorakit.merge import merge_adapters
    from lorakit.profiles import apply_threads, get_profile
    from lorakit.train import train_adapter, train_full

    t_start = time.perf_counter()
    p = get_profile(args.profile or os.environ.get("LORAKIT_PROFILE") or "cpu")
    apply_threads(p)
    tasks = list(p.tasks)
    out = Path(args.out) if args.out else ROOT / "data" / "reference" / f"magnitude_variance_{p.name}.json"

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.0f} s] {msg}", flush=True)

    families = {"LoRA": {}, "full FT": {}}
    for t in tasks:
        families["LoRA"][t] = train_adapter(t, p, progress=False)
        families["full FT"][t] = train_full(t, p, progress=False)
        log(f"trained {t}: LoRA {families['LoRA'][t].metrics['test_acc']:.3f}, "
            f"full FT {families['full FT'][t].metrics['test_acc']:.3f}, majority {families['LoRA'][t].metrics['majority_test']:.3f}")
    train_seconds = time.perf_counter() - t_start

    def total_norm(adapter) -> float:
        return float(sum(u.delta(torch.float64).norm() ** 2 for u in adapter.updates.values()) ** 0.5)

    record: dict = {
        "profile": p.name,
        "tasks": tasks,
        "individual": {fam: {t: {"test_acc": ads[t].metrics["test_acc"], "majority_test": ads[t].metrics["majority_test"],
                                 "train_seconds": ads[t].metrics["seconds"]} for t in tasks}
                       for fam, ads in families.items()},
        "norms": {fam: {t: total_norm(ads[t]) for t in tasks} for fam, ads in families.items()},
        "magnitude_variance": {
            fam: {"column_in": magnitude_variance([ads[t].updates for t in tasks], axis="in"),
                  "column_out": magnitude_variance([ads[t].updates for t in tasks], axis="out"),
                  "frobenius": magnitude_variance([ads[t].updates for t in tasks], kind="frobenius")}
            for fam, ads in families.items()},
    }

    ev = Evaluator(tasks, p)
    grid = method_grid("task_arithmetic", p)
    groups = [g for k in (2, 3) for g in combinations(tasks, k)]
    points = []
    for fam, ads in families.items():
        if args.lora_only and fam != "LoRA":
            continue
        ind_val, ind_test = ev.individual(ads, "val"), ev.individual(ads, "test")
        for g in groups:
            updates = [ads[t].updates for t in g]
            rec = select_and_report(ev, {t: ads[t] for t in g},
                                    lambda lam: merge_adapters(updates, "task_arithmetic", lam=lam),
                                    grid, ind_val, ind_test)
            points.append({"family": fam, "group": list(g), "mv": magnitude_variance(updates),
                           "normalized": rec["avg_normalized"], "lam": rec["params"]["lam"],
                           "accuracy": rec["accuracy"]})
            log(f"{fam:>7} {' + '.join(g)}: MV {points[-1]['mv']:.4f}, normalized {points[-1]['normalized']:.3f}")

    def corr(pts):
        return group_correlation([q["mv"] for q in pts], [q["normalized"] for q in pts])

    fams = [f for f in families if any(q["family"] == f for q in points)]
    record["correlation"] = {f: corr([q for q in points if q["family"] == f]) for f in fams}
    if len(fams) > 1:
        record["correlation"]["pooled"] = corr(points)
    env = " ".join(f"{k}={shlex.quote(os.environ[k])}" for k in ENV_KEYS if k in os.environ)
    record |= {
        "groups": points,
        "lam_grid": [g["lam"] for g in grid],
        "machine": machine_description(p.device) | {"cpu_model": cpu_model()},
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(filter(None, [env, "python", *map(shlex.quote, sys.argv)])),
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, out)
    log(f"wrote {out}")
    for name, c in record["correlation"].items():
        log(f"{name}: n {c['n']}, Pearson {c['pearson']:+.3f} (p {c['pearson_p']:.3f}), "
            f"Spearman {c['spearman']:+.3f} (p {c['spearman_p']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
