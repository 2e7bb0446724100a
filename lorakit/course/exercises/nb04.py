"""Exercise checkers of notebook 04 (OSRM).

Symbols as in notebook 04: ``H`` is a ``(k, d_in)`` matrix of layer inputs (one row per token),
``A`` the ``(r, d_in)`` LoRA down-projection, ``ΔW = s B A`` a ``(d_out, d_in)`` update.
"""

from __future__ import annotations

from typing import Callable

import torch

from ...lora.update import LoRAUpdate
from ...osrm import interference_ratio, subspace, subspace_from_gram
from ._common import as_number as _as_number, assert_unmodified as _assert_unmodified, ok as _ok
from ._common import check_choice as _check_choice, report_prediction as _report_prediction

Tensor = torch.Tensor


def _objective(A: Tensor, H: Tensor) -> float:
    """``‖A Hᵀ‖_F²`` in float64 (eq. 4.2)."""
    return float(torch.linalg.matrix_norm(A.double() @ H.double().T) ** 2)


def graded_features(k: int, d: int, seed: int, mean: Tensor | None = None) -> Tensor:
    """``(k, d)`` float64 rows with per-direction std spread from 0.1 to 10 in a random basis (``+ mean``)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    stds = torch.logspace(-1, 1, d, dtype=torch.float64)
    H = (torch.randn(k, d, generator=g, dtype=torch.float64) * stds) @ Q.T
    return H if mean is None else H + mean


def centered_subspace(H: Tensor, r: int) -> Tensor:
    """The *wrong* recipe: bottom-``r`` eigenvectors of the mean-centred covariance of ``H``."""
    H = H.double()
    Hc = H - H.mean(0, keepdim=True)
    return subspace_from_gram(Hc.T @ Hc / max(1, H.shape[0] - 1), r)


def _trap_features(seed: int, k: int, d: int) -> Tensor:
    """Features with a large mean along their lowest-variance direction (the centring trap)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    stds = torch.logspace(-1, 1, d, dtype=torch.float64)
    return (torch.randn(k, d, generator=g, dtype=torch.float64) * stds) @ Q.T + 5.0 * Q[:, 0]


def check_osrm_subspace(fn: Callable[[Tensor, int], Tensor]) -> str:
    """Exercise 4.1: ``fn(H_other, r)`` must return OSRM's ``A`` (``r × d_in``, orthonormal rows) that
    minimises ``‖A H_otherᵀ‖_F²`` (eq. 4.2): the eigenvectors of the **uncentered** ``HᵀH`` for its ``r``
    smallest eigenvalues, as rows (any rotation of them is equally right)."""
    cases = [
        ("k > d", graded_features(300, 24, seed=1), 4),
        ("k < d (a null space)", graded_features(10, 24, seed=2), 5),
        ("a large mean on the lowest-variance direction", _trap_features(3, 300, 20), 3),
    ]
    for label, H, r in cases:
        d = H.shape[1]
        passed = H.clone()
        got = fn(passed, r)
        assert isinstance(got, torch.Tensor), "return a torch.Tensor"
        _assert_unmodified({"H_other": H}, {"H_other": passed})
        got = got.double()
        if tuple(got.shape) == (d, r) and d != r:
            raise AssertionError(f"A has shape (d_in, r) = {(d, r)}; OSRM's A is (r, d_in): the eigenvectors "
                                 "are its rows, so transpose the columns eigh returns")
        if got.ndim == 2 and got.shape[1] == H.shape[0] and H.shape[0] != d:
            raise AssertionError(f"A has {got.shape[1]} columns, one per row of H (k = {H.shape[0]}): those are "
                                 "left singular vectors; A acts on inputs, so use the right ones (or eigh of HᵀH)")
        assert tuple(got.shape) == (r, d), f"A must have shape (r, d_in) = {(r, d)}, got {tuple(got.shape)}"
        assert torch.allclose(got @ got.T, torch.eye(r, dtype=torch.float64), atol=1e-6), (
            "the rows of A must be orthonormal (A Aᵀ = I_r); without that constraint A = 0 would be optimal")
        G = H.T @ H
        eig = torch.linalg.eigvalsh(G)
        best, value = float(eig[:r].sum()), _objective(got, H)
        tol = 1e-6 * float(eig[-1])
        if value <= best + tol:
            continue
        if abs(value - float(eig[-r:].sum())) <= 1e-6 * value:
            raise AssertionError("those are the eigenvectors of the r LARGEST eigenvalues (the directions the "
                                 "features use most); torch.linalg.eigh sorts ascending, so take the first r")
        if abs(value - _objective(centered_subspace(H, r), H)) <= 1e-6 * value:
            raise AssertionError(f"case '{label}': you subtracted the mean (a covariance); the objective ‖A Hᵀ‖² "
                                 "needs the uncentered Gram matrix HᵀH, or a large mean leaks through")
        V = torch.linalg.eigh(G)[1]
        if torch.allclose(got.T @ got, V[:r].T @ V[:r], atol=1e-6):
            raise AssertionError("those are the first r ROWS of eigh's eigenvector matrix; its eigenvectors are the "
                                 "columns: V[:, :r].T")
        raise AssertionError(f"case '{label}': ‖A Hᵀ‖² = {value:.4g} but the minimum (sum of the {r} smallest "
                             f"eigenvalues of HᵀH) is {max(best, 0.0):.4g}: A's rows must span those eigenvectors; "
                             "with an SVD of H (k < d_in), use full_matrices=True so the null space is included")
    return _ok("A = the r smallest eigenvectors of HᵀH, as orthonormal rows")


