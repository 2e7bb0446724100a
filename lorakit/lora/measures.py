r"""Diagnostics of LoRA task updates: magnitudes, their variance across tasks, cosines, spectra.

Notation (docs/methods.md §1, §3.2, §3.5): for one layer and task :math:`i`,
:math:`\Delta W_i = s_i B_i A_i \in \mathbb{R}^{d_{out} \times d_{in}}` (torch layout, out × in).
"Column" means an **input** column :math:`\Delta W[:, j]` (length ``d_out``), so a per-column
magnitude vector has length ``d_in``; ``axis="out"`` is the DoRA/peft-style alternative (one
norm per output row, length ``d_out``).

Every function accepts dense ``ΔW`` tensors or :class:`~lorakit.lora.peft.LoRAUpdate` objects, and the
multi-layer ones also accept adapters (``{module name: LoRAUpdate | Tensor}``). Everything is
computed in float64.
"""

from __future__ import annotations

from typing import Mapping, Sequence, Union

import torch

from ..errors import LorakitError
from .update import LoRAUpdate

Delta = Union[torch.Tensor, LoRAUpdate]
TaskInput = Union[Delta, Mapping[str, Delta]]

AXES = ("in", "out")


def as_delta(x: Delta, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The dense ``ΔW`` (d_out × d_in) of a tensor or a :class:`LoRAUpdate`, cast to ``dtype``."""
    if isinstance(x, LoRAUpdate):
        return x.delta(dtype)
    if isinstance(x, torch.Tensor):
        if x.ndim != 2:
            raise LorakitError(f"a layer update must be a 2-D (d_out, d_in) tensor, got shape {tuple(x.shape)}")
        return x.to(dtype)
    raise LorakitError(f"expected a torch.Tensor or LoRAUpdate, got {type(x).__name__}")


def norm_dim(axis: str) -> int:
    """The torch dim to reduce for a magnitude along ``axis``: 0 for ``"in"``, 1 for ``"out"``."""
    if axis not in AXES:
        raise LorakitError(f"magnitude axis must be 'in' (per input column) or 'out' (per output row), got {axis!r}")
    return 0 if axis == "in" else 1


def column_magnitudes(delta: Delta, axis: str = "in") -> torch.Tensor:
    r"""Per-column L2 norms :math:`\alpha[j] = \lVert \Delta W[:, j] \rVert_2` (docs/methods.md §3.2).

    Args:
        delta: ``ΔW`` of shape ``(d_out, d_in)`` (or a :class:`LoRAUpdate`).
        axis: ``"in"`` — one norm per input column, reduce over dim 0, result ``(d_in,)``;
            ``"out"`` — one norm per output row, reduce over dim 1, result ``(d_out,)``.

    Returns:
        float64 magnitudes ``α`` (zero for an all-zero column).
    """
    dim = norm_dim(axis)
    return torch.linalg.vector_norm(as_delta(delta), dim=dim)


def _layers(task: TaskInput) -> dict[str, Delta]:
    if isinstance(task, Mapping):
        if not task:
            raise LorakitError("an adapter has no layers")
        return dict(task)
    return {"layer": task}


def _aligned_layers(tasks: Sequence[TaskInput]) -> list[dict[str, Delta]]:
    tasks = list(tasks)
    if not tasks:
        raise LorakitError("no task updates given; pass at least one")
    layers = [_layers(t) for t in tasks]
    names = set(layers[0])
    for k, lay in enumerate(layers[1:], start=1):
        if set(lay) != names:
            raise LorakitError(f"task {k} has different layers than task 0; pass adapters with the same modules")
    return layers


def _cv(values: torch.Tensor) -> torch.Tensor:
    """Across-task coefficient of variation std/mean over dim 0 (population std, ddof=0).

    Entries whose mean is 0 (every task zero there) give NaN, to be dropped by the caller.
    """
    mean = values.mean(dim=0)
    std = values.std(dim=0, correction=0)
    return torch.where(mean > 0, std / torch.where(mean > 0, mean, 1.0), float("nan"))


def magnitude_variance(
    tasks: Sequence[TaskInput], axis: str = "in", kind: str = "column", per_layer: bool = False
) -> float | dict[str, float]:
    r"""Scale-free magnitude variance across tasks (docs/methods.md §3.5, our definition **[D]**).

    ``kind="column"`` (default): for every layer, take each task's column-norm vector
    :math:`\alpha_i \in \mathbb{R}^{d}` (``d = d_in`` for ``axis="in"``), then the across-task
    coefficient of variation per column and its mean over columns,

    .. math::

        \mathrm{MV}_\ell = \frac{1}{d}\sum_{j=1}^{d}
            \frac{\operatorname{std}_i \alpha_i[j]}{\operatorname{mean}_i \alpha_i[j]},
        \qquad \mathrm{MV} = \frac{1}{L}\sum_\ell \mathrm{MV}_\ell,

    with the population std (ddof = 0) over the N tasks. Columns that are zero in every task are
    left out of the mean. ``kind="frobenius"``: the same with one number per task and layer,
    :math:`\lVert \Delta W_i \rVert_F`, instead of a column vector.

    It is 0 when all tasks have equal magnitudes and does not change if every update is scaled
    by the same factor, so LoRA and full fine-tuning task vectors can be compared.

    Args:
        tasks: N per-task updates of one layer (tensors / LoRAUpdates) or N adapters
            (``{module: LoRAUpdate | Tensor}`` with the same modules).
        axis: ``"in"`` or ``"out"`` (see :func:`column_magnitudes`), for ``kind="column"``.
        kind: ``"column"`` or ``"frobenius"``.
        per_layer: return ``{layer name: MV_ℓ}`` instead of the mean over layers.
    """
    result = {name: layer_magnitude_variance(mags) for name, mags in _task_magnitudes(tasks, axis, kind)}
    if per_layer:
        return result
    return sum(result.values()) / len(result)


def _task_magnitudes(tasks, axis: str, kind: str):
    """``(layer name, (N, d) magnitudes)`` per layer: column norms along ``axis``, or one Frobenius norm (d = 1)."""
    if kind not in ("column", "frobenius"):
        raise LorakitError(f"magnitude_variance kind must be 'column' or 'frobenius', got {kind!r}")
    norm_dim(axis)
    layers = _aligned_layers(tasks)
    for name in layers[0]:
        if kind == "column":
            yield name, torch.stack([column_magnitudes(lay[name], axis) for lay in layers])
        else:
            yield name, torch.stack([torch.linalg.vector_norm(as_delta(lay[name])) for lay in layers])[:, None]


def layer_magnitude_variance(mags: torch.Tensor, pairwise: bool = False) -> float:
    r"""One layer's magnitude variance from an ``(N, d)`` matrix of task magnitudes (row i = task i).

    ``pairwise=False``: :func:`magnitude_variance`'s (3.2), the mean over columns of the
    population CV. ``pairwise=True``: :func:`magnitude_variance_pairwise`'s bias-free form, the
    mean over the :math:`\binom N2` task pairs of (3.2) for that pair alone. Columns zero in every
    task (of the pair) are left out; a layer (pair) with no nonzero column gives 0. For callers
    that compute the magnitudes themselves (e.g. factored, :mod:`lorakit.adapters.diagnose`).
    """
    mags = mags.to(torch.float64)
    if mags.ndim != 2 or mags.shape[0] < 1:
        raise LorakitError(f"magnitudes must be an (N tasks, d) matrix, got shape {tuple(mags.shape)}")
    if not pairwise:
        cv = _cv(mags)
        cv = cv[~torch.isnan(cv)]
        return float(cv.mean()) if cv.numel() else 0.0
    n = mags.shape[0]
    if n < 2:
        raise LorakitError("the pairwise magnitude variance needs at least 2 tasks")
    i, k = torch.triu_indices(n, n, offset=1)
    a, b = mags[i], mags[k]  # (pairs, d)
    total = a + b
    h = torch.where(total > 0, (a - b).abs() / torch.where(total > 0, total, 1.0), float("nan"))
    valid = ~torch.isnan(h)
    count = valid.sum(dim=1)
    per_pair = torch.where(count > 0, torch.nan_to_num(h).sum(dim=1) / count.clamp(min=1), 0.0)
    return float(per_pair.mean())


def magnitude_variance_pairwise(
    tasks: Sequence[TaskInput], axis: str = "in", kind: str = "column", per_layer: bool = False
) -> float | dict[str, float]:
    r"""The magnitude variance of :func:`magnitude_variance` made **bias-free in N**: the mean over task pairs.

    Why: (3.2) uses the population std of N values. For tasks whose magnitudes at a column are
    i.i.d. draws :math:`X_1 \dots X_N` with variance :math:`\sigma^2`,
    :math:`\mathbb E[\operatorname{std}_{pop}^2] = \tfrac{N-1}{N}\sigma^2`, so (3.2) grows with N by
    itself (about ×√2 from N = 2 to large N) and groups of different sizes cannot be compared.
    The ddof = 1 std fixes the variance but not the ratio: :math:`\mathbb E[s/\bar X]` still moves
    with N (Jensen, and the random mean in the denominator).

    Definition (lorakit) — per column, the U-statistic of the two-task CV,

    .. math::

        U_N = \binom N2^{-1} \sum_{i<k} h(X_i, X_k), \qquad
        h(a, b) = \frac{\operatorname{std}_{pop}(a, b)}{\operatorname{mean}(a, b)} = \frac{|a-b|}{a+b},

    and per layer the mean over pairs of the mean over columns (as in (3.2), columns zero in both
    tasks of a pair left out), then the mean over layers. Each term :math:`h(X_i, X_k)` has the
    law of :math:`h(X_1, X_2)`, so by linearity :math:`\mathbb E[U_N] = \mathbb E[h(X_1, X_2)]` for
    every N: the expectation does not depend on N (only its spread shrinks). It keeps (3.2)'s
    properties: 0 for equal magnitudes, unchanged by a common scale, and equal to (3.2) for N = 2.

    Arguments as in :func:`magnitude_variance`; needs N ≥ 2.
    """
    result = {name: layer_magnitude_variance(mags, pairwise=True) for name, mags in _task_magnitudes(tasks, axis, kind)}
    if per_layer:
        return result
    return sum(result.values()) / len(result)


def magnitude_shares(mags: torch.Tensor) -> torch.Tensor:
    r"""Each task's share of every merged column's magnitude, (3.3): :math:`w_i[j] = \alpha_i[j] / \sum_k \alpha_k[j]`.

    ``mags``: an ``(N, d)`` matrix of task magnitudes (row i = :func:`column_magnitudes` of task i).
    Returns ``(N, d)`` float64 shares; each column sums to 1, and equal magnitudes give the fair share
    1/N. A column zero in every task gets NaN (it has no share to divide). The identity that links
    them to (3.2): per column, :math:`\operatorname{std}_i \alpha_i[j] / \operatorname{mean}_i \alpha_i[j]
    = N \operatorname{std}_i w_i[j]` (population std), so the magnitude variance is N times the
    spread of the shares around 1/N.
    """
    mags = mags.to(torch.float64)
    if mags.ndim != 2:
        raise LorakitError(f"magnitudes must be an (N tasks, d) matrix, got shape {tuple(mags.shape)}")
    total = mags.sum(dim=0, keepdim=True)
    return torch.where(total > 0, mags / torch.where(total > 0, total, 1.0), float("nan"))


def interference_from_magnitudes(mags: torch.Tensor) -> torch.Tensor:
    r"""Per task, the interference-to-signal ratio of a task-arithmetic merge if directions were orthogonal, (3.5).

    In column j of the merged update :math:`\sum_i \alpha_i[j]\,\tilde w_i[:, j]`, task k's own part
    has energy :math:`\alpha_k[j]^2` and the other tasks' parts, when their unit directions
    :math:`\tilde w_i[:, j]` are mutually orthogonal, :math:`\sum_{i \ne k} \alpha_i[j]^2`:

    .. math::

        R_k[j] = \frac{\sum_{i \ne k} \alpha_i[j]^2}{\alpha_k[j]^2} = \frac{S_j}{\alpha_k[j]^2} - 1,
        \qquad S_j = \sum_i \alpha_i[j]^2.

    ``mags``: ``(N, d)`` task magnitudes. Returns ``(N,)`` float64: task k's mean of
    :math:`R_k[j]` over the columns where every task is nonzero (a column where task k is zero has
    no signal to compare with). Its mean over tasks is at least N − 1 (Cauchy–Schwarz), with
    equality exactly when all tasks have equal magnitudes in every column.
    """
    mags = mags.to(torch.float64)
    if mags.ndim != 2 or mags.shape[0] < 2:
        raise LorakitError(f"magnitudes must be an (N ≥ 2 tasks, d) matrix, got shape {tuple(mags.shape)}")
    keep = (mags > 0).all(dim=0)
    if not keep.any():
        raise LorakitError("no column is nonzero in every task; the interference ratio is undefined")
    sq = mags[:, keep] ** 2
    return (sq.sum(dim=0, keepdim=True) / sq - 1.0).mean(dim=1)


def interference_exact(deltas: Sequence[Delta], axis: str = "in") -> torch.Tensor:
    r"""Per task, the measured interference-to-signal ratio of the columns of a task-arithmetic sum.

    :math:`R_k[j] = \lVert \sum_{i \ne k} \Delta W_i[:, j] \rVert^2 / \lVert \Delta W_k[:, j] \rVert^2`
    with the real directions (their cross terms included), averaged over the columns where every task
    is nonzero. :func:`interference_from_magnitudes` is the same with the cross terms dropped; the two
    agree when the tasks' column directions are orthogonal. ``deltas``: N ≥ 2 updates of one layer
    (``(d_out, d_in)`` tensors or :class:`LoRAUpdate`); ``axis="out"`` compares output rows instead.
    Returns ``(N,)`` float64.
    """
    dim = norm_dim(axis)
    dense = [as_delta(d) for d in deltas]
    if len(dense) < 2 or any(d.shape != dense[0].shape for d in dense):
        raise LorakitError("interference_exact needs N ≥ 2 updates of one layer with the same shape")
    own = torch.stack([torch.linalg.vector_norm(d, dim=dim) ** 2 for d in dense])  # (N, d)
    keep = (own > 0).all(dim=0)
    if not keep.any():
        raise LorakitError("no column is nonzero in every task; the interference ratio is undefined")
    total = torch.stack(dense).sum(dim=0)
    others = torch.stack([torch.linalg.vector_norm(total - d, dim=dim) ** 2 for d in dense])
    return (others[:, keep] / own[:, keep]).mean(dim=1)


def row_space_projector(update: LoRAUpdate) -> tuple[torch.Tensor, int]:
    r"""The orthogonal projector :math:`P = A^+ A` on the row space of ``A`` (d_in × d_in, float64) and ``rank(A)``."""
    if not isinstance(update, LoRAUpdate):
        raise LorakitError(f"the A-subspace needs the LoRA factors: pass LoRAUpdate objects, got {type(update).__name__}")
    A = update.A.to(torch.float64)
    return torch.linalg.pinv(A) @ A, int(torch.linalg.matrix_rank(A))


def subspace_overlap(tasks: Sequence[TaskInput], per_layer: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
    r"""N × N overlap of the tasks' ``A`` row spaces (the inputs each LoRA reads), dense reference.

    .. math:: O_{ij} = \frac{\lVert P_i P_j \rVert_F^2}{\min(r_i, r_j)}, \qquad P_i = A_i^+ A_i,

    with :math:`r_i = \operatorname{rank} A_i`. 1: one subspace contains the other (e.g. the same
    ``A``); 0: orthogonal subspaces; about :math:`\max(r_i, r_j)/d_{in}` for random ones. A rank-0
    ``A`` overlaps nothing (0). For adapters: the mean over layers (``per_layer``: ``{layer: O}``).
    """
    layers = _aligned_layers(tasks)
    n = len(layers)
    result: dict[str, torch.Tensor] = {}
    for name in layers[0]:
        proj = [row_space_projector(lay[name]) for lay in layers]
        out = torch.zeros(n, n, dtype=torch.float64)
        for i, (Pi, ri) in enumerate(proj):
            for j, (Pj, rj) in enumerate(proj):
                if min(ri, rj) > 0:
                    out[i, j] = float((Pi @ Pj).square().sum()) / min(ri, rj)
        result[name] = out
    if per_layer:
        return result
    return sum(result.values()) / len(result)


def _gram(vectors: Sequence[TaskInput]) -> torch.Tensor:
    r"""Gram matrix :math:`G_{ij} = \sum_\ell \langle \Delta W_{i,\ell}, \Delta W_{j,\ell} \rangle_F` (float64)."""
    layers = _aligned_layers(vectors)
    n = len(layers)
    gram = torch.zeros(n, n, dtype=torch.float64)
    for name in layers[0]:
        dense = [as_delta(lay[name]) for lay in layers]
        if any(d.shape != dense[0].shape for d in dense):
            shapes = sorted({tuple(d.shape) for d in dense})
            raise LorakitError(f"layer {name}: the task updates have different shapes {shapes}")
        flat = torch.stack([d.reshape(-1) for d in dense])
        gram += (flat @ flat.T).cpu()
    return gram


def _cosines_from_gram(gram: torch.Tensor) -> torch.Tensor:
    norms = gram.diagonal().clamp(min=0).sqrt()
    denom = norms[:, None] * norms[None, :]
    return torch.where(denom > 0, gram / torch.where(denom > 0, denom, 1.0), 0.0)


def cosine_matrix(deltas: Sequence[TaskInput]) -> torch.Tensor:
    r"""N × N cosine similarities of the flattened task updates.

    .. math:: C_{ij} = \frac{\langle \Delta W_i, \Delta W_j \rangle_F}{\lVert \Delta W_i \rVert_F \lVert \Delta W_j \rVert_F}

    For adapters, the inner products are summed over all layers (one flattened task vector per
    adapter). A zero update has cosine 0 with everything (also with itself), not NaN.
    """
    return _cosines_from_gram(_gram(deltas))


def direction_share(merged: TaskInput, deltas: Sequence[TaskInput]) -> torch.Tensor:
    r"""Cosine of the merged update with each task's update, shape ``(N,)``.

    :math:`\cos(\Delta W^*, \Delta W_i)`; a low value for task i means the merged direction
    ignores that task (the "magnitude dominance" of docs/methods.md §3.2).
    """
    cos = _cosines_from_gram(_gram([merged, *deltas]))
    return cos[0, 1:]


def spectrum(delta: Delta) -> torch.Tensor:
    """Singular values of ``ΔW`` in descending order (float64, length ``min(d_out, d_in)``)."""
    return torch.linalg.svdvals(as_delta(delta))
