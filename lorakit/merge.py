r"""Merging LoRA updates, one layer at a time: pure tensor functions plus a registry.

Notation (papers.md §1): for one Linear layer and task :math:`i = 1 \dots N`,

.. math::

    \Delta W_i = s_i B_i A_i \in \mathbb{R}^{d_{out} \times d_{in}}, \quad
    A_i \in \mathbb{R}^{r \times d_{in}},\ B_i \in \mathbb{R}^{d_{out} \times r},

and a merge method maps :math:`\{\Delta W_i\} \mapsto \Delta W^*` (the merged model is
:math:`W_0 + \Delta W^*`). Every method is registered in :data:`METHODS` and called through
:func:`merge_layer` (one layer) or :func:`merge_adapters` (all layers), which check the
hyperparameters and always return float32.

Shared hyperparameter names: ``lam`` (merge coefficient λ), ``density`` (fraction of entries
kept by TIES' trim), ``drop_rate`` (DARE's p), ``seed`` (DARE's mask), ``combine`` (DARE's
second stage), ``base`` (the inner method of KnOTS and DO-Merging). A name means the same thing,
with the same default, in every method that takes it.

Precision: a method computes in float32, or in float64 when it is given float64 factors (as
DO-Merging gives its base method); the KnOTS SVD and DO-Merging's factor optimisation always run
in float64.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import torch

from .analysis import column_magnitudes, norm_dim
from .errors import LorakitError
from .lora import LoRAUpdate, check_compatible

# ----------------------------------------------------------------------------------------------
# Entrywise building blocks on stacked dense task tensors τ of shape (N, ...) — peft semantics
# ----------------------------------------------------------------------------------------------


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


def task_arithmetic_dense(stack: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    r"""Task arithmetic on dense task tensors: :math:`\tau^* = \lambda \sum_i \tau_i`; ``(N, ...) → (...)``."""
    return lam * stack.sum(dim=0)


def ties_dense(stack: torch.Tensor, lam: float = 1.0, density: float = 0.2) -> torch.Tensor:
    r"""TIES on dense task tensors: trim → elect sign → disjoint mean → ×λ; ``(N, ...) → (...)``.

    .. math:: \tau^* = \lambda\,\operatorname{DisjointMean}\big(\{\operatorname{Trim}_k(\tau_i)\}\big)
    """
    trimmed = torch.stack([trim_topk(t, density) for t in stack])
    return lam * disjoint_mean(trimmed, elect_sign(trimmed))


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


# ----------------------------------------------------------------------------------------------
# Methods on a list of LoRAUpdates (one layer)
# ----------------------------------------------------------------------------------------------


def _compute_dtype(updates: Sequence[LoRAUpdate]) -> torch.dtype:
    if any(u.A.dtype == torch.float64 or u.B.dtype == torch.float64 for u in updates):
        return torch.float64
    return torch.float32


def stack_deltas(updates: Sequence[LoRAUpdate], dtype: torch.dtype | None = None) -> torch.Tensor:
    """The dense task updates stacked: ``(N, d_out, d_in)``, ``ΔW_i = s_i B_i A_i``."""
    dtype = dtype or _compute_dtype(updates)
    return torch.stack([u.delta(dtype) for u in updates])


def task_arithmetic_merge(updates: Sequence[LoRAUpdate], lam: float = 1.0) -> torch.Tensor:
    r"""Task arithmetic: :math:`\Delta W^* = \lambda \sum_i s_i B_i A_i`, shape ``(d_out, d_in)``.

    Computed without forming the N dense updates, as one product of the concatenated factors
    :math:`[s_1 B_1 \cdots s_N B_N]\,[A_1; \dots; A_N]` (``(d_out, Nr) @ (Nr, d_in)``). With one
    update and λ = 1 the result is bit-identical to ``update.delta()``.
    """
    dtype = _compute_dtype(updates)
    A = torch.cat([u.A.to(dtype) for u in updates], dim=0)
    scalings = {u.scaling for u in updates}
    if len(scalings) == 1:
        return lam * (scalings.pop() * (torch.cat([u.B.to(dtype) for u in updates], dim=1) @ A))
    B = torch.cat([u.scaling * u.B.to(dtype) for u in updates], dim=1)
    return lam * (B @ A)


def ties_merge(updates: Sequence[LoRAUpdate], lam: float = 1.0, density: float = 0.2) -> torch.Tensor:
    """TIES-Merging of the dense updates :math:`s_i B_i A_i` (see :func:`ties_dense`)."""
    return ties_dense(stack_deltas(updates), lam=lam, density=density)


def dare_merge(
    updates: Sequence[LoRAUpdate], lam: float = 1.0, drop_rate: float = 0.5, seed: int = 0, combine: str = "linear"
) -> torch.Tensor:
    """DARE (drop and rescale) of the dense updates, then ``combine`` (see :func:`dare_dense`)."""
    return dare_dense(stack_deltas(updates), lam=lam, drop_rate=drop_rate, seed=seed, combine=combine)


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


# ----------------------------------------------------------------------------------------------
# DO-Merging (papers.md §3.2–3.4): decouple magnitude and direction, orthogonalise the factors
# ----------------------------------------------------------------------------------------------

#: Column norms at or below this are treated as zero columns (their direction is 0, not NaN).
EPS = 1e-12


def _safe_inverse(magnitude: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.where(magnitude > eps, 1.0 / torch.where(magnitude > eps, magnitude, 1.0), 0.0)


def _broadcast(vector: torch.Tensor, axis: str) -> torch.Tensor:
    """Shape a magnitude vector to multiply a ``(d_out, d_in)`` matrix along ``axis``."""
    return vector[None, :] if norm_dim(axis) == 0 else vector[:, None]


def decouple(delta: torch.Tensor, axis: str = "in", eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Split ``ΔW`` into magnitude and direction (papers.md §3.2, D1/D2).

    ``axis="in"`` (the paper's column-wise reading; default):

    .. math::

        \alpha_j = \lVert \Delta W[:, j] \rVert_2 \ (\alpha \in \mathbb{R}^{d_{in}}), \qquad
        \tilde W[:, j] = \Delta W[:, j] / \alpha_j, \qquad \Delta W = \tilde W \operatorname{diag}(\alpha)

    ``axis="out"`` uses rows instead: :math:`\alpha \in \mathbb{R}^{d_{out}}`,
    :math:`\Delta W = \operatorname{diag}(\alpha)\tilde W`. Columns with :math:`\alpha_j \le`
    ``eps`` get a zero direction (no NaN). Computed in the input's dtype.

    Returns:
        ``(magnitude, direction)``: ``(d_in,)`` or ``(d_out,)``, and ``(d_out, d_in)``.
    """
    magnitude = column_magnitudes(delta, axis).to(delta.dtype)
    return magnitude, delta * _broadcast(_safe_inverse(magnitude, eps), axis)


