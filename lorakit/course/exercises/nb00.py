"""Checker for notebook 00's exercise (predict → run → interpret: the merge made half as strong)."""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch

from ._common import as_tensor as _as_tensor
from ._common import assert_unmodified as _assert_unmodified
from ._common import check_choice as _check_choice
from ._common import copy_input as _copy_input
from ._common import random_lora as _random_lora
from ._common import report_prediction as _report_prediction

HALF_CHOICES = ("higher", "lower", "about the same")
#: |normalized(λ = 0.5) − normalized(λ = 1)| below this counts as "about the same"
SAME_WITHIN = 0.01


def _cases() -> list[tuple[list[torch.Tensor], float]]:
    cases = []
    for seed, (n, lam) in enumerate([(2, 0.5), (3, 0.3), (2, 1.7)]):
        deltas = []
        for i in range(n):
            A, B = _random_lora(10 * seed + i, 7, 5, 2)
            deltas.append((1.0 + i) * (B @ A))
        cases.append((deltas, lam))
    return cases


def _mutations(deltas: Sequence[torch.Tensor], lam: float) -> dict[str, torch.Tensor]:
    total = sum(deltas)
    return {
        "this is λ · mean(ΔW_i); task arithmetic adds the updates: λ · Σ_i ΔW_i": lam * total / len(deltas),
        "λ must scale the sum, not only the first update": lam * deltas[0] + sum(deltas[1:]),
        "the result does not depend on λ: multiply the sum by lam": total,
        "this is only the first task's update; add every task's": lam * deltas[0],
    }


def check_predict_half_merge(prediction: str | None, fn: Callable[[list[torch.Tensor], float], torch.Tensor],
                             score: Callable[[Mapping[str, torch.Tensor]], float],
                             adapters: Sequence[Mapping[str, object]]) -> str:
    r"""Exercise 0.1: does halving the merge, :math:`W_0 + \tfrac12(\Delta W_1 + \Delta W_2)`, help?

    ``fn(deltas, lam)`` must return task arithmetic for one layer, :math:`\lambda \sum_i \Delta W_i`
    (``deltas``: a list of ``d_out × d_in`` tensors), checked against brute force on random float64
    updates. It is then applied to every layer of ``adapters`` (``[{module: LoRAUpdate}]``, the
    notebook's two real adapters) at λ = 1 and λ = 0.5, and ``score({module: ΔW})`` (the notebook's
    average normalized test accuracy) says whether λ = 0.5 came out higher, lower or about the same
    (within :data:`SAME_WITHIN`) as λ = 1; the verdict is compared with ``prediction``.
    """
    checked = []
    for deltas, lam in _cases():
        passed = _copy_input(deltas)
        got = fn(passed, lam)
        _assert_unmodified({"deltas": deltas}, {"deltas": passed})
        checked.append((deltas, lam, got))
    choice = _check_choice(prediction, HALF_CHOICES,
                           "is the average normalized accuracy at λ = 0.5 higher, lower, or about the same as at λ = 1?")
    for deltas, lam, got in checked:
        where = f"({len(deltas)} updates of shape {tuple(deltas[0].shape)}, λ = {lam})"
        got = _as_tensor(got, f"my_task_arithmetic {where}")
        want = lam * sum(deltas)
        if got.shape != want.shape:
            raise AssertionError(f"{where}: the result has shape {tuple(got.shape)}, expected {tuple(want.shape)} "
                                 "(the shape of one update: sum over the list, not over a tensor dimension)")
        if torch.allclose(got, want, rtol=1e-10, atol=1e-12):
            continue
        for hint, value in _mutations(deltas, lam).items():
            if torch.allclose(got, value, rtol=1e-10, atol=1e-12):
                raise AssertionError(f"{where}: {hint}")
        raise AssertionError(f"{where}: expected λ · Σ_i ΔW_i (max abs error {float((got - want).abs().max()):.3g})")
    modules = list(adapters[0])
    scores = {}
    for lam in (1.0, 0.5):
        merged = {m: fn([a[m].delta(torch.float32) for a in adapters], lam) for m in modules}
        scores[lam] = float(score(merged))
        if not math.isfinite(scores[lam]):
            raise AssertionError(f"the score at λ = {lam} is {scores[lam]}; check my_task_arithmetic on the real layers")
    diff = scores[0.5] - scores[1.0]
    measured = "about the same" if abs(diff) < SAME_WITHIN else ("higher" if diff > 0 else "lower")
    why = ("λ multiplies every update, so on task j's input the merged layer adds λ ΔW_j h_j + λ ΔW_i h_j: a smaller "
           "λ shrinks the other task's interference λ ΔW_i h_j, and task j's own update just as much. Which effect "
           "wins depends on how much each task needs its full update; there is no λ that is right in advance, "
           "which is why notebook 02 chooses λ on the validation split for every merge method")
    evidence = f"average normalized accuracy {scores[1.0]:.3f} at λ = 1, {scores[0.5]:.3f} at λ = 0.5"
    return _report_prediction(choice, measured, evidence, why)
