"""The notebook-03 exercise checkers accept right answers (written here with numpy, independently of
lorakit) and reject the typical wrong ones with a useful hint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lorakit import exercises


# ---- exercise 3.1: column magnitudes ---------------------------------------------------------


def test_column_magnitudes_accepts_numpy_answer():
    exercises.check_column_magnitudes(lambda d: torch.from_numpy(np.linalg.norm(d.numpy(), axis=0)))


@pytest.mark.parametrize("wrong, hint", [
    (lambda d: d.norm(dim=1), "one per output row"),          # rows instead of columns
    (lambda d: (d**2).sum(0), "squared"),                     # forgot the square root
    (lambda d: d.abs().sum(0), "values differ"),              # L1 instead of L2
])
def test_column_magnitudes_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_column_magnitudes(wrong)


def test_column_magnitudes_rejects_row_norms_on_square_matrices():
    # pass the non-square cases by shape, then give row norms where d_out == d_in
    def sneaky(d):
        return d.norm(dim=0) if d.shape[0] != d.shape[1] else d.norm(dim=1)

    with pytest.raises(AssertionError, match="row norms"):
        exercises.check_column_magnitudes(sneaky)


# ---- exercise 3.2: magnitude variance ---------------------------------------------------------


def numpy_mv(deltas, ddof=0, divide=True, power=1):
    mags = np.stack([np.linalg.norm(d.numpy(), axis=0) for d in deltas])  # (N, d_in)
    spread = mags.std(axis=0, ddof=ddof) ** power
    return float((spread / mags.mean(axis=0) if divide else spread).mean())


def test_magnitude_variance_accepts_numpy_answer():
    exercises.check_magnitude_variance(numpy_mv)


@pytest.mark.parametrize("wrong, hint", [
    (lambda ds: numpy_mv(ds, ddof=1), "sample std"),
    (lambda ds: numpy_mv(ds, divide=False), "did not divide by the mean"),
    (lambda ds: numpy_mv(ds, power=2), "variance over the mean"),
    (lambda ds: numpy_mv([d.T for d in ds]), "rows"),
    (lambda ds: (lambda f: float(f.std() / f.mean()))(np.array([np.linalg.norm(d.numpy()) for d in ds])), "Frobenius"),
    (lambda ds: numpy_mv(ds) + 0.01, "expected"),
])
def test_magnitude_variance_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_magnitude_variance(wrong)


# ---- exercise 3.3: a test for scale-freeness ----------------------------------------------------


def good_test(measure):
    gen = torch.Generator().manual_seed(0)
    deltas = [s * torch.randn(6, 4, generator=gen, dtype=torch.float64) for s in (1.0, 0.3, 2.0)]
    base = measure(deltas)
    return all(math.isclose(measure([c * d for d in deltas]), base, rel_tol=1e-9) for c in (0.1, 7.0))


def test_scale_free_test_accepts_a_correct_test():
    exercises.check_scale_free_test(good_test)


def test_scale_free_test_rejects_wrong_tests():
    gen = torch.Generator().manual_seed(0)
    deltas = [s * torch.randn(6, 4, generator=gen, dtype=torch.float64) for s in (1.0, 0.3, 2.0)]

    def c_is_one(measure):  # never actually rescales
        return math.isclose(measure([1.0 * d for d in deltas]), measure(deltas))

    def scales_one_task(measure):  # scales task 0 only: nothing non-trivial passes
        return math.isclose(measure([7.0 * deltas[0], *deltas[1:]]), measure(deltas), rel_tol=1e-9)

    with pytest.raises(AssertionError, match="changes with a common scale"):
        exercises.check_scale_free_test(c_is_one)
    with pytest.raises(AssertionError, match="is scale-free but"):
        exercises.check_scale_free_test(scales_one_task)
    with pytest.raises(AssertionError, match="changes with a common scale"):
        exercises.check_scale_free_test(lambda measure: True)
    with pytest.raises(AssertionError, match="is scale-free but"):
        exercises.check_scale_free_test(lambda measure: False)


def test_checker_measures_are_what_they_claim():
    """The checker's own answer key, verified by rescaling with numpy-free arithmetic."""
    from lorakit.exercises.nb03 import _measures

    gen = torch.Generator().manual_seed(3)
    deltas = [s * torch.randn(5, 4, generator=gen, dtype=torch.float64) for s in (1.0, 0.4, 2.5)]
    for name, (measure, scale_free) in _measures().items():
        same = math.isclose(measure([3.0 * d for d in deltas]), measure(deltas), rel_tol=1e-9)
        assert same == scale_free, name