_decouple_dense = decouple  # do_merge_with_report has a flag named ``decouple``


def recompose(magnitude: torch.Tensor, direction: torch.Tensor, axis: str = "in") -> torch.Tensor:
    r"""Inverse of :func:`decouple`: :math:`\Delta W = \tilde W \odot \alpha` broadcast along ``axis``."""
    return direction * _broadcast(magnitude, axis)


def decouple_update(update: LoRAUpdate, axis: str = "in", eps: float = EPS) -> tuple[torch.Tensor, LoRAUpdate]:
    r""":func:`decouple` in factored form, without forming ``ΔW``; float64.

    With :math:`B \leftarrow sB`, the column norms are :math:`\alpha_j^2 = a_j^\top (B^\top B) a_j`
    (:math:`a_j` = column j of A), and the direction stays a rank-r update:
    ``"in"``: :math:`\tilde W = B\,(A \operatorname{diag}(1/\alpha))`; ``"out"``:
    :math:`\tilde W = (\operatorname{diag}(1/\alpha) B)\,A`.

    Returns:
        ``(magnitude, direction)`` with the direction as a :class:`LoRAUpdate` of scaling 1.
    """
    A = update.A.to(torch.float64)
    B = update.scaling * update.B.to(torch.float64)
    if norm_dim(axis) == 0:
        sq = (A * ((B.T @ B) @ A)).sum(dim=0)
    else:
        sq = (B * (B @ (A @ A.T))).sum(dim=1)
    magnitude = sq.clamp(min=0).sqrt()
    inv = _safe_inverse(magnitude, eps)
    if axis == "in":
        return magnitude, LoRAUpdate(A * inv[None, :], B, 1.0)
    return magnitude, LoRAUpdate(A, B * inv[:, None], 1.0)


def _as_rows(mats: Sequence[torch.Tensor], side: str) -> list[torch.Tensor]:
    """Factors as ``(r_i, n)`` row blocks: A as given, B transposed (float64)."""
    if side not in ("A", "B"):
        raise LorakitError(f"side must be 'A' (r × d_in factors) or 'B' (d_out × r factors), got {side!r}")
    rows = [m.to(torch.float64) if side == "A" else m.to(torch.float64).T for m in mats]
    if any(x.ndim != 2 or x.shape[1] != rows[0].shape[1] for x in rows):
        raise LorakitError(f"the {side} factors do not share their {'d_in' if side == 'A' else 'd_out'} size")
    return rows


