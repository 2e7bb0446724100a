r"""Writing merged layers as LoRA factors: exact concatenation, SVD refactoring, a streaming safetensors writer.

For one layer, a merge gives either factors (task arithmetic, :func:`concat_factors`) or a dense
:math:`\Delta W^*` (``d_out × d_in``) that :func:`refactor_dense` factors as :math:`BA` by SVD.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Sequence

import torch

from ..errors import LorakitError
from ..lora.update import LoRAUpdate, factorize_delta


def weighted(update: LoRAUpdate, weight: float, device: torch.device | str = "cpu") -> LoRAUpdate:
    r"""Fold a per-adapter weight into B: :math:`w\,s\,BA = s\,(wB)A`; factors moved to ``device``."""
    return LoRAUpdate(update.A.to(device), (update.B * weight).to(device), update.scaling)


def concat_factors(updates: Sequence[LoRAUpdate], lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Task arithmetic as one LoRA update, exactly: returns ``(A*, B*)`` with scaling 1.

    .. math:: B^* = \lambda\,[s_1 B_1 \cdots s_N B_N] \ (d_{out} \times \textstyle\sum r_i), \quad
        A^* = [A_1; \dots; A_N] \ (\textstyle\sum r_i \times d_{in}), \quad
        B^* A^* = \lambda \textstyle\sum_i s_i B_i A_i
    """
    A = torch.cat([u.A for u in updates], dim=0)
    B = torch.cat([(lam * u.scaling) * u.B for u in updates], dim=1)
    return A, B


