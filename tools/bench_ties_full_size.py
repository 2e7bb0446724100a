"""TIES (and DARE, task arithmetic) on 8 × (4096 × 14336) updates: lorakit vs peft in one run, same result?

Llama-3-8B's down_proj shape, 8 r=16 adapters (:func:`lorakit.run.bench.random_updates`). For each
method, in one process: lorakit's ``merge_layer`` from the factors, then peft's
``peft.utils.merge_utils`` function on the dense ``ΔW_i`` (formed untimed), ``--repeats`` times
each (best time kept), and the largest entrywise difference of the two results, absolute and
relative to the largest entry (float32 precision is ~1e-7).

    python tools/bench_ties_full_size.py --out bench_ties_full_size.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from peft.utils import merge_utils

from lorakit.run.bench import random_updates
from lorakit.results.tables import machine_description
from lorakit.fsutil import atomic_file
from lorakit.merge import merge_layer
from lorakit.merge.blocks import dare_drop


def peft_merge(method: str, dense: list[torch.Tensor], seed: int) -> torch.Tensor:
    """peft's function for ``method`` with lorakit's defaults (λ 1, density 0.2, drop rate 0.5)."""
    weights = torch.ones(len(dense))
    if method == "ties":
        return merge_utils.ties(dense, weights, density=0.2, majority_sign_method="total")
    if method == "dare":
        torch.manual_seed(seed)  # lorakit draws with its own generator: compare against its masks below
        return merge_utils.dare_linear(dense, weights, density=0.5)
    return merge_utils.task_arithmetic(dense, weights)


def best_time(fn, repeats: int) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def compare(method: str, updates, repeats: int) -> dict:
    """Time lorakit and peft on the same updates and compare their results."""
    mine_s, mine = best_time(lambda: merge_layer(updates, method), repeats)
    dense = [u.delta(torch.float32) for u in updates]
    theirs_s, ref = best_time(lambda: peft_merge(method, dense, 0), repeats)
    if method == "dare":  # same masks as lorakit: drop with lorakit's generator, then peft's linear sum
        gen = torch.Generator().manual_seed(0)
        ref = merge_utils.task_arithmetic([dare_drop(t, 0.5, gen) for t in dense], torch.ones(len(dense)))
    diff, scale = float((mine - ref).abs().max()), float(ref.abs().max())
    print(f"{method}: lorakit {mine_s:.2f} s, peft {theirs_s:.2f} s, {theirs_s / mine_s:.1f}x faster; "
          f"max |diff| {diff:.3g} ({diff / scale if scale else 0:.3g} of the largest entry)", flush=True)
    return {"method": method, "lorakit_s": mine_s, "peft_s": theirs_s, "speedup_vs_peft": theirs_s / mine_s,
            "max_abs_diff": diff, "max_rel_diff": diff / scale if scale else 0.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["ties", "dare", "task_arithmetic"])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    updates = random_updates(8, 4096, 14336, 16, seed=0)
    rows = [compare(method, updates, args.repeats) for method in args.methods]
    record = {"command": "python " + shlex.join(sys.argv), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(
        timespec="seconds"), "machine": machine_description("cpu"), "threads": torch.get_num_threads(),
        "shape": {"n_tasks": 8, "d_out": 4096, "d_in": 14336, "r": 16}, "seed_note": (
            "DARE: peft's dare_linear is timed with its own (global-RNG) masks; the result is compared with the "
            "same lorakit masks summed by peft's task_arithmetic"), "results": rows}
    with atomic_file(args.out) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