def factor_cross_terms(mats: Sequence[torch.Tensor], side: str = "A") -> dict[tuple[int, int], torch.Tensor]:
    r"""The pairwise cross terms DO-Merging drives to zero (papers.md §3.3, D5), each ``r_i × r_j``.

    ``side="A"`` (``A_i``: ``r × d_in``): :math:`A_i A_j^\top`, the overlap of input row spaces.
    ``side="B"`` (``B_i``: ``d_out × r``): :math:`B_i^\top B_j`, the overlap of output column spaces.
    Returns ``{(i, j): cross}`` for ``i < j`` (float64).
    """
    rows = _as_rows(mats, side)
    return {(i, j): rows[i] @ rows[j].T for i in range(len(rows)) for j in range(i + 1, len(rows))}


@dataclass(frozen=True)
class OrthoReport:
    r"""What :func:`orthogonalize_factors` did to one side (A or B) of one layer.

    Attributes:
        side: ``"A"`` or ``"B"``.
        cross_before, cross_after: :math:`\sum_{i<j} \lVert \cdot \rVert_F^2` of the cross terms
            in the loss's units (with ``normalize_factors`` every factor is rescaled to
            :math:`\lVert N_i \rVert_F^2 = r_i`, so these are dimensionless).
        relative_perturbation: per task :math:`\lVert \hat M_i - M_i \rVert_F / \lVert M_i \rVert_F`.
        loss_history: the loss at the start and after every accepted step (non-increasing).
        steps: optimiser steps tried; rejected: how many of them were undone (the loss went up).
        lr: the learning rate used (before any halving).
    """

    side: str
    cross_before: float
    cross_after: float
    relative_perturbation: tuple[float, ...]
    loss_history: tuple[float, ...]
    steps: int
    rejected: int
    lr: float

    @property
    def cross_reduction(self) -> float:
        """``1 - cross_after / cross_before`` (0 when there was nothing to reduce)."""
        return 0.0 if self.cross_before == 0 else 1.0 - self.cross_after / self.cross_before


#: DO-Merging orthogonalisation defaults (ours, papers.md §3.3: the paper does not give them).
ORTHO_GAMMA = 1.0
ORTHO_STEPS = 200
ORTHO_LR = {"adam": 0.05, "gd": 0.1}
#: Stop early once the gradient norm (loss units) is below this: already-orthogonal input stays bit-identical.
ORTHO_GTOL = 1e-12
#: Stop early once rejected steps have halved the step size below this fraction of the first one.
ORTHO_MIN_STEP = 2.0**-20


def _ortho_loss(base: list[torch.Tensor], deltas: list[torch.Tensor], offdiag: torch.Tensor, gamma: float):
    rows = torch.cat([b + d for b, d in zip(base, deltas)], dim=0)
    gram = rows @ rows.T
    cross = ((gram * offdiag) ** 2).sum() / 2
    return cross + gamma * sum((d**2).sum() for d in deltas), cross


