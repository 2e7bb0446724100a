r"""DARE (Yu et al., ICML 2024, arXiv 2311.03099 §4): drop entries at random, rescale, combine."""

from __future__ import annotations

from typing import Sequence

import torch

from ..lora import LoRAUpdate
from .blocks import dare_drop, disjoint_mean, elect_sign, stack_deltas
from .registry import register


def dare_dense(
    stack: torch.Tensor, lam: float = 1.0, drop_rate: float = 0.5, seed: int = 0, combine: str = "linear"
) -> torch.Tensor:
    r"""DARE on dense task tensors: drop-and-rescale each :math:`\tau_i`, then combine.

    .. math::

        \tilde\tau_i = \frac{m_i \odot \tau_i}{1-p}, \qquad
        \tau^* = \begin{cases} \lambda \sum_i \tilde\tau_i & \text{combine = "linear"} \\
        \lambda\,\operatorname{DisjointMean}(\{\tilde\tau_i\}) & \text{combine = "ties" (no trim)}
        \end{cases}

    The masks come from one ``torch.Generator`` on the tensors' device seeded with ``seed``, drawn
    for task 1, 2, … in order: the same seed gives the same output (per device type).
    """
    gen = torch.Generator(device=stack.device)
    gen.manual_seed(int(seed))
    dropped = torch.stack([dare_drop(t, drop_rate, gen) for t in stack])
    if combine == "linear":
        return lam * dropped.sum(dim=0)
    return lam * disjoint_mean(dropped, elect_sign(dropped))



@register(
    "dare",
    paper="Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch "
    "(Yu et al., ICML 2024)",
    url="https://arxiv.org/abs/2311.03099",
    description="drop entries w.p. drop_rate, rescale by 1/(1-p), then sum (linear) or TIES sign/disjoint mean",
    dense=dare_dense,
)
def dare_merge(
    updates: Sequence[LoRAUpdate], lam: float = 1.0, drop_rate: float = 0.5, seed: int = 0, combine: str = "linear"
) -> torch.Tensor:
    """DARE (drop and rescale) of the dense updates, then ``combine`` (see :func:`dare_dense`)."""
    return dare_dense(stack_deltas(updates), lam=lam, drop_rate=drop_rate, seed=seed, combine=combine)

