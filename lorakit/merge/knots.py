r"""KnOTS (Stoica et al., ICLR 2025, arXiv 2410.19735 §3): merge the tasks' blocks in one shared SVD basis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..lora.update import LoRAUpdate
from .registry import BASE_PARAMS, METHODS, is_bool, register


@dataclass(frozen=True)
class KnotsBasis:
    r"""The shared SVD of the side-by-side updates :math:`[\Delta W_1 \cdots \Delta W_N] = U \Sigma V^\top`.

    Attributes:
        U: ``(d_out, k)``, orthonormal columns.
        S: ``(k,)``, the singular values above ``rtol · S[0]``, descending.
        Vt: ``(N, k, d_in)``; ``Vt[i]`` is task i's block of :math:`V^\top`, so
            :math:`\Delta W_i = U \Sigma\, V_i^\top`.
    """

    U: torch.Tensor
    S: torch.Tensor
    Vt: torch.Tensor


def knots_basis(updates: Sequence[LoRAUpdate], rtol: float = 1e-10) -> KnotsBasis:
    r"""KnOTS' SVD of :math:`M = [\Delta W_1 \cdots \Delta W_N] \in \mathbb{R}^{d_{out} \times N d_{in}}`, in float64.

    :math:`M` is never formed. With :math:`\hat B = [s_1B_1 \cdots s_NB_N] = Q_B R_B` and
    :math:`A_i^\top = Q_i R_i` (thin QRs), :math:`M = Q_B\, C\, \operatorname{blkdiag}(Q_i)^\top`
    with the small core :math:`C = R_B \operatorname{blkdiag}(R_i^\top)` (``Nr × Nr``). The SVD
    :math:`C = U_c \Sigma V_c^\top` gives :math:`U = Q_B U_c` and task i's block
    :math:`V_i^\top = V_c^\top[:, \text{cols}_i]\, Q_i^\top`. This equals the dense SVD of
    :math:`M` up to float64 rounding and the sign of each singular pair (the merge result does
    not depend on those signs). Singular values at or below ``rtol · σ_max`` (numerical zeros) are
    dropped; KnOTS' code drops ``σ ≤ 1e-5`` in absolute terms, which could cut real components
    of small-scale LoRA updates, so lorakit's threshold is relative. ``k ≤ Σ r_i``.
    """
    dev = updates[0].A.device
    A_q, A_r = zip(*(torch.linalg.qr(u.A.to(torch.float64).T) for u in updates))
    Q_B, R_B = torch.linalg.qr(torch.cat([u.scaling * u.B.to(torch.float64) for u in updates], dim=1))
    core = R_B @ torch.block_diag(*(r.T for r in A_r))
    Uc, S, Vct = torch.linalg.svd(core, full_matrices=False)
    keep = S > rtol * S[0] if S.numel() and S[0] > 0 else torch.zeros_like(S, dtype=torch.bool)
    Uc, S, Vct = Uc[:, keep], S[keep], Vct[keep]
    sizes = [q.shape[1] for q in A_q]
    blocks = torch.split(Vct, sizes, dim=1)
    Vt = torch.stack([b @ q.T for b, q in zip(blocks, A_q)]) if S.numel() else torch.zeros(
        len(updates), 0, updates[0].d_in, dtype=torch.float64, device=dev
    )
    return KnotsBasis(U=Q_B @ Uc, S=S, Vt=Vt)




@register(
    "knots",
    paper="Model merging with SVD to tie the KnOTS (Stoica et al., ICLR 2025)",
    url="https://arxiv.org/abs/2410.19735",
    description="one SVD of [ΔW_1 … ΔW_N]; merge the tasks' ΣVᵀ blocks with base; rebuild with U",
    forwards=BASE_PARAMS,
    checks={"sigma_on_v": (is_bool, "True or False")},
    tune="density",
    entrywise_base=True,
)
def knots_merge(
    updates: Sequence[LoRAUpdate],
    base: str = "ties",
    sigma_on_v: bool = True,
    lam: float = 1.0,
    density: float = 0.2,
    drop_rate: float = 0.5,
    seed: int = 0,
    combine: str = "linear",
) -> torch.Tensor:
    r"""KnOTS (Stoica et al., ICLR 2025, https://arxiv.org/abs/2410.19735): merge in a shared SVD basis.

    .. math::

        [\Delta W_1 \cdots \Delta W_N] = U \Sigma [V_1^\top \cdots V_N^\top], \qquad
        \Delta W^* = U\, \operatorname{Base}\big(\{\Sigma V_i^\top\}\big)

    Each task's block :math:`\Sigma V_i^\top` (``k × d_in``) is one task tensor for the entrywise
    ``base`` method (``"ties"`` as in KnOTS-TIES, ``"task_arithmetic"``, or ``"dare"`` for
    KnOTS-DARE), which gets ``lam``/``density``/``drop_rate``/``seed``/``combine`` as it takes
    them. ``sigma_on_v=True`` (KnOTS' default ``s_on_V``) merges :math:`\Sigma V_i^\top` and
    rebuilds with :math:`U`; ``False`` merges :math:`V_i^\top` and rebuilds with :math:`U\Sigma`.
    With ``base="task_arithmetic"`` the result is plain task arithmetic. KnOTS trims over all
    layers at once; lorakit trims per layer. See :func:`knots_basis` for the SVD.
    """
    basis = knots_basis(updates)
    blocks = basis.Vt * basis.S[None, :, None] if sigma_on_v else basis.Vt
    spec = METHODS[base]
    shared = dict(lam=lam, density=density, drop_rate=drop_rate, seed=seed, combine=combine)
    merged = spec.dense(blocks, **{k: v for k, v in shared.items() if k in spec.params})
    return basis.U @ merged if sigma_on_v else (basis.U * basis.S[None, :]) @ merged