def orthogonalize_factors(
    mats: Sequence[torch.Tensor],
    side: str = "A",
    gamma: float = ORTHO_GAMMA,
    steps: int = ORTHO_STEPS,
    lr: float | None = None,
    optimizer: str = "adam",
    normalize_factors: bool = True,
) -> tuple[list[torch.Tensor], OrthoReport]:
    r"""DO-Merging's data-free orthogonalisation of one side of one layer (papers.md §3.3, D4/D5/D8).

    For ``side="A"`` (``A_i``: ``r_i × d_in``) it minimises, from :math:`\delta = 0`,

    .. math::

        L_A(\delta) = \sum_{i<j} \big\lVert (N_i + \delta_i)(N_j + \delta_j)^\top \big\rVert_F^2
            + \gamma \sum_i \lVert \delta_i \rVert_F^2, \qquad
        N_i = \frac{\sqrt{r_i}}{\lVert A_i \rVert_F} A_i,

    and returns :math:`\hat A_i = A_i + \frac{\lVert A_i \rVert_F}{\sqrt{r_i}}\delta_i`. For
    ``side="B"`` (``B_i``: ``d_out × r_i``, scaling already folded in) the cross term is
    :math:`\lVert \hat B_i^\top \hat B_j \rVert_F^2` (``r_i × r_j``); it is the A problem on
    :math:`B_i^\top`.

    Scale awareness **[D]**: the rescaling :math:`N_i` (``normalize_factors=True``) gives every
    factor the norm of an orthonormal one (:math:`\lVert N_i \rVert_F^2 = r_i`), so γ means the
    same for every task and layer whatever the LoRA scale (a task 1000× larger is moved by the
    same relative amount), and the loss is dimensionless. ``normalize_factors=False`` optimises
    the raw :math:`L_A` of papers.md §3.3 in the factors' own units.

    Since the loss never increases from :math:`L(0) = C_0` (the cross term before),
    :math:`\gamma \sum_i \lVert\delta_i\rVert_F^2 \le C_0`, i.e.
    :math:`\sum_i r_i \rho_i^2 \le C_0 / \gamma` for the relative perturbations
    :math:`\rho_i = \lVert \hat A_i - A_i \rVert_F / \lVert A_i \rVert_F`. Default γ = 1
    (ours; the paper gives none): on random factors it removes ≈ 89 % of the cross term and moves
    each factor by ≈ 6–7 % (3 tasks, r = 8, d = 384) or ≈ 13 % (8 tasks, r = 16, d = 768) of
    its norm, inside the 0.1–0.2 budget of papers.md §3.3. γ = 0.5 removes ≈ 96 % for ≈ 8 % / 15 %.

    When the tasks' factors share a component (e.g. adapters trained from the same seed start
    from the same A), the cross term is much larger and so is the move: with rows of cosine 0.5
    (0.9) across tasks, γ = 1 moves each factor by ≈ 13–22 % (35–49 %); raise γ to stay small.

    Optimiser: ``"adam"`` (default; ``lr`` is each step per entry as a fraction of the task's RMS
    entry, default 0.05) or ``"gd"`` (plain gradient descent on the normalised problem, default
    ``lr`` 0.1). Both reach the same optimum within the default 200 steps on all the cases above
    (loss within 1e-5 of a 3000-step run); GD gets there in ≈ 100 steps. A step that would
    raise the loss is undone and the step size halved (Adam's moments restart), so the loss never
    increases; the run stops early once the gradient norm is ≤ ``ORTHO_GTOL`` or the step has
    been halved below ``ORTHO_MIN_STEP`` of the first. Float64, gradients by autograd, no
    randomness: deterministic. Already-orthogonal factors (and a single task) come back
    unchanged, bit for bit.

    Returns:
        ``(new_mats, report)``: float64 factors with the input shapes, and an :class:`OrthoReport`.
    """
    if optimizer not in ORTHO_LR:
        raise LorakitError(f"optimizer must be one of {sorted(ORTHO_LR)}, got {optimizer!r}")
    rows = _as_rows(mats, side)
    norms = [float(torch.linalg.vector_norm(x)) for x in rows]
    scales = [n / math.sqrt(x.shape[0]) if normalize_factors and n > 0 else 1.0 for x, n in zip(rows, norms)]
    base = [x / s for x, s in zip(rows, scales)]
    sizes = [x.shape[0] for x in rows]
    owner = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(sizes)).to(rows[0].device)
    offdiag = (owner[:, None] != owner[None, :]).to(torch.float64)

    if lr is None:
        lr = ORTHO_LR[optimizer]
    if optimizer == "adam":  # per-entry steps relative to each task's RMS entry
        rates = [lr * math.sqrt(float((b**2).mean())) if b.numel() else 0.0 for b in base]
    else:
        rates = [lr] * len(base)

    def evaluate(deltas):
        deltas = [d.detach().requires_grad_(True) for d in deltas]
        loss, cross = _ortho_loss(base, deltas, offdiag, gamma)
        grads = torch.autograd.grad(loss, deltas)
        return deltas, float(loss.detach()), float(cross.detach()), [g.detach() for g in grads]

    deltas, loss, cross, grads = evaluate([torch.zeros_like(b) for b in base])
    cross_before, history = cross, [loss]
    beta1, beta2, adam_eps = 0.9, 0.999, 1e-16
    m = v = None  # Adam moments; reset after a rejected step so the next move is a descent direction
    t, tried, rejected = 0, 0, 0
    shrink = 1.0  # halved after every rejected step
    for _ in range(steps):
        if math.sqrt(sum(float((g**2).sum()) for g in grads)) <= ORTHO_GTOL or shrink < ORTHO_MIN_STEP:
            break
        tried += 1
        if optimizer == "adam":
            if m is None:
                t, m, v = 0, [torch.zeros_like(g) for g in grads], [torch.zeros_like(g) for g in grads]
            t += 1
            m = [beta1 * mi + (1 - beta1) * g for mi, g in zip(m, grads)]
            v = [beta2 * vi + (1 - beta2) * g**2 for vi, g in zip(v, grads)]
            moves = [(mi / (1 - beta1**t)) / ((vi / (1 - beta2**t)).sqrt() + adam_eps) for mi, vi in zip(m, v)]
        else:
            moves = grads
        proposal = [d.detach() - shrink * rate * mv for d, rate, mv in zip(deltas, rates, moves)]
        cand, c_loss, c_cross, c_grads = evaluate(proposal)
        if c_loss <= loss:
            deltas, loss, cross, grads = cand, c_loss, c_cross, c_grads
            history.append(loss)
        else:
            shrink *= 0.5
            rejected += 1
            m = v = None
    moved = len(history) > 1

    if moved:
        new_rows = [x + s * d.detach() for x, s, d in zip(rows, scales, deltas)]
    else:
        new_rows = rows
    rel = tuple(
        float(torch.linalg.vector_norm(y - x)) / n if n > 0 else 0.0 for x, y, n in zip(rows, new_rows, norms)
    )
    new_mats = [y if side == "A" else y.T for y in new_rows]
    report = OrthoReport(
        side=side,
        cross_before=cross_before,
        cross_after=cross,
        relative_perturbation=rel,
        loss_history=tuple(history),
        steps=tried,
        rejected=rejected,
        lr=lr,
    )
    return new_mats, report


