"""DO-Merging's orthogonalisation per layer: the row-space solver against the autograd one it replaced.

The old implementation (autograd on the full n-column problem, Adam per entry; lorakit at commit
9c693f4) is the frozen copy in ``tests/test_merge_ortho.py``. Both run in one process, interleaved,
on the A and B sides of one layer of random LoRA factors, ``--repeats`` times; the best time of
each and the final losses are reported.

    python tools/bench_ortho.py --out bench_ortho.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from lorakit.run.bench import random_updates
from lorakit.results.tables import machine_description
from lorakit.fsutil import atomic_file
from lorakit.merge.ortho import orthogonalize_factors

ROOT = Path(__file__).resolve().parents[1]
#: (label, d_out, d_in, tasks, r): a MiniLM layer, a mid-size layer, Llama-3-8B's gate_proj.
CASES = [("minilm 384x384", 384, 384, 3, 8), ("1024x1024", 1024, 1024, 8, 16), ("gate_proj 14336x4096", 14336, 4096, 8, 16)]


def frozen_reference():
    spec = importlib.util.spec_from_file_location("ortho_reference", ROOT / "tests" / "test_merge_ortho.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_orthogonalize_factors


def one_layer(fn, A, B) -> tuple[float, float]:
    """Seconds for both sides, and the sum of the two final losses."""
    start = time.perf_counter()
    (_, rep_a), (_, rep_b) = fn(A, "A"), fn(B, "B")
    return time.perf_counter() - start, rep_a.loss_history[-1] + rep_b.loss_history[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    old = frozen_reference()
    rows = []
    for label, d_out, d_in, n, r in CASES:
        updates = random_updates(n, d_out, d_in, r, seed=1)
        A, B = [u.A for u in updates], [u.scaling * u.B for u in updates]
        times = {"old": [], "new": []}
        for _ in range(args.repeats):
            t_old, loss_old = one_layer(old, A, B)
            t_new, loss_new = one_layer(orthogonalize_factors, A, B)
            times["old"].append(t_old)
            times["new"].append(t_new)
        best_old, best_new = min(times["old"]), min(times["new"])
        rows.append({"case": label, "d_out": d_out, "d_in": d_in, "n_tasks": n, "r": r,
                     "old_s": best_old, "new_s": best_new, "speedup": best_old / best_new,
                     "final_loss_old": loss_old, "final_loss_new": loss_new, "times": times})
        print(f"{label}: old {best_old:.3f} s, new {best_new:.4f} s, {best_old / best_new:.0f}x; "
              f"final loss old {loss_old:.9g}, new {loss_new:.9g}", flush=True)
    record = {"command": "python " + shlex.join(sys.argv), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(
        timespec="seconds"), "machine": machine_description("cpu"), "threads": torch.get_num_threads(),
        "note": "best of the repeats, A and B sides of one layer, 200 steps allowed, default options", "results": rows}
    with atomic_file(args.out) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
