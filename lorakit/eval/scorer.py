"""Per-task scoring both tracks share: accuracies from per-example correctness, normalized accuracy,
and :class:`TaskScorer`, the interface of the encoder's and the causal LM's evaluators.

For task :math:`t`, :math:`\text{normalized}_t = \text{acc}_t(\text{merged}) / \text{acc}_t(\text{task } t\text{'s own adapter})`.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from ..train.loop import TrainedAdapter


def accuracies(correct: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Per task, the mean of its per-example correctness (NaN for an empty split)."""
    return {t: float(c.float().mean()) if len(c) else float("nan") for t, c in correct.items()}


def normalized_accuracy(merged: Mapping[str, float], individual: Mapping[str, float]) -> dict[str, float]:
    """``merged[t] / individual[t]`` for every task (NaN where the individual accuracy is 0)."""
    return {t: (merged[t] / individual[t] if individual[t] else float("nan")) for t in merged}


class TaskScorer:
    """Per-task scoring shared by both tracks' evaluators; a subclass defines ``correct(deltas, head, task, split)``."""

    def score_tasks(self, deltas_for: Callable[[str], Mapping[str, torch.Tensor]] | Mapping[str, torch.Tensor],
                    adapters: Mapping[str, TrainedAdapter], split: str = "test") -> dict[str, float]:
        """Accuracy per task; ``deltas_for`` is one merged ΔW dict, or a function of the task."""
        return accuracies(self.correct_tasks(deltas_for, adapters, split))

    def correct_tasks(self, deltas_for: Callable[[str], Mapping[str, torch.Tensor]] | Mapping[str, torch.Tensor],
                      adapters: Mapping[str, TrainedAdapter], split: str = "test") -> dict[str, torch.Tensor]:
        """:meth:`correct` per task; ``deltas_for`` is one merged ΔW dict, or a function of the task."""
        out = {}
        for task, adapter in adapters.items():
            deltas = deltas_for(task) if callable(deltas_for) else deltas_for
            out[task] = self.correct(deltas, adapter.head, task, split)
        return out

    def individual(self, adapters: Mapping[str, TrainedAdapter], split: str = "test") -> dict[str, float]:
        """Each task's accuracy with its own adapter and head (the normalizer)."""
        return self.score_tasks(lambda t: adapters[t].deltas, adapters, split)

    def describe_chosen(self, deltas: Mapping[str, torch.Tensor]) -> dict:
        """Extra record fields of the chosen merge (the causal track's per-example predictions); none here."""
        return {}
