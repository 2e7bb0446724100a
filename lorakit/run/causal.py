"""The causal-LM track's main job (``lorakit run --model smollm2``): the encoder track's grid on generative tasks.

For every init and seed: one LoRA adapter per generative task on the causal base model (no heads;
:mod:`lorakit.train.causal`), each adapter alone and the base model alone scored by greedy exact
match (the normalizer and the floor), then every merge method with λ and its second
hyperparameter chosen on validation and reported on test: the grid both tracks share
(:func:`lorakit.run.grid.run_grid`, the same search and budget as the encoder track) with
:data:`CAUSAL`, whose evaluator is :class:`lorakit.eval.causal.CausalEvaluator`. The run folder gets what the encoder track writes (``results.json``,
``results.md``, ``RUN.md``, figures: the same statistics) plus ``predictions.jsonl``, one line per
test example of every scored model. The track's design choices: docs/methods.md §5.7.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

from ..data.models import model_kind
from .grid import Log, Track, check_grid, run_to_folder
from ..eval.causal import exact_match
from ..eval.causal import CausalEvaluator
from ..profiles import get_causal_profile
from ..train.causal import prepare_causal_init_A, train_all_causal
from ..errors import LorakitError
from ..data.generative import GenerativeTaskData, load_generative_task
from ..profiles import Profile, apply_threads
from ..eval.correctness import mean
from ..data.tasks import get_card, list_tasks


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
    check_grid(tasks, methods, inits, p.task_seeds)
    check_causal_profile(p)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out) if out else Path("runs") / f"{Path(p.model).name}-{p.name}-{stamp}"
    return run_to_folder(CAUSAL, p, tasks, methods, inits, seeds, out_dir, progress, log, command, figures, t_start)


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


def _finish(evaluator: CausalEvaluator, task_info: dict, timings: dict) -> dict:
    """Per-task training time, generation time, and the fields only this track writes."""
    for info in task_info.values():
        info["train_seconds"] = mean(r["train_seconds"] for r in info["individual"] if r.get("train_seconds") is not None)
    timings["generate_seconds"] = evaluator.seconds
    return {"track": "causal",
            "metric": "exact match (greedy decoding); normalized match in each record's normalized_match",
            "eval_dtype": str(evaluator.eval_dtype).replace("torch.", ""), "throughput": evaluator.throughput()}


def _prepare_init_A(init: str, data: Mapping[str, GenerativeTaskData], p: Profile, seed: int | None, progress: bool):
    return prepare_causal_init_A(init, data, p, progress=progress) if seed is None else \
        prepare_causal_init_A(init, data, p, seed)


#: the causal-LM track: generative tasks, no heads, greedy decoding scored by exact match
CAUSAL = Track(
    name="causal",
    load_task=lambda name, p: load_generative_task(name, profile=p),
    evaluator=lambda data, p: CausalEvaluator(data, p),
    task_info=causal_task_info,
    prepare_init_A=_prepare_init_A,
    train_all=lambda init, data, p, init_A, seed, progress, on_trained: train_all_causal(
        data, p, init, init_A, seed, progress, on_trained=on_trained),
    after_individual=_record_predictions,
    finish=_finish,
    write_extra=lambda results, folder: write_predictions(results, folder / "predictions.jsonl"),
)


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
