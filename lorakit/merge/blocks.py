r"""Entrywise building blocks on stacked dense task tensors τ of shape ``(N, ...)`` (peft semantics).

TIES is trim → elect sign → disjoint mean; DARE is drop-and-rescale, then a sum or TIES' last two
steps. Each block is a pure function; :func:`stack_deltas` forms the dense ``ΔW_i = s_i B_i A_i``
of one layer (``(N, d_out, d_in)``) from its LoRA factors.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..lora import LoRAUpdate


def trim_topk(tau: torch.Tensor, density: float) -> torch.Tensor:
    r"""TIES step 1: keep the ``k = int(density · numel)`` entries of largest :math:`|\tau|`.

    .. math:: \hat\tau = \tau \odot m, \quad m_e = [\,|\tau_e| \text{ is among the top } k\,]

    Same rule as peft's ``prune(..., method="magnitude")``: ``density >= 1`` keeps everything,
    and ``k`` is rounded down. One task tensor of any shape; returns the same shape.
    """
    if density >= 1:
        return tau
    k = int(density * tau.numel())
    flat = tau.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        keep[torch.topk(flat.abs(), k=k, largest=True).indices] = True
    return torch.where(keep, flat, torch.zeros_like(flat)).reshape(tau.shape)


def elect_sign(stack: torch.Tensor) -> torch.Tensor:
    r"""TIES step 2: per entry, which tasks agree with the elected sign.

    .. math:: \sigma_e = \operatorname{sign}\Big(\sum_i \hat\tau_{i,e}\Big)\ (\text{ties} \to +1),
        \qquad \text{agree}_{i,e} = [\operatorname{sign}\hat\tau_{i,e} = \sigma_e]

    ``stack``: ``(N, ...)``; returns a bool mask of the same shape (zeros never agree).
    Same rule as peft's ``calculate_majority_sign_mask(..., method="total")``.
    """
    total = stack.sum(dim=0)
    elected = torch.where(total >= 0, 1.0, -1.0).to(stack.dtype)
    return stack.sign() == elected


def disjoint_mean(stack: torch.Tensor, agree: torch.Tensor) -> torch.Tensor:
    r"""TIES step 3: mean over the agreeing tasks only.

    .. math:: \tau^*_e = \frac{\sum_i \text{agree}_{i,e}\,\hat\tau_{i,e}}{\max(1, \sum_i \text{agree}_{i,e})}

    ``stack``, ``agree``: ``(N, ...)``; returns ``(...)``. Entries with no agreeing task are 0.
    """
    kept = torch.where(agree, stack, torch.zeros_like(stack)).sum(dim=0)
    count = agree.sum(dim=0).clamp(min=1).to(stack.dtype)
    return kept / count


def dare_drop(tau: torch.Tensor, drop_rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""DARE: drop each entry with probability p and rescale the survivors.

    .. math:: \tilde\tau = \frac{m \odot \tau}{1 - p}, \qquad m_e \sim \text{Bernoulli}(1 - p)

    Draws the mask exactly as peft's ``prune(..., method="random", rescale=True)`` with
    ``density = 1 - p`` does, so the same generator state gives the same mask. ``p = 0`` returns
    ``tau`` unchanged and draws nothing.
    """
    if drop_rate == 0:
        return tau
    keep = 1.0 - drop_rate
    mask = torch.bernoulli(torch.full_like(tau, keep), generator=generator)
    return tau * mask / keep


def compute_dtype(updates: Sequence[LoRAUpdate]) -> torch.dtype:
    """float64 if any factor is float64 (DO-Merging hands its base method float64 factors), else float32."""
    if any(u.A.dtype == torch.float64 or u.B.dtype == torch.float64 for u in updates):
        return torch.float64
    return torch.float32


def stack_deltas(updates: Sequence[LoRAUpdate], dtype: torch.dtype | None = None) -> torch.Tensor:
    """The dense task updates stacked: ``(N, d_out, d_in)``, ``ΔW_i = s_i B_i A_i``."""
    dtype = dtype or compute_dtype(updates)
    return torch.stack([u.delta(dtype) for u in updates])

