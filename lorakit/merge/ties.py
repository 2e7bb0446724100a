r"""TIES-Merging (Yadav et al., NeurIPS 2023, arXiv 2306.01708 §3): trim, elect sign, disjoint mean."""

from __future__ import annotations

from typing import Sequence

import torch

from ..lora import LoRAUpdate
from .blocks import disjoint_mean, elect_sign, stack_deltas, trim_topk
from .registry import register


def ties_dense(stack: torch.Tensor, lam: float = 1.0, density: float = 0.2) -> torch.Tensor:
    r"""TIES on dense task tensors: trim → elect sign → disjoint mean → ×λ; ``(N, ...) → (...)``.

    .. math:: \tau^* = \lambda\,\operatorname{DisjointMean}\big(\{\operatorname{Trim}_k(\tau_i)\}\big)
    """
    trimmed = torch.stack([trim_topk(t, density) for t in stack])
    return lam * disjoint_mean(trimmed, elect_sign(trimmed))



@register(
    "ties",
    paper="TIES-Merging: Resolving Interference When Merging Models (Yadav et al., NeurIPS 2023)",
    url="https://arxiv.org/abs/2306.01708",
    description="trim to top-density |ΔW|, elect sign by sum, disjoint mean, ×λ (peft semantics)",
    dense=ties_dense,
)
def ties_merge(updates: Sequence[LoRAUpdate], lam: float = 1.0, density: float = 0.2) -> torch.Tensor:
    """TIES-Merging of the dense updates :math:`s_i B_i A_i` (see :func:`ties_dense`)."""
    return ties_dense(stack_deltas(updates), lam=lam, density=density)

