r"""The magnitude-variance claims (a), (b), (c) of docs/methods.md §3.5, as tested pieces.

* **Full fine-tuning, tuned:** :func:`tune_full_ft` trains :func:`lorakit.train.encoder.train_full` at a few
  learning rates, picks one per task on validation (:func:`choose_lr`) and keeps the task only if the
  chosen model beats the majority class by a margin (:func:`beats_majority`); an excluded task is
  recorded with its numbers.
* **Dense merging:** :func:`merge_dense` merges full-FT task vectors ``{module: ΔW_i}`` with a
  registered method's dense rule (``task_arithmetic_dense``, ``ties_dense``, ``dare_dense``) on the
  stacked :math:`(N, d_{out}, d_{in})` deltas, with :func:`lorakit.merge.merge_adapters`' per-layer seeds.
* **Pair magnitude variance:** :func:`pair_mv_matrix` gives :math:`M_{ik}` =
  :func:`lorakit.lora.measures.magnitude_variance_pairwise` of tasks i and k; the bias-free group measure
  is the mean of :math:`M` over the group's pairs (:func:`group_mv`), so every group of every size is
  read off one matrix.
* **Claim records:** :func:`claim_a_record`, :func:`claim_b_record`, :func:`claim_c_record` turn
  per-example correctness and per-group numbers into effects, CIs and three-valued verdicts
  (:func:`lorakit.stats.paired.verdict`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..lora.measures import magnitude_variance_pairwise
from ..stats.correlation import group_correlation
from ..errors import LorakitError
from ..lora.update import LoRAUpdate, check_compatible
from ..merge import METHODS, layer_params, resolve_params
from ..stats.mv_study import (bootstrap_spearman, fixed_effects_slope, leave_one_task_out, multi_bootstrap,
                       normalized_difference, pair_bootstrap_over_tasks)
from ..profiles import Profile, get_profile
from ..stats.paired import paired_t_interval, verdict
from ..data.tasks import load_task
from ..train.inits import task_seed
from ..train.encoder import train_full
from ..train.loop import TrainedAdapter

#: full-FT weight learning rates tried, as multiples of train_full's default ``lr / 20``; the ci profile
#: chose × 3 (the top of (1/3, 1, 3)) for two of its three tasks, hence the × 10 point
FT_LR_FACTORS = (1 / 3, 1.0, 3.0, 10.0)
#: the chosen full-FT model must beat the majority class by this much (accuracy, on validation)
MAJORITY_MARGIN = 0.10


def choose_lr(val_by_lr: Mapping[float, Sequence[float]]) -> float:
    """The learning rate with the highest mean validation accuracy over seeds (the first listed on ties)."""
    if not val_by_lr or any(len(v) == 0 for v in val_by_lr.values()):
        raise LorakitError("choose_lr needs at least one learning rate with at least one validation accuracy")
    best, best_val = None, -math.inf
    for lr, vals in val_by_lr.items():
        if float(np.mean(vals)) > best_val:
            best, best_val = lr, float(np.mean(vals))
    return float(best)


def beats_majority(accuracy: float, majority: float, margin: float = MAJORITY_MARGIN) -> bool:
    """``accuracy − majority ≥ margin`` (1e-12 slack for float rounding)."""
    return float(accuracy) - float(majority) >= margin - 1e-12


@dataclass
class FullFTChoice:
    """One task's full fine-tuning learning-rate sweep and the keep/exclude decision.

    ``runs[lr]``: per seed trained at that lr ``{"seed", "run_seed", "val_acc", "test_acc"}`` (the tuning
    seeds at every lr, all seeds at the chosen one); ``chosen_lr`` maximises the tuning seeds' mean
    ``val_acc``; ``kept``: its mean val accuracy beats ``majority_val`` by ``margin``;
    ``adapters``: ``{seed: TrainedAdapter}`` at the chosen lr; ``at_edge``: the chosen lr is the
    smallest or largest tried (a wider sweep might do better).
    """
    task: str
    runs: dict[float, list[dict]]
    majority_val: float
    majority_test: float
    chosen_lr: float
    kept: bool
    margin: float
    reason: str
    at_edge: bool = False
    adapters: dict[int, TrainedAdapter] = field(default_factory=dict, repr=False)

    def record(self) -> dict:
        """JSON-ready summary (no tensors)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "adapters"}
        d["runs"] = {f"{lr:.6g}": runs for lr, runs in self.runs.items()}
        return d


