"""The hyperparameter search of every merge method, in one place, naming no method.

A method's search, on the validation split, with the same budget for every method:

1. **the λ grid** (the profile's ``lam_grid``), each point naming the method's tuned parameter at its
   default where the method says so (``MergeMethod.tune_in_grid``: TIES ``{"lam": 0.3, "density": 0.2}``);
2. **the edge extension**: while the chosen λ is the smallest λ tried, also ``λ/2``; while the largest,
   ``1.5 λ`` (at most the profile's ``lam_extend`` points; :func:`edge_extension`);
3. **the second stage**: at the chosen λ, the method's tuned parameter (``MergeMethod.tune``, its base's
   for a DO-Merging variant: :func:`tuned_param`) at the profile's two ``tune_grid`` values; a method
   with λ alone tries λ × the two ``lam`` factors instead;
4. **the choice**: the point with the best mean normalized validation accuracy (the first on ties),
   scored once on test (or at every point with ``test_curves``): :func:`select_and_report`.

Which parameter a method tunes is declared where the method is registered (``@register(..., tune=...)``),
as mergekit keeps parameter definitions on its methods; this module knows no method by name.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping, Sequence

import torch

from ..errors import LorakitError
from ..eval.scorer import TaskScorer, accuracies, normalized_accuracy
from ..lora.update import LoRAUpdate
from ..merge import METHODS, ORTHO_OPTIONS, merge_adapters, resolve_variant, variant_base
from ..profiles import Profile
from ..eval.correctness import encode_correct, mean

Refine = Callable[[Mapping], Sequence[dict]]


def direction_owner(method: str) -> str:
    """The registered method whose rule merges the directions: a variant's base (``do_ties`` → ties), else itself."""
    registered, _ = resolve_variant(method)
    return variant_base(method) if METHODS[registered].variants else registered


def tuned_param(method: str) -> str | None:
    """The hyperparameter ``method``'s second stage tunes: its direction owner's ``tune``, else its own, else None."""
    registered, _ = resolve_variant(method)
    owner = direction_owner(method)
    return METHODS[owner].tune or METHODS[registered].tune


def method_grid(method: str, profile: Profile) -> list[dict]:
    """The λ stage of ``method``'s search: one point per λ of the profile's grid.

    Each point names the direction owner's tuned parameter at its default when the owner says so
    (``tune_in_grid``), and a DO-Merging variant's points name its ``base``.
    """
    registered, _ = resolve_variant(method)
    owner = direction_owner(method)
    spec = METHODS[owner]
    pinned = {spec.tune: spec.params[spec.tune]} if spec.tune and spec.tune_in_grid else {}
    points = [{"lam": lam, **pinned} for lam in profile.lam_grid]
    return [dict(p, base=owner) for p in points] if METHODS[registered].variants else points


def method_refine(method: str, profile: Profile) -> Refine | None:
    """The second stage of ``method``'s search: a function ``chosen point → points to try`` (or None).

    Every method gets the same number of extra validation points (the profile's ``tune_grid`` holds
    two values per hyperparameter): its :func:`tuned_param` at those values at the chosen λ, or, for a
    method with λ alone, λ × the ``lam`` factors. Equal budgets keep a baseline from losing only
    because it was searched less.
    """
    grid = dict(profile.tune_grid or {})
    key = tuned_param(method) or "lam"
    values = grid.get(key)
    if not values:
        return None
    if key == "lam":
        return lambda chosen: [dict(chosen, lam=round(chosen["lam"] * f, 4)) for f in values]
    return lambda chosen: [dict(chosen, **{key: v}) for v in values]


def edge_extension(chosen: Mapping, tried: Sequence[Mapping], down: float = 0.5, up: float = 1.5) -> dict | None:
    """The next λ to try when ``chosen["lam"]`` is at the edge of the λ values ``tried``, else ``None``.

    Smallest λ tried → ``down · λ``; largest → ``up · λ`` (rounded to 4 decimals); the other
    parameters stay as chosen. ``None`` without ``lam``, with fewer than two λ values, or inside.
    """
    if "lam" not in chosen:
        return None
    lams = sorted({p["lam"] for p in tried if "lam" in p})
    if len(lams) < 2:
        return None
    if chosen["lam"] == lams[0]:
        return dict(chosen, lam=round(chosen["lam"] * down, 4))
    if chosen["lam"] == lams[-1]:
        return dict(chosen, lam=round(chosen["lam"] * up, 4))
    return None


