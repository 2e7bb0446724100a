"""The notebook-04 exercise checkers accept the right answers (the solutions notebook's own, and
independent ones written with numpy) and reject each plausible wrong answer of a mutation list with a
useful hint."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from lorakit.course import exercises
from lorakit.course.exercises.nb04 import centered_subspace, graded_features
from lorakit.lora.update import LoRAUpdate
from lorakit.osrm import interference_ratio, subspace

SOLUTIONS = Path(__file__).resolve().parents[1] / "notebooks" / "src" / "solutions__04_solutions.py"


@pytest.fixture(scope="module")
def solutions():
    """The solutions notebook's source run as a script (its cells call the checkers): its namespace."""
    return runpy.run_path(str(SOLUTIONS))


@pytest.mark.parametrize("answer, checker, success", [
    ("my_osrm_A", exercises.check_osrm_subspace, "✓ A = the r smallest eigenvectors of HᵀH, as orthonormal rows: correct"),
    ("my_interference_ratio", exercises.check_interference_ratio, "✓ R_{t→j} = ‖ΔW_t H_jᵀ‖_F / ‖ΔW_j H_jᵀ‖_F: correct"),
    ("my_trap", exercises.check_centring_trap,
     "✓ a large mean on a low-variance direction defeats the centred covariance: correct"),
])
def test_solutions_notebook_answers_pass(solutions, answer, checker, success):
    assert checker(solutions[answer]) == success


def test_solutions_notebook_prediction_passes(solutions):
    msg = exercises.check_predict_osrm_rank(solutions["prediction"], solutions["my_overlap"], solutions["H_other"], RANKS)
    assert "your prediction matches the measurement" in msg


@pytest.mark.parametrize("checker", [exercises.check_osrm_subspace, exercises.check_interference_ratio,
                                     exercises.check_centring_trap,
                                     lambda fn: exercises.check_predict_osrm_rank(None, fn, FEATS, RANKS)])
def test_unattempted_stub_raises_not_implemented(checker):
    def stub(*args):
        raise NotImplementedError

    with pytest.raises(NotImplementedError):
        checker(stub)


# ---- exercise 4.1: OSRM's subspace -----------------------------------------------------------

def numpy_subspace(H, r):
    w, V = np.linalg.eigh(H.numpy().T @ H.numpy())  # ascending
    return torch.from_numpy(V[:, :r].T.copy())


def numpy_subspace_svd(H, r):
    _, _, Vt = np.linalg.svd(H.numpy(), full_matrices=True)  # descending singular values
    return torch.from_numpy(Vt[-r:].copy())


def rotated(H, r):
    Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((r, r)))
    return torch.from_numpy(Q) @ numpy_subspace(H, r)


def top_eigenvectors(H, r):
    w, V = np.linalg.eigh(H.numpy().T @ H.numpy())
    return torch.from_numpy(V[:, -r:].T.copy())


def _normalises_in_place(H, r):
    H /= H.norm()                                   # same eigenvectors, but the caller's H is changed
    return numpy_subspace(H, r)


RIGHT_SUBSPACE = {
    "numpy eigh": numpy_subspace,
    "numpy svd, full_matrices": numpy_subspace_svd,
    "rotated": rotated,
    "package": lambda H, r: subspace(H, r),
    "float32": lambda H, r: numpy_subspace(H, r).float(),
    "signs flipped": lambda H, r: -numpy_subspace(H, r),
}

WRONG_SUBSPACE = {
    "columns, not rows": (lambda H, r: numpy_subspace(H, r).T, "transpose"),
    "largest eigenvalues": (top_eigenvectors, "LARGEST"),
    "top right singular vectors": (lambda H, r: torch.linalg.svd(H)[2][:r], "LARGEST"),
    "rows of V, not columns": (lambda H, r: torch.linalg.eigh(H.T @ H)[1][:r], "columns"),
    "scaled by 2": (lambda H, r: 2.0 * numpy_subspace(H, r), "orthonormal"),
    "zeros": (lambda H, r: torch.zeros(r, H.shape[1], dtype=H.dtype), "orthonormal"),
    "identity rows": (lambda H, r: torch.eye(r, H.shape[1], dtype=H.dtype), "minimum"),
    "centred covariance": (lambda H, r: centered_subspace(H, r), "subtracted the mean"),
    "reduced SVD": (lambda H, r: torch.from_numpy(np.linalg.svd(H.numpy(), full_matrices=False)[2][-r:].copy()),
                    "full_matrices"),
    "left singular vectors": (lambda H, r: torch.from_numpy(np.linalg.svd(H.numpy())[0][:, -r:].T.copy()),
                              "left singular"),
    "one row too many": (lambda H, r: numpy_subspace(H, r + 1), "shape"),
    "normalises H in place": (_normalises_in_place, "in place"),
    "numpy array": (lambda H, r: numpy_subspace(H, r).numpy(), "torch.Tensor"),
}


@pytest.mark.parametrize("answer", RIGHT_SUBSPACE.values(), ids=RIGHT_SUBSPACE)
def test_subspace_accepts(answer):
    exercises.check_osrm_subspace(answer)