def tune_full_ft(task: str, profile: str | Profile | None, lrs: Sequence[float], seeds: Sequence[int] = (0,),
                 margin: float = MAJORITY_MARGIN, train_fn: Callable[..., TrainedAdapter] = train_full,
                 tune_seeds: Sequence[int] | None = None) -> FullFTChoice:
    """Full fine-tuning of ``task``: the lr chosen on validation from ``lrs``, then every seed at that lr.

    The sweep trains ``lrs`` × ``tune_seeds`` (default: the first seed only) and picks the lr with the
    best mean validation accuracy (:func:`choose_lr`); the other ``seeds`` are trained at that lr.
    Each run is ``train_fn(task, profile, seed=task_seed(seed, task, profile.task_seeds), lr=lr)``
    (cached by :func:`lorakit.train.encoder.train_full`), so full FT and LoRA use the same per-task seeds.
    The task is kept iff the chosen lr's mean validation accuracy over all ``seeds`` beats the
    validation majority rate by ``margin`` (the test split plays no part in either choice).
    """
    p = get_profile(profile)
    if not lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in lrs):
        raise LorakitError(f"full-FT learning rates must be positive numbers, got {list(lrs)}")
    seeds = list(seeds)
    tune_seeds = list(tune_seeds) if tune_seeds is not None else seeds[:1]
    if not tune_seeds or not set(tune_seeds) <= set(seeds):
        raise LorakitError(f"tune_seeds {tune_seeds} must be a non-empty subset of the seeds {seeds}")
    data = load_task(task, profile=p)
    runs: dict[float, list[dict]] = {float(lr): [] for lr in lrs}
    models: dict[float, dict[int, TrainedAdapter]] = {float(lr): {} for lr in lrs}

    def train(lr: float, seed: int) -> None:
        run_seed = task_seed(seed, task, p.task_seeds)
        ad = train_fn(task, p, seed=run_seed, lr=lr, progress=False)
        models[lr][seed] = ad
        runs[lr].append({"seed": seed, "run_seed": run_seed, "val_acc": ad.metrics["val_acc"],
                         "test_acc": ad.metrics["test_acc"]})

    for lr in runs:
        for seed in tune_seeds:
            train(lr, seed)
    chosen = choose_lr({lr: [r["val_acc"] for r in rs] for lr, rs in runs.items()})
    for seed in seeds:
        if seed not in models[chosen]:
            train(chosen, seed)
    val = float(np.mean([r["val_acc"] for r in runs[chosen]]))
    maj_val, maj_test = data.majority_baseline("val"), data.majority_baseline("test")
    kept = beats_majority(val, maj_val, margin)
    reason = (f"mean val accuracy {val:.3f} at lr {chosen:.3g} is {val - maj_val:+.3f} from the majority rate "
              f"{maj_val:.3f} ({'≥' if kept else '<'} the required {margin:+.2f})")
    at_edge = len(runs) > 1 and chosen in (min(runs), max(runs))
    return FullFTChoice(task, runs, maj_val, maj_test, chosen, kept, margin, reason, at_edge,
                        {s: models[chosen][s] for s in seeds})


def merge_dense(adapters: Sequence[Mapping[str, LoRAUpdate]], method: str, **params) -> dict[str, torch.Tensor]:
    r"""Merge dense task vectors layer by layer with ``method``'s dense rule: ``{module: ΔW*}`` (float32).

    Per module, :math:`\tau^* = f(\operatorname{stack}_i \Delta W_i)` with the stack
    :math:`(N, d_{out}, d_{in})` of the tasks' ``update.delta()`` (for full fine-tuning
    ``LoRAUpdate.from_dense``, ``A = I``) and ``f = METHODS[method].dense``; the parameters are checked
    as :func:`lorakit.merge.merge_adapters` checks them and a method with a ``seed`` gets
    :func:`lorakit.merge.layer_seed` per module, as there. Same ΔW* as merge_adapters for
    task arithmetic and TIES (up to float rounding), without the factored path's ``B @ I`` products.
    """
    adapters = list(adapters)
    check_compatible(adapters)
    spec = METHODS.get(method)
    if spec is None or spec.dense is None:
        dense = sorted(n for n, s in METHODS.items() if s.dense is not None)
        raise LorakitError(f"method {method!r} has no dense rule for full-FT task vectors; choose one of {dense}")
    resolved = resolve_params(method, params)
    merged = {}
    for module in adapters[0]:
        stack = torch.stack([ad[module].delta(torch.float32) for ad in adapters])
        merged[module] = spec.dense(stack, **layer_params(resolved, module)).float()
    return merged


