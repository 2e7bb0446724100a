"""The notebook-01 exercise checkers accept the right answers (the solutions notebook's own, and
independent ones) and reject each plausible wrong answer of a mutation list with a useful hint."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from lorakit.course import exercises
from lorakit.lora.update import lora_delta, lora_scaling

SOLUTIONS = Path(__file__).resolve().parents[1] / "notebooks" / "src" / "solutions__01_solutions.py"


@pytest.fixture(scope="module")
def solutions():
    """The solutions notebook's source run as a script (its cells call the checkers): its namespace."""
    return runpy.run_path(str(SOLUTIONS))


@pytest.mark.parametrize("answer, checker, success", [
    ("my_delta", exercises.check_lora_delta, "✓ ΔW = (α/r)·B·A: correct"),
    ("my_rslora_scaling", exercises.check_rslora_scaling, "✓ rsLoRA scaling α/√r: correct"),
    ("my_rank", exercises.check_rank_bound, "✓ rank(ΔW) ≤ r: correct"),
])
def test_solutions_notebook_answers_pass(solutions, answer, checker, success):
    assert checker(solutions[answer]) == success


def test_solutions_notebook_prediction_passes(solutions):
    msg = exercises.check_predict_sum_rank(solutions["prediction"], solutions["my_sum_rank"])
    assert "your prediction matches the measurement" in msg


@pytest.mark.parametrize("checker", [exercises.check_lora_delta, exercises.check_rslora_scaling,
                                     exercises.check_rank_bound,
                                     lambda fn: exercises.check_predict_sum_rank(None, fn)])
def test_unattempted_stub_raises_not_implemented(checker):
    """The notebooks' exercise cells catch NotImplementedError from the stub: the checker must let it through."""
    def stub(*args):
        raise NotImplementedError

    with pytest.raises(NotImplementedError):
        checker(stub)


# ---- exercise 1.1: ΔW = (α/r)·B·A ------------------------------------------------------------------

RIGHT_DELTA = {
    "package": lambda A, B, a, r: lora_delta(A, B, lora_scaling(a, r)),
    "einsum": lambda A, B, a, r: torch.einsum("ok,ki->oi", B, A) * (a / r),
    "numpy": lambda A, B, a, r: torch.from_numpy(a / r * (B.numpy() @ A.numpy())),
    "scale B first": lambda A, B, a, r: (B * (a / r)) @ A,
}

