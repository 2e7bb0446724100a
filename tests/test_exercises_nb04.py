"""The notebook-04 exercise checkers accept right answers (written here with numpy, independently of
lorakit) and reject the typical wrong ones with a useful hint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lorakit import exercises
from lorakit.exercises.nb04 import centered_subspace, graded_features


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


@pytest.mark.parametrize("answer", [numpy_subspace, numpy_subspace_svd, rotated])
def test_subspace_accepts_right_answers(answer):
    exercises.check_osrm_subspace(answer)


def top_eigenvectors(H, r):
    w, V = np.linalg.eigh(H.numpy().T @ H.numpy())
    return torch.from_numpy(V[:, -r:].T.copy())


@pytest.mark.parametrize("wrong, hint", [
    (lambda H, r: numpy_subspace(H, r).T, "transpose"),                                   # columns, not rows
    (top_eigenvectors, "LARGEST"),                                                        # eigh order
    (lambda H, r: 2.0 * numpy_subspace(H, r), "orthonormal"),                             # scale not fixed
    (lambda H, r: torch.zeros(r, H.shape[1], dtype=H.dtype), "orthonormal"),              # the trivial A = 0
    (lambda H, r: centered_subspace(H, r), "subtracted the mean"),                        # covariance
    (lambda H, r: torch.from_numpy(np.linalg.svd(H.numpy(), full_matrices=False)[2][-r:].copy()),
     "full_matrices"),                                                                    # misses the null space
    (lambda H, r: torch.from_numpy(np.linalg.svd(H.numpy())[0][:, -r:].T.copy()), "left singular"),
])
def test_subspace_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_osrm_subspace(wrong)


# ---- exercise 4.2: interference ratio -----------------------------------------------------------


def numpy_ratio(dW_t, dW_j, H_j):
    H = H_j.numpy()
    return float(np.linalg.norm(dW_t.numpy() @ H.T) / np.linalg.norm(dW_j.numpy() @ H.T))


def test_interference_ratio_accepts_numpy_answer():
    exercises.check_interference_ratio(numpy_ratio)


@pytest.mark.parametrize("wrong, hint", [
    (lambda t, j, H: numpy_ratio(t, j, H) ** 2, "R²"),
    (lambda t, j, H: numpy_ratio(j, t, H), "swapped"),
    (lambda t, j, H: float(np.linalg.norm(t.numpy()) / np.linalg.norm(j.numpy())), "parameters only"),
    (lambda t, j, H: numpy_ratio(t, j, H) + 0.01, "expected R"),
])
def test_interference_ratio_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_interference_ratio(wrong)


def test_interference_ratio_rejects_data_blind_answer_on_the_null_space_case():
    # right on generic data (ΔW_t H_jᵀ ≠ 0), but adds a data-independent term: caught by R = 0 case
    def leaky(t, j, H):
        return numpy_ratio(t, j, H) + (1e-3 if np.linalg.norm(t.numpy() @ H.numpy().T) < 1e-9 else 0.0)

    with pytest.raises(AssertionError, match="must be 0"):
        exercises.check_interference_ratio(leaky)


# ---- exercise 4.3: the centring trap ------------------------------------------------------------


def trap(k, d, r):
    rng = np.random.default_rng(0)
    stds = np.logspace(-1, 1, d)                 # direction 0 varies least
    H = rng.standard_normal((k, d)) * stds
    H[:, 0] += 20.0                               # a large mean on it
    return torch.from_numpy(H)


def test_centring_trap_accepts_a_trap():
    exercises.check_centring_trap(trap)


def test_centring_trap_rejects_zero_mean_and_mean_on_a_busy_direction():
    def zero_mean(k, d, r):
        return torch.from_numpy(np.random.default_rng(1).standard_normal((k, d)) * np.logspace(-1, 1, d))

    def busy_mean(k, d, r):
        H = zero_mean(k, d, r)
        H[:, -1] += 20.0                          # the mean sits on the highest-variance direction
        return H

    with pytest.raises(AssertionError, match="small mean"):
        exercises.check_centring_trap(zero_mean)
    with pytest.raises(AssertionError, match="LEAST"):
        exercises.check_centring_trap(busy_mean)
    with pytest.raises(AssertionError, match="shape"):
        exercises.check_centring_trap(lambda k, d, r: trap(k, d, r).T)


def test_graded_features_and_centered_subspace_helpers():
    H = graded_features(200, 8, seed=0)
    A = centered_subspace(H, 2)
    assert A.shape == (2, 8)
    torch.testing.assert_close(A @ A.T, torch.eye(2, dtype=A.dtype), atol=1e-10, rtol=0)
