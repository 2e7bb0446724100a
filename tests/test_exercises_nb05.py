"""The notebook-05 exercise checkers accept right answers (written here with numpy, independently of
lorakit) and reject the typical wrong ones with a useful hint."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from lorakit.course import exercises
from lorakit.course.exercises.nb05 import magnitude_toy, mean_over_rms
from lorakit.merge import decouple, factor_cross_terms, merge_layer

SOLUTIONS = Path(__file__).resolve().parents[1] / "notebooks" / "src" / "solutions__05_solutions.py"


@pytest.fixture(scope="module")
def solutions():
    """The solutions notebook's source run as a script (its cells call the checkers): its namespace."""
    return runpy.run_path(str(SOLUTIONS))


@pytest.mark.parametrize("answer, checker, success", [
    ("my_decouple", exercises.check_decouple_in, "✓ α ⊙ W̃ = ΔW with one norm per input column, zero columns → 0: correct"),
    ("my_cross_loss", exercises.check_factor_cross_loss, "✓ cross term Σ_{i<j} ‖A_i A_jᵀ‖²_F: correct"),
    ("my_gd_step", exercises.check_ortho_gd_step, "✓ one gradient-descent step on L_A: correct"),
])
def test_solutions_notebook_answers_pass(solutions, answer, checker, success):
    assert checker(solutions[answer]) == success


def test_solutions_notebook_prediction_passes(solutions):
    msg = exercises.check_predict_do_magnitude(solutions["prediction"], solutions["my_norm_ratio"])
    assert "your prediction matches the measurement" in msg


@pytest.mark.parametrize("checker", [exercises.check_decouple_in, exercises.check_factor_cross_loss,
                                     exercises.check_ortho_gd_step,
                                     lambda fn: exercises.check_predict_do_magnitude(None, fn)])
def test_unattempted_stub_raises_not_implemented(checker):
    def stub(*args):
        raise NotImplementedError

    with pytest.raises(NotImplementedError):
        checker(stub)


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


def _decouple_in_place(delta):
    alpha = delta.norm(dim=0)
    delta /= torch.where(alpha > 0, alpha, 1.0)     # the caller's ΔW becomes the direction
    return alpha, delta


RIGHT_DECOUPLE = {
    "numpy": numpy_decouple,
    "package": lambda d: decouple(d, "in"),
    "nan_to_num": lambda d: (d.norm(dim=0), torch.nan_to_num(d / d.norm(dim=0))),
    "clamped norm": lambda d: (d.norm(dim=0), d / d.norm(dim=0).clamp(min=1e-12)),
    "keepdim alpha": lambda d: (d.norm(dim=0, keepdim=True), torch.nan_to_num(d / d.norm(dim=0, keepdim=True))),
}

WRONG_DECOUPLE = {
    "row norms (the DoRA/peft axis)": (lambda d: numpy_decouple(d, axis=1), "one per output row|row norms"),
    "row norms on square matrices": (lambda d: numpy_decouple(d, axis=0 if d.shape[0] != d.shape[1] else 1), "row norms"),
    "0/0 on the zero column": (lambda d: numpy_decouple(d, guard=False), "NaN"),
    "squared norms": (lambda d: (numpy_decouple(d, root=False)[0], numpy_decouple(d)[1]), "squared"),
    "Frobenius direction": (lambda d: (numpy_decouple(d)[0], d / d.norm()), "Frobenius"),
    "only the direction": (lambda d: numpy_decouple(d)[1], "tuple"),
    "(direction, alpha)": (lambda d: numpy_decouple(d)[::-1], "order"),
    "eps added to every norm": (lambda d: (d.norm(dim=0), d / (d.norm(dim=0) + 1e-6)), "eps"),
    "rows divided by α": (lambda d: (d.norm(dim=0), torch.nan_to_num(d / d.norm(dim=0)[:, None]))
                          if d.shape[0] == d.shape[1] else numpy_decouple(d), "row i"),
    "unit direction for the zero column": (lambda d: (d.norm(dim=0), torch.where(d.norm(dim=0) > 0, numpy_decouple(d)[1],
                                                                               d.shape[0] ** -0.5)), "all-zero"),
    "float32": (lambda d: tuple(x.float() for x in numpy_decouple(d)), "float32"),
    "divides delta in place": (_decouple_in_place, "in place"),
}