def truncate_factors(A: torch.Tensor, B: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    r"""Best rank-k approximation of :math:`BA` from its factors, without forming :math:`BA` (float64).

    :math:`B = Q_B R_B`, :math:`A^\top = Q_A R_A` (thin QR); the small core
    :math:`R_B R_A^\top = U \Sigma V^\top` gives :math:`BA = (Q_B U)\,\Sigma\,(Q_A V)^\top`, so
    :math:`B_k = Q_B U_k \Sigma_k^{1/2}`, :math:`A_k = \Sigma_k^{1/2} V_k^\top Q_A^\top`, and the
    energy kept is :math:`\sum_{j \le k}\sigma_j^2 / \sum_j \sigma_j^2` — the same as
    :func:`lorakit.lora.peft.factorize_delta` on :math:`BA`, at a cost linear in ``d_out + d_in``.
    Returns ``(A_k, B_k, energy)`` in A's dtype.
    """
    Q_B, R_B = torch.linalg.qr(B.double())
    Q_A, R_A = torch.linalg.qr(A.double().T)
    U, S, Vh = torch.linalg.svd(R_B @ R_A.T, full_matrices=False)
    k = min(rank, len(S))
    root = S[:k].sqrt()
    total = float((S**2).sum())
    energy = 1.0 if total == 0 else float((S[:k] ** 2).sum()) / total
    return ((root[:, None] * Vh[:k]) @ Q_A.T).to(A.dtype), ((Q_B @ U[:, :k]) * root[None, :]).to(A.dtype), energy


#: A rank-k refactoring uses the randomized SVD when ``k + RSVD_OVERSAMPLE`` is at most this
#: fraction of ``min(d_out, d_in)``; smaller layers (and full numerical rank) use the exact SVD.
#: Oversampling 32 with 2 power iterations keeps ≥ 99 % of the optimal energy on slowly decaying
#: spectra (measured: 99.7 % at k = 32 on σ_j = 10^(−1.5 j/300); 99.2 % with 16) at
#: 6 (k + 32) products of the layer, a few seconds for a 14336 × 4096 layer on 2 CPU cores.
RSVD_MAX_FRACTION = 0.25
RSVD_OVERSAMPLE = 32
RSVD_POWER_ITERS = 2


def randomized_factors(
    delta: torch.Tensor, rank: int, oversample: int = RSVD_OVERSAMPLE, power_iters: int = RSVD_POWER_ITERS,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    r"""Rank-k factors of a dense :math:`\Delta W` (``d_out × d_in``) by a randomized SVD; ``(A, B, energy)``.

    Halko, Martinsson & Tropp (SIAM Review 2011, arXiv 0909.4061, Alg. 4.4): with a Gaussian
    :math:`\Omega` (``d_in × (k+p)``, seeded), :math:`Y = (\Delta W \Delta W^\top)^q \Delta W\,\Omega`
    re-orthonormalised after every product, :math:`Q = \operatorname{orth}(Y)` (``d_out × (k+p)``);
    the small SVD :math:`Q^\top \Delta W = \tilde U \Sigma V^\top` gives
    :math:`B = Q\tilde U_k \Sigma_k^{1/2}`, :math:`A = \Sigma_k^{1/2} V_k^\top`.

    :math:`BA = P\,\Delta W` with :math:`P` the orthogonal projector on :math:`\operatorname{span}(Q\tilde U_k)`,
    so the energy kept, :math:`\lVert BA\rVert_F^2 / \lVert \Delta W\rVert_F^2 = \sum_{j\le k}\sigma_j^2 / \lVert\Delta W\rVert_F^2`,
    is exact for the factors returned (at most the Eckart–Young optimum, and close to it after
    ``power_iters`` = 2 iterations). Cost :math:`O((2q+2)\, d_{out} d_{in} (k+p))` instead of the exact
    SVD's :math:`O(d_{out} d_{in} \min(d_{out}, d_{in}))`: seconds, not minutes, for a 14336 × 4096 layer.
    Deterministic for a given ``seed``; float32 products, float64 small SVD; float32 factors.
    """
    x = delta.float()
    width = min(rank + oversample, *x.shape)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    omega = torch.randn(x.shape[1], width, generator=gen, device=x.device)
    Q = torch.linalg.qr(x @ omega).Q
    for _ in range(power_iters):
        Q = torch.linalg.qr(x @ torch.linalg.qr(x.T @ Q).Q).Q
    U, S, Vh = torch.linalg.svd((Q.T @ x).double(), full_matrices=False)
    k = min(rank, len(S))
    root = S[:k].sqrt()
    total = float(x.double().pow(2).sum())
    energy = 1.0 if total == 0 else min(1.0, float((S[:k] ** 2).sum()) / total)
    A = (root[:, None] * Vh[:k]).float()
    B = Q @ (U[:, :k] * root[None, :]).float()
    return A, B, energy


def use_randomized(shape: tuple[int, int], rank: int | None) -> bool:
    """Whether :func:`refactor_dense` takes the randomized SVD: a rank well below the layer's size."""
    return rank is not None and rank + RSVD_OVERSAMPLE <= RSVD_MAX_FRACTION * min(shape)


def refactor_dense(delta: torch.Tensor, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    r"""Factor a dense :math:`\Delta W^*` (``d_out × d_in``) as ``B A`` by SVD; returns ``(A, B, energy)``.

    ``rank=None``: the full numerical rank — singular values above
    :math:`\sigma_1 \max(d_{out}, d_{in})\,\varepsilon_{32}` (the rest is float32 round-off), so
    :math:`BA = \Delta W^*` to float32 precision (exact SVD). ``rank=k``: the best rank-k
    approximation (Eckart–Young) by the exact SVD on small layers; when ``k`` is well below the
    layer's size (:func:`use_randomized`) by :func:`randomized_factors`, whose energy kept is
    exact for the factors it writes and within a hair of the optimum. At least rank 1 (a zero
    layer gives zero factors). float32 factors.
    """
    if use_randomized(tuple(delta.shape), rank):
        return randomized_factors(delta, rank)
    A, B, energy = factorize_delta(delta.double(), rank)
    if rank is None:
        sigma = (A**2).sum(dim=1)  # balanced factors: A Aᵀ = Σ, so row norms² are the σ_j
        tol = float(sigma[0]) * max(delta.shape) * torch.finfo(torch.float32).eps if len(sigma) else 0.0
        k = max(1, int((sigma > tol).sum()))
        total = float((sigma**2).sum())
        energy = 1.0 if total == 0 else float((sigma[:k] ** 2).sum()) / total
        A, B = A[:k], B[:, :k]
    return A.float(), B.float(), energy


_ST_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


class SafetensorsStream:
    """Write a ``.safetensors`` file one tensor at a time, holding only the current tensor in memory.

    The format: 8-byte little-endian header length, a JSON header
    ``{name: {dtype, shape, data_offsets: [begin, end]}}`` padded to 8 bytes, then the raw data.
    Data go to ``<path>.part`` as they come; :meth:`close` writes header + data to ``path``.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._part = self.path.with_name(self.path.name + ".part")
        self._file = open(self._part, "wb")
        self._header: dict[str, dict] = {}
        self._offset = 0

    def add(self, name: str, tensor: torch.Tensor) -> int:
        """Append one tensor; returns its number of elements."""
        t = tensor.detach().cpu().contiguous()
        if t.dtype not in _ST_DTYPES:
            raise LorakitError(f"cannot write tensor {name} of dtype {t.dtype}; re-save the adapter in float32")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        self._file.write(raw)
        self._header[name] = {
            "dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [self._offset, self._offset + len(raw)],
        }
        self._offset += len(raw)
        return t.numel()

    def abort(self) -> None:
        """Give up: close and delete the partial data."""
        self._file.close()
        self._part.unlink(missing_ok=True)

    def close(self) -> None:
        self._file.close()
        header = json.dumps({"__metadata__": {"format": "pt"}, **self._header}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        with open(self.path, "wb") as out, open(self._part, "rb") as data:
            out.write(struct.pack("<Q", len(header)))
            out.write(header)
            shutil.copyfileobj(data, out, 1 << 24)
        os.remove(self._part)


