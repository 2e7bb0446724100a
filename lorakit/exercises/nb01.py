"""Exercise checkers of notebook 01 (LoRA and task vectors)."""

from __future__ import annotations

from typing import Callable

import torch

from ..lora import LoRAUpdate, lora_delta, lora_scaling
from ._common import ok as _ok, random_lora as _random_lora


def check_lora_delta(fn: Callable[[torch.Tensor, torch.Tensor, float, int], torch.Tensor]) -> str:
    """Exercise 1.1: ``fn(A, B, alpha, r)`` must return ΔW = (α/r)·B·A of shape (d_out, d_in)."""
    for seed, (d_out, d_in, r, alpha) in enumerate([(12, 10, 3, 6.0), (5, 9, 2, 16.0), (7, 7, 4, 1.0)]):
        A, B = _random_lora(seed, d_out, d_in, r)
        got = fn(A, B, alpha, r)
        assert isinstance(got, torch.Tensor), "return a torch.Tensor"
        assert tuple(got.shape) == (d_out, d_in), (
            f"ΔW must have the Linear weight's shape (d_out, d_in) = {(d_out, d_in)}, got {tuple(got.shape)}; "
            "is it B @ A (not A.T @ B.T)?")
        want = lora_delta(A, B, lora_scaling(alpha, r))
        if torch.allclose(got, B @ A, atol=1e-5) and alpha != r:
            raise AssertionError("you forgot the scaling s = α/r")
        assert torch.allclose(got, want, atol=1e-5), "values differ from (α/r)·B·A; check the scaling α/r"
    return _ok("ΔW = (α/r)·B·A")


def check_rslora_scaling(fn: Callable[[float, int], float]) -> str:
    """Exercise 1.2: ``fn(alpha, r)`` must return rsLoRA's scaling α/√r."""
    for alpha, r in [(16, 8), (8, 64), (1, 1), (32, 16)]:
        got = float(fn(alpha, r))
        want = lora_scaling(alpha, r, use_rslora=True)
        if abs(got - alpha / r) < 1e-9 and r != 1:
            raise AssertionError("that is plain LoRA's α/r; rsLoRA divides by √r")
        assert abs(got - want) < 1e-9, f"for α={alpha}, r={r} expected {want:.4f}, got {got:.4f}"
    return _ok("rsLoRA scaling α/√r")


def check_rank_bound(fn: Callable[[LoRAUpdate], int]) -> str:
    """Exercise 1.3: ``fn(update)`` must return the numerical rank of ΔW (at most r)."""
    for seed, r in enumerate([1, 3, 5]):
        A, B = _random_lora(seed, 16, 12, r)
        upd = LoRAUpdate(A, B, 2.0)
        got = int(fn(upd))
        want = int(torch.linalg.matrix_rank(upd.delta()))  # float64 factors: exact rank r
        assert got == want, f"rank of ΔW for r={r} should be {want}, got {got}"
    A, B = _random_lora(9, 16, 12, 4)
    B[:, 0] = 0  # one direction switched off: rank drops below r
    got = int(fn(LoRAUpdate(A, B, 1.0)))
    assert got == 3, f"with one column of B zeroed, ΔW has rank 3, got {got}"
    return _ok("rank(ΔW) ≤ r")
