r"""Task arithmetic (Ilharco et al., ICLR 2023, arXiv 2212.04089 §2): :math:`\Delta W^* = \lambda \sum_i \Delta W_i`."""

from __future__ import annotations

from typing import Sequence

import torch

from ..lora.update import LoRAUpdate
from .blocks import compute_dtype
from .registry import register


def task_arithmetic_dense(stack: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    r"""Task arithmetic on dense task tensors: :math:`\tau^* = \lambda \sum_i \tau_i`; ``(N, ...) → (...)``."""
    return lam * stack.sum(dim=0)


@register(
    "task_arithmetic",
    paper="Editing Models with Task Arithmetic (Ilharco et al., ICLR 2023)",
    url="https://arxiv.org/abs/2212.04089",
    description="λ · Σ_i ΔW_i",
    dense=task_arithmetic_dense,
    factored=True,
)
def task_arithmetic_merge(updates: Sequence[LoRAUpdate], lam: float = 1.0) -> torch.Tensor:
    r"""Task arithmetic: :math:`\Delta W^* = \lambda \sum_i s_i B_i A_i`, shape ``(d_out, d_in)``.

    Computed without forming the N dense updates, as one product of the concatenated factors
    :math:`[s_1 B_1 \cdots s_N B_N]\,[A_1; \dots; A_N]` (``(d_out, Nr) @ (Nr, d_in)``). With one
    update and λ = 1 the result is bit-identical to ``update.delta()``.
    """
    dtype = compute_dtype(updates)
    A = torch.cat([u.A.to(dtype) for u in updates], dim=0)
    scalings = {u.scaling for u in updates}
    if len(scalings) == 1:
        return lam * (scalings.pop() * (torch.cat([u.B.to(dtype) for u in updates], dim=1) @ A))
    B = torch.cat([u.scaling * u.B.to(dtype) for u in updates], dim=1)
    return lam * (B @ A)

