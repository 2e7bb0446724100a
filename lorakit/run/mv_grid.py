r"""Run the magnitude-variance study (claims (a), (b), (c), :mod:`lorakit.run.mv_study`) for a profile, tasks and seeds.

Per seed: LoRA adapters from the cache (:func:`lorakit.train.encoder.train_all`, per-task seeds), full
fine-tunes tuned per task (:func:`lorakit.run.mv_study.tune_full_ft`). Then

* (a) every kept task merged at once, per method, per family (LoRA: :func:`lorakit.merge.merge_adapters`;
  full FT: :func:`lorakit.run.mv_study.merge_dense`), hyperparameters on validation with the benchmark's
  grid (:func:`lorakit.run.search.method_grid`, the profile's λ edge extension), test once;
* (b) the pair magnitude-variance matrices of the kept tasks, both families;
* (c) every group of 2 and 3 tasks (LoRA), task arithmetic with λ on validation from a short grid.

:func:`run_study` returns one JSON-ready dict; ``tools/mv_study.py`` writes it.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import LorakitError
from ..eval.encoder import Evaluator
from ..merge import merge_adapters
from .mv_study import (FT_LR_FACTORS, MAJORITY_MARGIN, claim_a_record, claim_b_record, claim_c_record, group_mv,
                       merge_dense, pair_mv_matrix, task_groups, tune_full_ft)
from ..profiles import Profile, apply_threads, get_profile
from ..eval.correctness import decode_correct
from .search import method_grid, select_and_report
from ..train.encoder import train_all
from ..train.loop import TrainedAdapter

CLAIM_A_METHODS = ("task_arithmetic", "ties", "dare")
CLAIM_C_LAMS = (0.4, 0.7, 1.0)
FAMILIES = ("lora", "full_ft")


def _merge_fn(family: str, method: str, adapters: Sequence[TrainedAdapter]) -> Callable[..., dict]:
    updates = [a.updates for a in adapters]
    if family == "lora":
        return lambda **params: merge_adapters(updates, method, **params)
    return lambda **params: merge_dense(updates, method, **params)


def _individual(ev: Evaluator, ads: Mapping[str, TrainedAdapter]) -> dict:
    """Each task's own model: val / test accuracy and the per-example test correctness."""
    correct = ev.correct_tasks(lambda t: ads[t].deltas, ads, "test")
    return {"val": ev.individual(ads, "val"), "test": {t: float(c.float().mean()) for t, c in correct.items()},
            "test_correct": {t: c.numpy() for t, c in correct.items()}}


def _claim_a(ev, p, kept, family_ads, indiv, methods, seeds, n_resamples, log) -> dict:
    out = {}
    for method in methods:
        merged = {fam: {} for fam in FAMILIES}
        runs = {fam: {} for fam in FAMILIES}
        for seed in seeds:
            for fam in FAMILIES:
                ads = {t: family_ads[fam][seed][t] for t in kept}
                ind = indiv[fam][seed]
                rec = select_and_report(ev, ads, _merge_fn(fam, method, list(ads.values())), method_grid(method, p),
                                        {t: ind["val"][t] for t in kept}, {t: ind["test"][t] for t in kept},
                                        extend_edges=p.lam_extend)
                merged[fam][seed] = {t: decode_correct(rec["test_correct"][t]) for t in kept}
                runs[fam][seed] = {"params": rec["params"], "avg_normalized": rec["avg_normalized"],
                                   "avg_accuracy": rec["avg_accuracy"], "accuracy": rec["accuracy"],
                                   "curve": [{"params": c["params"], "val_normalized": c["val_normalized"]}
                                             for c in rec["curve"]]}
                log(f"(a) {method} {fam} seed {seed}: normalized {rec['avg_normalized']:.3f} at {rec['params']}")
        individual = {fam: {s: {t: indiv[fam][s]["test_correct"][t] for t in kept} for s in seeds} for fam in FAMILIES}
        out[method] = claim_a_record(merged, individual, n_resamples=n_resamples) | {"runs": runs}
    return out