@pytest.mark.parametrize("wrong, hint", WRONG_SUBSPACE.values(), ids=WRONG_SUBSPACE)
def test_subspace_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_osrm_subspace(wrong)


# ---- exercise 4.2: interference ratio -----------------------------------------------------------

def numpy_ratio(dW_t, dW_j, H_j, ord="fro"):
    H = H_j.numpy()
    return float(np.linalg.norm(dW_t.numpy() @ H.T, ord) / np.linalg.norm(dW_j.numpy() @ H.T, ord))


def _leaky(t, j, H):
    """Right on generic data (ΔW_t H_jᵀ ≠ 0), but adds a data-independent term: caught by the R = 0 case."""
    return numpy_ratio(t, j, H) + (1e-3 if np.linalg.norm(t.numpy() @ H.numpy().T) < 1e-9 else 0.0)


def _package_ratio(t, j, H):
    return interference_ratio({"m": LoRAUpdate.from_dense(t)}, {"m": LoRAUpdate.from_dense(j)}, {"m": H})["m"]


def _ratio_in_place(t, j, H):
    t.mul_(1.0 / j.norm())                          # "normalise" ΔW_t in place: changes the caller's tensor
    return numpy_ratio(t, j / j.norm(), H)


RIGHT_RATIO = {
    "numpy": numpy_ratio,
    "package": _package_ratio,
    "H ΔWᵀ (same norms)": lambda t, j, H: float((H @ t.T).norm() / (H @ j.T).norm()),
    "via the Gram": lambda t, j, H: float(torch.sqrt(torch.trace(t @ H.T @ H @ t.T) / torch.trace(j @ H.T @ H @ j.T))),
    "a 0-d tensor": lambda t, j, H: (t @ H.T).norm() / (j @ H.T).norm(),
}

WRONG_RATIO = {
    "R squared": (lambda t, j, H: numpy_ratio(t, j, H) ** 2, "R²"),
    "swapped": (lambda t, j, H: numpy_ratio(j, t, H), "swapped"),
    "parameters only": (lambda t, j, H: float(np.linalg.norm(t.numpy()) / np.linalg.norm(j.numpy())), "parameters only"),
    "spectral norm": (lambda t, j, H: numpy_ratio(t, j, H, ord=2), "spectral"),
    "off by 0.01": (lambda t, j, H: numpy_ratio(t, j, H) + 0.01, "expected R"),
    "data-blind on the null space": (_leaky, "must be 0"),
    "constant 0": (lambda t, j, H: 0.0, "expected R"),
    "mean absolute value": (lambda t, j, H: float((t @ H.T).abs().mean() / (j @ H.T).abs().mean()), "expected R"),
    "None": (lambda t, j, H: None, "number"),
    "modifies dW_t in place": (_ratio_in_place, "in place"),
}


@pytest.mark.parametrize("answer", RIGHT_RATIO.values(), ids=RIGHT_RATIO)
def test_interference_ratio_accepts(answer):
    exercises.check_interference_ratio(answer)


@pytest.mark.parametrize("wrong, hint", WRONG_RATIO.values(), ids=WRONG_RATIO)
def test_interference_ratio_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_interference_ratio(wrong)


# ---- exercise 4.3: the centring trap ------------------------------------------------------------

def trap(k, d, r):
    rng = np.random.default_rng(0)
    stds = np.logspace(-1, 1, d)                 # direction 0 varies least
    H = rng.standard_normal((k, d)) * stds
    H[:, 0] += 20.0                               # a large mean on it
    return torch.from_numpy(H)


def _zero_mean(k, d, r):
    return torch.from_numpy(np.random.default_rng(1).standard_normal((k, d)) * np.logspace(-1, 1, d))


def _busy_mean(k, d, r):
    H = _zero_mean(k, d, r)
    H[:, -1] += 20.0                              # the mean sits on the highest-variance direction
    return H


