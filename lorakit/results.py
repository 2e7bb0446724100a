"""Reading a run's results: the tables, curves and notes made from ``results.json``.

Everything here only reads the ``results`` mapping that :func:`lorakit.benchmark.run_benchmark`
returns and writes to ``results.json`` (or loads it back), so the report, the figures
(:mod:`lorakit.plots`) and the paper-claim check (:mod:`lorakit.reference`) share one source
and none of them needs the training code. ``normalized`` accuracy is merged ÷ individual,
per task :math:`\text{acc}_t(\text{merged}) / \text{acc}_t(\text{individual})`, averaged over tasks.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

from .errors import LorakitError


def mean(values: Iterable[float]) -> float:
    """The mean of ``values`` ignoring NaNs; NaN when nothing is left."""
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")


def encode_correct(correct) -> dict:
    """Per-example correctness (a bool vector) as JSON: ``{"n": n, "bits": base64 of numpy.packbits}``.

    8 examples per byte, so a run's every method × init × task × seed fits in results.json and any
    comparison can be re-tested later (paired, example by example) with :mod:`lorakit.stats`.
    """
    bits = np.asarray(correct.cpu() if isinstance(correct, torch.Tensor) else correct, dtype=bool).reshape(-1)
    return {"n": int(bits.size), "bits": base64.b64encode(np.packbits(bits).tobytes()).decode("ascii")}


def decode_correct(encoded: Mapping) -> np.ndarray:
    """The bool vector :func:`encode_correct` wrote (one-line error for a malformed entry)."""
    try:
        n, raw = int(encoded["n"]), base64.b64decode(encoded["bits"], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise LorakitError(f"malformed per-example correctness entry ({exc}); re-run the benchmark") from None
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))
    if bits.size < n or bits.size - n >= 8:
        raise LorakitError(f"per-example correctness holds {bits.size} bits for {n} examples; re-run the benchmark")
    return bits[:n].astype(bool)


def record_correct(record: Mapping, task: str) -> np.ndarray:
    """One record's per-example test correctness of ``task`` (records of runs before this field: an error)."""
    if "test_correct" not in record:
        raise LorakitError("this run has no per-example predictions (made before they were recorded); re-run it")
    return decode_correct(record["test_correct"][task])