@dataclass(frozen=True)
class DOReport:
    """Diagnostics of one DO-Merging layer: the A- and B-side :class:`OrthoReport` (None when skipped)."""

    ortho_A: OrthoReport | None = None
    ortho_B: OrthoReport | None = None


def do_merge_with_report(
    updates: Sequence[LoRAUpdate],
    base: str = "task_arithmetic",
    decouple: bool = True,
    magnitude_axis: str = "in",
    magnitude_merge: str = "mean",
    renormalize_direction: bool = False,
    orthogonalize: bool = True,
    gamma: float = ORTHO_GAMMA,
    steps: int = ORTHO_STEPS,
    lr: float | None = None,
    optimizer: str = "adam",
    normalize_factors: bool = True,
    **base_params: Any,
) -> tuple[torch.Tensor, DOReport]:
    r"""DO-Merging of one layer (papers.md §3.4), with its orthogonalisation diagnostics.

    .. math::

        &B_i \leftarrow s_i B_i; \quad \{\hat A_i\} = \operatorname{argmin} L_A, \ \{\hat B_i\} = \operatorname{argmin} L_B
            && \text{(orthogonalize, } A_i: r \times d_{in},\ B_i: d_{out} \times r)\\
        &\alpha_i, \tilde W_i = \operatorname{decouple}(\hat B_i \hat A_i)
            && (\alpha_i \in \mathbb{R}^{d_{in}} \text{ for axis "in"})\\
        &\alpha^* = \tfrac1N \textstyle\sum_i \alpha_i, \quad \tilde W^* = \operatorname{Base}(\{\tilde W_i\}; \lambda, \dots)
            && \text{(magnitude\_merge="mean")}\\
        &\Delta W^* = \tilde W^* \odot \alpha^* && (d_{out} \times d_{in})

    Switches (the paper's ablations TA, TA+D, TA+O, TA+D+O are one call each):

    * ``orthogonalize``: run :func:`orthogonalize_factors` on the A and on the B factors
      (γ, steps, lr, optimizer, normalize_factors); a single task is left as it is.
    * ``decouple``: merge magnitudes and directions separately (:func:`decouple_update`); with
      ``magnitude_merge="base"`` the magnitudes go through the base method too (so with task
      arithmetic λ scales both parts: :math:`\lambda^2`).
    * ``renormalize_direction``: re-normalise :math:`\tilde W^*` along the axis before rescaling.
    * ``base``: any other registered method; ``lam``, ``density``, ``drop_rate``, ``seed``,
      ``combine`` go to it (DARE on magnitudes uses ``seed + 1``).

    With ``decouple=False`` and ``orthogonalize=False`` this is exactly the base method.
    """
    spec = METHODS[base]
    if not decouple and not orthogonalize:
        return spec.function(updates, **base_params).float(), DOReport()
    tasks = [LoRAUpdate(u.A.to(torch.float64), u.scaling * u.B.to(torch.float64), 1.0) for u in updates]
    report = DOReport()
    if orthogonalize:
        tasks, report = orthogonalize_updates(
            tasks, gamma=gamma, steps=steps, lr=lr, optimizer=optimizer, normalize_factors=normalize_factors
        )
    if not decouple:
        return spec.function(tasks, **base_params).float(), report
    magnitudes, directions = zip(*(decouple_update(t, magnitude_axis) for t in tasks))
    magnitudes = torch.stack(magnitudes)
    if magnitude_merge == "mean":
        magnitude = magnitudes.mean(dim=0)
    else:
        mag_params = dict(base_params)
        if "seed" in mag_params:
            mag_params["seed"] = mag_params["seed"] + 1
        magnitude = spec.dense(magnitudes, **mag_params)
    direction = spec.function(list(directions), **base_params).to(torch.float64)
    if renormalize_direction:
        direction = _decouple_dense(direction, magnitude_axis)[1]
    return recompose(magnitude, direction, magnitude_axis).float(), report


