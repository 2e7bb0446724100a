r"""Norm-equalised task arithmetic (``ta_normeq``), a control for DO-Merging (docs/methods.md §4.6).

For one layer and tasks :math:`i = 1 \dots N`, with :math:`\Delta W_i = s_i B_i A_i`
(``d_out × d_in``; ``A_i``: ``(r_i, d_in)``, ``B_i``: ``(d_out, r_i)``):

.. math::

    n_i = \lVert \Delta W_i \rVert_F, \qquad
    \bar m = \frac{1}{|K|} \sum_{i \in K} n_i, \qquad
    c_i = \begin{cases} \bar m / n_i & i \in K \\ 0 & \text{otherwise} \end{cases}, \qquad
    \Delta W^* = \lambda \sum_i c_i\,\Delta W_i,

where :math:`K` is the set of tasks with a non-zero update. Every kept task enters with the same
Frobenius norm :math:`\bar m`, and the sum of the tasks' norms is that of plain task arithmetic
(:math:`\sum_i c_i n_i = \sum_i n_i`), so λ means what it means there. It asks whether DO-Merging's
gain is only the equalisation of the tasks' magnitudes.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..lora.update import LoRAUpdate
from .registry import register
from .task_arithmetic import task_arithmetic_merge

#: A task whose squared norm is at most this times the bound ``s²‖B‖²‖A‖²`` counts as zero: the
#: trace formula of :func:`factored_frobenius_sq` is exact only to about that (float64 rounding).
ZERO_RTOL = 64 * torch.finfo(torch.float64).eps


def factored_frobenius_sq(update: LoRAUpdate) -> tuple[float, float]:
    r"""``(‖ΔW‖_F², bound)`` from the factors, without forming ``ΔW = s B A`` (float64).

    .. math::

        \lVert s B A \rVert_F^2 = s^2 \operatorname{tr}\big((B^\top B)(A A^\top)\big)
        = s^2 \textstyle\sum_{kl} (B^\top B)_{kl} (A A^\top)_{kl}
        \;\le\; s^2 \lVert B \rVert_F^2 \lVert A \rVert_F^2 = \text{bound},

    with ``BᵀB`` and ``AAᵀ`` both ``(r, r)``. The first value is clamped at 0.
    """
    A, B = update.A.to(torch.float64), update.B.to(torch.float64)
    s2 = update.scaling**2
    sq = s2 * float(((B.T @ B) * (A @ A.T)).sum())
    bound = s2 * float(B.square().sum()) * float(A.square().sum())
    return max(sq, 0.0), bound


def normeq_coefficients(updates: Sequence[LoRAUpdate]) -> torch.Tensor:
    r"""The coefficients :math:`c_i = \bar m / n_i` (0 for a zero update), float64 of shape ``(N,)``.

    :math:`\bar m` is the mean norm of the non-zero updates, so :math:`\sum_i c_i n_i = \sum_i n_i`.
    An update counts as zero when :math:`n_i^2 \le` :data:`ZERO_RTOL` ``· s²‖B‖²‖A‖²`` (e.g. ``B = 0``
    before training); then it gets ``c_i = 0``, never a NaN. All zero: every ``c_i = 0``.
    """
    norms = []
    for u in updates:
        sq, bound = factored_frobenius_sq(u)
        norms.append(sq**0.5 if sq > ZERO_RTOL * bound else 0.0)
    n = torch.tensor(norms, dtype=torch.float64)
    kept = n > 0
    if not bool(kept.any()):
        return torch.zeros_like(n)
    m_bar = n[kept].mean()
    return torch.where(kept, m_bar / torch.where(kept, n, 1.0), 0.0)


@register(
    "ta_normeq",
    paper="Editing Models with Task Arithmetic (Ilharco et al., ICLR 2023), with each task rescaled to the "
    "mean Frobenius norm: lorakit's magnitude-equalisation control for DO-Merging",
    url="https://arxiv.org/abs/2212.04089",
    description="λ · Σ_i (m̄ / ‖ΔW_i‖_F) ΔW_i, m̄ = mean_i ‖ΔW_i‖_F (zero updates skipped)",
)
def ta_normeq_merge(updates: Sequence[LoRAUpdate], lam: float = 1.0) -> torch.Tensor:
    r"""Norm-equalised task arithmetic of one layer: :math:`\lambda \sum_i c_i s_i B_i A_i`, ``(d_out, d_in)``.

    :math:`c_i = \bar m / \lVert \Delta W_i \rVert_F` from :func:`normeq_coefficients`; the norms come
    from the ``(r, r)`` Gram matrices of the factors (:func:`factored_frobenius_sq`) and the sum is
    :func:`~lorakit.merge.task_arithmetic.task_arithmetic_merge` of the updates with scalings
    :math:`c_i s_i`, one product of the concatenated factors; no dense ``ΔW_i`` is formed. The
    result is still that concatenation times λ, but with per-task coefficients, which the registry's
    ``factored`` capability (plain concatenation) does not express: ``lorakit merge`` refactors it by
    SVD (exact at full numerical rank). Folder weights ``w_i`` fold into ``B_i`` first, so they
    cancel except for their sign and the mean norm.
    """
    coeffs = normeq_coefficients(updates).tolist()
    scaled = [LoRAUpdate(u.A, u.B, c * u.scaling) for u, c in zip(updates, coeffs)]
    return task_arithmetic_merge(scaled, lam=lam)