def _claim_c(ev, tasks, lora, indiv, seeds, groups, lams, n_resamples, log) -> dict:
    index = {t: i for i, t in enumerate(tasks)}
    pair = {s: pair_mv_matrix({t: lora[s][t].updates for t in tasks}, tasks) for s in seeds}
    grid = [{"lam": float(lam)} for lam in lams]
    points = []
    for g in groups:
        per_seed = []
        for s in seeds:
            ads = {t: lora[s][t] for t in g}
            rec = select_and_report(ev, ads, _merge_fn("lora", "task_arithmetic", list(ads.values())), grid,
                                    {t: indiv["lora"][s]["val"][t] for t in g}, {t: indiv["lora"][s]["test"][t] for t in g})
            per_seed.append({"seed": s, "mv": group_mv(pair[s], [index[t] for t in g]), "lam": rec["params"]["lam"],
                             "normalized": rec["avg_normalized"], "accuracy": rec["accuracy"]})
        points.append({"group": list(g), "mv": float(np.mean([q["mv"] for q in per_seed])),
                       "normalized": float(np.mean([q["normalized"] for q in per_seed])), "per_seed": per_seed})
        log(f"(c) {' + '.join(g)}: MV {points[-1]['mv']:.4f}, normalized {points[-1]['normalized']:.3f}")
    return claim_c_record(points, n_resamples=min(n_resamples, 5000)) | {
        "points": points, "lam_grid": list(lams), "pair_mv": {str(s): pair[s].tolist() for s in seeds}}


def full_ft_lrs(p: Profile, lr_factors: Sequence[float] = FT_LR_FACTORS) -> list[float]:
    """The full-FT learning rates of the sweep: the profile's LoRA lr / 20 times each factor."""
    return [p.lr / 20 * f for f in lr_factors]


def full_ft_choices(tasks, p, seeds, lrs, margin, tune_seeds, log) -> dict:
    """``{task: FullFTChoice}`` of :func:`lorakit.run.mv_study.tune_full_ft` (it caches every model it trains), one log line each."""
    choices = {}
    for t in tasks:
        choices[t] = tune_full_ft(t, p, lrs, seeds, margin, tune_seeds=tune_seeds)
        log(f"full FT {t}: {choices[t].reason} → {'kept' if choices[t].kept else 'excluded'}")
    return choices