def do_merge(updates: Sequence[LoRAUpdate], **params: Any) -> torch.Tensor:
    """DO-Merging of one layer; see :func:`do_merge_with_report` for the equations and switches."""
    return do_merge_with_report(updates, **params)[0]


def orthogonalize_updates(
    updates: Sequence[LoRAUpdate],
    gamma: float = ORTHO_GAMMA,
    steps: int = ORTHO_STEPS,
    lr: float | None = None,
    optimizer: str = "adam",
    normalize_factors: bool = True,
) -> tuple[list[LoRAUpdate], DOReport]:
    r"""DO-Merging's orthogonalisation step alone, for one layer: :math:`\{(A_i, s_iB_i)\} \mapsto \{(\hat A_i, \hat B_i)\}`.

    The first step of :func:`do_merge_with_report` (scaling folded into ``B``, float64, scaling 1
    on the result). It depends on neither λ nor the base method, so a benchmark can run it once
    and merge the result with ``orthogonalize=False`` at every grid point: that equals
    ``do_merge(updates, orthogonalize=True, ...)`` bit for bit. A single task comes back as it is.
    """
    tasks = [LoRAUpdate(u.A.to(torch.float64), u.scaling * u.B.to(torch.float64), 1.0) for u in updates]
    if len(tasks) < 2:
        return tasks, DOReport()
    options = dict(gamma=gamma, steps=steps, lr=lr, optimizer=optimizer, normalize_factors=normalize_factors)
    new_A, rep_A = orthogonalize_factors([t.A for t in tasks], "A", **options)
    new_B, rep_B = orthogonalize_factors([t.B for t in tasks], "B", **options)
    return [LoRAUpdate(a, b, 1.0) for a, b in zip(new_A, new_B)], DOReport(ortho_A=rep_A, ortho_B=rep_B)


def orthogonalize_adapters(
    adapters: Sequence[Mapping[str, LoRAUpdate]], progress: bool = False, **options: Any
) -> tuple[list[dict[str, LoRAUpdate]], dict[str, DOReport]]:
    """:func:`orthogonalize_updates` on every layer of N adapters (same modules); options as there.

    Returns the orthogonalised adapters (float64 factors, scaling 1) and ``{module: DOReport}``.
    """
    adapters = list(adapters)
    check_compatible(adapters)
    out: list[dict[str, LoRAUpdate]] = [{} for _ in adapters]
    reports: dict[str, DOReport] = {}
    modules = list(adapters[0])
    if progress:
        from tqdm.auto import tqdm

        modules = tqdm(modules, desc="orthogonalising", unit="layer")
    for module in modules:
        new, reports[module] = orthogonalize_updates([ad[module] for ad in adapters], **options)
        for k, upd in enumerate(new):
            out[k][module] = upd
    return out, reports


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeMethod:
    """One registered merge method.

    Attributes:
        name: registry key (``merge_layer(..., method=name)``).
        function: ``function(updates: list[LoRAUpdate], **params) -> ΔW*`` for one layer.
        paper: title of the paper that introduced it; url: its address.
        params: hyperparameters and their defaults (read-only).
        description: one line.
        dense: the same rule on stacked dense task tensors ``(N, ...) -> (...)``, for methods that
            act entry by entry (usable as KnOTS' base and for DO's ``magnitude_merge="base"``).
        forwards: names in ``params`` that the method hands to its ``base`` method.
    """

    name: str
    function: Callable[..., torch.Tensor]
    paper: str
    url: str
    params: Mapping[str, Any]
    description: str
    dense: Callable[..., torch.Tensor] | None = None
    forwards: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))


METHODS: dict[str, MergeMethod] = {}

_BASE_PARAMS = ("lam", "density", "drop_rate", "seed", "combine")
_DEFAULTS = {"lam": 1.0, "density": 0.2, "drop_rate": 0.5, "seed": 0, "combine": "linear"}


def _register(method: MergeMethod) -> None:
    METHODS[method.name] = method


