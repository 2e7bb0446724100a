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
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from . import __version__
from .analysis import magnitude_variance
from .assets import model_kind
from .errors import LorakitError
from .evaluate import Evaluator, accuracies, mean, select_and_report
from .fsutil import atomic_folder
from .lora import LoRAUpdate
from .merge import METHODS, ORTHO_OPTIONS, merge_adapters, resolve_variant, variant_base
from .inits import get_init, init_depends_on_seed, init_freezes_A, init_uses_A, prepare_init_A
from .profiles import Profile, apply_threads, get_profile
from .progress import RunProgress
# Reading results lives in lorakit.results; these names stay importable from here (notebooks use them).
from .results import (  # noqa: F401
    encode_correct,
    format_table,
    lambda_curve,
    load_results,
    machine_description,
    run_note,
    summary_rows,
)
from .tasks import TaskData, get_card, load_task
from .train import TrainedAdapter, task_seed, train_all

Log = Callable[[str], object]


def method_grid(method: str, profile: Profile) -> list[dict]:
    """Hyperparameter points of the λ search on validation for ``method`` (λ from the profile).

    The second hyperparameter sits at its default here (density 0.2, drop rate 0.5; DO's γ as
    registered); :func:`method_refine` tries others at the chosen λ. A DO-Merging name (``do``,
    ``do_ties``, …) gets its base method's grid with ``base`` set.
    """
    lams = list(profile.lam_grid)
    grids = {
        "task_arithmetic": [{"lam": lam} for lam in lams],
        "ties": [{"lam": lam, "density": d} for lam in lams for d in (0.2,)],
        "dare": [{"lam": lam, "drop_rate": 0.5} for lam in lams],
        "knots": [{"lam": lam, "density": 0.2} for lam in lams],
    }
    if method in grids:
        return grids[method]
    registered, _ = resolve_variant(method)
    if METHODS[registered].variants:
        base = variant_base(method)
        return [dict(p, base=base) for p in grids.get(base, [{"lam": lam} for lam in lams])]
    return [{"lam": lam} for lam in lams]


#: the hyperparameter each method tunes in the second stage of its search (Profile.tune_grid); "lam" = λ × factor
SECOND_PARAM = {"ties": "density", "knots": "density", "dare": "drop_rate", "do_ties": "density",
                "do_dare": "drop_rate", "do": "gamma"}


def method_refine(method: str, profile: Profile):
    """The second stage of ``method``'s search: a function ``chosen point → points to try`` (or None).

    Every method gets the same number of extra validation points (the profile's ``tune_grid`` holds
    two values per hyperparameter): its :data:`SECOND_PARAM` at those values, at the chosen λ; a
    method with λ alone (task arithmetic and the other methods not listed) tries λ × the ``lam``
    factors instead. Equal budgets keep a baseline from losing only because it was searched less.
    """
    grid = dict(profile.tune_grid or {})
    key = SECOND_PARAM.get(method, "lam")
    values = grid.get(key)
    if not values:
        return None
    if key == "lam":
        return lambda chosen: [dict(chosen, lam=round(chosen["lam"] * f, 4)) for f in values]
    return lambda chosen: [dict(chosen, **{key: v}) for v in values]


def resolve_method(method: str) -> tuple[str, dict]:
    """Benchmark method name → (registered merge method, fixed params). ``do_ties`` = DO with TIES.

    The names are the merge registry's (:func:`lorakit.merge.resolve_variant`).
    """
    return resolve_variant(method)


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
        if get_card(t).generative:  # unknown task → clear error before any work
            raise LorakitError(f"task {t!r} is generative (the causal-LM track, no heads): run it with --model smollm2")
    if model_kind(p.model) == "causal":
        raise LorakitError(f"model {p.model!r} is a causal LM: run the causal-LM track (lorakit run --model "
                           f"{p.model}, lorakit.causal_run.run_causal_benchmark) with generative tasks")
    for m in methods:
        resolve_method(m)
    for i in inits:
        get_init(i)  # an unknown init → clear error before any work
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


