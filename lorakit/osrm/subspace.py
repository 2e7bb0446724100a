r"""OSRM's subspace (eq. 4.2–4.4): the ``r`` smallest eigenvectors of the uncentered Gram matrix.

.. math::

    \min_{A A^\top = I_r} \lVert A H^\top \rVert_F^2 = \min_{A A^\top = I_r} \operatorname{tr}(A\,G\,A^\top)
    = \lambda_1 + \dots + \lambda_r, \qquad G = H^\top H \;(d_{in}\times d_{in})

(Ky Fan's minimum principle), reached by the eigenvectors of those eigenvalues as rows, in a
reproducible basis (fixed reference vectors inside tied eigenspaces, fixed signs).
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..errors import LorakitError

# Seed of the fixed reference vectors that pick a basis inside a tied (degenerate) eigenspace.
_REFERENCE_SEED = 0
# Eigenvalues closer than TIE_RTOL·max|λ| are treated as equal (one degenerate eigenspace).
TIE_RTOL = 1e-10


def _tie_groups(w: torch.Tensor, tol: float) -> list[tuple[int, int]]:
    """Split ascending eigenvalues into runs ``[lo, hi)`` whose neighbours differ by at most ``tol``."""
    groups, lo = [], 0
    gaps = (w[1:] - w[:-1]).tolist()
    for i, gap in enumerate(gaps):
        if gap > tol:
            groups.append((lo, i + 1))
            lo = i + 1
    groups.append((lo, len(w)))
    return groups


def _fix_signs(A: torch.Tensor) -> torch.Tensor:
    """Flip each row so that its largest-|entry| (first one on a tie) is positive."""
    idx = A.abs().argmax(dim=1, keepdim=True)
    signs = torch.where(A.gather(1, idx) < 0, -1.0, 1.0).to(A.dtype)
    return A * signs


def subspace_from_gram(G: torch.Tensor, r: int, tie_rtol: float = TIE_RTOL) -> torch.Tensor:
    r"""``A`` (``r × d``, float64, orthonormal rows) minimising ``tr(A G Aᵀ)`` for a symmetric PSD ``G``.

    The rows are eigenvectors of ``G`` for its ``r`` smallest eigenvalues (``torch.linalg.eigh``
    sorts ascending, so the *first* ``r`` columns), made reproducible:

    * **Ties.** Eigenvalues closer than ``tie_rtol · max|λ|`` form one eigenspace ``E`` (its
      spectral projector ``P_E = V_E V_Eᵀ`` is well defined, the eigenvectors LAPACK returns
      inside it are not). This is the whole null space when ``k < d`` (``H`` has fewer rows than
      columns). From each such ``E`` that the selection uses, its ``m`` rows are the QR
      orthonormalisation of ``P_E R``, where ``R`` is a fixed ``d × r`` Gaussian matrix drawn with
      seed ``_REFERENCE_SEED`` (columns taken at the rows' positions). ``P_E R`` depends only on
      the eigenspace, so the same data give the same rows (up to rounding) whatever basis LAPACK
      picked, whatever the order of ``H``'s rows. Any basis of a tied eigenspace is equally
      optimal: the objective stays within ``r · tie_rtol · max|λ|`` of the minimum.
    * **Signs.** Each row is flipped so its largest-|entry| is positive.

    Compare subspaces through the projector ``AᵀA``; raw rows are canonical but not unique math.
    """
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise LorakitError(f"Gram matrix must be square, got shape {tuple(G.shape)}")
    d = G.shape[0]
    if not 1 <= r <= d:
        raise LorakitError(f"subspace rank r={r} must be between 1 and d_in={d}")
    G = G.double()
    if not torch.isfinite(G).all():
        raise LorakitError("features contain NaN or inf; check the model's dtype (use float32 for features)")
    G = 0.5 * (G + G.T)
    w, V = torch.linalg.eigh(G)  # ascending: the r SMALLEST eigenvalues are w[:r], V[:, :r]
    tol = tie_rtol * float(w.abs().max())
    reference = torch.randn(d, r, generator=torch.Generator().manual_seed(_REFERENCE_SEED), dtype=torch.float64)
    rows = []
    for lo, hi in _tie_groups(w, tol):
        if lo >= r:
            break
        m = min(hi, r) - lo
        if hi - lo == 1:
            rows.append(V[:, lo : lo + 1].T)
            continue
        V_E = V[:, lo:hi]
        Q, _ = torch.linalg.qr(V_E @ (V_E.T @ reference[:, lo : lo + m]))
        rows.append(Q.T)
    return _fix_signs(torch.cat(rows))


def subspace(H_other: torch.Tensor, r: int, tie_rtol: float = TIE_RTOL) -> torch.Tensor:
    r"""OSRM's ``A`` for one layer: the ``r`` directions the features ``H_other`` use least (eq. 4.2–4.4).

    Solves :math:`\min_{A A^\top = I_r} \lVert A H^\top \rVert_F^2`. Since
    :math:`\lVert A H^\top\rVert_F^2 = \operatorname{tr}(A G A^\top)` with the **uncentered**
    Gram matrix :math:`G = H^\top H`, Ky Fan's minimum principle gives the optimum
    :math:`\sum_{i=1}^r \lambda_i(G)` (the ``r`` smallest eigenvalues), reached when the rows of
    ``A`` are the corresponding eigenvectors; any rotation ``Q A`` is equally optimal. Without
    ``A Aᵀ = I``, ``A = 0`` would win; the constraint also fixes ``A``'s scale (unit rows).

    Uncentered on purpose: a mean-subtracted covariance ignores the mean ``μ``, so a direction
    carrying a large mean but little variance could be chosen and ``s B A μ`` would shift every
    input (docs/methods.md §2.2).

    ``G`` is formed and diagonalised in float64; the basis is made reproducible as described
    in :func:`subspace_from_gram` (fixed reference vectors inside degenerate eigenspaces such as
    the null space when ``k < d_in``, then largest-|entry|-positive signs).

    Args:
        H_other: ``(k, d_in)`` features of the *other* tasks (rows = tokens or task means).
        r: LoRA rank, ``1 ≤ r ≤ d_in``.

    Returns:
        ``A`` of shape ``(r, d_in)``, float64, ``A Aᵀ = I_r``.
    """
    if H_other.ndim != 2 or H_other.shape[0] == 0:
        raise LorakitError(f"features must be a non-empty (k, d_in) matrix, got shape {tuple(H_other.shape)}")
    H = H_other.detach().double().cpu()
    return subspace_from_gram(H.T @ H, r, tie_rtol)


def leave_one_out_subspaces(
    features: Mapping[str, Mapping[str, torch.Tensor]], r: int, tie_rtol: float = TIE_RTOL
) -> dict[str, dict[str, torch.Tensor]]:
    r"""For every task ``t`` and module: ``A_t = subspace(vstack_{j≠t} H_j, r)`` (eq. 4.2).

    Task ``t``'s own features are never used for ``A_t``. The Gram matrix of the stack is the
    sum of the per-task Gram matrices, :math:`G^{(t)} = \sum_{j\ne t} H_j^\top H_j`, each computed
    once in float64.

    Args:
        features: ``{task: {module: H_j (k_j × d_in)}}`` as returned by :func:`collect_features`.
        r: LoRA rank.

    Returns:
        ``{task: {module: A_t (r × d_in, float64)}}``.
    """
    tasks = list(features)
    if len(tasks) < 2:
        raise LorakitError(
            f"OSRM needs at least two tasks (got {len(tasks)}): task t's subspace is built from the others"
        )
    modules = list(features[tasks[0]])
    for task in tasks[1:]:
        if set(features[task]) != set(modules):
            raise LorakitError(
                f"tasks {tasks[0]} and {task} have features for different modules; "
                "collect them with the same module_names"
            )
    out: dict[str, dict[str, torch.Tensor]] = {t: {} for t in tasks}
    for module in modules:
        grams = {}
        for task in tasks:
            H = features[task][module].detach().double().cpu()
            grams[task] = H.T @ H
        for t in tasks:
            G = sum(grams[j] for j in tasks if j != t)
            out[t][module] = subspace_from_gram(G, r, tie_rtol)
    return out
