"""``lorakit bench``: time every merge method against peft's functions and write one JSON file.

Two modes (both write ``--out``, default ``bench.json``, atomically, and print a short table):

* default — :func:`lorakit.run.bench.bench_merge` on each shape of :data:`BENCH_SHAPES` (one layer
  of ``--tasks`` random rank-r updates, median of ``--repeats`` timed calls after a warm-up):
  per method lorakit's time and peft's ``merge_utils`` time for the same merge on the same
  tensors, their ratio, and DO-Merging's orthogonalisation time.
* ``--llm-shapes`` — :func:`lorakit.run.bench.bench_llm_shapes`: ``--tasks`` synthetic adapters with
  the shapes of a Llama-3-8B LoRA (r = 16 on q/k/v/o/gate/up/down), merged layer by layer over
  ``--layers`` of the 32 layers (default all 32); time per layer, a full-model time extrapolated
  from it when fewer layers ran, peak memory, peft's time on the same tensors (TA, TIES, DARE; on
  the first ``--peft-layers`` layers, default all), the measured copy-bandwidth roofline and each
  time's multiple of it, and DO-Merging's orthogonalisation cost per layer.

The JSON carries ``machine`` (:func:`lorakit.results.tables.machine_description`), ``date`` (UTC),
``command`` (exactly as typed), ``settings``, ``notes`` (what each number means) and ``results``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .. import __version__
from ..run import bench as bench_lib  # module, not names: LLAMA3_8B_SHAPES is read at call time (tests patch it)
from ..run.bench import LLAMA3_8B_LAYERS, bench_llm_shapes, bench_merge, resolve_bench_method
from ..errors import LorakitError
from ..fsutil import atomic_file
from ..merge import METHODS
from ..profiles import apply_threads, get_profile
from ..results.tables import machine_description

#: Default-mode layers: ``{label: (d_out, d_in, r)}`` — MiniLM's attention projections with the
#: profiles' rank, and a BERT-large/RoBERTa-large sized projection with r = 16.
BENCH_SHAPES: dict[str, tuple[int, int, int]] = {
    "minilm_attention": (384, 384, 8),
    "bert_large_attention": (1024, 1024, 16),
}

LLM_RANK = 16

TIMING_NOTE = (
    "seconds of wall time (time.perf_counter; CUDA synchronised around each call). lorakit's time "
    "starts from the LoRA factors (it forms ΔW_i = s_i B_i A_i itself, or never forms it: task "
    "arithmetic multiplies the concatenated factors); peft's starts from the ready dense ΔW_i, as "
    "peft's LoRA merging hands them over. ratio = lorakit / peft (< 1: lorakit faster). On a "
    "shared CPU, times are only comparable as ratios within one run."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its options to the ``lorakit`` subparsers."""
    bench = sub.add_parser("bench", help="time merge methods against peft's functions")
    bench.add_argument("--llm-shapes", action="store_true", help="Llama-3-8B adapter shapes (r=16, 7 modules, 32 layers)")
    bench.add_argument("--layers", type=int, help="limit the number of layers (LLM shapes)")
    bench.add_argument("--peft-layers", type=int, default=None,
                       help="run peft's functions on the first K layers only (LLM shapes; default all, 0 = none)")
    bench.add_argument("--tasks", type=int, default=8, dest="n_tasks", help="number of adapters")
    bench.add_argument("--methods", nargs="+")
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--device", default=None)
    bench.add_argument("--out", default="bench.json")
    bench.set_defaults(func=run_bench)


def pick_device(requested: str | None) -> str:
    """``--device``: ``cuda`` when available and not given, else ``cpu``; a missing GPU is an error."""
    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise LorakitError(f"--device {requested}: no CUDA device here; use --device cpu or leave --device out")
    if not (requested == "cpu" or requested.startswith("cuda")):
        raise LorakitError(f"--device must be cpu or cuda[:N], got {requested!r}")
    return requested


def check_methods(methods: Sequence[str] | None) -> list[str]:
    """Method names (registry names or ``do_<base>``); default every registered method."""
    names = list(methods or METHODS)
    for name in names:
        resolve_bench_method(name)  # LorakitError listing the known names
    return names


def command_line(args: argparse.Namespace) -> str:
    """The command as typed: ``lorakit`` + the argv the CLI parsed (else this process's argv)."""
    argv = getattr(args, "argv", None)
    if argv is None:
        argv = sys.argv[1:]
    return shlex.join(["lorakit", *argv])