def pair_mv_matrix(updates: Mapping[str, Mapping[str, LoRAUpdate]], tasks: Sequence[str],
                   axis: str = "in") -> np.ndarray:
    """``(T, T)`` matrix of :func:`magnitude_variance_pairwise` of every task pair (diagonal 0)."""
    tasks = list(tasks)
    out = np.zeros((len(tasks), len(tasks)))
    for i, k in combinations(range(len(tasks)), 2):
        out[i, k] = out[k, i] = magnitude_variance_pairwise([updates[tasks[i]], updates[tasks[k]]], axis=axis)
    return out


def group_mv(matrix: np.ndarray, members: Sequence[int]) -> float:
    r"""The bias-free magnitude variance of a group from the pair matrix: :math:`\binom{|g|}{2}^{-1}\sum_{i<k \in g} M_{ik}`.

    Equals :func:`magnitude_variance_pairwise` of the group's updates (its mean over layers of means
    over pairs is the mean over pairs of each pair's value).
    """
    members = list(members)
    if len(members) < 2 or len(set(members)) != len(members):
        raise LorakitError(f"a group needs at least 2 distinct tasks, got {members}")
    return float(np.mean([matrix[i, k] for i, k in combinations(members, 2)]))


def task_groups(tasks: Sequence[str], sizes: Sequence[int] = (2, 3), max_groups: int | None = None,
                seed: int = 0) -> list[tuple[str, ...]]:
    """All groups of each size (combination order); with ``max_groups``, a seeded random subset of that many, in order."""
    groups = [g for k in sizes for g in combinations(list(tasks), k)]
    if max_groups is not None and max_groups < len(groups):
        keep = np.sort(np.random.default_rng(seed).choice(len(groups), size=max_groups, replace=False))
        groups = [groups[i] for i in keep]
    return groups


def _verdict_dict(v) -> dict:
    return dataclasses.asdict(v)


def claim_a_record(merged: Mapping[str, Mapping[int, Mapping[str, np.ndarray]]],
                   individual: Mapping[str, Mapping[int, Mapping[str, np.ndarray]]], *,
                   n_resamples: int = 10_000, seed: int = 0) -> dict:
    r"""Claim (a) for one merge method: normalized accuracy of merged LoRA minus merged full FT, paired CI.

    ``merged[family][seed][task]`` and ``individual[family][seed][task]``: per-example test
    correctness (families ``"lora"`` and ``"full_ft"``, the same seeds, tasks and examples). Effect
    :math:`\frac1T\sum_t \bar m^{L}_t/\bar i^{L}_t - \frac1T\sum_t \bar m^{F}_t/\bar i^{F}_t` (each bar:
    mean over seeds and examples) with the :func:`lorakit.stats.mv_study.multi_bootstrap` CI; the paper
    says LoRA merges worse (direction −1).
    """
    seeds = sorted(merged["lora"])
    tasks = list(merged["lora"][seeds[0]])
    scores = {t: np.stack([np.stack([np.asarray(src[fam][s][t], dtype=np.float64) for s in seeds])
                           for fam, src in (("lora", merged), ("lora", individual), ("full_ft", merged),
                                            ("full_ft", individual))]) for t in tasks}
    boot = multi_bootstrap(scores, normalized_difference, n_resamples=n_resamples, seed=seed)
    v = verdict(boot.ci.low, boot.ci.high, -1, claim="(a) merging LoRA adapters keeps less than merging full FT")
    per_seed = {fam: [float(np.mean([np.mean(merged[fam][s][t]) / np.mean(individual[fam][s][t]) for t in tasks]))
                      for s in seeds] for fam in ("lora", "full_ft")}
    return {"effect": boot.ci.estimate, "ci": [boot.ci.low, boot.ci.high], "ci_method": boot.ci.method,
            "normalized_per_seed": per_seed, "seeds": seeds, "tasks": tasks, "verdict": v.verdict,
            "decision": _verdict_dict(v)}


