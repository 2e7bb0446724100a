r"""The LoRA update of one layer: A, B, scaling and shapes (the math; no files, no peft).

Notation (notebook 01, eq. 1.1–1.3; peft's convention):

.. math::

    y = W_0 x + s\,B A x, \qquad \Delta W = s\,B A,

* ``A``  — ``lora_A.weight``, shape ``(r, d_in)`` (input side, "down" matrix),
* ``B``  — ``lora_B.weight``, shape ``(d_out, r)`` (output side, "up" matrix),
* ``s``  — the scaling: ``α / r`` for plain LoRA, ``α / √r`` for rsLoRA,
* ``ΔW`` — dense update, shape ``(d_out, d_in)``, same as the Linear weight ``W_0``.

Everything else in lorakit (merging, analysis, OSRM) works on :class:`LoRAUpdate` objects or on
dense ``ΔW`` tensors made by :meth:`LoRAUpdate.delta`; the scaling is folded in exactly once,
here. Import these names from :mod:`lorakit.lora.peft`, which re-exports them beside the PEFT
naming rules and the adapter-folder I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch

from ..errors import LorakitError

__all__ = [
    "Adapter", "LoRAUpdate", "adapter_deltas", "check_compatible", "factorize_delta", "lora_delta", "lora_scaling",
]


def lora_scaling(alpha: float, r: int, use_rslora: bool = False) -> float:
    r"""peft's scaling: :math:`s = \alpha / r`, or :math:`\alpha / \sqrt r` with rsLoRA."""
    if r <= 0:
        raise LorakitError(f"LoRA rank must be positive, got r={r}")
    return float(alpha) / (math.sqrt(r) if use_rslora else r)


def lora_delta(A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    r"""Dense LoRA update :math:`\Delta W = s\,B A`.

    Args:
        A: ``(r, d_in)``.
        B: ``(d_out, r)``.
        scaling: ``s``.

    Returns:
        ``ΔW`` of shape ``(d_out, d_in)``.
    """
    if A.ndim != 2 or B.ndim != 2 or B.shape[1] != A.shape[0]:
        raise LorakitError(
            f"LoRA factor shapes do not fit: A {tuple(A.shape)} must be (r, d_in) and B "
            f"{tuple(B.shape)} must be (d_out, r) with the same r"
        )
    return scaling * (B @ A)


@dataclass
class LoRAUpdate:
    r"""The LoRA update of one Linear layer: :math:`\Delta W = s\,B A`.

    Attributes:
        A: ``(r, d_in)``, peft's ``lora_A.weight``.
        B: ``(d_out, r)``, peft's ``lora_B.weight``.
        scaling: ``s`` (``α/r``, or ``α/√r`` for rsLoRA).
    """

    A: torch.Tensor
    B: torch.Tensor
    scaling: float = 1.0

    def __post_init__(self) -> None:
        if self.A.ndim != 2 or self.B.ndim != 2 or self.B.shape[1] != self.A.shape[0]:
            raise LorakitError(
                f"LoRA factor shapes do not fit: A {tuple(self.A.shape)} must be (r, d_in) and "
                f"B {tuple(self.B.shape)} must be (d_out, r) with the same r"
            )
        self.scaling = float(self.scaling)

    @property
    def rank(self) -> int:
        """``r``, the number of rows of ``A``."""
        return int(self.A.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.A.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.B.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of ``ΔW``: ``(d_out, d_in)``."""
        return (self.d_out, self.d_in)

    def delta(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        r""":math:`\Delta W = s\,B A`, shape ``(d_out, d_in)``, optionally cast to ``dtype`` first."""
        A, B = self.A, self.B
        if dtype is not None:
            A, B = A.to(dtype), B.to(dtype)
        return lora_delta(A, B, self.scaling)

    @classmethod
    def from_dense(cls, delta: torch.Tensor) -> "LoRAUpdate":
        """A dense update (e.g. from full fine-tuning) as a LoRA update: ``A = I_{d_in}``, ``B = ΔW``, ``s = 1``.

        Exact (``B A = ΔW``), so every merge method and analysis applies to full fine-tuning too.
        """
        return cls(torch.eye(delta.shape[1], dtype=delta.dtype), delta.clone(), 1.0)

    def folded(self) -> "LoRAUpdate":
        """The same update with the scaling folded into ``B`` (``B ← s·B``, ``s ← 1``)."""
        return LoRAUpdate(self.A, self.B * self.scaling, 1.0)

    def to(self, *args, **kwargs) -> "LoRAUpdate":
        """Move/cast both factors, like ``torch.Tensor.to``."""
        return LoRAUpdate(self.A.to(*args, **kwargs), self.B.to(*args, **kwargs), self.scaling)

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.A).all() and torch.isfinite(self.B).all())


# A whole adapter: target module name (e.g. "bert.encoder.layer.0.attention.self.query") -> update.
Adapter = dict[str, LoRAUpdate]


def adapter_deltas(adapter: Mapping[str, LoRAUpdate]) -> dict[str, torch.Tensor]:
    """``{module: ΔW}`` for every layer of an adapter."""
    return {name: upd.delta() for name, upd in adapter.items()}



def factorize_delta(delta: torch.Tensor, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    r"""Factor a dense ``ΔW`` (d_out×d_in) as ``B A`` with ``A`` (r×d_in), ``B`` (d_out×r) by SVD.

    ``ΔW = U Σ Vᵀ``; ``B = U_r Σ_r^{1/2}``, ``A = Σ_r^{1/2} V_rᵀ``. Returns ``(A, B, energy)``, with
    ``energy = ‖Σ_r‖² / ‖Σ‖²`` the fraction of ‖ΔW‖²_F kept (1.0 when nothing is cut).
    """
    U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
    total = float((S**2).sum())
    k = len(S) if rank is None else min(rank, len(S))
    root = S[:k].sqrt()
    A = (root[:, None] * Vh[:k]).to(delta.dtype)
    B = (U[:, :k] * root[None, :]).to(delta.dtype)
    energy = 1.0 if total == 0 else float((S[:k] ** 2).sum()) / total
    return A, B, energy



def check_compatible(adapters: Iterable[Mapping[str, LoRAUpdate]], names: Iterable[str] | None = None) -> None:
    """Raise a one-line error unless all adapters adapt the same modules with the same ΔW shapes."""
    adapters = list(adapters)
    names = list(names) if names is not None else [f"adapter {i}" for i in range(len(adapters))]
    if not adapters:
        raise LorakitError("no adapters given; pass at least one")
    ref_modules = set(adapters[0])
    for name, ad in zip(names[1:], adapters[1:]):
        if set(ad) != ref_modules:
            missing = sorted(ref_modules - set(ad))[:2]
            extra = sorted(set(ad) - ref_modules)[:2]
            raise LorakitError(
                f"{name} adapts different modules than {names[0]} (missing {missing}, extra {extra}); "
                "merge only adapters trained with the same target_modules"
            )
        for module in ref_modules:
            if ad[module].shape != adapters[0][module].shape:
                raise LorakitError(
                    f"{name}: ΔW of {module} is {ad[module].shape} but {adapters[0][module].shape} in "
                    f"{names[0]}; the adapters were made for different base models"
                )