@pytest.mark.parametrize("answer", RIGHT_DECOUPLE.values(), ids=RIGHT_DECOUPLE)
def test_decouple_in_accepts(answer):
    assert "correct" in exercises.check_decouple_in(answer)


@pytest.mark.parametrize("wrong, hint", WRONG_DECOUPLE.values(), ids=WRONG_DECOUPLE)
def test_decouple_in_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_decouple_in(wrong)


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


def _cross_pops(As):
    total = 0.0
    while As:                                       # right value, but empties the caller's list
        a = As.pop()
        total += sum(float(((a @ b.T) ** 2).sum()) for b in As)
    return total


RIGHT_CROSS = {
    "numpy": numpy_cross,
    "package": lambda As: sum(float((c**2).sum()) for c in factor_cross_terms(As, "A").values()),
    "norm squared": lambda As: sum(torch.linalg.matrix_norm(As[i] @ As[j].T) ** 2
                                   for i in range(len(As)) for j in range(i + 1, len(As))),
    "j < i (the same pairs)": lambda As: sum(((As[i] @ As[j].T) ** 2).sum() for i in range(len(As)) for j in range(i)),
}

WRONG_CROSS = {
    "every pair twice": (lambda As: numpy_cross(As, pairs="all"), "twice"),
    "A_iᵀ A_j": (lambda As: numpy_cross(As, gram="cols"), "d_in × d_in"),
    "norm not squared": (lambda As: numpy_cross(As, square=False), "squares the Frobenius"),
    "with the diagonal": (lambda As: numpy_cross(As, pairs="with_diag"), "i = j"),
    "signed sum": (lambda As: sum(float((As[i] @ As[j].T).sum()) for i in range(len(As)) for j in range(i + 1, len(As))),
                   "signed sum"),
    "mean of the squares": (lambda As: sum(float(((As[i] @ As[j].T) ** 2).mean()) for i in range(len(As))
                                           for j in range(i + 1, len(As))), "mean"),
    "mean over the pairs": (lambda As: numpy_cross(As) / (len(As) * (len(As) - 1) / 2), "pairs"),
    "consecutive pairs only": (lambda As: sum(float(((As[i] @ As[i + 1].T) ** 2).sum()) for i in range(len(As) - 1)),
                               "expected"),
    "off by 0.1": (lambda As: numpy_cross(As) + 0.1, "expected"),
    "constant 0": (lambda As: 0.0, "expected"),
    "a list of terms": (lambda As: [numpy_cross(As)], "number"),
    "pops the list empty": (_cross_pops, "in place"),
}


@pytest.mark.parametrize("answer", RIGHT_CROSS.values(), ids=RIGHT_CROSS)
def test_cross_loss_accepts(answer):
    assert "correct" in exercises.check_factor_cross_loss(answer)


@pytest.mark.parametrize("wrong, hint", WRONG_CROSS.values(), ids=WRONG_CROSS)
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


def autograd_step(As, deltas, gamma, lr):
    ds = [d.clone().requires_grad_(True) for d in deltas]
    hats = [a + d for a, d in zip(As, ds)]
    loss = sum(((hats[i] @ hats[j].T) ** 2).sum() for i in range(len(As)) for j in range(i + 1, len(As)))
    loss = loss + gamma * sum((d**2).sum() for d in ds)
    return [d.detach() - lr * g for d, g in zip(ds, torch.autograd.grad(loss, ds))]


def _step_in_place(As, deltas, gamma, lr):
    new = numpy_gd_step(As, deltas, gamma, lr)
    for d, n in zip(deltas, new):
        d.copy_(n)                                  # updates the caller's δ_i and returns them
    return deltas


