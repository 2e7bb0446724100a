r"""Evaluate merged models: each task with its own head, normalized accuracy, λ chosen on validation.

A merged model is ``W_0 + ΔW*`` on the adapted layers; each task keeps its own classification
head (merging only touches the LoRA-adapted Linear layers). For task :math:`t`:

.. math::

    \text{normalized accuracy}_t = \frac{\text{acc}_t(\text{merged model})}{\text{acc}_t(\text{task } t\text{'s own adapter})}

and a method's score is the mean over tasks. Merge hyperparameters (λ, density, ...) are chosen on
the validation split and the score is reported on the test split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from .assets import load_base, load_tokenizer, quiet
from .errors import LorakitError
from .profiles import Profile, get_profile
from .results import mean
from .tasks import TaskData, load_task
from .train import TrainedAdapter, encode_texts, predict


def normalized_accuracy(merged: Mapping[str, float], individual: Mapping[str, float]) -> dict[str, float]:
    """``merged[t] / individual[t]`` for every task (NaN where the individual accuracy is 0)."""
    return {t: (merged[t] / individual[t] if individual[t] else float("nan")) for t in merged}


@dataclass
class EvalSet:
    encodings: dict[str, torch.Tensor]
    labels: torch.Tensor


class Evaluator:
    """Holds one base model and tokenized val/test sets; scores any ΔW with any task's head.

    ``score(deltas, head, task, split)`` applies ``W_0 + ΔW`` in place, swaps in the task's head,
    predicts, and restores the original weights by copy (no drift from add/subtract).
    """

    def __init__(self, tasks: Sequence[str | TaskData], profile: str | Profile | None = None, **overrides) -> None:
        quiet()
        self.profile = get_profile(profile, **overrides)
        self.data: dict[str, TaskData] = {}
        for t in tasks:
            d = t if isinstance(t, TaskData) else load_task(t, profile=self.profile)
            self.data[d.name] = d
        self.device = self.profile.device
        self.model = load_base(self.profile.model, num_labels=2).to(self.device).eval()
        self.tokenizer = load_tokenizer(self.profile.model)
        self.sets: dict[tuple[str, str], EvalSet] = {}
        for name, d in self.data.items():
            for split in ("val", "test"):
                texts, labels = getattr(d, split)
                self.sets[(name, split)] = self._encode_sorted(texts, labels)
        self._modules = dict(self.model.named_modules())

    def _encode_sorted(self, texts: list[str], labels: list[int]) -> EvalSet:
        """Tokenize and sort by length, so each batch carries little padding (accuracy ignores order)."""
        enc = encode_texts(self.tokenizer, texts, self.profile.max_length)
        if len(texts) == 0:
            return EvalSet(enc, torch.tensor(labels, dtype=torch.long))
        order = torch.argsort(enc["attention_mask"].sum(1), stable=True)
        return EvalSet({k: v[order] for k, v in enc.items()}, torch.tensor(labels)[order])

    def _swap_head(self, head: Mapping[str, torch.Tensor]) -> None:
        weight, bias = head["classifier.weight"], head.get("classifier.bias")
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        self.model.classifier = linear.to(self.device)
        self.model.num_labels = weight.shape[0]
        self.model.config.num_labels = weight.shape[0]

    @torch.no_grad()
    def score(self, deltas: Mapping[str, torch.Tensor], head: Mapping[str, torch.Tensor], task: str, split: str = "test") -> float:
        """Accuracy of ``W_0 + ΔW`` with ``head`` on ``task``'s ``split``."""
        if (task, split) not in self.sets:
            raise LorakitError(f"task {task!r} is not in this evaluator; known: {', '.join(self.data)}")
        originals = {}
        try:
            for name, delta in deltas.items():
                module = self._modules.get(name)
                if module is None:
                    raise LorakitError(f"module {name} is not in the base model; the adapter was made for another model")
                if not torch.isfinite(delta).all():
                    raise LorakitError(f"merged ΔW of {name} contains NaN or inf; check the merge parameters")
                originals[name] = module.weight.detach().clone()
                module.weight.add_(delta.to(module.weight.dtype).to(self.device))
            self._swap_head(head)
            es = self.sets[(task, split)]
            preds = predict(self.model, es.encodings, self.profile.eval_batch_size, self.device)
            return float((preds == es.labels).float().mean()) if len(es.labels) else float("nan")
        finally:
            for name, weight in originals.items():
                self._modules[name].weight.copy_(weight)

    def score_tasks(self, deltas_for: Callable[[str], Mapping[str, torch.Tensor]] | Mapping[str, torch.Tensor],
                    adapters: Mapping[str, TrainedAdapter], split: str = "test") -> dict[str, float]:
        """Accuracy per task; ``deltas_for`` is one merged ΔW dict, or a function of the task."""
        out = {}
        for task, adapter in adapters.items():
            deltas = deltas_for(task) if callable(deltas_for) else deltas_for
            out[task] = self.score(deltas, adapter.head, task, split)
        return out

    def individual(self, adapters: Mapping[str, TrainedAdapter], split: str = "test") -> dict[str, float]:
        """Each task's accuracy with its own adapter and head (the normalizer)."""
        return self.score_tasks(lambda t: adapters[t].deltas, adapters, split)

    def majority(self, split: str = "test") -> dict[str, float]:
        return {t: d.majority_baseline(split) for t, d in self.data.items()}