WRONG_DELTA = {
    "no scaling": (lambda A, B, a, r: B @ A, "forgot the scaling"),
    "A.T @ B.T": (lambda A, B, a, r: (a / r) * (A.T @ B.T), "shape"),
    "transposed": (lambda A, B, a, r: ((a / r) * (B @ A)).T, "shape"),
    "r / alpha": (lambda A, B, a, r: (r / a) * (B @ A), "upside down"),
    "alpha only": (lambda A, B, a, r: a * (B @ A), "divide by r"),
    "rsLoRA scaling": (lambda A, B, a, r: a / math.sqrt(r) * (B @ A), "rsLoRA"),
    "scaling twice": (lambda A, B, a, r: (a / r) ** 2 * (B @ A), "twice"),
    "floor division": (lambda A, B, a, r: (a // r) * (B @ A), "α/r"),
    "d_out instead of r": (lambda A, B, a, r: a / B.shape[0] * (B @ A), "α/r"),
    "zeros": (lambda A, B, a, r: torch.zeros(B.shape[0], A.shape[1], dtype=A.dtype), "α/r"),
    "float32": (lambda A, B, a, r: ((a / r) * (B @ A)).float(), "float32"),
    "numpy array": (lambda A, B, a, r: ((a / r) * (B @ A)).numpy(), "torch.Tensor"),
    "B scaled in place": (lambda A, B, a, r: B.mul_(a / r) @ A, "in place"),
    "A scaled in place": (lambda A, B, a, r: B @ A.mul_(a / r), "in place"),
}


@pytest.mark.parametrize("answer", RIGHT_DELTA.values(), ids=RIGHT_DELTA)
def test_lora_delta_accepts(answer):
    exercises.check_lora_delta(answer)


@pytest.mark.parametrize("wrong, hint", WRONG_DELTA.values(), ids=WRONG_DELTA)
def test_lora_delta_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_lora_delta(wrong)


# ---- exercise 1.2: rsLoRA's scaling α/√r -----------------------------------------------------------

RIGHT_RSLORA = {
    "package": lambda a, r: lora_scaling(a, r, use_rslora=True),
    "power": lambda a, r: a / r ** 0.5,
    "tensor": lambda a, r: torch.tensor(a / math.sqrt(r)),
    "numpy": lambda a, r: np.float64(a) / np.sqrt(r),
}

WRONG_RSLORA = {
    "plain LoRA": (lambda a, r: a / r, "plain LoRA"),
    "times sqrt(r)": (lambda a, r: a * math.sqrt(r), "divides by √r"),
    "sqrt(alpha / r)": (lambda a, r: math.sqrt(a / r), "root of α"),
    "alpha / r**2": (lambda a, r: a / r**2, "expected"),
    "isqrt": (lambda a, r: a / math.isqrt(r), "isqrt"),
    "floor division": (lambda a, r: a // math.sqrt(r), "expected"),
    "arguments swapped": (lambda a, r: r / math.sqrt(a), "expected"),
    "constant 1": (lambda a, r: 1.0, "expected"),
    "None": (lambda a, r: None, "number"),
    "a vector": (lambda a, r: torch.tensor([a, r]) / math.sqrt(r), "number"),
}


@pytest.mark.parametrize("answer", RIGHT_RSLORA.values(), ids=RIGHT_RSLORA)
def test_rslora_scaling_accepts(answer):
    exercises.check_rslora_scaling(answer)


@pytest.mark.parametrize("wrong, hint", WRONG_RSLORA.values(), ids=WRONG_RSLORA)
def test_rslora_scaling_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_rslora_scaling(wrong)


# ---- exercise 1.3: the numerical rank of ΔW ---------------------------------------------------------

def _sv(u, dtype=torch.float64):
    return torch.linalg.svdvals(u.delta(dtype))


RIGHT_RANK = {
    "matrix_rank": lambda u: int(torch.linalg.matrix_rank(u.delta())),
    "numpy": lambda u: int(np.linalg.matrix_rank(u.delta().numpy())),
    "relative tolerance on max": lambda u: int((_sv(u) > 1e-9 * _sv(u).max()).sum()),
    "float32 matrix_rank": lambda u: int(torch.linalg.matrix_rank(u.delta().float())),
}

WRONG_RANK = {
    "the LoRA rank r": (lambda u: u.rank, "upper bound"),
    "rows of A": (lambda u: u.A.shape[0], "upper bound"),
    "min(d_out, d_in)": (lambda u: min(u.shape), r"min\(d_out, d_in\) bounds"),
    "no tolerance": (lambda u: int((_sv(u) > 0).sum()), "noise"),
    "float32, 1e-10 tolerance": (lambda u: int((_sv(u, torch.float32) > 1e-10 * _sv(u, torch.float32)[0]).sum()),
                                 "noise"),
    "absolute tolerance": (lambda u: int((_sv(u) > 1e-6).sum()), "relative"),
    "rank of B": (lambda u: int(torch.linalg.matrix_rank(u.B)), "rank of B"),
    "rank of A": (lambda u: int(torch.linalg.matrix_rank(u.A)), "rank of A"),
    "min of both ranks": (lambda u: min(int(torch.linalg.matrix_rank(u.A)), int(torch.linalg.matrix_rank(u.B))),
                          "min"),
    "None": (lambda u: None, "number"),
}


@pytest.mark.parametrize("answer", RIGHT_RANK.values(), ids=RIGHT_RANK)
def test_rank_bound_accepts(answer):
    exercises.check_rank_bound(answer)


@pytest.mark.parametrize("wrong, hint", WRONG_RANK.values(), ids=WRONG_RANK)
def test_rank_bound_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_rank_bound(wrong)


def test_rank_bound_rejects_modifying_the_update():
    def zeroes_scaling(u):
        u.B.mul_(2.0)
        return int(torch.linalg.matrix_rank(u.delta()))

    with pytest.raises(AssertionError, match="in place"):
        exercises.check_rank_bound(zeroes_scaling)


# ---- exercise 1.4 (predict → run → interpret): the rank of a sum of updates -------------------------

def _sum_delta(ups):
    return sum(u.delta() for u in ups)


RIGHT_SUM_RANK = {
    "matrix_rank": lambda ups: int(torch.linalg.matrix_rank(_sum_delta(ups))),
    "numpy": lambda ups: int(np.linalg.matrix_rank(_sum_delta(ups).numpy())),
    "stacked factors": lambda ups: int(torch.linalg.matrix_rank(
        torch.cat([u.scaling * u.B for u in ups], 1) @ torch.cat([u.A for u in ups], 0))),
}

WRONG_SUM_RANK = {
    "sum of the ranks N·r": (lambda ups: sum(u.rank for u in ups), "N·r, only an upper bound"),
    "r": (lambda ups: ups[0].rank, "rank of Σ_i ΔW_i itself"),
    "min(d_out, d_in)": (lambda ups: min(ups[0].shape), "rank of Σ_i ΔW_i itself"),
    "min(N·r, d)": (lambda ups: min(sum(u.rank for u in ups), min(ups[0].shape)), "sharing one A"),
    "rank of the stacked A": (lambda ups: int(torch.linalg.matrix_rank(torch.cat([u.A for u in ups]))), "sharing one B"),
    "max of the ranks": (lambda ups: max(int(torch.linalg.matrix_rank(u.delta())) for u in ups), "rank"),
    "no tolerance": (lambda ups: int((torch.linalg.svdvals(_sum_delta(ups)) > 0).sum()), "rank"),
    "None": (lambda ups: None, "number"),
}


def test_sum_rank_accepts_any_prediction():
    for prediction in ("r", "n*r", "min(d_out, d_in)", " N*R "):
        msg = exercises.check_predict_sum_rank(prediction, RIGHT_SUM_RANK["matrix_rank"])
        assert "measured 'n*r'" in msg and "rank 12" in msg


@pytest.mark.parametrize("answer", RIGHT_SUM_RANK.values(), ids=RIGHT_SUM_RANK)
def test_sum_rank_accepts(answer):
    exercises.check_predict_sum_rank("r", answer)


@pytest.mark.parametrize("wrong, hint", WRONG_SUM_RANK.values(), ids=WRONG_SUM_RANK)
def test_sum_rank_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_predict_sum_rank("n*r", wrong)


@pytest.mark.parametrize("prediction, hint", [(None, "write your prediction first"), ("12", "must be one of"),
                                              (12, "must be one of"), ("2r", "must be one of")])
def test_sum_rank_needs_a_prediction(prediction, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_predict_sum_rank(prediction, RIGHT_SUM_RANK["matrix_rank"])


def test_sum_rank_rejects_modifying_the_updates():
    def scales_in_place(ups):
        ups[0].B.mul_(2.0)
        return int(torch.linalg.matrix_rank(_sum_delta(ups)))

    with pytest.raises(AssertionError, match="in place"):
        exercises.check_predict_sum_rank("r", scales_in_place)
