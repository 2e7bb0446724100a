"""The magnitude-variance claims (a), (b), (c) for one profile, tasks and seeds, written to one JSON.

(a) merged full-FT task vectors vs merged LoRA adapters (normalized accuracy, paired bootstrap over
seeds × examples); (b) the bias-free (pairwise) magnitude variance of LoRA vs full FT; (c) every
group of 2 and 3 tasks: magnitude variance vs merged accuracy, per group size, leave-one-task-out
and with task fixed effects. Each claim gets a CI and a verdict (held / contradicted / inconclusive).
Full fine-tuning is tuned per task over a small lr sweep and a task is excluded (and recorded) when
it does not beat the majority class by 10 points on validation. See lorakit/mv_run.py.

LoRA adapters and full fine-tunes come from the lorakit cache (LORAKIT_CACHE) when they are there::

    LORAKIT_PROFILE=ci OMP_NUM_THREADS=1 LORAKIT_THREADS=1 .venv/bin/python tools/mv_study.py --seeds 0 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV_KEYS = ("LORAKIT_PROFILE", "LORAKIT_THREADS", "OMP_NUM_THREADS", "LORAKIT_CACHE")


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def no_nan(x):
    """``x`` with every NaN / inf float replaced by None (strict JSON; e.g. ρ of a constant list)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [no_nan(v) for v in x]
    return x


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None, help="profile name (default: LORAKIT_PROFILE, else cpu)")
    ap.add_argument("--tasks", nargs="+", default=None, help="tasks (default: the profile's)")
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="training seeds (default: the profile's)")
    ap.add_argument("--task-seeds", default="per_task", choices=("per_task", "shared"), help="how seeds mix with tasks")
    ap.add_argument("--lr-factors", type=floats, default=None, help="full-FT lr multiples of lr/20 (default 0.333,1,3,10)")
    ap.add_argument("--ft-tune-seeds", nargs="+", type=int, default=None,
                    help="seeds the full-FT lr sweep is trained on (default: the first seed)")
    ap.add_argument("--methods", nargs="+", default=None, help="claim (a) merge methods (default: task_arithmetic ties dare)")
    ap.add_argument("--c-lams", type=floats, default=None, help="claim (c) λ grid, e.g. 0.4,0.7,1.0")
    ap.add_argument("--max-groups", type=int, default=None, help="claim (c): at most this many groups (seeded subset)")
    ap.add_argument("--c-seeds", nargs="+", type=int, default=None, help="claim (c) seeds (default: all --seeds)")
    ap.add_argument("--n-resamples", type=int, default=10_000, help="bootstrap resamples")
    ap.add_argument("--out", default=None, help="JSON path (default: data/reference/mv_study_<profile>.json)")
    ap.add_argument("--full-ft-only", action="store_true",
                    help="only train and cache the full fine-tunes of --tasks × --seeds (the lr sweep included) and "
                         "print each task's choice; write no JSON. Run one per core on disjoint --tasks, then the "
                         "study itself finds them in the cache")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lorakit.fsutil import atomic_file
    from lorakit.run.mv_grid import CLAIM_A_METHODS, CLAIM_C_LAMS, run_study
    from lorakit.run.mv_study import FT_LR_FACTORS
    from lorakit.results.tables import machine_description

    t_start = time.perf_counter()
    profile = args.profile or os.environ.get("LORAKIT_PROFILE") or "cpu"

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.0f} s] {msg}", flush=True)

    if args.full_ft_only:
        return warm_full_ft(profile, args, log)

    record = run_study(profile, args.tasks, args.seeds, task_seeds=args.task_seeds,
                       lr_factors=args.lr_factors or FT_LR_FACTORS, methods=args.methods or CLAIM_A_METHODS,
                       c_lams=args.c_lams or CLAIM_C_LAMS, max_groups=args.max_groups, c_seeds=args.c_seeds,
                       ft_tune_seeds=args.ft_tune_seeds,
                       n_resamples=args.n_resamples, log=log)
    env = " ".join(f"{k}={shlex.quote(os.environ[k])}" for k in ENV_KEYS if k in os.environ)
    record |= {"machine": machine_description("cpu"),
               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "command": " ".join(filter(None, [env, "python", *map(shlex.quote, sys.argv)]))}
    out = Path(args.out) if args.out else ROOT / "data" / "reference" / f"mv_study_{record['profile']}.json"
    with atomic_file(out) as tmp:
        tmp.write_text(json.dumps(no_nan(record), indent=1, allow_nan=False))
    log(f"wrote {out}; verdicts {record['verdicts']}")
    return 0


def warm_full_ft(profile: str, args: argparse.Namespace, log) -> int:
    """``--full-ft-only``: the study's full-FT step alone (:func:`lorakit.run.mv_grid.full_ft_choices`), which caches every model."""
    from lorakit.run.mv_grid import full_ft_choices, full_ft_lrs
    from lorakit.run.mv_study import FT_LR_FACTORS, MAJORITY_MARGIN
    from lorakit.profiles import apply_threads, get_profile

    p = get_profile(profile, task_seeds=args.task_seeds)
    apply_threads(p)
    seeds = args.seeds if args.seeds is not None else list(p.seeds)
    full_ft_choices(list(args.tasks or p.tasks), p, seeds, full_ft_lrs(p, args.lr_factors or FT_LR_FACTORS),
                    MAJORITY_MARGIN, args.ft_tune_seeds, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
