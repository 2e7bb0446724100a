"""The causal-LM track's main job (``lorakit run --model smollm2``): the encoder track's grid on generative tasks.

For every init and seed: one LoRA adapter per generative task on the causal base model (no heads;
:mod:`lorakit.causal_train`), each adapter alone and the base model alone scored by greedy exact
match (the normalizer and the floor), then every merge method with λ and its second
hyperparameter chosen on validation and reported on test (:func:`lorakit.benchmark._merge_methods`,
the same search and budget as the encoder track), with :class:`lorakit.causal_eval.CausalEvaluator`
in the evaluator's place. The run folder gets what the encoder track writes (``results.json``,
``results.md``, ``RUN.md``, figures: the same statistics) plus ``predictions.jsonl``, one line per
test example of every scored model. The track's design choices: docs/methods.md §5.7.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

from . import __version__
from .analysis import magnitude_variance
from .assets import model_kind
from .benchmark import Log, _merge_methods, _score_individual, resolve_method, write_results
from .causal import exact_match
from .causal_eval import CausalEvaluator
from .causal_profiles import get_causal_profile
from .causal_train import prepare_causal_init_A, train_all_causal
from .errors import LorakitError
from .evaluate import mean
from .fsutil import atomic_folder
from .generative_tasks import GenerativeTaskData, load_generative_task
from .inits import get_init, init_depends_on_seed, init_uses_A, task_seed
from .profiles import Profile, apply_threads
from .progress import RunProgress
from .results import machine_description
from .tasks import get_card, list_tasks


def check_generative_tasks(tasks: Sequence[str]) -> None:
    """Every task is a generative card; a classification task gets a one-line error naming the encoder track."""
    for t in tasks:
        if not get_card(t).generative:
            raise LorakitError(f"task {t!r} is a classification task (the encoder track, --model minilm); the causal "
                               f"track takes generative tasks: {', '.join(list_tasks('generative'))}")


def check_causal_profile(p: Profile) -> None:
    """The profile's model is a causal LM and its options belong to this track (one-line errors otherwise)."""
    if model_kind(p.model) != "causal":
        raise LorakitError(f"model {p.model!r} is an encoder; the causal track needs a causal LM (--model smollm2), "
                           "or run the encoder track without --model")
    if {"query", "value", "key"} & set(p.target_modules):
        raise LorakitError(f"target modules {list(p.target_modules)} are BERT's; a Llama-architecture model "
                           "names them q_proj, k_proj, v_proj, o_proj (MLP: gate_proj, up_proj, down_proj)")


def run_causal_benchmark(
    profile: str | Profile | None = None,
    tasks: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    inits: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    figures: bool = True,
    command: str | None = None,
    log: Log = print,
    model: str | None = None,
    **overrides,
) -> dict:
    """Run the causal track's grid and write ``results.json`` (+ ``results.md``, ``RUN.md``, figures,
    ``predictions.jsonl``) to ``out`` (default ``runs/<model>-<profile>-<time>``); nothing half-written on error."""
    t_start = time.perf_counter()
    p = get_causal_profile(profile, model=model, **overrides)
    apply_threads(p)
    tasks = list(tasks or p.tasks)
    methods, inits = list(methods or p.methods), list(inits or p.inits)
    seeds = list(seeds if seeds is not None else p.seeds)
    check_generative_tasks(tasks)
    for m in methods:
        resolve_method(m)
    for i in inits:
        get_init(i)
    if len(tasks) < 2:
        raise LorakitError("merging needs at least two tasks; pass more with --tasks")
    task_seed(0, tasks[0], p.task_seeds)
    check_causal_profile(p)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out) if out else Path("runs") / f"{Path(p.model).name}-{p.name}-{stamp}"
    if out_dir.exists() and not out_dir.is_dir():
        raise LorakitError(f"--out {out_dir} is a file; choose a folder")
    with atomic_folder(out_dir) as tmp:
        results = _run_causal(p, tasks, methods, inits, seeds, progress, log)
        results["command"] = command or " ".join(["lorakit"] + sys.argv[1:])
        results["timings"]["total_seconds"] = round(time.perf_counter() - t_start, 2)
        write_results(results, tmp, figures=figures)
        write_predictions(results, tmp / "predictions.jsonl")
    results["out"] = str(out_dir)
    return results


def causal_task_info(data: Mapping[str, GenerativeTaskData]) -> dict[str, dict]:
    """Per task: split sizes and ``majority``, the constant-answer baseline (the most common training
    target's share of the test targets); ``individual`` and ``floor`` are filled in per (init, seed)."""
    info = {}
    for t, d in data.items():
        common = Counter(d.train[1]).most_common(1)[0][0] if d.train[1] else None
        majority = sum(y == common for y in d.test[1]) / max(len(d.test[1]), 1)
        info[t] = {"majority": majority, "n_test": len(d.test[1]), "n_val": len(d.val[1]), "n_train": len(d.train[1]),
                   "num_labels": None, "prompt": d.card.prompt, "test_inputs": list(d.test[0]),
                   "test_targets": list(d.test[1]), "individual": [], "floor": []}
    return info


