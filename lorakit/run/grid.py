"""The experiment grid, written once for both tracks: per init and seed, train, score each adapter alone,
merge with every method.

For every init (``standard``, ``osrm``, the controls) and seed, :func:`run_grid` trains (or loads from the
cache) one adapter per task, scores each adapter alone on validation and test (the normalizer) and each
task's floor (``W_0``, λ = 0), then searches every merge method on validation and reports it on test
(:mod:`lorakit.run.search`, the same budget for every method). What differs between the encoder track
(classification, heads, :mod:`lorakit.run.encoder`) and the causal-LM track (generation, no heads,
:mod:`lorakit.run.causal`) is a small :class:`Track` record: how to load tasks, build the evaluator,
describe the tasks, prepare OSRM's ``A``, train the adapters, and what the track adds to the results.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from .. import __version__
from ..lora.measures import magnitude_variance
from ..eval.scorer import TaskScorer, accuracies
from ..train.inits import get_init, init_depends_on_seed, init_uses_A, task_seed
from ..merge import METHODS, resolve_variant
from ..profiles import Profile
from .progress import RunProgress
from ..results.tables import format_table, machine_description, run_note
from ..errors import LorakitError
from ..eval.correctness import encode_correct, mean
from ..fsutil import atomic_folder
from .search import PreparedSources, search_method

Log = Callable[[str], object]


def _no_extra(evaluator: TaskScorer, adapters: Mapping, task_info: dict) -> None:
    return None


@dataclass(frozen=True)
class Track:
    """What one track's grid needs; everything else is the grid's.

    Attributes:
        name: ``encoder`` or ``causal`` (the progress bar's label).
        load_task: ``(task name, profile) → task data``.
        evaluator: ``(task data list, profile) → scorer`` (:class:`lorakit.eval.encoder.TaskScorer`).
        task_info: ``{task: data} → {task: {"majority", "n_test", …, "individual": [], "floor": []}}``.
        prepare_init_A: ``(init, {task: data}, profile, seed or None, progress) → {task: {module: A}}``
            (seed None: the seed-independent A, OSRM's, made once per init).
        train_all: ``(init, {task: data}, profile, init_A, seed, progress, on_trained) → {task: adapter}``.
        after_individual: ``(evaluator, adapters, task_info)``, after each (init, seed)'s adapters are
            scored alone (the causal track keeps their test predictions).
        finish: ``(evaluator, task_info, timings) → fields added to the results`` (the causal track's
            metric, dtype and throughput).
    """

    name: str
    load_task: Callable[[str, Profile], Any]
    evaluator: Callable[[list, Profile], TaskScorer]
    task_info: Callable[[Mapping[str, Any]], dict]
    prepare_init_A: Callable[..., dict | None]
    train_all: Callable[..., dict]
    after_individual: Callable[[TaskScorer, Mapping, dict], None] = _no_extra
    finish: Callable[[TaskScorer, dict, dict], dict] = lambda evaluator, task_info, timings: {}
    write_extra: Callable[[Mapping, Path], None] = lambda results, folder: None


def check_grid(tasks: Sequence[str], methods: Sequence[str], inits: Sequence[str], task_seeds: str) -> None:
    """One-line errors before any work: an unknown method or init, fewer than two tasks, an unknown ``task_seeds``."""
    for m in methods:
        resolve_variant(m)
    for i in inits:
        get_init(i)
    if len(tasks) < 2:
        raise LorakitError("merging needs at least two tasks; pass more with --tasks")
    task_seed(0, tasks[0], task_seeds)


def run_to_folder(track: Track, p: Profile, tasks: list[str], methods: list[str], inits: list[str], seeds: list[int],
                  out_dir: Path, progress: bool, log: Log, command: str | None, figures: bool, t_start: float) -> dict:
    """:func:`run_grid`, written to ``out_dir`` (results, run note, figures, the track's extra files) through a
    temporary folder, so a failure or Ctrl-C leaves nothing half-written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise LorakitError(f"--out {out_dir} is a file; choose a folder")
    with atomic_folder(out_dir) as tmp:
        results = run_grid(track, p, tasks, methods, inits, seeds, progress, log)
        results["command"] = command or " ".join(["lorakit"] + sys.argv[1:])
        results["timings"]["total_seconds"] = round(time.perf_counter() - t_start, 2)
        write_results(results, tmp, figures=figures)
        track.write_extra(results, tmp)
    results["out"] = str(out_dir)
    return results


def run_grid(track: Track, p: Profile, tasks: list[str], methods: list[str], inits: list[str], seeds: list[int],
             progress: bool, log: Log) -> dict:
    """The grid: per init (OSRM's A once) and seed, train, score each adapter alone, merge with every method."""
    timings = {"train_seconds": 0.0, "osrm_seconds": 0.0, "merge_seconds": 0.0, "orthogonalize_seconds": 0.0,
               "eval_seconds": 0.0}
    data = {t: track.load_task(t, p) for t in tasks}
    evaluator = track.evaluator(list(data.values()), p)
    task_info = track.task_info(data)
    records, adapter_stats = [], []
    bar = RunProgress(len(inits), len(seeds), len(tasks), len(methods), enabled=progress,
                      desc="lorakit run" if track.name == "encoder" else f"lorakit run ({track.name})")
    for init in inits:
        init_A = None
        if init_uses_A(init) and not init_depends_on_seed(init):  # OSRM's A: once, from the base model's features
            t0 = time.perf_counter()
            init_A = track.prepare_init_A(init, data, p, None, progress)
            timings["osrm_seconds"] += time.perf_counter() - t0
        for seed in seeds:
            if init_uses_A(init) and init_depends_on_seed(init):  # random_orthonormal: one A per task and seed
                init_A = track.prepare_init_A(init, data, p, seed, progress)
            t0 = time.perf_counter()
            adapters = track.train_all(init, data, p, init_A, seed, progress,
                                       lambda t: bar.step(f"{init} seed {seed}: adapter {t}"))
            timings["train_seconds"] += time.perf_counter() - t0
            individual = score_individual(evaluator, adapters, tasks, init, seed, task_info, timings, log)
            track.after_individual(evaluator, adapters, task_info)
            adapter_stats.append({"init": init, "seed": seed,
                                  "magnitude_variance": magnitude_variance([adapters[t].updates for t in tasks])})
            records += merge_methods(evaluator, adapters, tasks, methods, p, init, seed, individual, timings, log,
                                     task_info, bar)
    bar.close()
    for t in tasks:
        task_info[t]["individual_accuracy"] = mean(r["test"] for r in task_info[t]["individual"])
    extra = track.finish(evaluator, task_info, timings)
    return {
        "lorakit": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "profile": p.name,
        "profile_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.__dict__.items()},
        "model": p.model,
        "machine": machine_description(p.device),
        **extra,
        "tasks": task_info,
        "methods": methods,
        "inits": inits,
        "seeds": seeds,
        "records": records,
        "adapter_stats": adapter_stats,
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }


def score_individual(evaluator: TaskScorer, adapters: Mapping, tasks: Sequence[str], init: str, seed: int,
                     task_info: dict, timings: dict, log: Log) -> tuple[dict, dict]:
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


def score_orthogonalized(evaluator: TaskScorer, adapters: Mapping, tasks: Sequence[str], prepared: PreparedSources,
                         method: str, init: str, seed: int, task_info: dict, timings: dict) -> None:
    """Each task's own test accuracy after ``method``'s precompute (DO's orthogonalisation, default options),
    alone with its head: does the data-free step that makes the factors orthogonal cost the task anything?"""
    sources, _ = prepared.sources(method, {})
    t0 = time.perf_counter()
    correct = evaluator.correct_tasks(lambda t: {m: u.delta() for m, u in sources[tasks.index(t)].items()},
                                      adapters, "test")
    timings["eval_seconds"] += time.perf_counter() - t0
    test = accuracies(correct)
    for t in tasks:
        task_info[t].setdefault("individual_orthogonalized", []).append(
            {"init": init, "seed": seed, "test": test[t], "test_correct": encode_correct(correct[t])})


def merge_methods(evaluator: TaskScorer, adapters: Mapping, tasks: Sequence[str], methods: Sequence[str], p: Profile,
                  init: str, seed: int, individual: tuple[dict, dict], timings: dict, log: Log, task_info: dict,
                  bar: RunProgress | None = None) -> list[dict]:
    """One record per method: hyperparameters chosen on validation, test accuracy at the choice.

    A method with a ``precompute`` (DO-Merging's orthogonalisation) runs it once per (init, seed) and
    set of its options (γ is tuned), shared by its variants (``do``, ``do_ties``, …); every grid point
    merges the prepared adapters.
    """
    prepared = PreparedSources([adapters[t].updates for t in tasks], timings)
    precomputing = [name for name in dict.fromkeys(resolve_variant(m)[0] for m in methods) if METHODS[name].precompute]
    if precomputing:  # DO-Merging's orthogonalised adapters, each scored alone
        score_orthogonalized(evaluator, adapters, tasks, prepared, precomputing[0], init, seed, task_info, timings)
    records = []
    for method in methods:
        rec, elapsed, merge_seconds = search_method(evaluator, adapters, method, p, prepared, individual, timings)
        rec.update({"init": init, "method": method, "seed": seed, "merge_seconds": round(merge_seconds, 3),
                    "seconds": round(elapsed, 2)})
        records.append(rec)
        log(f"[{init} seed {seed}] {method:>16}: normalized {rec['avg_normalized']:.3f} "
            f"accuracy {rec['avg_accuracy']:.3f} params {rec['params']} ({rec['budget']} points)")
        if bar is not None:
            bar.step(f"{init} seed {seed}: {method}")
    return records


def write_results(results: Mapping, folder: Path, figures: bool = True) -> None:
    """``results.json``, ``results.md``, ``RUN.md`` and (``figures=True``) the figures into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=1, default=float))
    (folder / "results.md").write_text(format_table(results))
    (folder / "RUN.md").write_text(run_note(results))
    if figures:
        from ..results.plots import plot_results  # lazy: matplotlib is slow to import and only needed for figures

        plot_results(results, folder)