def _hats_in_place(As, deltas, gamma, lr):
    new = numpy_gd_step(As, deltas, gamma, lr)
    for a, d in zip(As, deltas):
        a.add_(d)                                   # Â_i = A_i + δ_i, written into the caller's A_i
    return new


def _upper_pairs_only(As, deltas, gamma, lr):
    hats = [a + d for a, d in zip(As, deltas)]
    return [d - lr * (2 * gamma * d + sum((2 * (hats[i] @ hats[j].T) @ hats[j] for j in range(i + 1, len(As))),
                                          torch.zeros_like(d)))
            for i, d in enumerate(deltas)]


def _gauss_seidel(As, deltas, gamma, lr):
    ds = [d.clone() for d in deltas]
    for i in range(len(As)):                        # uses the already-updated δ_j, j < i
        hats = [a + d for a, d in zip(As, ds)]
        g = 2 * gamma * ds[i] + sum(2 * (hats[i] @ hats[j].T) @ hats[j] for j in range(len(As)) if j != i)
        ds[i] = ds[i] - lr * g
    return ds


RIGHT_GD = {
    "numpy": numpy_gd_step,
    "autograd": autograd_step,
    "a tuple": lambda As, ds, g, lr: tuple(numpy_gd_step(As, ds, g, lr)),
}

WRONG_GD = {
    "uphill": (lambda As, ds, g, lr: numpy_gd_step(As, ds, g, lr, sign=1.0), "uphill"),
    "no penalty": (lambda As, ds, g, lr: numpy_gd_step(As, ds, g, lr, penalty=False), "penalty"),
    "penalty gradient γ δ": (lambda As, ds, g, lr: numpy_gd_step(As, ds, g / 2, lr), "not γ δ_i"),
    "cross-term gradient without the 2": (lambda As, ds, g, lr: numpy_gd_step(As, ds, g, lr, factor=1.0), "missing its factor 2"),
    "whole gradient halved": (lambda As, ds, g, lr: numpy_gd_step(As, ds, g / 2, lr, factor=1.0), "factor 2"),
    "unperturbed factors": (lambda As, ds, g, lr: numpy_gd_step(As, ds, g, lr, perturbed=False), "perturbed factors"),
    "returns the factors": (lambda As, ds, g, lr: numpy_gd_step(As, ds, g, lr, return_factors=True), "not the new factors"),
    "pairs j > i only": (_upper_pairs_only, "every j ≠ i"),
    "Gauss-Seidel": (_gauss_seidel, "differ"),
    "one δ too few": (lambda As, ds, g, lr: numpy_gd_step(As, ds, g, lr)[:-1], "one δ_i per task"),
    "transposed": (lambda As, ds, g, lr: [x.T for x in numpy_gd_step(As, ds, g, lr)], "shape"),
    "unchanged δ": (lambda As, ds, g, lr: [d.clone() for d in ds], "differ"),
    "float32": (lambda As, ds, g, lr: [x.float() for x in numpy_gd_step(As, ds, g, lr)], "float32"),
    "updates δ in place": (_step_in_place, "in place"),
    "writes Â into A in place": (_hats_in_place, "in place"),
}


@pytest.mark.parametrize("answer", RIGHT_GD.values(), ids=RIGHT_GD)
def test_gd_step_accepts(answer):
    assert "correct" in exercises.check_ortho_gd_step(answer)


@pytest.mark.parametrize("wrong, hint", WRONG_GD.values(), ids=WRONG_GD)
def test_gd_step_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_ortho_gd_step(wrong)


# ---- exercise 5.4 (predict → run → interpret): the size of the decoupled merge --------------------