def _record_predictions(evaluator: CausalEvaluator, adapters: Mapping, task_info: dict) -> None:
    """Add the test predictions and normalized-match rate to the latest individual and floor entries."""
    for t in adapters:
        for key, deltas in (("individual", adapters[t].deltas), ("floor", {})):
            preds = evaluator.predictions(deltas, t, "test")
            norm = evaluator.normalized_matches(preds, t, "test")
            task_info[t][key][-1].update({"predictions": preds, "normalized_match": sum(norm) / max(len(norm), 1)})
        task_info[t]["individual"][-1]["adapter"] = str(adapters[t].path) if adapters[t].path else None


def _run_causal(p: Profile, tasks: list[str], methods: list[str], inits: list[str], seeds: list[int],
                progress: bool, log: Log) -> dict:
    timings = {"train_seconds": 0.0, "osrm_seconds": 0.0, "merge_seconds": 0.0, "orthogonalize_seconds": 0.0,
               "eval_seconds": 0.0}
    data = {t: load_generative_task(t, profile=p) for t in tasks}
    evaluator = CausalEvaluator(list(data.values()), p)
    task_info = causal_task_info(data)
    records, adapter_stats = [], []
    bar = RunProgress(len(inits), len(seeds), len(tasks), len(methods), enabled=progress, desc="lorakit run (causal)")
    for init in inits:
        init_A = None
        if init_uses_A(init) and not init_depends_on_seed(init):  # OSRM's A: once, from the base model's features
            t0 = time.perf_counter()
            init_A = prepare_causal_init_A(init, data, p, progress=progress)
            timings["osrm_seconds"] += time.perf_counter() - t0
        for seed in seeds:
            if init_uses_A(init) and init_depends_on_seed(init):
                init_A = prepare_causal_init_A(init, data, p, seed)
            t0 = time.perf_counter()
            adapters = train_all_causal(data, p, init, init_A, seed, progress,
                                        on_trained=lambda t: bar.step(f"{init} seed {seed}: adapter {t}"))
            timings["train_seconds"] += time.perf_counter() - t0
            individual = _score_individual(evaluator, adapters, tasks, init, seed, task_info, timings, log)
            _record_predictions(evaluator, adapters, task_info)
            adapter_stats.append({"init": init, "seed": seed,
                                  "magnitude_variance": magnitude_variance([adapters[t].updates for t in tasks])})
            records += _merge_methods(evaluator, adapters, tasks, methods, p, init, seed, individual, timings, log,
                                      task_info, bar)
    bar.close()
    for t in tasks:
        task_info[t]["individual_accuracy"] = mean(r["test"] for r in task_info[t]["individual"])
        task_info[t]["train_seconds"] = mean(r["train_seconds"] for r in task_info[t]["individual"]
                                             if r.get("train_seconds") is not None)
    timings["generate_seconds"] = evaluator.seconds
    return {
        "lorakit": __version__,
        "track": "causal",
        "metric": "exact match (greedy decoding); normalized match in each record's normalized_match",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "profile": p.name,
        "profile_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.__dict__.items()},
        "model": p.model,
        "machine": machine_description(p.device),
        "eval_dtype": str(evaluator.eval_dtype).replace("torch.", ""),
        "tasks": task_info,
        "methods": methods,
        "inits": inits,
        "seeds": seeds,
        "records": records,
        "adapter_stats": adapter_stats,
        "throughput": evaluator.throughput(),
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }


def write_predictions(results: Mapping, path: Path) -> None:
    """``predictions.jsonl``: one JSON line per test example of every scored model (individual, floor, merges)."""
    tasks = results["tasks"]
    with open(path, "w", encoding="utf-8") as f:
        def rows(model: str, init: str, seed: int, task: str, preds: Sequence[str]):
            for i, pred in enumerate(preds):
                f.write(json.dumps({"model": model, "init": init, "seed": seed, "task": task, "index": i,
                                    "input": tasks[task]["test_inputs"][i], "target": tasks[task]["test_targets"][i],
                                    "prediction": pred,
                                    "exact": exact_match(pred, tasks[task]["test_targets"][i])}) + "\n")

        for t, info in tasks.items():
            for key in ("individual", "floor"):
                for e in info[key]:
                    rows(key, e["init"], e["seed"], t, e.get("predictions", []))
        for r in results["records"]:
            for t, preds in r.get("predictions", {}).items():
                rows(r["method"], r["init"], r["seed"], t, preds)