def select_and_report(
    evaluator: TaskScorer,
    adapters: Mapping,
    merge_fn: Callable[..., Mapping[str, torch.Tensor]],
    grid: Sequence[dict],
    individual_val: Mapping[str, float] | None = None,
    individual_test: Mapping[str, float] | None = None,
    test_curve: bool = False,
    extend_edges: int = 0,
    refine: Refine | None = None,
) -> dict:
    """Choose merge hyperparameters on validation, report on test.

    ``merge_fn(**params)`` returns the merged ``{module: ΔW}``; ``grid`` lists the parameter dicts
    to try. The chosen point maximises mean normalized validation accuracy (first one on ties).

    ``extend_edges`` (at most that many extra points): while the chosen λ is the smallest λ tried,
    also try ``λ/2``; while it is the largest, ``1.5 λ`` (:func:`edge_extension`), other parameters
    as chosen. A fixed grid cannot know that six summed adapters want λ below 0.1 or that DO wants
    λ above 1; the extra points are marked ``"extended": True`` in the curve.

    ``refine(chosen)``: points tried once the λ search is done (:func:`method_refine`), marked
    ``"refined": True``; the record's ``budget`` counts every point tried on validation.

    Returns a record with ``params``, ``curve`` (per grid point: mean normalized validation accuracy,
    and test accuracy too when ``test_curve``), per-task test ``accuracy`` at the chosen point and
    ``test_correct`` (its per-example correctness, :func:`lorakit.results.tables.encode_correct`),
    ``normalized``, ``avg_accuracy``, ``avg_normalized`` (+ the evaluator's ``describe_chosen`` of the
    ΔW). Without ``test_curve`` the test split is scored once, at the chosen point.
    """
    if not grid:
        raise LorakitError("empty hyperparameter grid; give at least one point")
    individual_val = individual_val or evaluator.individual(adapters, "val")
    individual_test = individual_test or evaluator.individual(adapters, "test")
    curve = []
    describe = getattr(type(evaluator), "describe_chosen", TaskScorer.describe_chosen) is not TaskScorer.describe_chosen
    best, best_score, best_test, best_deltas = None, -math.inf, None, None
    pending, extensions, refined = [dict(g) for g in grid], 0, False
    while pending:
        params = pending.pop(0)
        deltas = merge_fn(**params)
        val = evaluator.score_tasks(deltas, adapters, "val")
        point = {"params": dict(params), "val_normalized": mean(normalized_accuracy(val, individual_val).values()),
                 "val_accuracy": val}
        if test_curve:
            correct = evaluator.correct_tasks(deltas, adapters, "test")
            test = accuracies(correct)
            point["test_normalized"] = mean(normalized_accuracy(test, individual_test).values())
            point["test_accuracy"] = test
        point.update({"refined": True} if refined else {"extended": True} if extensions else {})
        curve.append(point)
        if best is None or point["val_normalized"] > best_score:  # all NaN (no task learned): the first point
            score = point["val_normalized"]
            best, best_score = params, score if score == score else -math.inf
            best_test = correct if test_curve else None
            best_deltas = None if test_curve and not describe else deltas
        if not pending and extensions < extend_edges and not refined:
            more = edge_extension(best, [c["params"] for c in curve])
            if more is not None:
                pending.append(more)
                extensions += 1
                continue
        if not pending and refine is not None and not refined:
            pending, refined = [dict(q) for q in refine(best) if dict(q) not in [c["params"] for c in curve]], True
    correct = best_test if best_test is not None else evaluator.correct_tasks(best_deltas, adapters, "test")
    test = accuracies(correct)
    normalized = normalized_accuracy(test, individual_test)
    return {
        "params": dict(best),
        "val_normalized": best_score if best_score > -math.inf else float("nan"),
        "accuracy": test,
        "test_correct": {t: encode_correct(c) for t, c in correct.items()},
        "normalized": normalized,
        "avg_accuracy": mean(test.values()),
        "avg_normalized": mean(normalized.values()),
        "budget": len(curve),
        "curve": curve,
    } | (evaluator.describe_chosen(best_deltas) if describe else {})


class PreparedSources:
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


def search_method(evaluator: TaskScorer, adapters: Mapping, method: str, p: Profile, prepared: PreparedSources,
                  individual: tuple[dict, dict], timings: dict) -> tuple[dict, float, float]:
    """:func:`select_and_report` over ``method``'s grid and second stage; its seconds and merge seconds
    (precompute included), added to ``timings`` apart from evaluation.

    The sources are the raw adapters, or the ones its ``precompute`` prepared (for DO the already
    orthogonalised ones), merged with ``orthogonalize=False``: equal bit for bit to
    ``do(orthogonalize=True)`` on the raw adapters.
    """
    name, fixed = resolve_variant(method)
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