def norm_ratio_right(updates):
    """DO (decouple only, axis "in", mean magnitudes) over task arithmetic, λ = 1, in numpy."""
    deltas = [np_(u.delta()) for u in updates]
    alphas = np.stack([np.linalg.norm(d, axis=0) for d in deltas])
    dirs = sum(np.divide(d, a, out=np.zeros_like(d), where=a > 0) for d, a in zip(deltas, alphas))
    return float(np.linalg.norm(alphas.mean(0) * dirs) / np.linalg.norm(sum(deltas)))


def _do_parts(updates, axis="in"):
    deltas = [u.delta() for u in updates]
    parts = [decouple(d, axis) for d in deltas]
    return deltas, parts


def _sum_of_alphas(updates):
    deltas, parts = _do_parts(updates)
    return float((torch.stack([a for a, _ in parts]).sum(0) * sum(w for _, w in parts)).norm() / sum(deltas).norm())


def _no_magnitude(updates):
    deltas, parts = _do_parts(updates)
    return float(sum(w for _, w in parts).norm() / sum(deltas).norm())


def _axis_out(updates):
    deltas, parts = _do_parts(updates, "out")
    return float((torch.stack([a for a, _ in parts]).mean(0)[:, None] * sum(w for _, w in parts)).norm() / sum(deltas).norm())


def _naive_division(updates):
    deltas = [u.delta() for u in updates]
    alphas = torch.stack([d.norm(dim=0) for d in deltas])
    return float((alphas.mean(0) * sum(d / a for d, a in zip(deltas, alphas))).norm() / sum(deltas).norm())


def _scales_in_place(updates):
    updates[0].B.mul_(2.0)
    return norm_ratio_right(updates)


RIGHT_RATIO = {
    "numpy": norm_ratio_right,
    "package": lambda ups: float(merge_layer(ups, "do", orthogonalize=False).double().norm()
                                 / merge_layer(ups, "task_arithmetic").double().norm()),
}

WRONG_RATIO = {
    "inverted": (lambda ups: 1 / norm_ratio_right(ups), "‖TA‖ / ‖DO‖"),
    "sum of the magnitudes": (_sum_of_alphas, "MEAN of the α_i"),
    "squared norms": (lambda ups: norm_ratio_right(ups) ** 2, "squared norms"),
    "no magnitude put back": (_no_magnitude, "without putting the magnitude"),
    "axis out": (_axis_out, "expected"),
    "0/0 on a zero column": (_naive_division, "NaN"),
    "the orthogonal-columns estimate": (mean_over_rms, "estimate"),
    "always 1": (lambda ups: 1.0, "expected"),
    "in place": (_scales_in_place, "in place"),
    "a tensor of norms": (lambda ups: torch.ones(2), "number"),
}


def test_do_magnitude_accepts_any_prediction():
    for prediction in ("larger", "smaller", "same"):
        msg = exercises.check_predict_do_magnitude(prediction, norm_ratio_right)
        assert "measured 'smaller'" in msg and ("matches" in msg) == (prediction == "smaller")


def test_do_magnitude_measurement_is_what_it_says():
    """The toy's ratio is below 1, close to (5.7)'s mean/RMS estimate, and exactly 1 for a repeated update."""
    toy = magnitude_toy()
    ratio = norm_ratio_right(toy)
    assert ratio < 0.95 and abs(ratio - mean_over_rms(toy)) < 0.02
    same = magnitude_toy((1.0,), seed=9)
    assert abs(norm_ratio_right(same * 2) - 1.0) < 1e-12


@pytest.mark.parametrize("answer", RIGHT_RATIO.values(), ids=RIGHT_RATIO)
def test_do_magnitude_accepts(answer):
    exercises.check_predict_do_magnitude("larger", answer)


@pytest.mark.parametrize("wrong, hint", WRONG_RATIO.values(), ids=WRONG_RATIO)
def test_do_magnitude_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_predict_do_magnitude("smaller", wrong)


@pytest.mark.parametrize("prediction", [None, "bigger", 0.7])
def test_do_magnitude_needs_a_prediction(prediction):
    with pytest.raises(AssertionError, match="prediction"):
        exercises.check_predict_do_magnitude(prediction, norm_ratio_right)