def check_interference_ratio(fn: Callable[[Tensor, Tensor, Tensor], float]) -> str:
    """Exercise 4.2: ``fn(dW_t, dW_j, H_j)`` must return ``R_{t→j} = ‖ΔW_t H_jᵀ‖_F / ‖ΔW_j H_jᵀ‖_F`` (eq. 4.5)
    for one layer (``dW``: ``(d_out, d_in)``, ``H_j``: ``(k, d_in)``)."""
    g = torch.Generator().manual_seed(4)
    for d_out, d_in, k, r in [(12, 10, 30, 3), (6, 16, 8, 2)]:
        dW_t = torch.randn(d_out, r, generator=g, dtype=torch.float64) @ torch.randn(r, d_in, generator=g, dtype=torch.float64)
        dW_j = 0.3 * torch.randn(d_out, r, generator=g, dtype=torch.float64) @ torch.randn(r, d_in, generator=g, dtype=torch.float64)
        H_j = graded_features(k, d_in, seed=int(torch.randint(0, 1000, (1,), generator=g)))
        want = interference_ratio({"m": LoRAUpdate.from_dense(dW_t)}, {"m": LoRAUpdate.from_dense(dW_j)}, {"m": H_j})["m"]
        inputs = {"dW_t": dW_t, "dW_j": dW_j, "H_j": H_j}
        passed = {name: x.clone() for name, x in inputs.items()}
        got = _as_number(fn(passed["dW_t"], passed["dW_j"], passed["H_j"]), "R")
        _assert_unmodified(inputs, passed)
        if abs(got - want**2) < 1e-6 * want**2:
            raise AssertionError("that is R²: take the ratio of the norms, not of the squared norms")
        if abs(got - 1 / want) < 1e-6 / want:
            raise AssertionError("numerator and denominator are swapped: R_{t→j} divides what the OTHER "
                                 "adapter t does to task j's features by what task j's own adapter does")
        frob = float(torch.linalg.matrix_norm(dW_t) / torch.linalg.matrix_norm(dW_j))
        if abs(got - frob) < 1e-6 * frob:
            raise AssertionError("that compares the parameters only (‖ΔW_t‖/‖ΔW_j‖); interference depends on the "
                                 "data: multiply each ΔW by H_jᵀ first")
        spectral = float(torch.linalg.matrix_norm(dW_t @ H_j.T, 2) / torch.linalg.matrix_norm(dW_j @ H_j.T, 2))
        if abs(got - spectral) < 1e-6 * spectral:
            raise AssertionError("that is the ratio of spectral norms (ord=2); (4.5) uses Frobenius norms, "
                                 "torch.linalg.matrix_norm's default")
        assert abs(got - want) < 1e-6 * want, f"expected R = {want:.6f}, got {got:.6f}"
    # an update whose input rows avoid span(H_j) does not interfere at all
    H_j = graded_features(5, 12, seed=9)
    A_t = subspace(H_j, 3)  # 3 directions in H_j's null space
    dW_t = torch.randn(7, 3, generator=g, dtype=torch.float64) @ A_t
    dW_j = torch.randn(7, 12, generator=g, dtype=torch.float64)
    got = _as_number(fn(dW_t, dW_j, H_j), "R")
    assert abs(got) < 1e-8, f"ΔW_t's rows are orthogonal to every row of H_j, so R must be 0, got {got:.3g}"
    return _ok("R_{t→j} = ‖ΔW_t H_jᵀ‖_F / ‖ΔW_j H_jᵀ‖_F")