def _run(p: Profile, tasks: list[str], methods: list[str], inits: list[str], seeds: list[int], progress: bool,
         log: Log) -> dict:
    """The grid: per init (OSRM's A once) and seed, train, score each adapter alone, merge with every method."""
    timings = {"train_seconds": 0.0, "osrm_seconds": 0.0, "merge_seconds": 0.0, "orthogonalize_seconds": 0.0,
               "eval_seconds": 0.0}
    data = {t: load_task(t, profile=p) for t in tasks}
    evaluator = Evaluator(list(data.values()), p)
    task_info = _task_info(data)
    records, adapter_stats = [], []
    bar = RunProgress(len(inits), len(seeds), len(tasks), len(methods), enabled=progress)
    for init in inits:
        init_A = None
        if init_uses_A(init) and not init_depends_on_seed(init):  # OSRM's A: once, from the base model's features
            t0 = time.perf_counter()
            init_A = prepare_init_A(init, tasks, p, progress=progress)
            timings["osrm_seconds"] += time.perf_counter() - t0
        for seed in seeds:
            if init_uses_A(init) and init_depends_on_seed(init):  # random_orthonormal: one A per task and seed
                init_A = prepare_init_A(init, tasks, p, seed, progress=progress)
            t0 = time.perf_counter()
            adapters = train_all(tasks, p, init=init, init_A_by_task=init_A, freeze_A=init_freezes_A(init), seed=seed,
                                 progress=progress, on_trained=lambda t: bar.step(f"{init} seed {seed}: adapter {t}"))
            timings["train_seconds"] += time.perf_counter() - t0
            ind_val, ind_test = _score_individual(evaluator, adapters, tasks, init, seed, task_info, timings, log)
            mv = magnitude_variance([adapters[t].updates for t in tasks])
            adapter_stats.append({"init": init, "seed": seed, "magnitude_variance": mv})
            records += _merge_methods(evaluator, adapters, tasks, methods, p, init, seed, (ind_val, ind_test),
                                      timings, log, task_info, bar)
    bar.close()
    for t in tasks:
        task_info[t]["individual_accuracy"] = mean(r["test"] for r in task_info[t]["individual"])
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


def _task_info(data: Mapping[str, TaskData]) -> dict[str, dict]:
    """Per task: majority baseline and split sizes; ``individual`` is filled in per (init, seed)."""
    return {
        t: {"majority": d.majority_baseline("test"), "n_test": len(d.test[1]), "n_val": len(d.val[1]),
            "n_train": len(d.train[1]), "num_labels": d.num_labels, "individual": [], "floor": []}
        for t, d in data.items()
    }


def _score_individual(evaluator: Evaluator, adapters: Mapping[str, TrainedAdapter], tasks: Sequence[str], init: str,
                      seed: int, task_info: dict, timings: dict, log: Log) -> tuple[dict, dict]:
    """Each adapter alone on validation and test (the normalizer), and each task's head alone (the floor:
    ``W_0`` with the trained head, λ = 0); recorded in ``task_info``."""
    t0 = time.perf_counter()
    ind_val = evaluator.individual(adapters, "val")
    ind_correct = evaluator.correct_tasks(lambda t: adapters[t].deltas, adapters, "test")
    floor_correct = evaluator.correct_tasks({}, adapters, "test")
    ind_test, floor_test = accuracies(ind_correct), accuracies(floor_correct)
    timings["eval_seconds"] += time.perf_counter() - t0
    for t in tasks:
        task_info[t]["individual"].append({"init": init, "seed": seed, "test": ind_test[t], "val": ind_val[t],
                                           "test_correct": encode_correct(ind_correct[t]),
                                           "train_seconds": adapters[t].metrics.get("seconds")})
        task_info[t]["floor"].append({"init": init, "seed": seed, "test": floor_test[t],
                                      "test_correct": encode_correct(floor_correct[t])})
    log(f"[{init} seed {seed}] individual test accuracy: " + ", ".join(f"{t} {ind_test[t]:.3f}" for t in tasks))
    return ind_val, ind_test