def _constant_column(k, d, r):
    H = torch.randn(k, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    H[:, 0] = 10.0                                # no variance at all along e_0, and a mean of 10 on it
    return H


def _rotated_trap(k, d, r):
    return graded_features(k, d, seed=5, mean=15.0 * _least(k, d))


def _least(k, d):
    """The lowest-variance direction of graded_features(k, d, seed=5)."""
    H = graded_features(k, d, seed=5)
    return torch.linalg.eigh(H.T @ H)[1][:, 0]


def _r_zero_columns(k, d, r):
    H = _zero_mean(k, d, r)
    H[:, :r] = 0.0                                # both recipes pick these: both objectives are ~0
    return H


def _one_varying_column(k, d, r):
    H = torch.zeros(k, d, dtype=torch.float64)
    H[:, 0] = 10.0
    H[:, -1] = torch.randn(k, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return H                                      # d − 1 directions with no variance: eigh's choice decides


RIGHT_TRAP = {
    "numpy, mean 20 on the least direction": trap,
    "a constant column": _constant_column,
    "mean along a rotated least direction": _rotated_trap,
    "float32": lambda k, d, r: trap(k, d, r).float(),
}

WRONG_TRAP = {
    "zeros": (lambda k, d, r: torch.zeros(k, d), "all zeros"),
    "zeros, float64": (lambda k, d, r: torch.zeros(k, d, dtype=torch.float64), "all zeros"),
    "identical rows": (lambda k, d, r: torch.ones(k, d, dtype=torch.float64), "identical"),
    "identical random rows": (lambda k, d, r: torch.randn(1, d).expand(k, d).clone(), "identical"),
    "zero mean": (_zero_mean, "small mean"),
    "mean on the busiest direction": (_busy_mean, "LEAST"),
    "small mean": (lambda k, d, r: trap(k, d, r) - 19.5 * torch.eye(d, dtype=torch.float64)[0], "small mean"),
    "r zero columns": (_r_zero_columns, "small mean"),
    "one varying column": (_one_varying_column, "repeated"),
    "transposed": (lambda k, d, r: trap(k, d, r).T, "shape"),
    "k and d swapped": (lambda k, d, r: trap(d, k, r), "shape"),
    "NaN": (lambda k, d, r: trap(k, d, r) * float("nan"), "NaN"),
    "numpy array": (lambda k, d, r: trap(k, d, r).numpy(), "torch.Tensor"),
}


@pytest.mark.parametrize("answer", RIGHT_TRAP.values(), ids=RIGHT_TRAP)
def test_centring_trap_accepts(answer):
    exercises.check_centring_trap(answer)


@pytest.mark.parametrize("wrong, hint", WRONG_TRAP.values(), ids=WRONG_TRAP)
def test_centring_trap_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_centring_trap(wrong)


def test_graded_features_and_centered_subspace_helpers():
    H = graded_features(200, 8, seed=0)
    A = centered_subspace(H, 2)
    assert A.shape == (2, 8)
    torch.testing.assert_close(A @ A.T, torch.eye(2, dtype=A.dtype), atol=1e-10, rtol=0)


# ---- exercise 4.4 (predict → run → interpret): OSRM's overlap against the rank -----------------

FEATS = graded_features(500, 48, seed=11) + 1.5          # features with a mean, like a transformer's
RANKS = (2, 8, 32)


def overlap_right(H, r):
    """Ky Fan: ‖A Hᵀ‖² is the sum of the r smallest eigenvalues of HᵀH; (4.6) divides by (r/d)·tr HᵀH (numpy)."""
    lam = np.linalg.eigvalsh(H.numpy().T @ H.numpy())
    return float(lam[:r].sum() / lam.sum() * H.shape[1] / r)


def _e_of(A, H):
    return float((A @ H.T).pow(2).sum() / ((A.pow(2).sum() / A.shape[1]) * H.pow(2).sum()))


RIGHT_OVERLAP = {
    "eigenvalues (numpy)": overlap_right,
    "package subspace": lambda H, r: _e_of(subspace(H, r), H),
    "svd, full_matrices": lambda H, r: _e_of(torch.linalg.svd(H, full_matrices=True).Vh[-r:], H),
}

WRONG_OVERLAP = {
    "plain fraction (no r/d)": (lambda H, r: overlap_right(H, r) * r / H.shape[1], "plain fraction"),
    "largest eigenvalues": (lambda H, r: _e_of(torch.linalg.eigh(H.T @ H)[1][:, -r:].T, H), "LARGEST"),
    "centred covariance": (lambda H, r: _e_of(centered_subspace(H, r), H), "centred covariance"),
    "a random subspace's value 1": (lambda H, r: 1.0, "expected e"),
    "k × k Gram HHᵀ": (lambda H, r: float(torch.linalg.eigvalsh(H @ H.T)[:r].sum() / H.pow(2).sum()) * H.shape[1] / r,
                       "expected e"),
    "rows of eigh's matrix": (lambda H, r: _e_of(torch.linalg.eigh(H.T @ H)[1][:r], H), "expected e"),
    "svd without full_matrices": (lambda H, r: _e_of(torch.linalg.svd(H, full_matrices=False).Vh[-r:], H), "expected e"),
    "in place": (lambda H, r: overlap_right(H.sub_(H.mean(0)), r), "in place"),
    "None": (lambda H, r: None, "number"),
}


def test_osrm_rank_accepts_any_prediction():
    for prediction in ("rises", "falls", "unchanged"):
        msg = exercises.check_predict_osrm_rank(prediction, overlap_right, FEATS, RANKS)
        assert "measured 'rises'" in msg and ("matches" in msg) == (prediction == "rises")


@pytest.mark.parametrize("answer", RIGHT_OVERLAP.values(), ids=RIGHT_OVERLAP)
def test_osrm_rank_accepts(answer):
    exercises.check_predict_osrm_rank("falls", answer, FEATS, RANKS)


@pytest.mark.parametrize("wrong, hint", WRONG_OVERLAP.values(), ids=WRONG_OVERLAP)
def test_osrm_rank_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_predict_osrm_rank("rises", wrong, FEATS, RANKS)


@pytest.mark.parametrize("prediction", [None, "up", 2])
def test_osrm_rank_needs_a_prediction(prediction):
    with pytest.raises(AssertionError, match="prediction"):
        exercises.check_predict_osrm_rank(prediction, overlap_right, FEATS, RANKS)