_register(
    MergeMethod(
        "task_arithmetic",
        task_arithmetic_merge,
        "Editing Models with Task Arithmetic (Ilharco et al., ICLR 2023)",
        "https://arxiv.org/abs/2212.04089",
        {"lam": _DEFAULTS["lam"]},
        "λ · Σ_i ΔW_i",
        dense=task_arithmetic_dense,
    )
)
_register(
    MergeMethod(
        "ties",
        ties_merge,
        "TIES-Merging: Resolving Interference When Merging Models (Yadav et al., NeurIPS 2023)",
        "https://arxiv.org/abs/2306.01708",
        {"lam": _DEFAULTS["lam"], "density": _DEFAULTS["density"]},
        "trim to top-density |ΔW|, elect sign by sum, disjoint mean, ×λ (peft semantics)",
        dense=ties_dense,
    )
)
_register(
    MergeMethod(
        "dare",
        dare_merge,
        "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch "
        "(Yu et al., ICML 2024)",
        "https://arxiv.org/abs/2311.03099",
        {k: _DEFAULTS[k] for k in ("lam", "drop_rate", "seed", "combine")},
        "drop entries w.p. drop_rate, rescale by 1/(1-p), then sum (linear) or TIES sign/disjoint mean",
        dense=dare_dense,
    )
)
_register(
    MergeMethod(
        "knots",
        knots_merge,
        "Model merging with SVD to tie the KnOTS (Stoica et al., ICLR 2025)",
        "https://arxiv.org/abs/2410.19735",
        {"base": "ties", "sigma_on_v": True, **_DEFAULTS},
        "one SVD of [ΔW_1 … ΔW_N]; merge the tasks' ΣVᵀ blocks with base; rebuild with U",
        forwards=_BASE_PARAMS,
    )
)
_register(
    MergeMethod(
        "do",
        do_merge,
        "Decouple and Orthogonalize: A Data-Free Framework for LoRA Merging (Zheng et al., 2025)",
        "https://arxiv.org/abs/2505.15875",
        {
            "base": "task_arithmetic",
            "decouple": True,
            "magnitude_axis": "in",
            "magnitude_merge": "mean",
            "renormalize_direction": False,
            "orthogonalize": True,
            "gamma": ORTHO_GAMMA,
            "steps": ORTHO_STEPS,
            "lr": None,
            "optimizer": "adam",
            "normalize_factors": True,
            **_DEFAULTS,
        },
        "orthogonalise A and B across tasks, merge column magnitudes (mean) and directions (base) apart",
        forwards=_BASE_PARAMS,
    )
)


# ----------------------------------------------------------------------------------------------
# Parameter checking
# ----------------------------------------------------------------------------------------------


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lam": (_is_real, "a finite number"),
    "density": (lambda v: _is_real(v) and 0 < v <= 1, "a number in (0, 1]"),
    "drop_rate": (lambda v: _is_real(v) and 0 <= v < 1, "a number in [0, 1)"),
    "seed": (_is_int, "an integer"),
    "combine": (lambda v: v in ("linear", "ties"), "'linear' or 'ties'"),
    "sigma_on_v": (lambda v: isinstance(v, bool), "True or False"),
    "decouple": (lambda v: isinstance(v, bool), "True or False"),
    "orthogonalize": (lambda v: isinstance(v, bool), "True or False"),
    "renormalize_direction": (lambda v: isinstance(v, bool), "True or False"),
    "normalize_factors": (lambda v: isinstance(v, bool), "True or False"),
    "magnitude_axis": (lambda v: v in ("in", "out"), "'in' (per input column) or 'out' (per output row)"),
    "magnitude_merge": (lambda v: v in ("mean", "base"), "'mean' or 'base'"),
    "gamma": (lambda v: _is_real(v) and v >= 0, "a finite number >= 0"),
    "steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "lr": (lambda v: v is None or (_is_real(v) and v > 0), "None (the optimizer's default) or a number > 0"),
    "optimizer": (lambda v: v in ORTHO_LR, "'adam' or 'gd'"),
}


def _base_choices(method: str) -> list[str]:
    if method == "knots":
        return [name for name, spec in METHODS.items() if spec.dense is not None]
    return [name for name in METHODS if name != method]


def get_method(method: str) -> MergeMethod:
    """The registered :class:`MergeMethod` called ``method`` (LorakitError listing the known ones)."""
    if method not in METHODS:
        raise LorakitError(f"unknown merge method {method!r}; known methods: {', '.join(METHODS)}")
    return METHODS[method]


