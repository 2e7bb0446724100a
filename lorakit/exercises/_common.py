"""Helpers shared by the exercise checkers."""

from __future__ import annotations

import torch


def ok(name: str) -> str:
    """Print and return the success line of a checker."""
    msg = f"✓ {name}: correct"
    print(msg)
    return msg


def random_lora(seed: int, d_out: int = 12, d_in: int = 10, r: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float64 factors ``(A: r × d_in, B: d_out × r)`` from a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(r, d_in, generator=g, dtype=torch.float64),
            torch.randn(d_out, r, generator=g, dtype=torch.float64))
