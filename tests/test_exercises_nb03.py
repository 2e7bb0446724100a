"""The notebook-03 exercise checkers accept the right answers (the solutions notebook's own, and
independent ones written with numpy) and reject each plausible wrong answer of a mutation list with a
useful hint."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from lorakit.course import exercises
from lorakit.lora.measures import column_magnitudes, interference_from_magnitudes, magnitude_variance

SOLUTIONS = Path(__file__).resolve().parents[1] / "notebooks" / "src" / "solutions__03_solutions.py"


@pytest.fixture(scope="module")
def solutions():
    """The solutions notebook's source run as a script (its cells call the checkers): its namespace."""
    return runpy.run_path(str(SOLUTIONS))


@pytest.mark.parametrize("answer, checker, success", [
    ("my_column_magnitudes", exercises.check_column_magnitudes, "✓ α[j] = ‖ΔW[:, j]‖₂ (one norm per input column): correct"),
    ("my_magnitude_variance", exercises.check_magnitude_variance, "✓ MV = mean_j std_i α_i[j] / mean_i α_i[j]: correct"),
    ("my_is_scale_free", exercises.check_scale_free_test, "✓ a common rescaling leaves a scale-free measure unchanged: correct"),
])
def test_solutions_notebook_answers_pass(solutions, answer, checker, success):
    assert checker(solutions[answer]) == success


@pytest.mark.parametrize("checker", [exercises.check_column_magnitudes, exercises.check_magnitude_variance,
                                     exercises.check_scale_free_test])
def test_unattempted_stub_raises_not_implemented(checker):
    def stub(*args):
        raise NotImplementedError

    with pytest.raises(NotImplementedError):
        checker(stub)


# ---- exercise 3.1: column magnitudes ---------------------------------------------------------

def _sneaky_rows(d):
    """Column norms where the shape gives rows away, row norms on square matrices."""
    return d.norm(dim=0) if d.shape[0] != d.shape[1] else d.norm(dim=1)


RIGHT_COLUMNS = {
    "numpy": lambda d: torch.from_numpy(np.linalg.norm(d.numpy(), axis=0)),
    "package": lambda d: column_magnitudes(d, "in"),
    "keepdim": lambda d: d.norm(dim=0, keepdim=True),
    "sqrt of sum of squares": lambda d: (d**2).sum(0).sqrt(),
}

WRONG_COLUMNS = {
    "row norms": (lambda d: d.norm(dim=1), "one per output row"),
    "row norms on square matrices": (_sneaky_rows, "row norms"),
    "squared norms": (lambda d: (d**2).sum(0), "squared"),
    "L1 norms": (lambda d: d.abs().sum(0), "values differ"),
    "RMS (mean, not sum)": (lambda d: (d**2).mean(0).sqrt(), "mean of the squares"),
    "max abs": (lambda d: d.abs().max(0).values, "values differ"),
    "Frobenius norm": (lambda d: d.norm(), "shape"),
    "the input unchanged": (lambda d: d, "shape"),
    "float32": (lambda d: d.float().norm(dim=0), "float32"),
    "numpy array": (lambda d: np.linalg.norm(d.numpy(), axis=0), "torch.Tensor"),
    "squares the input in place": (lambda d: d.pow_(2).sum(0).sqrt(), "in place"),
}


@pytest.mark.parametrize("answer", RIGHT_COLUMNS.values(), ids=RIGHT_COLUMNS)
def test_column_magnitudes_accepts(answer):
    exercises.check_column_magnitudes(answer)


@pytest.mark.parametrize("wrong, hint", WRONG_COLUMNS.values(), ids=WRONG_COLUMNS)
def test_column_magnitudes_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_column_magnitudes(wrong)


# ---- exercise 3.2: magnitude variance ---------------------------------------------------------

def numpy_mv(deltas, ddof=0, divide=True, power=1, drop="every", axis=0, norm_power=1):
    """(3.2) with numpy; the keyword arguments make the wrong variants."""
    mags = np.stack([np.linalg.norm(d.numpy(), axis=axis) ** norm_power for d in deltas])  # (N, d_in)
    spread = mags.std(axis=0, ddof=ddof) ** power
    mean = mags.mean(axis=0)
    keep = {"every": mean > 0, "any": (mags > 0).all(axis=0), "none": np.ones_like(mean, dtype=bool)}[drop]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = spread / mean if divide else spread
    return float(ratio[keep].mean())


def _cv(mags, dim=0):
    return mags.std(dim, correction=0) / mags.mean(dim)


def _torch_mags(ds):
    return torch.stack([d.norm(dim=0) for d in ds])


def _mv_in_place(ds):
    for d in ds:
        d.abs_()                                  # harmless for the norms, but changes the caller's tensors
    return numpy_mv(ds)


RIGHT_MV = {
    "numpy": numpy_mv,
    "package": lambda ds: magnitude_variance(list(ds)),
    "nanmean": lambda ds: float(torch.nanmean(_cv(_torch_mags(ds)))),
    "a 0-d tensor": lambda ds: torch.tensor(numpy_mv(ds)),
}

