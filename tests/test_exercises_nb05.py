"""The notebook-05 exercise checkers accept right answers (written here with numpy, independently of
lorakit) and reject the typical wrong ones with a useful hint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lorakit import exercises


def np_(x):
    return x.detach().numpy()


def t_(x):
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


# ---- exercise 5.1: decouple on axis "in" -------------------------------------------------------


def numpy_decouple(delta, axis=0, guard=True, root=True):
    d = np_(delta)
    alpha = np.sqrt((d**2).sum(axis=axis)) if root else (d**2).sum(axis=axis)
    if guard:
        inv = np.divide(1.0, alpha, out=np.zeros_like(alpha), where=alpha > 1e-12)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / alpha
    with np.errstate(invalid="ignore"):
        direction = d * (inv[None, :] if axis == 0 else inv[:, None])
    return t_(alpha), t_(direction)


def test_decouple_in_accepts_numpy_answer():
    assert "correct" in exercises.check_decouple_in(numpy_decouple)


@pytest.mark.parametrize("wrong, hint", [
    (lambda d: numpy_decouple(d, axis=1), "one per output row|row norms"),   # the DoRA/peft axis
    (lambda d: numpy_decouple(d, guard=False), "NaN"),                       # 0 / 0 on the zero column
    (lambda d: (numpy_decouple(d, root=False)[0], numpy_decouple(d)[1]), "squared"),
    (lambda d: (numpy_decouple(d)[0], d / d.norm()), "Frobenius"),
    (lambda d: numpy_decouple(d)[1], "tuple"),                               # forgot to return alpha
])
def test_decouple_in_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_decouple_in(wrong)


def test_decouple_in_rejects_row_norms_on_square_matrices():
    def sneaky(d):
        return numpy_decouple(d, axis=0 if d.shape[0] != d.shape[1] else 1)

    with pytest.raises(AssertionError, match="row norms"):
        exercises.check_decouple_in(sneaky)


# ---- exercise 5.2: the A-side cross term ----------------------------------------------------------


def numpy_cross(As, pairs="lower", square=True, gram="rows"):
    mats = [np_(a) for a in As]
    total = 0.0
    for i in range(len(mats)):
        for j in range(len(mats)):
            if (pairs == "lower" and i < j) or (pairs == "all" and i != j) or (pairs == "with_diag" and i <= j):
                c = mats[i] @ mats[j].T if gram == "rows" else mats[i].T @ mats[j]
                total += (c**2).sum() if square else np.sqrt((c**2).sum())
    return total


def test_cross_loss_accepts_numpy_answer():
    assert "correct" in exercises.check_factor_cross_loss(numpy_cross)


@pytest.mark.parametrize("wrong, hint", [
    (lambda As: numpy_cross(As, pairs="all"), "twice"),
    (lambda As: numpy_cross(As, gram="cols"), "d_in × d_in"),
    (lambda As: numpy_cross(As, square=False), "squares the Frobenius"),
    (lambda As: numpy_cross(As, pairs="with_diag"), "i = j"),
    (lambda As: numpy_cross(As) + 0.1, "expected"),
])
def test_cross_loss_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_factor_cross_loss(wrong)


# ---- exercise 5.3: one gradient-descent step ------------------------------------------------------


def numpy_gd_step(As, deltas, gamma, lr, sign=-1.0, penalty=True, factor=2.0, perturbed=True, return_factors=False):
    A = [np_(a) for a in As]
    D = [np_(d) for d in deltas]
    H = [a + d for a, d in zip(A, D)] if perturbed else A
    out = []
    for i in range(len(A)):
        g = sum(factor * (H[i] @ H[j].T) @ H[j] for j in range(len(A)) if j != i)
        if penalty:
            g = g + 2 * gamma * D[i]
        new = D[i] + sign * lr * g
        out.append(t_(A[i] + new if return_factors else new))
    return out


def test_gd_step_accepts_numpy_answer():
    assert "correct" in exercises.check_ortho_gd_step(numpy_gd_step)


@pytest.mark.parametrize("kwargs, hint", [
    ({"sign": 1.0}, "uphill"),
    ({"penalty": False}, "penalty"),
    ({"perturbed": False}, "perturbed factors"),
    ({"return_factors": True}, "not the new factors"),
])
def test_gd_step_rejects(kwargs, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_ortho_gd_step(lambda As, ds, g, lr: numpy_gd_step(As, ds, g, lr, **kwargs))


def test_gd_step_rejects_half_gradient():
    # the cross-term gradient with factor 1 instead of 2 (and the penalty halved too)
    def half(As, ds, gamma, lr):
        return numpy_gd_step(As, ds, gamma / 2, lr, factor=1.0)

    with pytest.raises(AssertionError, match="factor 2"):
        exercises.check_ortho_gd_step(half)


def test_gd_step_rejects_wrong_count():
    with pytest.raises(AssertionError, match="one δ_i per task"):
        exercises.check_ortho_gd_step(lambda As, ds, g, lr: numpy_gd_step(As, ds, g, lr)[:-1])