def header(mode: str, device: str, command: str) -> dict[str, Any]:
    """What every bench JSON starts with: mode, command, date, lorakit version, machine."""
    return {
        "benchmark": "lorakit bench",
        "mode": mode,
        "command": command,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "lorakit": __version__,
        "machine": machine_description(device),
    }


def merge_report(
    n_tasks: int,
    methods: Sequence[str],
    repeats: int,
    device: str,
    shapes: Mapping[str, tuple[int, int, int]] | None = None,
    seed: int = 0,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The default mode's ``settings``, ``notes`` and ``results`` (one record per shape × method)."""
    shapes = dict(shapes or BENCH_SHAPES)
    results = []
    for label, (d_out, d_in, r) in shapes.items():
        for rec in bench_merge(
            n_tasks=n_tasks, d_out=d_out, d_in=d_in, r=r, methods=methods, repeats=repeats, device=device, seed=seed,
            params=params,
        ):
            results.append({"shape": label, **rec})
    return {
        "settings": {
            "n_tasks": n_tasks,
            "shapes": {k: {"d_out": v[0], "d_in": v[1], "r": v[2]} for k, v in shapes.items()},
            "methods": list(methods),
            "repeats": repeats,
            "device": device,
            "seed": seed,
        },
        "notes": {
            "timing": TIMING_NOTE + f" Each time is the median of {repeats} calls after one warm-up call.",
            "peft": "peft_s/ratio only for methods peft.utils.merge_utils has: task_arithmetic, ties, dare_linear/dare_ties.",
            "ortho_s": "DO-Merging only: time of orthogonalize_factors on the A and B sides alone (part of lorakit_s).",
        },
        "results": results,
    }


def llm_report(
    n_tasks: int,
    methods: Sequence[str],
    n_layers: int,
    device: str,
    seed: int = 0,
    shapes: Mapping[str, tuple[int, int]] | None = None,
    r: int = LLM_RANK,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    log=None,
    peft_layers: int | None = None,
) -> dict[str, Any]:
    """The ``--llm-shapes`` mode's ``settings``, ``notes`` and ``results`` (one record per method)."""
    shapes = dict(shapes or bench_lib.LLAMA3_8B_SHAPES)
    results = bench_llm_shapes(
        n_tasks=n_tasks, r=r, n_layers=n_layers, methods=methods, device=device, seed=seed, shapes=shapes,
        params=params, log=log, peft=True if peft_layers is None else peft_layers,
    )
    cuda = device.startswith("cuda")
    return {
        "settings": {
            "n_tasks": n_tasks,
            "r": r,
            "layers_run": n_layers,
            "full_model_layers": LLAMA3_8B_LAYERS,
            "shapes": {k: {"d_out": v[0], "d_in": v[1]} for k, v in shapes.items()},
            "methods": list(methods),
            "device": device,
            "seed": seed,
            "largest_module_dense_bytes": 4 * n_tasks * max(a * b for a, b in shapes.values()),
        },
        "notes": {
            "timing": TIMING_NOTE
            + " Each module of each layer is timed once (after one warm-up call on a small layer); "
            "total_s sums all modules of all layers run, per_layer_s = total_s / layers_run.",
            "extrapolated": (
                f"extrapolated_full_model_s = per_layer_s × {LLAMA3_8B_LAYERS} (every layer has the same shapes): "
                f"an estimate from {n_layers} measured layer(s), not a measurement"
                + (" (here all layers were run)" if n_layers == LLAMA3_8B_LAYERS else "")
            ),
            "memory": (
                "peak_mem_bytes = torch.cuda.max_memory_allocated (bytes allocated by torch, reset before each pass)"
                if cuda
                else "peak_mem_bytes = the process's peak resident set size (Linux VmHWM, reset through "
                "/proc/self/clear_refs before each pass; 'ru_maxrss' when that reset is not allowed, then it is "
                "the process lifetime peak); it includes the Python/torch/peft baseline, given as baseline_bytes, "
                "so peak_above_baseline_bytes is what the pass added"
            ),
            "layer_by_layer": "each module's updates are drawn just before its merge and freed after it, so memory "
            "is bounded by one module (largest_module_dense_bytes = the N dense fp32 ΔW_i of the largest module)",
            "peft": "peft: the same fields for peft.utils.merge_utils on the dense ΔW_i of the same updates, on the "
            "first peft_layers layers; ratio = lorakit seconds / peft seconds on those same layers",
            "roofline": "roofline_s = the time to read and write every module's float32 dense stack (N, d_out, d_in) "
            "once at the copy bandwidth measured in this run (bandwidth_bytes_s); x_roofline = total_s / roofline_s",
            "ortho": "ortho: DO-Merging's orthogonalize_factors on the A and B sides alone, per layer (part of "
            "lorakit's DO time)",
        },
        "results": results,
    }


def write_json(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented JSON atomically (:func:`lorakit.fsutil.atomic_file`: temporary file, rename)."""
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LorakitError(f"cannot write {out} ({exc.strerror}); choose a writable --out path") from None
    with atomic_file(out) as tmp:
        with open(tmp, "w") as fh:
            json.dump(payload, fh, indent=2)
            fh.write("\n")
    return out


def _fmt(value: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "—" if value is None else f"{value * scale:.{digits}f}"


def format_table(payload: Mapping[str, Any]) -> str:
    """A short plain-text table of a bench JSON payload (either mode)."""
    rows: list[list[str]]
    if payload["mode"] == "llm_shapes":
        s = payload["settings"]
        measured = s["layers_run"] == s["full_model_layers"]
        title = (
            f"{s['n_tasks']} adapters, Llama-3-8B shapes, r={s['r']}, {s['layers_run']}/{s['full_model_layers']} "
            f"layer(s) run, device {s['device']}; full model = {'measured' if measured else 'extrapolated'}"
        )
        head = ["method", "s/layer", "full model s", "x roofline", "peft s/layer", "ratio", "ortho s/layer", "peak MiB"]
        rows = []
        for rec in payload["results"]:
            peft = rec["peft"] or {}
            ortho = rec["ortho"] or {}
            rows.append(
                [
                    rec["method"],
                    _fmt(rec["per_layer_s"]),
                    _fmt(rec["total_s"] if measured else rec["extrapolated_full_model_s"], digits=1),
                    _fmt(rec.get("x_roofline"), digits=1),
                    _fmt(peft.get("per_layer_s")),
                    _fmt(rec["ratio"], digits=2),
                    _fmt(ortho.get("per_layer_s")),
                    _fmt(rec["peak_mem_bytes"], 1 / 2**20, 0),
                ]
            )
    else:
        s = payload["settings"]
        title = f"{s['n_tasks']} adapters, median of {s['repeats']}, device {s['device']}"
        head = ["shape", "method", "lorakit ms", "peft ms", "ratio", "ortho ms"]
        rows = [
            [
                f"{rec['shape']} {rec['d_out']}x{rec['d_in']} r={rec['r']}",
                rec["method"],
                _fmt(rec["lorakit_s"], 1e3, 2),
                _fmt(rec["peft_s"], 1e3, 2),
                _fmt(rec["ratio"], digits=2),
                _fmt(rec["ortho_s"], 1e3, 2),
            ]
            for rec in payload["results"]
        ]
    widths = [max(len(head[i]), *(len(row[i]) for row in rows)) for i in range(len(head))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    """``lorakit bench [--llm-shapes] [--layers L] [--tasks N] [--methods ...] [--repeats K] [--device D] [--out F]``."""
    if args.n_tasks < 2:
        raise LorakitError(f"--tasks must be at least 2 (adapters to merge), got {args.n_tasks}")
    if args.repeats < 1:
        raise LorakitError(f"--repeats must be at least 1, got {args.repeats}")
    if args.layers is not None and not args.llm_shapes:
        raise LorakitError("--layers only applies with --llm-shapes")
    if args.peft_layers is not None and (not args.llm_shapes or args.peft_layers < 0):
        raise LorakitError(f"--peft-layers needs --llm-shapes and a count >= 0, got {args.peft_layers}")
    layers = LLAMA3_8B_LAYERS if args.layers is None else args.layers
    if not 1 <= layers <= LLAMA3_8B_LAYERS:
        raise LorakitError(f"--layers must be between 1 and {LLAMA3_8B_LAYERS} (Llama-3-8B's layers), got {layers}")
    device = pick_device(args.device)
    methods = check_methods(args.methods)
    command = command_line(args)
    apply_threads(get_profile())  # the profile's thread count, or LORAKIT_THREADS
    print(f"lorakit bench on {device} with {torch.get_num_threads()} torch thread(s): {command}", file=sys.stderr)
    if args.llm_shapes:
        body = llm_report(args.n_tasks, methods, layers, device, log=lambda m: print(m, file=sys.stderr, flush=True),
                          peft_layers=args.peft_layers)
        payload = {**header("llm_shapes", device, command), **body}
    else:
        body = merge_report(args.n_tasks, methods, args.repeats, device)
        payload = {**header("merge", device, command), **body}
    out = write_json(args.out, payload)
    print(format_table(payload))
    print(f"wrote {out}")
    return 0