WRONG_MV = {
    "NaN on all-zero columns": (lambda ds: float(_cv(_torch_mags(ds)).mean()), "NaN"),
    "all-zero columns counted as 0": (lambda ds: float(torch.nan_to_num(_cv(_torch_mags(ds))).mean()),
                                      "leaves such columns out"),
    "eps in the denominator": (lambda ds: float((lambda m: (m.std(0, correction=0) / (m.mean(0) + 1e-8)).mean())(
        _torch_mags(ds))), "leaves such columns out"),
    "drops columns zero in any task": (lambda ds: numpy_mv(ds, drop="any"), "only some tasks"),
    "sample std": (lambda ds: numpy_mv(ds, ddof=1), "sample std"),
    "not divided by the mean": (lambda ds: numpy_mv(ds, divide=False), "did not divide by the mean"),
    "variance over the mean": (lambda ds: numpy_mv(ds, power=2), "variance over the mean"),
    "row norms (transposed)": (lambda ds: numpy_mv([d.T for d in ds]), "rows"),
    "row norms (axis 1)": (lambda ds: numpy_mv(ds, axis=1), "rows"),
    "squared norms": (lambda ds: numpy_mv(ds, norm_power=2), "squared"),
    "Frobenius": (lambda ds: (lambda f: float(f.std() / f.mean()))(np.array([np.linalg.norm(d.numpy()) for d in ds])),
                  "Frobenius"),
    "over columns, not tasks": (lambda ds: float(_cv(_torch_mags(ds), dim=1).mean()), "across the tasks"),
    "ratio of the means": (lambda ds: (lambda m: float(m.std(0, correction=0)[m.mean(0) > 0].mean()
                                                       / m.mean(0)[m.mean(0) > 0].mean()))(_torch_mags(ds)),
                           "ratio"),
    "off by 0.01": (lambda ds: numpy_mv(ds) + 0.01, "expected"),
    "constant 0": (lambda ds: 0.0, "expected"),
    "None": (lambda ds: None, "number"),
    "modifies the updates in place": (_mv_in_place, "in place"),
}


@pytest.mark.parametrize("answer", RIGHT_MV.values(), ids=RIGHT_MV)
def test_magnitude_variance_accepts(answer):
    exercises.check_magnitude_variance(answer)


@pytest.mark.parametrize("wrong, hint", WRONG_MV.values(), ids=WRONG_MV)
def test_magnitude_variance_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_magnitude_variance(wrong)


# ---- exercise 3.3: a test for scale-freeness ----------------------------------------------------

_gen = torch.Generator().manual_seed(0)
DELTAS = [s * torch.randn(6, 4, generator=_gen, dtype=torch.float64) for s in (1.0, 0.3, 2.0)]


def good_test(measure):
    base = measure(DELTAS)
    return all(math.isclose(measure([c * d for d in DELTAS]), base, rel_tol=1e-9) for c in (0.1, 7.0))


RIGHT_SCALE_FREE = {
    "several c, relative tolerance": good_test,
    "one c, relative tolerance": lambda m: math.isclose(m([3.0 * d for d in DELTAS]), m(DELTAS), rel_tol=1e-9),
    "exact == with c = 2 (exact in floating point)": lambda m: m([2.0 * d for d in DELTAS]) == m(DELTAS),
    "numpy isclose": lambda m: bool(np.isclose(m([0.5 * d for d in DELTAS]), m(DELTAS), rtol=1e-9, atol=0)),
}

WRONG_SCALE_FREE = {
    "c = 1": (lambda m: math.isclose(m([1.0 * d for d in DELTAS]), m(DELTAS)), "changes with a common scale"),
    "c = -1": (lambda m: math.isclose(m([-d for d in DELTAS]), m(DELTAS)), "c = −1"),
    "scales one task only": (lambda m: math.isclose(m([7.0 * DELTAS[0], *DELTAS[1:]]), m(DELTAS), rel_tol=1e-9),
                             "is scale-free but"),
    "always True": (lambda m: True, "changes with a common scale"),
    "always False": (lambda m: False, "is scale-free but"),
    "the same list twice": (lambda m: math.isclose(m([7.0 * d for d in DELTAS]), m([7.0 * d for d in DELTAS])),
                            "changes with a common scale"),
    "tests homogeneity m(c·x) = c·m(x)": (lambda m: math.isclose(m([7.0 * d for d in DELTAS]), 7.0 * m(DELTAS)),
                                         "is scale-free but|changes with a common scale"),
    "identical tasks": (lambda m: math.isclose(m([7.0 * DELTAS[0]] * 3), m([DELTAS[0]] * 3), rel_tol=1e-9,
                                               abs_tol=1e-12), "changes with a common scale"),
    "c barely different from 1": (lambda m: math.isclose(m([(1 + 1e-12) * d for d in DELTAS]), m(DELTAS),
                                                         rel_tol=1e-9), "changes with a common scale"),
    "tolerance too loose": (lambda m: math.isclose(m([1.1 * d for d in DELTAS]), m(DELTAS), rel_tol=0.5),
                            "changes with a common scale"),
    "returns a string": (lambda m: "True", "True or False"),
}