def machine_description(device: str = "cpu") -> dict:
    """What the numbers were measured on."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    try:  # lazy: peft takes seconds to import, and only the versions are wanted here
        import peft
        import transformers

        info["transformers"] = transformers.__version__
        info["peft"] = peft.__version__
    except ImportError:  # pragma: no cover
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def summary_rows(results: Mapping) -> list[dict]:
    """Mean ± std over seeds of average normalized accuracy per (method, init)."""
    rows = []
    for init in results["inits"]:
        for method in results["methods"]:
            recs = [r for r in results["records"] if r["init"] == init and r["method"] == method]
            if not recs:
                continue
            vals = [r["avg_normalized"] for r in recs]
            accs = [r["avg_accuracy"] for r in recs]
            rows.append({"method": method, "init": init, "normalized_mean": statistics.fmean(vals),
                         "normalized_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                         "accuracy_mean": statistics.fmean(accs), "n_seeds": len(recs)})
    return rows


def lambda_curve(results: Mapping, method: str, init: str) -> dict[float, float]:
    """``{λ: mean normalized accuracy}`` of ``method`` with ``init`` over seeds (test where recorded, else validation)."""
    points: dict[float, list[float]] = {}
    for r in results["records"]:
        if r["method"] != method or r["init"] != init:
            continue
        for c in r["curve"]:
            if "lam" in c["params"]:
                points.setdefault(c["params"]["lam"], []).append(c.get("test_normalized", c["val_normalized"]))
    return {lam: statistics.fmean(points[lam]) for lam in sorted(points)}


def format_table(results: Mapping) -> str:
    """A markdown report: per-task individual/majority/merged accuracy and the method summary."""
    tasks = list(results["tasks"])
    lines = [f"# lorakit run — profile `{results['profile']}`, model `{results['model']}`", "",
             f"Machine: {results['machine'].get('gpu') or results['machine'].get('processor')} "
             f"({results['machine'].get('device')}), torch {results['machine'].get('torch')}; "
             f"date {results['date']}; seeds {results['seeds']}.", "",
             "## Per task (test accuracy)", ""]
    header = "| task | n_test | majority | individual |"
    sep = "|---|---:|---:|---:|"
    merged_cols = []
    for init in results["inits"]:
        for method in results["methods"]:
            merged_cols.append((method, init))
            header += f" {method} ({init}) |"
            sep += "---:|"
    lines += [header, sep]
    for t in tasks:
        info = results["tasks"][t]
        row = f"| {t} | {info['n_test']} | {info['majority']:.3f} | {info['individual_accuracy']:.3f} |"
        for method, init in merged_cols:
            recs = [r for r in results["records"] if r["method"] == method and r["init"] == init]
            row += f" {mean(r['accuracy'][t] for r in recs):.3f} |"
        lines.append(row)
    lines += ["", "## Average normalized accuracy (merged ÷ individual), mean ± std over seeds", "",
              "| method | init | normalized | accuracy | seeds |", "|---|---|---:|---:|---:|"]
    for row in summary_rows(results):
        lines.append(f"| {row['method']} | {row['init']} | {row['normalized_mean']:.3f} ± {row['normalized_std']:.3f} "
                     f"| {row['accuracy_mean']:.3f} | {row['n_seeds']} |")
    tm = results["timings"]
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v}" for k, v in tm.items()), "",
              f"Command: `{results.get('command', '')}`", ""]
    return "\n".join(lines)


def run_note(results: Mapping) -> str:
    """``RUN.md`` of a run folder: what produced these numbers (machine, date, versions, command, timings)."""
    m = results["machine"]
    cfg = results.get("profile_config", {})
    lines = [
        "# How this run was made", "",
        f"- command: `{results.get('command', '')}`",
        f"- date (UTC): {results['date']}",
        f"- machine: {m.get('gpu') or m.get('processor')} ({m.get('device')}), {m.get('cpu_count')} CPUs, "
        f"{m.get('platform')}; torch threads {m.get('torch_threads')}",
        f"- versions: lorakit {results.get('lorakit')}, python {m.get('python')}, torch {m.get('torch')}, "
        f"transformers {m.get('transformers')}, peft {m.get('peft')}",
        f"- profile: `{results['profile']}` — tasks {list(results['tasks'])}, inits {results['inits']}, "
        f"methods {results['methods']}, seeds {results['seeds']} ({cfg.get('task_seeds', 'shared')} across tasks), "
        f"λ grid {cfg.get('lam_grid')} (+ up to {cfg.get('lam_extend', 0)} points beyond an edge λ)",
        f"- sizes: train {cfg.get('train_examples')}, val {cfg.get('val_examples')}, test {cfg.get('test_examples')}, "
        f"steps {cfg.get('steps')}, batch {cfg.get('batch_size')}, max length {cfg.get('max_length')}, "
        f"lr {cfg.get('lr')}, r {cfg.get('rank')}, α {cfg.get('alpha')}, targets {cfg.get('target_modules')}",
        "- timings (s): " + ", ".join(f"{k} {v}" for k, v in results["timings"].items()),
        "",
        "Files: `results.json` (every number), `results.md` (tables), `*.png` (figures). "
        "Re-make with the command above (adapters are cached under `LORAKIT_CACHE`).",
        "",
    ]
    return "\n".join(lines)


def load_results(path: str | os.PathLike) -> dict:
    """A run's ``results.json`` (``path`` is the file or its run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise LorakitError(f"{path} not found; run `lorakit run --out DIR` first")
    return json.loads(path.read_text())
