"""`lorakit merge` end to end (read folders, merge, refactor, write) against the merge alone.

Writes N synthetic PEFT adapter folders with Llama-3-8B shapes (r = 16 on q/k/v/o/gate/up/down,
the tensors of :func:`lorakit.run.bench.random_updates`, untimed), then in one run times

* ``merge_s``: :func:`lorakit.merge.merge_layer` on every module of every layer from the
  in-memory factors, one module at a time (the merge alone);
* ``end_to_end_s``: :func:`lorakit.merge.merge_adapter_folders` on the folders with
  ``format="adapter"`` and ``rank=K`` (reading, the same merge, the rank-K refactoring, writing);

and reports ``ratio = end_to_end_s / merge_s`` (the issue's goal: ≤ 1.5).

    python tools/bench_merge_e2e.py --layers 2 --method ties --rank 128 --out bench_merge_e2e.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from lorakit.run.bench import LLAMA3_8B_SHAPES, random_updates
from lorakit.results.tables import machine_description
from lorakit.fsutil import atomic_file
from lorakit.lora.peft import write_adapter
from lorakit.adapters.merge_folders import merge_adapter_folders
from lorakit.merge import merge_layer


def module_name(layer: int, module: str) -> str:
    block = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
    return f"model.layers.{layer}.{block}.{module}"


def synthetic_adapters(n_tasks: int, n_layers: int, r: int, seed: int = 0, shrink: int = 1) -> list[dict]:
    """``n_tasks`` adapters ``{module: LoRAUpdate}``; module k of layer l seeded like :mod:`lorakit.run.bench`.

    ``shrink`` divides every dimension (a quick check of the tool itself; 1 = the real shapes).
    """
    adapters: list[dict] = [{} for _ in range(n_tasks)]
    for layer in range(n_layers):
        for k, (name, (d_out, d_in)) in enumerate(LLAMA3_8B_SHAPES.items()):
            d_out, d_in = d_out // shrink, d_in // shrink
            for i, upd in enumerate(random_updates(n_tasks, d_out, d_in, r, seed=seed + 1000 * layer + k)):
                adapters[i][module_name(layer, name)] = upd
    return adapters


def time_merge_alone(adapters: list[dict], method: str, params: dict) -> float:
    start = time.perf_counter()
    for module in adapters[0]:
        delta = merge_layer([ad[module] for ad in adapters], method, **params)
        del delta
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--method", default="ties")
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shrink", type=int, default=1, help="divide every dimension (quick check)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    adapters = synthetic_adapters(args.tasks, args.layers, args.r, shrink=args.shrink)
    with tempfile.TemporaryDirectory(prefix="lorakit-e2e-") as work:
        folders = [write_adapter(ad, Path(work) / f"task{i}", "synthetic-llama-3-8b") for i, ad in enumerate(adapters)]
        merge_s = time_merge_alone(adapters, args.method, {})
        start = time.perf_counter()
        summary = merge_adapter_folders(folders, args.method, out=Path(work) / "merged", rank=args.rank, progress=False)
        end_to_end_s = time.perf_counter() - start
    record = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_description("cpu"),
        "threads": torch.get_num_threads(),
        "n_tasks": args.tasks, "n_layers": args.layers, "shrink": args.shrink, "r": args.r, "method": args.method, "rank": args.rank,
        "modules": list(LLAMA3_8B_SHAPES), "merge_s": merge_s, "end_to_end_s": end_to_end_s,
        "ratio": end_to_end_s / merge_s, "energy": summary["energy"], "refactor": summary["refactor"],
    }
    with atomic_file(args.out) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    print(f"merge alone {merge_s:.1f} s, end to end {end_to_end_s:.1f} s, ratio {record['ratio']:.2f} "
          f"(energy kept min {summary['energy']['min']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
