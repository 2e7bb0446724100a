"""Reading a run's results: the tables, curves and notes made from ``results.json``.

Everything here only reads the ``results`` mapping that :func:`lorakit.run.encoder.run_benchmark`
returns and writes to ``results.json`` (or loads it back), so the report, the figures
(:mod:`lorakit.results.plots`) and the paper-claim check (:mod:`lorakit.results.reference`) share one source
and none of them needs the training code. ``normalized`` accuracy is merged ÷ individual,
per task :math:`\text{acc}_t(\text{merged}) / \text{acc}_t(\text{individual})`, averaged over tasks;
:mod:`lorakit.results.metrics` defines it with raw and floor-adjusted accuracy and makes their 95 % CIs.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path
from typing import Mapping

import torch

from ..eval.correctness import mean
from ..errors import LorakitError
from .metrics import METRICS, can_bootstrap, has_floor, metric_row, seed_std, tasks_at_or_below_majority


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


def summary_rows(results: Mapping, ci: bool = True, n_resamples: int = 2000) -> list[dict]:
    """Per (method, init): the three metrics (:mod:`lorakit.results.metrics`), mean over seeds, with 95 % CIs.

    Keys: ``method``, ``init``, ``n_seeds``; ``normalized_mean`` and ``accuracy_mean`` (mean over seeds
    of the records' ``avg_normalized`` / ``avg_accuracy``), ``*_std`` over seeds (NaN for one seed);
    with ``ci`` (and a run that holds its per-task scores): ``{metric}_low``/``_high`` for every metric
    of :data:`lorakit.results.metrics.METRICS` (bootstrap over seeds × test examples, ``n_resamples`` draws),
    ``floor_adjusted_mean`` (None without a recorded floor) and ``ci_note`` (what noise the CI covers).
    """
    rows = []
    bootstrap = ci and can_bootstrap(results)
    for init in results["inits"]:
        for method in results["methods"]:
            recs = [r for r in results["records"] if r["init"] == init and r["method"] == method]
            if not recs:
                continue
            vals, accs = [r["avg_normalized"] for r in recs], [r["avg_accuracy"] for r in recs]
            row = {"method": method, "init": init, "normalized_mean": statistics.fmean(vals),
                   "normalized_std": seed_std(vals), "accuracy_mean": statistics.fmean(accs),
                   "accuracy_std": seed_std(accs), "n_seeds": len(recs), "floor_adjusted_mean": None,
                   "ci_note": None}
            row.update({f"{m}_{end}": None for m in METRICS for end in ("low", "high")})
            if bootstrap:
                try:
                    full = metric_row(results, method, init, n_resamples=n_resamples)
                except LorakitError as exc:  # an incomplete run still gets its table, without this CI
                    row["ci_note"] = f"no CI: {exc}"
                    rows.append(row)
                    continue
                for m in METRICS:
                    if full[m] is not None:
                        row[f"{m}_low"], row[f"{m}_high"] = full[m]["low"], full[m]["high"]
                fa = full["floor_adjusted"]
                row["floor_adjusted_mean"], row["ci_note"] = fa and fa["mean"], full["note"]
            rows.append(row)
    return rows


def _with_ci(row: Mapping, metric: str) -> str:
    """``0.812 [0.790, 0.834]`` (``—`` when missing; no ``± 0.000`` for one seed)."""
    value = row["normalized_mean" if metric == "normalized" else f"{metric}_mean"]
    if value is None:
        return "—"
    low, high = row.get(f"{metric}_low"), row.get(f"{metric}_high")
    return f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else "")


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
    """A markdown report (``results.md``): per-task accuracies, the three metrics with CIs, tasks lost to majority."""
    tasks = list(results["tasks"])
    lines = [f"# lorakit run — profile `{results['profile']}`, model `{results['model']}`", "",
             f"Machine: {results['machine'].get('gpu') or results['machine'].get('processor')} "
             f"({results['machine'].get('device')}), torch {results['machine'].get('torch')}; "
             f"date {results['date']}; seeds {results['seeds']}.", "",
             "## Per task (test accuracy)", "",
             "One table per init: its adapters alone (individual), its heads on the base model (floor, λ = 0) "
             "and its merges, each a mean over seeds.", ""]
    floor = has_floor(results)
    held = {(r["method"], r["init"]) for r in results["records"]}
    for init in results["inits"]:
        methods = [m for m in results["methods"] if (m, init) in held]  # no column of nan for a merge not run
        if not methods:
            continue
        lines += [f"### init `{init}`", "",
                  "| task | n_test | majority |" + (" floor |" if floor else "") + " individual |"
                  + "".join(f" {m} |" for m in methods),
                  "|---|---:|---:|" + ("---:|" if floor else "") + "---:|" + "---:|" * len(methods)]
        for t in tasks:
            info = results["tasks"][t]
            own = [e["test"] for e in info["individual"] if e["init"] == init]
            floors = [e["test"] for e in info.get("floor", []) if e["init"] == init]
            row = (f"| {t} | {info['n_test']} | {info['majority']:.3f} |"
                   + (f" {mean(floors):.3f} |" if floor and floors else " — |" if floor else "")
                   + (f" {mean(own):.3f} |" if own else " — |"))
            for method in methods:
                recs = [r for r in results["records"] if r["method"] == method and r["init"] == init]
                row += f" {mean(r['accuracy'][t] for r in recs):.3f} |"
            lines.append(row)
        lines.append("")
    lines += _summary_section(results) + _majority_section(results) + causal_sections(results)
    tm = results["timings"]
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v}" for k, v in tm.items()), "",
              f"Command: `{results.get('command', '')}`", ""]
    return "\n".join(lines)


def _summary_section(results: Mapping) -> list[str]:
    rows = summary_rows(results)
    notes = sorted({r["ci_note"] for r in rows if r["ci_note"]})
    lines = ["", "## Merged accuracy per method: mean over seeds [95 % CI]", "",
             "Normalized = merged ÷ individual per task (the DO-Merging paper's metric, inferred: "
             "docs/methods.md §3.6); accuracy = raw test accuracy (the kind the OSRM paper reports); "
             "floor-adjusted = (merged − floor) ÷ (individual − floor) of each task's seed means, floor = the task's head on "
             "the base model (λ = 0). Each a mean over tasks (and seeds). "
             "CI: percentile bootstrap over seeds × test examples (" + ("; ".join(notes) or "no per-task scores")
             + ").", "",
             "| method | init | normalized | accuracy | floor-adjusted | n seeds |", "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['init']} | {_with_ci(row, 'normalized')} | {_with_ci(row, 'accuracy')} "
                     f"| {_with_ci(row, 'floor_adjusted')} | {row['n_seeds']} |")
    return lines


def causal_sections(results: Mapping) -> list[str]:
    """The causal-LM track's extra report: what "accuracy" is there, normalized-string match per merge,
    adapter training time per task and generation throughput (none for an encoder run)."""
    if results.get("track") != "causal":
        return []
    lines = ["", "## Causal-LM track", "",
             f"Accuracy above is exact match of the greedy answer (generation dtype {results.get('eval_dtype')}); "
             "no task has a head, so the floor is the base model itself and majority is the most common "
             "training answer. Normalized match (case, inner spaces and surrounding punctuation ignored), "
             "mean over tasks and seeds:", "",
             "| model | init | normalized match |", "|---|---|---:|"]
    for key, inits in (("floor (base model)", results["inits"][:1]), ("individual", results["inits"])):
        for init in inits:  # the floor is the same base model for every init
            vals = [e["normalized_match"] for info in results["tasks"].values() for e in info[key.split()[0]]
                    if e["init"] == init and "normalized_match" in e]
            if vals:
                lines.append(f"| {key} | {init if key == 'individual' else '—'} | {mean(vals):.3f} |")
    for init in results["inits"]:
        for method in results["methods"]:
            vals = [r["avg_normalized_match"] for r in results["records"]
                    if r["method"] == method and r["init"] == init and "avg_normalized_match" in r]
            if vals:
                lines.append(f"| {method} | {init} | {mean(vals):.3f} |")
    lines += ["", "Adapter training time per task (s, mean over inits and seeds): "
              + ", ".join(f"{t} {info.get('train_seconds', float('nan')):.1f}" for t, info in results["tasks"].items())]
    tp = results.get("throughput") or {}
    if tp:
        lines.append(f"Generation: {tp['prompts']} prompts, {tp['new_tokens']} new tokens in {tp['seconds']} s "
                     f"({tp['prompts_per_second']} prompts/s, {tp['new_tokens_per_second']} tokens/s).")
    return lines


def _majority_section(results: Mapping) -> list[str]:
    """Which tasks each merge leaves at or below the majority-class baseline (mean over seeds)."""
    lines = ["", "## Tasks at or below majority after each merge", ""]
    for init in results["inits"]:
        for method in results["methods"]:
            lost = tasks_at_or_below_majority(results, method, init)
            if any(r["method"] == method and r["init"] == init for r in results["records"]):
                lines.append(f"- {method} ({init}): " + (", ".join(lost) if lost else "none"))
    return lines


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
    ] + (["- " + line for line in causal_sections(results)[-2:]] if results.get("track") == "causal" else []) + [
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