def resolve_params(method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults of ``method`` overridden by ``params``, checked; raises a one-line LorakitError.

    Unknown names, out-of-range values, and a base parameter that the chosen ``base`` does not
    use (e.g. ``density`` with DO's default task-arithmetic base) are errors. The result holds
    only what the method's function takes (shared base parameters the base ignores are dropped).
    """
    spec = get_method(method)
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise LorakitError(
            f"{method} has no parameter {', '.join(unknown)}; its parameters are: {', '.join(spec.params)}"
        )
    resolved = {**spec.params, **params}
    for name, value in resolved.items():
        if name == "base":
            choices = _base_choices(method)
            if value not in choices:
                raise LorakitError(f"{method}: base must be one of {', '.join(choices)}, got {value!r}")
            continue
        check, wanted = _CHECKS[name]
        if not check(value):
            raise LorakitError(f"{method}: {name} must be {wanted}, got {value!r}")
    if spec.forwards:
        base = METHODS[resolved["base"]]
        takes = _consumed(base.name)
        unused = sorted(k for k in params if k in spec.forwards and k not in takes)
        if unused:
            raise LorakitError(
                f"{method}: {', '.join(unused)} is not used by base={base.name} "
                f"(it uses {', '.join(sorted(set(spec.forwards) & takes)) or 'none of them'})"
            )
        if resolved.get("magnitude_merge") == "base" and resolved.get("decouple") and base.dense is None:
            raise LorakitError(
                f"{method}: magnitude_merge='base' needs an entrywise base method, not {base.name}; "
                "use magnitude_merge='mean'"
            )
    return _forwarded(method, resolved)


def _consumed(method: str) -> set[str]:
    """The parameters ``method`` really uses with its default base (recursively through bases)."""
    spec = METHODS[method]
    if not spec.forwards:
        return set(spec.params)
    own = set(spec.params) - set(spec.forwards)
    return own | (set(spec.forwards) & _consumed(spec.params["base"]))


def _forwarded(method: str, resolved: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the shared base parameters that the chosen base does not use."""
    spec = METHODS[method]
    if not spec.forwards:
        return dict(resolved)
    takes = _consumed(resolved["base"])
    return {k: v for k, v in resolved.items() if k not in spec.forwards or k in takes}


# ----------------------------------------------------------------------------------------------
# Front door
# ----------------------------------------------------------------------------------------------


def _check_layer(updates: Sequence[LoRAUpdate]) -> list[LoRAUpdate]:
    updates = list(updates)
    if not updates:
        raise LorakitError("no LoRA updates given; pass at least one")
    for k, u in enumerate(updates):
        if not isinstance(u, LoRAUpdate):
            raise LorakitError(f"update {k} is a {type(u).__name__}, not a LoRAUpdate")
        if u.shape != updates[0].shape:
            raise LorakitError(
                f"update {k} has ΔW shape {u.shape} but update 0 has {updates[0].shape}; "
                "merge only updates of the same layer"
            )
    return updates


def merge_layer(updates: Sequence[LoRAUpdate], method: str, **params: Any) -> torch.Tensor:
    r"""Merge the LoRA updates of one layer: :math:`\{s_i B_i A_i\} \mapsto \Delta W^*`.

    Args:
        updates: N :class:`LoRAUpdate` of the same ``(d_out, d_in)``.
        method: a key of :data:`METHODS`.
        **params: hyperparameters of that method (see ``METHODS[method].params``).

    Returns:
        float32 ``ΔW*`` of shape ``(d_out, d_in)`` on the updates' device.
    """
    resolved = resolve_params(method, params)
    return METHODS[method].function(_check_layer(updates), **resolved).float()


def layer_seed(seed: int, module: str) -> int:
    """The seed :func:`merge_adapters` uses for ``module``: mixes ``seed`` with a CRC32 of the name."""
    return (int(seed) * 1_000_003 + zlib.crc32(module.encode())) % (2**63)


def merge_adapters(
    adapters: Sequence[Mapping[str, LoRAUpdate]], method: str, progress: bool = False, **params: Any
) -> dict[str, torch.Tensor]:
    """Merge whole adapters layer by layer: ``{module: ΔW*}`` (float32), in the first adapter's order.

    Checks compatibility (same modules, same shapes) and the parameters once, before any work.
    Methods that use a ``seed`` (DARE, or a DARE base) draw each layer's masks with
    ``layer_seed(seed, module)``, so layers get different, reproducible masks; for any one
    layer the result equals ``merge_layer(..., seed=layer_seed(seed, module))``.
    """
    adapters = list(adapters)
    check_compatible(adapters)
    resolved = resolve_params(method, params)
    function = METHODS[method].function
    modules = list(adapters[0])
    if progress:
        from tqdm.auto import tqdm

        modules = tqdm(modules, desc=f"merging ({method})", unit="layer")
    merged = {}
    for module in modules:
        layer_params = dict(resolved)
        if "seed" in layer_params:
            layer_params["seed"] = layer_seed(resolved["seed"], module)
        updates = _check_layer([ad[module] for ad in adapters])
        merged[module] = function(updates, **layer_params).float()
    return merged


def merge_adapter_folders(*args: Any, **kwargs: Any) -> dict:
    """Merge PEFT adapter folders from disk; see :func:`lorakit.merge_folders.merge_adapter_folders`.

    Imported lazily (``merge_folders`` imports this module).
    """
    from .merge_folders import merge_adapter_folders as _merge_adapter_folders

    return _merge_adapter_folders(*args, **kwargs)