def run_study(profile: str | Profile | None, tasks: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
              *, task_seeds: str = "per_task", lr_factors: Sequence[float] = FT_LR_FACTORS,
              margin: float = MAJORITY_MARGIN, methods: Sequence[str] = CLAIM_A_METHODS,
              c_lams: Sequence[float] = CLAIM_C_LAMS, group_sizes: Sequence[int] = (2, 3),
              max_groups: int | None = None, c_seeds: Sequence[int] | None = None,
              ft_tune_seeds: Sequence[int] | None = None, n_resamples: int = 10_000,
              log: Callable[[str], None] = lambda msg: None) -> dict:
    """The whole study; returns every number, the decisions and the verdicts (see the module docstring).

    ``lr_factors`` multiply full FT's default weight lr (profile ``lr / 20``), swept on ``ft_tune_seeds``
    (default: the first seed; :func:`lorakit.run.mv_study.tune_full_ft`); ``max_groups`` caps the
    claim (c) groups (a seeded subset) and ``c_seeds`` its seeds (default: all; claim (c) is most of the
    evaluation: every group is merged and scored); ``n_resamples`` sizes every bootstrap.
    """
    clock = _Clock()
    p = get_profile(profile, task_seeds=task_seeds)
    apply_threads(p)
    tasks = list(tasks or p.tasks)
    seeds = [int(s) for s in (seeds if seeds is not None else p.seeds)]
    if len(tasks) < 2 or len(set(tasks)) != len(tasks) or not seeds:
        raise LorakitError(f"the study needs at least 2 distinct tasks and 1 seed, got tasks {tasks}, seeds {seeds}")
    c_seeds = [int(s) for s in c_seeds] if c_seeds is not None else seeds
    if not c_seeds or not set(c_seeds) <= set(seeds):
        raise LorakitError(f"c_seeds {c_seeds} must be a non-empty subset of the seeds {seeds}")
    lora = {s: train_all(tasks, p, seed=s, progress=False) for s in seeds}
    log(f"LoRA adapters ready ({len(tasks)} tasks × {len(seeds)} seeds)")
    clock.lap("train_lora")
    lrs = full_ft_lrs(p, lr_factors)
    choices = full_ft_choices(tasks, p, seeds, lrs, margin, ft_tune_seeds, log)
    clock.lap("train_full_ft")
    kept = [t for t in tasks if choices[t].kept]
    ev = Evaluator(tasks, p)
    family_ads = {"lora": lora, "full_ft": {s: {t: choices[t].adapters[s] for t in tasks} for s in seeds}}
    indiv = {fam: {s: _individual(ev, family_ads[fam][s]) for s in seeds} for fam in FAMILIES}
    clock.lap("individual")
    record = _header(p, tasks, seeds, choices, lrs, lr_factors, margin, indiv, ft_tune_seeds)
    record["majority_test"] = ev.majority("test")
    if len(kept) >= 2:
        record["claim_a"] = _claim_a(ev, p, kept, family_ads, indiv, methods, seeds, n_resamples, log)
        pair = {fam: {s: pair_mv_matrix({t: family_ads[fam][s][t].updates for t in kept}, kept) for s in seeds}
                for fam in FAMILIES}
        record["claim_b"] = claim_b_record(pair, kept, n_resamples=n_resamples)
    else:
        record["claim_a"] = record["claim_b"] = {"verdict": "inconclusive",
                                                 "skipped": f"only {len(kept)} task(s) kept for full FT; need 2"}
    clock.lap("claims_a_b")
    groups = task_groups(tasks, group_sizes, max_groups)
    record["claim_c"] = _claim_c(ev, tasks, lora, indiv, c_seeds, groups, c_lams, n_resamples, log)
    record["claim_c"] |= {"seeds": c_seeds, "tasks_note": None if len(tasks) >= 8 else
                          f"only {len(tasks)} tasks: the issue asks for ≥ 8 for claim (c)"}
    clock.lap("claim_c")
    record["verdicts"] = {"a": _combined_a(record["claim_a"], methods), "b": record["claim_b"]["verdict"],
                          "c": record["claim_c"]["verdict"]}
    record["verdicts"] |= {f"a_{m}": record["claim_a"][m]["verdict"] for m in methods if m in record["claim_a"]}
    record["seconds"] = clock.laps | {"total": round(clock.total(), 1)}
    return record


class _Clock:
    """Seconds per phase of the study (``laps``), for sizing the next run."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name], self.last = round(now - self.last, 1), now

    def total(self) -> float:
        return time.perf_counter() - self.start


def _header(p, tasks, seeds, choices, lrs, lr_factors, margin, indiv, ft_tune_seeds) -> dict:
    """The study's settings, the full-FT sweep and exclusions, and each family's own accuracies."""
    return {
        "profile": p.name, "tasks": tasks, "seeds": seeds, "task_seeds": p.task_seeds,
        "kept_tasks": [t for t in tasks if choices[t].kept],
        "excluded_tasks": {t: choices[t].record() for t in tasks if not choices[t].kept},
        "full_ft": {t: choices[t].record() for t in tasks},
        "full_ft_rule": f"lr from {[f'{lr:.3g}' for lr in lrs]} (lr/20 × {list(lr_factors)}) by val accuracy of "
                        f"seed(s) {list(ft_tune_seeds or seeds[:1])}, then every seed at that lr; kept iff the mean "
                        f"val accuracy over seeds beats the val majority rate by ≥ {margin}",
        "individual": {fam: {str(s): {"val": indiv[fam][s]["val"], "test": indiv[fam][s]["test"]} for s in seeds}
                       for fam in FAMILIES},
    }


def _combined_a(claim_a: Mapping, methods: Sequence[str]) -> str:
    """Claim (a) over methods: ``held`` / ``contradicted`` if every method says so, else ``inconclusive``."""
    found = {claim_a[m]["verdict"] for m in methods if m in claim_a}
    return found.pop() if len(found) == 1 else "inconclusive"