def select_and_report(
    evaluator: Evaluator,
    adapters: Mapping[str, TrainedAdapter],
    merge_fn: Callable[..., Mapping[str, torch.Tensor]],
    grid: Sequence[dict],
    individual_val: Mapping[str, float] | None = None,
    individual_test: Mapping[str, float] | None = None,
    test_curve: bool = False,
    extend_edges: int = 0,
) -> dict:
    """Choose merge hyperparameters on validation, report on test.

    ``merge_fn(**params)`` returns the merged ``{module: ΔW}``; ``grid`` lists the parameter dicts
    to try. The chosen point maximises mean normalized validation accuracy (first one on ties).

    ``extend_edges`` (at most that many extra points): while the chosen λ is the smallest λ tried,
    also try ``λ/2``; while it is the largest, ``1.5 λ`` (:func:`edge_extension`), other parameters
    as chosen. A fixed grid cannot know that six summed adapters want λ below 0.1 or that DO wants
    λ above 1; the extra points are marked ``"extended": True`` in the curve.

    Returns a record with ``params``, ``curve`` (per grid point: mean normalized validation accuracy,
    and test accuracy too when ``test_curve``), per-task test ``accuracy`` at the chosen point,
    ``normalized``, ``avg_accuracy``, ``avg_normalized``. Without ``test_curve`` the test split is
    scored once, at the chosen point.
    """
    if not grid:
        raise LorakitError("empty hyperparameter grid; give at least one point")
    individual_val = individual_val or evaluator.individual(adapters, "val")
    individual_test = individual_test or evaluator.individual(adapters, "test")
    curve = []
    best, best_score, best_test, best_deltas = None, -math.inf, None, None
    pending, extensions = [dict(g) for g in grid], 0
    while pending:
        params = pending.pop(0)
        deltas = merge_fn(**params)
        val = evaluator.score_tasks(deltas, adapters, "val")
        point = {"params": dict(params), "val_normalized": mean(normalized_accuracy(val, individual_val).values()),
                 "val_accuracy": val}
        if test_curve:
            test = evaluator.score_tasks(deltas, adapters, "test")
            point["test_normalized"] = mean(normalized_accuracy(test, individual_test).values())
            point["test_accuracy"] = test
        if extensions:
            point["extended"] = True
        curve.append(point)
        if point["val_normalized"] > best_score:
            best, best_score = params, point["val_normalized"]
            best_test = point.get("test_accuracy")
            best_deltas = None if test_curve else deltas
        if not pending and extensions < extend_edges:
            more = edge_extension(best, [c["params"] for c in curve])
            if more is not None:
                pending.append(more)
                extensions += 1
    test = best_test if best_test is not None else evaluator.score_tasks(best_deltas, adapters, "test")
    normalized = normalized_accuracy(test, individual_test)
    return {
        "params": dict(best),
        "val_normalized": best_score,
        "accuracy": test,
        "normalized": normalized,
        "avg_accuracy": mean(test.values()),
        "avg_normalized": mean(normalized.values()),
        "curve": curve,
    }


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
