r"""DARE (Yu et al., ICML 2024, arXiv 2311.03099 §4): drop entries at random, rescale, combine.

.. math::

    \tilde\tau_i = \frac{m_i \odot \tau_i}{1-p}, \quad m_{i,e} \sim \text{Bernoulli}(1-p), \qquad
    \tau^* = \begin{cases} \lambda \sum_i \tilde\tau_i & \text{combine = "linear"} \\
    \lambda\,\operatorname{DisjointMean}(\{\tilde\tau_i\}) & \text{combine = "ties" (no trim)}
    \end{cases}

The masks are peft's: ``torch.bernoulli(torch.full_like(τ_i, 1-p), generator=g)`` for task 1, 2, …
in order. On CPU they come from :func:`~lorakit.merge.blocks.bernoulli_keep` (the same Mersenne
Twister words, drawn by numpy: identical masks, one serial pass, no float copy of p); then the
drop, rescale and combine run a block of rows at a time (:mod:`.blocks`), from the factors
without the N dense updates. The serial random stream bounds the speed (one 32-bit word per entry,
~2 ns on one core); elsewhere (CUDA) the dense reference path runs.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..lora.update import LoRAUpdate
from .blocks import (
    DenseBlocks,
    FactorBlocks,
    TaskBlocks,
    bernoulli_keep,
    dare_drop,
    disjoint_mean,
    elect_disjoint_mean_,
    elect_sign,
    task_sum,
)
from .registry import register


def dare_reference(stack: torch.Tensor, lam: float, drop_rate: float, gen: torch.Generator, combine: str) -> torch.Tensor:
    """The unchunked rule on a dense stack (any device): drop each task in order, then combine."""
    dropped = torch.stack([dare_drop(t, drop_rate, gen) for t in stack])
    if combine == "linear":
        return lam * dropped.sum(dim=0)
    return lam * disjoint_mean(dropped, elect_sign(dropped))


def dare_blocks(source: TaskBlocks, lam: float, drop_rate: float, gen: torch.Generator, combine: str) -> torch.Tensor:
    """DARE over a CPU :class:`~lorakit.merge.blocks.TaskBlocks` source, block by block; ``→ source.shape``.

    The same masks and ``(τ ⊙ m) / (1-p)`` as :func:`dare_reference`, and the sums over tasks in
    ``block.sum(0)``'s vectorised order (:func:`~lorakit.merge.blocks.task_sum`): bit for bit, except
    in the last bits on the final ``numel mod 16``-ish entries, where ``sum(0)`` adds in another order.
    """
    keep = 1.0 - drop_rate
    masks = bernoulli_keep(gen, source.n_tasks, source.numel, keep, source.dtype) if drop_rate > 0 else None
    out = torch.empty(source.numel, dtype=source.dtype, device=source.device)
    for start, stop in source.spans():
        block = source.block(start, stop)
        block = block if source.fresh else block.clone()
        if masks is not None:
            block.mul_(masks[:, start:stop]).div_(keep)
        out[start:stop] = lam * (task_sum(block) if combine == "linear" else elect_disjoint_mean_(block))
    return out.reshape(source.shape)


def _fast(dtype: torch.dtype, device: torch.device) -> bool:
    return device.type == "cpu" and dtype in (torch.float32, torch.float64)


def dare_dense(
    stack: torch.Tensor, lam: float = 1.0, drop_rate: float = 0.5, seed: int = 0, combine: str = "linear"
) -> torch.Tensor:
    r"""DARE on dense task tensors ``(N, ...) → (...)``: drop-and-rescale each :math:`\tau_i`, then combine.

    The masks come from one ``torch.Generator`` on the tensors' device seeded with ``seed``, drawn
    for task 1, 2, … in order: the same seed gives the same output (per device type).
    """
    gen = torch.Generator(device=stack.device)
    gen.manual_seed(int(seed))
    if _fast(stack.dtype, stack.device):
        return dare_blocks(DenseBlocks(stack), lam, drop_rate, gen, combine)
    return dare_reference(stack, lam, drop_rate, gen, combine)


@register(
    "dare",
    paper="Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch "
    "(Yu et al., ICML 2024)",
    url="https://arxiv.org/abs/2311.03099",
    description="drop entries w.p. drop_rate, rescale by 1/(1-p), then sum (linear) or TIES sign/disjoint mean",
    dense=dare_dense,
    tune="drop_rate",
)
def dare_merge(
    updates: Sequence[LoRAUpdate], lam: float = 1.0, drop_rate: float = 0.5, seed: int = 0, combine: str = "linear"
) -> torch.Tensor:
    """DARE (drop and rescale) of the updates :math:`s_i B_i A_i`, then ``combine`` (see :func:`dare_dense`)."""
    source = FactorBlocks(updates)
    gen = torch.Generator(device=source.device)
    gen.manual_seed(int(seed))
    if _fast(source.dtype, source.device):
        return dare_blocks(source, lam, drop_rate, gen, combine)
    return dare_reference(torch.stack([source.task(i).reshape(source.shape) for i in range(source.n_tasks)]), lam, drop_rate, gen, combine)
