"""The main job: train one adapter per task, merge with every method, evaluate, write results.

``run_benchmark`` is what ``lorakit run`` calls. For every init (``standard``, ``osrm``) and seed it
trains (or loads from cache) one adapter per task, scores each adapter alone (the normalizer),
merges all of them with each method, picks the method's hyperparameters on validation and reports
test accuracy. The run folder gets ``results.json``, ``results.md`` and figures.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import torch

from . import __version__
from .analysis import magnitude_variance
from .errors import LorakitError
from .fsutil import atomic_folder
from .evaluate import Evaluator, mean, select_and_report
from .profiles import Profile, apply_threads, get_profile
from .tasks import get_card, load_task
from .train import task_seed, train_all


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
    try:
        import peft
        import transformers

        info["transformers"] = transformers.__version__
        info["peft"] = peft.__version__
    except ImportError:  # pragma: no cover
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def method_grid(method: str, profile: Profile) -> list[dict]:
    """Hyperparameter points tried on validation for ``method`` (λ from the profile)."""
    lams = list(profile.lam_grid)
    grids = {
        "task_arithmetic": [{"lam": lam} for lam in lams],
        "ties": [{"lam": lam, "density": d} for lam in lams for d in (0.2,)],
        "dare": [{"lam": lam, "drop_rate": 0.5} for lam in lams],
        "knots": [{"lam": lam, "density": 0.2} for lam in lams],
    }
    if method in grids:
        return grids[method]
    if method.startswith("do"):
        # DO-Merging variants: "do" (TA directions) or "do_<base>"
        base = method[3:] if method.startswith("do_") else "task_arithmetic"
        return [dict(p, base=base) for p in grids.get(base, [{"lam": lam} for lam in lams])]
    return [{"lam": lam} for lam in lams]


def resolve_method(method: str) -> tuple[str, dict]:
    """Benchmark method name → (registered merge method, fixed params). ``do_ties`` = DO with TIES."""
    from .merge import METHODS

    if method in METHODS:
        return method, {}
    if method.startswith("do_") and method[3:] in METHODS:
        return "do", {"base": method[3:]}
    known = sorted(METHODS) + [f"do_{m}" for m in sorted(METHODS) if m != "do"]
    raise LorakitError(f"unknown merge method {method!r}; known: {', '.join(known)}")


def osrm_inits(tasks: Sequence[str], profile: Profile, progress: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """Each task's OSRM ``lora_A`` per module, from the other tasks' features (leave-one-out)."""
    from .osrm import osrm_init_for_tasks

    return osrm_init_for_tasks(tasks, profile, progress=progress)


def run_benchmark(
    profile: str | Profile | None = None,
    tasks: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    inits: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    figures: bool = True,
    command: str | None = None,
    log=print,
    **overrides,
) -> dict:
    """Run the benchmark grid and write ``results.json`` (+ ``results.md``, figures) to ``out``."""
    t_start = time.perf_counter()
    p = get_profile(profile, **overrides)
    apply_threads(p)
    tasks = list(tasks or p.tasks)
    methods = list(methods or p.methods)
    inits = list(inits or p.inits)
    seeds = list(seeds if seeds is not None else p.seeds)
    for t in tasks:
        get_card(t)  # unknown task → clear error before any work
    for m in methods:
        resolve_method(m)
    for i in inits:
        if i not in ("standard", "gaussian", "osrm"):
            raise LorakitError(f"unknown init {i!r}; choose from standard, gaussian, osrm")
    if len(tasks) < 2:
        raise LorakitError("merging needs at least two tasks; pass more with --tasks")
    task_seed(0, tasks[0], p.task_seeds)  # an unknown task_seeds → clear error before any work
    out_dir = Path(out) if out else Path("runs") / f"{p.name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if out_dir.exists() and not out_dir.is_dir():
        raise LorakitError(f"--out {out_dir} is a file; choose a folder")
    with atomic_folder(out_dir) as tmp:  # nothing half-written on failure or Ctrl-C
        results = _run(p, tasks, methods, inits, seeds, progress, log)
        results["command"] = command or " ".join(["lorakit"] + sys.argv[1:])
        results["timings"]["total_seconds"] = round(time.perf_counter() - t_start, 2)
        write_results(results, tmp, figures=figures)
    results["out"] = str(out_dir)
    return results


def _run(p: Profile, tasks, methods, inits, seeds, progress, log) -> dict:
    from .merge import merge_adapters, orthogonalize_adapters

    timings = {"train_seconds": 0.0, "osrm_seconds": 0.0, "merge_seconds": 0.0, "orthogonalize_seconds": 0.0,
               "eval_seconds": 0.0}
    data = {t: load_task(t, profile=p) for t in tasks}
    evaluator = Evaluator(list(data.values()), p)
    task_info = {
        t: {"majority": d.majority_baseline("test"), "n_test": len(d.test[1]), "n_val": len(d.val[1]),
            "n_train": len(d.train[1]), "num_labels": d.num_labels, "individual": []}
        for t, d in data.items()
    }
    records, adapter_stats = [], []
    for init in inits:
        init_A = None
        if init == "osrm":
            t0 = time.perf_counter()
            init_A = osrm_inits(tasks, p, progress=progress)
            timings["osrm_seconds"] += time.perf_counter() - t0
        for seed in seeds:
            t0 = time.perf_counter()
            adapters = train_all(tasks, p, init=init, init_A_by_task=init_A, seed=seed, progress=progress)
            timings["train_seconds"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            ind_val = evaluator.individual(adapters, "val")
            ind_test = evaluator.individual(adapters, "test")
            timings["eval_seconds"] += time.perf_counter() - t0
            for t in tasks:
                task_info[t]["individual"].append({"init": init, "seed": seed, "test": ind_test[t], "val": ind_val[t],
                                                   "train_seconds": adapters[t].metrics.get("seconds")})
            log(f"[{init} seed {seed}] individual test accuracy: "
                + ", ".join(f"{t} {ind_test[t]:.3f}" for t in tasks))
            mv = magnitude_variance([adapters[t].updates for t in tasks])
            adapter_stats.append({"init": init, "seed": seed, "magnitude_variance": mv})
            orthogonalized = None  # DO's factor orthogonalisation: once per (init, seed), shared by do_*
            for method in methods:
                name, fixed = resolve_method(method)
                merge_time = [0.0]
                if name == "do" and orthogonalized is None:
                    t1 = time.perf_counter()
                    orthogonalized = orthogonalize_adapters([adapters[t].updates for t in tasks])[0]
                    merge_time[0] += time.perf_counter() - t1
                    timings["orthogonalize_seconds"] += merge_time[0]

                def merge_fn(**params):
                    t1 = time.perf_counter()
                    if name == "do":  # equal bit for bit to do(orthogonalize=True) on the raw adapters
                        merged = merge_adapters(orthogonalized, name, orthogonalize=False, **{**params, **fixed})
                    else:
                        merged = merge_adapters([adapters[t].updates for t in tasks], name, **{**params, **fixed})
                    merge_time[0] += time.perf_counter() - t1
                    return merged

                t0 = time.perf_counter()
                grid = [{k: v for k, v in g.items() if not (k == "base" and name == "do")} for g in method_grid(method, p)]
                rec = select_and_report(evaluator, adapters, merge_fn, grid, ind_val, ind_test, test_curve=p.test_curves,
                                        extend_edges=p.lam_extend)
                elapsed = time.perf_counter() - t0
                timings["merge_seconds"] += merge_time[0]
                timings["eval_seconds"] += elapsed - merge_time[0]
                rec.update({"init": init, "method": method, "seed": seed, "merge_seconds": round(merge_time[0], 3),
                            "seconds": round(elapsed, 2)})
                records.append(rec)
                log(f"[{init} seed {seed}] {method:>16}: normalized {rec['avg_normalized']:.3f} "
                    f"accuracy {rec['avg_accuracy']:.3f} params {rec['params']}")
    for t in tasks:
        ind = task_info[t]["individual"]
        task_info[t]["individual_accuracy"] = mean(r["test"] for r in ind)
    return {
        "lorakit": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "profile": p.name,
        "profile_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.__dict__.items()},
        "model": p.model,
        "machine": machine_description(p.device),
        "tasks": task_info,
        "methods": methods,
        "inits": inits,
        "seeds": seeds,
        "records": records,
        "adapter_stats": adapter_stats,
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }


def summary_rows(results: Mapping) -> list[dict]:
    """Mean ± std over seeds of average normalized accuracy per (method, init)."""
    import statistics

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
    import statistics

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


def write_results(results: Mapping, folder: Path, figures: bool = True) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=1, default=float))
    (folder / "results.md").write_text(format_table(results))
    (folder / "RUN.md").write_text(run_note(results))
    if figures:
        from .plots import plot_results

        plot_results(results, folder)


def load_results(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise LorakitError(f"{path} not found; run `lorakit run --out DIR` first")
    return json.loads(path.read_text())
