"""The encoder track's main job: train one adapter per task, merge with every method, evaluate, write results.

``run_benchmark`` is what ``lorakit run`` calls: its checks, then the grid both tracks share
(:func:`lorakit.run.grid.run_grid`) with :data:`ENCODER`, the encoder's :class:`~lorakit.run.grid.Track`
(classification tasks, per-task heads, :class:`lorakit.eval.encoder.Evaluator`). For every init (``standard``,
``osrm``) and seed it trains (or loads from cache) one adapter per task, scores each adapter alone (the
normalizer), merges all of them with each method, picks the method's hyperparameters on validation
(:mod:`lorakit.run.search`) and reports test accuracy. The run folder gets ``results.json``,
``results.md``, ``RUN.md`` and figures.
"""

from __future__ import annotations


import datetime as _dt
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

from ..data.models import model_kind
from ..errors import LorakitError
from ..eval.encoder import Evaluator
from ..train.inits import init_freezes_A, prepare_init_A
from ..profiles import Profile, apply_threads, get_profile
from .grid import Track, check_grid, run_to_folder
from ..data.tasks import TaskData, get_card, load_task
from ..train.encoder import train_all


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
                           f"{p.model}, lorakit.run.causal.run_causal_benchmark) with generative tasks")
    check_grid(tasks, methods, inits, p.task_seeds)
    out_dir = Path(out) if out else Path("runs") / f"{p.name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return run_to_folder(ENCODER, p, tasks, methods, inits, seeds, out_dir, progress, log, command, figures, t_start)


def _task_info(data: Mapping[str, TaskData]) -> dict[str, dict]:
    """Per task: majority baseline and split sizes; ``individual`` is filled in per (init, seed)."""
    return {
        t: {"majority": d.majority_baseline("test"), "n_test": len(d.test[1]), "n_val": len(d.val[1]),
            "n_train": len(d.train[1]), "num_labels": d.num_labels, "individual": [], "floor": []}
        for t, d in data.items()
    }


def _prepare_init_A(init: str, data: Mapping[str, TaskData], p: Profile, seed: int | None, progress: bool):
    tasks = list(data)
    return prepare_init_A(init, tasks, p, progress=progress) if seed is None else \
        prepare_init_A(init, tasks, p, seed, progress=progress)


def _train_all(init: str, data: Mapping[str, TaskData], p: Profile, init_A, seed: int, progress: bool, on_trained):
    return train_all(list(data), p, init=init, init_A_by_task=init_A, freeze_A=init_freezes_A(init), seed=seed,
                     progress=progress, on_trained=on_trained)


#: the encoder track: classification tasks, a head per task, the packed CPU evaluator where it applies
ENCODER = Track(
    name="encoder",
    load_task=lambda name, p: load_task(name, profile=p),
    evaluator=lambda data, p: Evaluator(data, p),
    task_info=lambda data: _task_info(data),
    prepare_init_A=_prepare_init_A,
    train_all=_train_all,
)