def check_centring_trap(fn: Callable[[int, int, int], Tensor]) -> str:
    """Exercise 4.3: ``fn(k, d, r)`` must return features ``H`` (``k × d``) on which the centred recipe
    fails: the bottom-``r`` eigenvectors of the mean-centred covariance give at least 10× the
    objective ``‖A Hᵀ‖_F²`` of OSRM's uncentered subspace. Degenerate ``H`` are rejected: all zeros,
    identical rows, a non-negligible leak missing, or a covariance whose bottom-``r`` subspace is not
    determined (repeated eigenvalue at ``r``, ``r + 1``), where the trap would rest on eigh's tie-breaking."""
    for k, d, r in [(400, 16, 2), (300, 24, 4)]:
        H = fn(k, d, r)
        assert isinstance(H, torch.Tensor), "return a torch.Tensor"
        assert tuple(H.shape) == (k, d), f"H must have shape (k, d) = {(k, d)}, got {tuple(H.shape)}"
        H = H.double()
        assert torch.isfinite(H).all(), "H contains NaN or inf"
        where = f"(k={k}, d={d}, r={r})"
        if not H.any():
            raise AssertionError(f"{where}: H is all zeros, so every subspace has objective 0 and nothing is trapped; "
                                 "give the rows a spread, and a large mean along the direction in which they vary least")
        Hc = H - H.mean(0)
        if float(Hc.abs().max()) <= 1e-12 * float(H.abs().max()):
            raise AssertionError(f"{where}: every row of H is identical: the centred covariance is 0, so its 'smallest "
                                 "eigenvectors' are arbitrary; give the rows a spread (a different variance per "
                                 "direction), with a large mean along the direction in which they vary least")
        lam = torch.linalg.eigvalsh(Hc.T @ Hc / (k - 1))
        if float(lam[r] - lam[r - 1]) <= 1e-9 * float(lam[-1]):
            raise AssertionError(f"{where}: the covariance of H has a repeated eigenvalue at positions {r} and "
                                 f"{r + 1} (counting from the smallest), so the centred recipe's subspace is not determined and the trap "
                                 "would rest on eigh's tie-breaking; give every direction its own variance")
        centred, uncentred = _objective(centered_subspace(H, r), H), _objective(subspace(H, r), H)
        if centred >= 10 * uncentred and centred > 1e-9 * float(H.pow(2).sum()):
            continue  # a non-negligible leak, 10× OSRM's
        mu = H.mean(0)
        spread = float((H - mu).pow(2).sum(1).mean().sqrt())
        if float(mu.norm()) < 0.5 * spread:
            raise AssertionError(f"{where}: your features have a small mean (‖μ‖ = {float(mu.norm()):.3g}, "
                                 f"typical spread {spread:.3g}); with little mean, centring changes nothing. Add a "
                                 "large mean vector to every row")
        raise AssertionError(f"{where}: centred {centred:.4g} vs uncentred {uncentred:.4g}, not 10× "
                             "apart. The centred covariance ignores μ, so put μ along a direction in which the "
                             "rows vary LEAST: the centred recipe then picks that direction and A μ ≠ 0")
    return _ok("a large mean on a low-variance direction defeats the centred covariance")


RANK_CHOICES = ("rises", "falls", "unchanged")


def energy_share(A: Tensor, H: Tensor) -> float:
    """e(A, H) of (4.6): ``‖A Hᵀ‖_F² / ((‖A‖_F² / d_in) ‖H‖_F²)``, 1 for a random orthonormal A (float64)."""
    A, H = A.double(), H.double()
    return float(torch.linalg.matrix_norm(A @ H.T) ** 2
                 / (torch.linalg.matrix_norm(A) ** 2 / A.shape[1] * torch.linalg.matrix_norm(H) ** 2))