@pytest.mark.parametrize("answer", RIGHT_SCALE_FREE.values(), ids=RIGHT_SCALE_FREE)
def test_scale_free_test_accepts(answer):
    exercises.check_scale_free_test(answer)


@pytest.mark.parametrize("wrong, hint", WRONG_SCALE_FREE.values(), ids=WRONG_SCALE_FREE)
def test_scale_free_test_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_scale_free_test(wrong)


def test_checker_measures_are_what_they_claim():
    """The checker's own answer key, verified by rescaling with numpy-free arithmetic."""
    from lorakit.course.exercises.nb03 import _measures

    gen = torch.Generator().manual_seed(3)
    deltas = [s * torch.randn(5, 4, generator=gen, dtype=torch.float64) for s in (1.0, 0.4, 2.5)]
    for name, (measure, scale_free) in _measures().items():
        same = math.isclose(measure([3.0 * d for d in deltas]), measure(deltas), rel_tol=1e-9)
        assert same == scale_free, name


# ---- exercise 3.4: predict → run → interpret, one task made louder ----------------------------

def _pair(first_scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"l{k}": torch.stack([first_scale * (1 + 0.3 * torch.rand(12, generator=g, dtype=torch.float64)),
                                  1 + 0.3 * torch.rand(12, generator=g, dtype=torch.float64)]) for k in range(3)}


def _numpy_mean_interference(m):
    a = m.numpy()
    a = a[:, (a > 0).all(0)] ** 2
    return float(np.mean([[(a[:, j].sum() - a[k, j]) / a[k, j] for j in range(a.shape[1])] for k in range(a.shape[0])]))


RIGHT_INTERFERENCE = {
    "numpy loops": _numpy_mean_interference,
    "package": lambda m: float(interference_from_magnitudes(m).mean()),
    "others summed explicitly": lambda m: float(torch.stack([
        ((m[:, (m > 0).all(0)] ** 2).sum(0) - m[k, (m > 0).all(0)] ** 2) / m[k, (m > 0).all(0)] ** 2
        for k in range(m.shape[0])]).mean()),
}

WRONG_INTERFERENCE = {
    "own term counted": (lambda m: float(((m[:, (m > 0).all(0)] ** 2).sum(0) / m[:, (m > 0).all(0)] ** 2).mean()),
                         "own column as interference"),
    "magnitudes not energies": (lambda m: float((m[:, (m > 0).all(0)].sum(0) / m[:, (m > 0).all(0)] - 1).mean()),
                                "magnitudes, not energies"),
    "ratio of means": (lambda m: float((m[:, (m > 0).all(0)] ** 2).sum(0).mean() / (m[:, (m > 0).all(0)] ** 2).mean() - 1),
                       "ratio of means"),  # always N − 1
    "worst task": (lambda m: float(interference_from_magnitudes(m).max()), "worst task"),
    "zero columns kept": (lambda m: float(((m ** 2).sum(0) / m ** 2 - 1).mean()), "every task is nonzero"),
    "in place": (lambda m: float(interference_from_magnitudes(m.mul_(2.0)).mean()), "in place"),  # right value
    "the floor N − 1": (lambda m: float(m.shape[0] - 1), "floor at equal magnitudes"),
    "a constant": (lambda m: 1.5, "expected"),
}


@pytest.mark.parametrize("answer", RIGHT_INTERFERENCE.values(), ids=RIGHT_INTERFERENCE)
def test_predict_louder_task_accepts_right_answers_and_any_prediction(answer):
    for prediction in exercises.nb03.LOUDER_CHOICES:
        msg = exercises.check_predict_louder_task(prediction, answer, _pair(0.5))
        assert msg.startswith(f"✓ prediction {prediction!r}, measured 'dips then rises'")


@pytest.mark.parametrize("wrong, hint", WRONG_INTERFERENCE.values(), ids=WRONG_INTERFERENCE)
def test_predict_louder_task_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_predict_louder_task("rises", wrong, _pair(0.5))


def test_predict_louder_task_measures_the_shape_of_the_curve():
    right = RIGHT_INTERFERENCE["package"]
    assert "measured 'rises'" in exercises.check_predict_louder_task("falls", right, _pair(8.0))   # already loud
    assert "measured 'falls'" in exercises.check_predict_louder_task("rises", right, _pair(1 / 8))  # still quiet at ×4
    assert "matches the measurement" in exercises.check_predict_louder_task("dips then rises", right, _pair(0.5))


@pytest.mark.parametrize("prediction, hint", [(None, "write your prediction first"), ("up", "must be one of"),
                                              (3, "must be one of")])
def test_predict_louder_task_needs_a_valid_prediction(prediction, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_predict_louder_task(prediction, RIGHT_INTERFERENCE["package"], _pair(0.5))


def test_predict_louder_task_solution_and_stub(solutions):
    msg = exercises.check_predict_louder_task(solutions["prediction"], solutions["my_mean_interference"], _pair(0.5))
    assert "matches the measurement" in msg

    def stub(m):
        raise NotImplementedError

    with pytest.raises(NotImplementedError):
        exercises.check_predict_louder_task(None, stub, _pair(0.5))