class _Prepared:
    """Each method's ``precompute`` (DO's orthogonalisation) once per distinct set of its options, per (init, seed).

    ``sources(name, params)`` gives the adapters ``name`` merges at ``params`` and the parameters to
    override (``orthogonalize=False`` on already orthogonalised adapters); the seconds spent are
    added to ``timings["orthogonalize_seconds"]`` and returned by :meth:`take_seconds` for the record.
    """

    def __init__(self, updates: list[dict[str, LoRAUpdate]], timings: dict) -> None:
        self.updates, self.timings, self.cache, self.seconds = updates, timings, {}, 0.0

    def sources(self, name: str, params: Mapping) -> tuple[list[dict[str, LoRAUpdate]], dict]:
        if METHODS[name].precompute is None:
            return self.updates, {}
        options = tuple(sorted((k, params[k]) for k in ORTHO_OPTIONS if k in params))
        if (name, options) not in self.cache:
            t1 = time.perf_counter()
            self.cache[(name, options)] = METHODS[name].precompute(self.updates, **dict(options))
            elapsed = time.perf_counter() - t1
            self.seconds += elapsed
            self.timings["orthogonalize_seconds"] += elapsed
        return self.cache[(name, options)]

    def take_seconds(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def _score_orthogonalized(evaluator: Evaluator, adapters: Mapping[str, TrainedAdapter], tasks: Sequence[str],
                          prepared: _Prepared, init: str, seed: int, task_info: dict, timings: dict) -> None:
    """Each task's own test accuracy after DO's orthogonalisation (default options), alone with its head:
    does the data-free step that makes the factors orthogonal cost the task itself anything?"""
    sources, _ = prepared.sources("do", {})
    t0 = time.perf_counter()
    correct = evaluator.correct_tasks(lambda t: {m: u.delta() for m, u in sources[tasks.index(t)].items()},
                                      adapters, "test")
    timings["eval_seconds"] += time.perf_counter() - t0
    test = accuracies(correct)
    for t in tasks:
        task_info[t].setdefault("individual_orthogonalized", []).append(
            {"init": init, "seed": seed, "test": test[t], "test_correct": encode_correct(correct[t])})


def _merge_methods(evaluator: Evaluator, adapters: Mapping[str, TrainedAdapter], tasks: Sequence[str],
                   methods: Sequence[str], p: Profile, init: str, seed: int, individual: tuple[dict, dict],
                   timings: dict, log: Log, task_info: dict, bar: RunProgress | None = None) -> list[dict]:
    """One record per method: hyperparameters chosen on validation, test accuracy at the choice.

    A method with a ``precompute`` (DO-Merging's orthogonalisation) runs it once per (init, seed) and
    set of its options (γ is tuned), shared by its variants (``do``, ``do_ties``, …); every grid point
    merges the prepared adapters.
    """
    prepared = _Prepared([adapters[t].updates for t in tasks], timings)
    if any(resolve_method(m)[0] == "do" for m in methods):
        _score_orthogonalized(evaluator, adapters, tasks, prepared, init, seed, task_info, timings)
    records = []
    for method in methods:
        rec, elapsed, merge_seconds = _select_method(evaluator, adapters, method, p, prepared, individual, timings)
        rec.update({"init": init, "method": method, "seed": seed, "merge_seconds": round(merge_seconds, 3),
                    "seconds": round(elapsed, 2)})
        records.append(rec)
        log(f"[{init} seed {seed}] {method:>16}: normalized {rec['avg_normalized']:.3f} "
            f"accuracy {rec['avg_accuracy']:.3f} params {rec['params']} ({rec['budget']} points)")
        if bar is not None:
            bar.step(f"{init} seed {seed}: {method}")
    return records


def _select_method(evaluator: Evaluator, adapters: Mapping[str, TrainedAdapter], method: str, p: Profile,
                   prepared: _Prepared, individual: tuple[dict, dict], timings: dict) -> tuple[dict, float, float]:
    """:func:`select_and_report` over ``method``'s grid and second stage; its seconds and merge seconds
    (precompute included), added to ``timings`` apart from evaluation.

    The sources are the raw adapters, or the ones its ``precompute`` prepared (for DO the already
    orthogonalised ones), merged with ``orthogonalize=False``: equal bit for bit to
    ``do(orthogonalize=True)`` on the raw adapters.
    """
    name, fixed = resolve_method(method)
    merge_time = [prepared.take_seconds()]

    def merge_fn(**params):
        sources, override = prepared.sources(name, params)
        t1 = time.perf_counter()
        merged = merge_adapters(sources, name, **{**params, **fixed, **override})
        merge_time[0] += time.perf_counter() - t1 + prepared.take_seconds()
        return merged

    t0 = time.perf_counter()
    # a variant's base is fixed by its name (do_ties), so a grid point does not repeat it
    grid = [{k: v for k, v in g.items() if not (k == "base" and METHODS[name].variants)} for g in method_grid(method, p)]
    rec = select_and_report(evaluator, adapters, merge_fn, grid, *individual, test_curve=p.test_curves,
                            extend_edges=p.lam_extend, refine=method_refine(method, p))
    elapsed = time.perf_counter() - t0
    timings["merge_seconds"] += merge_time[0]
    timings["eval_seconds"] += elapsed - merge_time[0]
    return rec, elapsed, merge_time[0]


def write_results(results: Mapping, folder: Path, figures: bool = True) -> None:
    """``results.json``, ``results.md``, ``RUN.md`` and (``figures=True``) the figures into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=1, default=float))
    (folder / "results.md").write_text(format_table(results))
    (folder / "RUN.md").write_text(run_note(results))
    if figures:
        from .plots import plot_results  # lazy: matplotlib is slow to import and only needed for figures

        plot_results(results, folder)