def check_predict_osrm_rank(prediction: str | None, fn: Callable[[Tensor, int], float], H_other: Tensor,
                            ranks: tuple[int, ...] = (2, 8, 32, 128)) -> str:
    r"""Exercise 4.4 (predict → run → interpret): how OSRM's overlap with the other tasks changes with r.

    ``prediction`` (any of :data:`RANK_CHOICES`) is the learner's guess for e(A, H_other) of (4.6) as
    r grows; ``fn(H, r)`` must return e(subspace(H, r), H), the share of ``H``'s energy that OSRM's
    rank-r subspace built on ``H`` sees, relative to a random subspace. It is checked against
    :func:`lorakit.osrm.subspace` and (4.6) on random features and on ``H_other`` (the notebook's
    real features of the other tasks, ``(k, d_in)``) at each of ``ranks``.
    """
    H_other = H_other.double()
    if H_other.ndim != 2 or not all(1 <= r <= H_other.shape[1] for r in ranks):
        raise AssertionError(f"H_other must be (k, d_in) with every rank in {ranks} between 1 and d_in; "
                             f"got shape {tuple(H_other.shape)}")
    cases = [(graded_features(200, 24, seed=5), 3), (graded_features(12, 20, seed=6), 4),
             (_trap_features(7, 300, 16), 2)] + [(H_other, r) for r in ranks]
    gots = []
    for H, r in cases:
        passed = H.clone()
        gots.append(_as_number(fn(passed, r), "e"))
        _assert_unmodified({"H": H}, {"H": passed})
    choice = _check_choice(prediction, RANK_CHOICES, "does e(A, H_other) rise, fall or stay as r grows?")
    for (H, r), got in zip(cases, gots):
        want = energy_share(subspace(H, r), H)
        if abs(got - want) <= 1e-6 * max(want, 1e-3):
            continue
        d, lam = H.shape[1], torch.linalg.eigvalsh(H.T @ H)
        where = f"(k={H.shape[0]}, d_in={d}, r={r})"
        if abs(got - want * r / d) <= 1e-6 * want * r / d + 1e-12:
            raise AssertionError(f"{where}: that is the plain fraction ‖A Hᵀ‖²/‖H‖²; (4.6) divides it by r/d_in, "
                                 "what a random orthonormal A of rank r would see")
        if abs(got - float(lam[-r:].sum() / lam.sum()) * d / r) <= 1e-6 * got:
            raise AssertionError(f"{where}: those are the r LARGEST eigenvalues; OSRM's A spans the smallest (eigh sorts ascending)")
        if abs(got - energy_share(centered_subspace(H, r), H)) <= 1e-6 * max(got, 1e-3):
            raise AssertionError(f"{where}: you built A from the centred covariance; OSRM uses the uncentered HᵀH")
        raise AssertionError(f"{where}: expected e = {want:.6f}, got {got:.6f}. With OSRM's A (Ky Fan, (4.4)), "
                             "‖A Hᵀ‖² is the sum of the r smallest eigenvalues of HᵀH")
    curve = gots[-len(ranks):]
    d = H_other.shape[1]
    measured = ("rises" if curve[-1] > 1.01 * curve[0] else "falls" if curve[-1] < 0.99 * curve[0] else "unchanged")
    why = ("by Ky Fan (4.4), ‖A Hᵀ‖² = λ_1 + … + λ_r, the r smallest eigenvalues of HᵀH, and ‖H‖_F² = tr HᵀH = "
           "λ_1 + … + λ_d, so e = (mean of the r smallest eigenvalues) / (mean of all d). Each eigenvalue added "
           "as r grows is at least as large as those already in, so the mean can only rise, up to e = 1 at r = "
           f"d_in = {d}. A larger rank buys the adapter capacity with directions the other tasks use more: "
           "OSRM's protection is strongest at small r.")
    evidence = ", ".join(f"r={r}: e={v:.3f}" for r, v in zip(ranks, curve))
    return _report_prediction(choice, measured, evidence, why)