def claim_b_record(pair_mv: Mapping[str, Mapping[int, np.ndarray]], tasks: Sequence[str], *,
                   n_resamples: int = 10_000, seed: int = 0) -> dict:
    r"""Claim (b): the bias-free magnitude variance of LoRA minus full FT on the same tasks.

    ``pair_mv[family][seed]``: the :func:`pair_mv_matrix` of the kept tasks. Per seed
    :math:`d_s = \overline{M^L_s} - \overline{M^F_s}` (means over task pairs, independent of T in
    expectation). The verdict's CI is the paired t interval over seeds (tasks fixed, as in
    :mod:`lorakit.stats.paired`) when there are ≥ 2 seeds, else the bootstrap over tasks of the seed-mean
    pair differences (:func:`lorakit.stats.mv_study.pair_bootstrap_over_tasks`, always reported, as a check
    that the effect is not carried by a few tasks). The paper says LoRA varies more (+1).
    """
    seeds = sorted(pair_mv["lora"])
    iu = np.triu_indices(len(tasks), 1)
    mv = {fam: [float(np.asarray(pair_mv[fam][s])[iu].mean()) for s in seeds] for fam in ("lora", "full_ft")}
    diff = np.mean([np.asarray(pair_mv["lora"][s]) - np.asarray(pair_mv["full_ft"][s]) for s in seeds], axis=0)
    over_tasks = pair_bootstrap_over_tasks(diff, n_resamples=n_resamples, seed=seed)
    if len(seeds) >= 2:
        ci = paired_t_interval(mv["lora"], mv["full_ft"])
    else:
        ci = over_tasks
    v = verdict(ci.low, ci.high, +1, claim="(b) LoRA updates vary more in magnitude across tasks than full FT")
    return {"mv_per_seed": mv, "effect": ci.estimate, "ci": [ci.low, ci.high], "ci_method": ci.method,
            "over_tasks": {"ci": [over_tasks.low, over_tasks.high], "method": over_tasks.method,
                           "verdict": verdict(over_tasks.low, over_tasks.high, +1).verdict},
            "measure": "magnitude_variance_pairwise, axis 'in' (mean over task pairs; expectation independent of N)",
            "seeds": seeds, "tasks": list(tasks), "verdict": v.verdict, "decision": _verdict_dict(v)}


def claim_c_record(points: Sequence[Mapping], *, n_resamples: int = 5000, seed: int = 0) -> dict:
    r"""Claim (c): across task groups, higher magnitude variance ↔ lower merged normalized accuracy.

    ``points``: per group ``{"group": [tasks], "mv": x_g, "normalized": y_g}``. Within each group
    size: Spearman's ρ with its permutation p-value (:func:`lorakit.stats.correlation.group_correlation`), a
    bootstrap CI over groups and its verdict (paper: ρ < 0), and ρ without each task
    (:func:`lorakit.stats.mv_study.leave_one_task_out`). Over all sizes: the fixed-effects slope
    (:func:`lorakit.stats.mv_study.fixed_effects_slope`), whose t CI gives the claim's verdict (paper: β < 0).
    """
    by_size: dict[str, dict] = {}
    for k in sorted({len(q["group"]) for q in points}):
        pts = [q for q in points if len(q["group"]) == k]
        xs, ys, groups = [q["mv"] for q in pts], [q["normalized"] for q in pts], [q["group"] for q in pts]
        rec: dict = {"n": len(pts)}
        if len(pts) >= 3:
            corr = group_correlation(xs, ys, seed=seed)
            ci = bootstrap_spearman(xs, ys, n_resamples=n_resamples, seed=seed)
            rec |= {"spearman": corr["spearman"], "spearman_p": corr["spearman_p"], "pearson": corr["pearson"],
                    "pearson_p": corr["pearson_p"], "spearman_ci": [ci.low, ci.high], "ci_method": ci.method,
                    "leave_one_task_out": leave_one_task_out(groups, xs, ys)}
            if not (math.isnan(ci.low) or math.isnan(ci.high)):
                rec["verdict"] = verdict(ci.low, ci.high, -1).verdict
        by_size[str(k)] = rec
    out: dict = {"by_size": by_size, "verdict": "inconclusive", "fixed_effects": None}
    try:
        fe = fixed_effects_slope([q["group"] for q in points], [q["mv"] for q in points],
                                 [q["normalized"] for q in points])
    except LorakitError as exc:
        out["fixed_effects_error"] = str(exc)
        return out
    v = verdict(fe["ci"][0], fe["ci"][1], -1, claim="(c) higher magnitude variance, worse merge (task fixed effects)")
    return out | {"fixed_effects": fe, "verdict": v.verdict, "decision": _verdict_dict(v)}
