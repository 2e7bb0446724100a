r"""Measuring interference (eq. 4.1, 4.5), and why parameter-space orthogonality is not enough.

.. math::

    R_{t\to j} = \frac{\lVert \Delta W_t H_j^\top \rVert_F}{\lVert \Delta W_j H_j^\top \rVert_F}
                                                                                  \tag{4.5}

per layer, with ``H_j`` of shape ``(k, d_in)`` (task ``j``'s pre-trained features) and
``ΔW = s B A`` of shape ``(d_out, d_in)``.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple

import torch

from ..errors import LorakitError
from ..lora.update import LoRAUpdate


def _feature_response(update: LoRAUpdate, H: torch.Tensor) -> float:
    r""":math:`\lVert \Delta W H^\top \rVert_F = \lVert s B (A H^\top) \rVert_F` in float64."""
    A, B, H = update.A.double().cpu(), update.B.double().cpu(), H.double().cpu()
    return float(torch.linalg.matrix_norm(update.scaling * (B @ (A @ H.T))))


def interference_ratio(
    updates_t: Mapping[str, LoRAUpdate],
    updates_j: Mapping[str, LoRAUpdate],
    features_j: Mapping[str, torch.Tensor],
) -> dict[str, float]:
    r"""Per layer :math:`R_{t\to j} = \lVert \Delta W_t H_j^\top\rVert_F / \lVert \Delta W_j H_j^\top\rVert_F`, eq. 4.5.

    How much adapter ``t`` moves task ``j``'s layer outputs, relative to how much task ``j``'s own
    adapter moves them. ``0`` is no interference; OSRM aims at ``R ≪ 1``.

    Args:
        updates_t, updates_j: ``{module: LoRAUpdate}`` (e.g. from :func:`lorakit.lora.peft.read_adapter`).
        features_j: ``{module: H_j (k × d_in)}``, pre-trained features of task ``j`` (ideally
            held out from the data the subspace was built on).

    Returns:
        ``{module: R}`` for the modules of ``features_j``; ``inf`` where ``ΔW_j H_jᵀ = 0`` but
        ``ΔW_t H_jᵀ ≠ 0``, ``nan`` where both are zero (e.g. ``B = 0`` before training).
    """
    ratios = {}
    for module, H in features_j.items():
        if module not in updates_t or module not in updates_j:
            raise LorakitError(
                f"module {module} has features but no LoRA update in both adapters; pass matching adapters"
            )
        if H.ndim != 2 or H.shape[1] != updates_t[module].d_in or H.shape[1] != updates_j[module].d_in:
            raise LorakitError(
                f"features of {module} have shape {tuple(H.shape)} but the updates expect d_in="
                f"{updates_t[module].d_in}; collect features on the same base model"
            )
        num, den = _feature_response(updates_t[module], H), _feature_response(updates_j[module], H)
        ratios[module] = num / den if den > 0 else (math.nan if num == 0 else math.inf)
    if not ratios:
        raise LorakitError("no features given; collect features for the adapted modules first")
    return ratios


def mean_interference_ratio(ratios: Mapping[str, float]) -> float:
    """The arithmetic mean of per-layer ratios from :func:`interference_ratio`."""
    if not ratios:
        raise LorakitError("no ratios to average")
    return sum(ratios.values()) / len(ratios)


def interference_matrix(
    updates_by_task: Mapping[str, Mapping[str, LoRAUpdate]],
    features_by_task: Mapping[str, Mapping[str, torch.Tensor]],
) -> torch.Tensor:
    r"""``M[t, j]`` = mean over layers of :math:`R_{t\to j}` (eq. 4.5); tasks in ``updates_by_task`` order.

    Row ``t`` is what adapter ``t`` does to every task; the diagonal is 1 by definition.

    Returns:
        float64 tensor of shape ``(N, N)``.
    """
    tasks = list(updates_by_task)
    missing = [t for t in tasks if t not in features_by_task]
    if missing:
        raise LorakitError(f"no features for tasks {missing}; collect features for every task")
    M = torch.empty(len(tasks), len(tasks), dtype=torch.float64)
    for a, t in enumerate(tasks):
        for b, j in enumerate(tasks):
            M[a, b] = mean_interference_ratio(
                interference_ratio(updates_by_task[t], updates_by_task[j], features_by_task[j])
            )
    return M


# ----------------------------------------------------------------------------------------------
# Parameter-space orthogonality is not functional orthogonality (docs/methods.md §2.1)
# ----------------------------------------------------------------------------------------------


class Counterexample(NamedTuple):
    """Rank-1 task vectors ``ΔW₁ = b₁aᵀ``, ``ΔW₂ = b₂aᵀ`` (``b₁ ⊥ b₂``) and an input ``h ∥ a``."""

    dW1: torch.Tensor
    dW2: torch.Tensor
    h: torch.Tensor


def counterexample() -> Counterexample:
    r"""Orthogonal in parameter space, yet interfering (docs/methods.md §2.1).

    :math:`\langle \Delta W_1, \Delta W_2\rangle_F = (b_1\cdot b_2)\lVert a\rVert^2 = 0`, but for
    :math:`h \parallel a`, :math:`\Delta W_2 h = b_2 (a\cdot h) \ne 0`: task 2's update still
    shifts task 1's output, because interference is :math:`B_2 A_2 h`, a function of the data.

    >>> ex = counterexample()
    >>> float((ex.dW1 * ex.dW2).sum())          # ⟨ΔW₁, ΔW₂⟩_F
    0.0
    >>> ex.dW2 @ ex.h                           # ΔW₂ h = b₂ (a·h)
    tensor([0., 5.])
    >>> float(torch.linalg.vector_norm(ex.dW2 @ ex.h)) > 0
    True
    """
    b1 = torch.tensor([1.0, 0.0])
    b2 = torch.tensor([0.0, 1.0])
    a = torch.tensor([1.0, 2.0, 0.0])
    return Counterexample(dW1=torch.outer(b1, a), dW2=torch.outer(b2, a), h=a.clone())
