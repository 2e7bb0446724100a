"""The notebook-02 exercise checkers accept the right answers (the solutions notebook's own, and
independent ones) and reject each plausible wrong answer of a mutation list with a useful hint."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from lorakit.course import exercises
from lorakit.merge import dare_drop, disjoint_mean, elect_sign

SOLUTIONS = Path(__file__).resolve().parents[1] / "notebooks" / "src" / "solutions__02_solutions.py"


@pytest.fixture(scope="module")
def solutions():
    """The solutions notebook's source run as a script (its cells call the checkers): its namespace."""
    return runpy.run_path(str(SOLUTIONS))


@pytest.mark.parametrize("answer, checker, success", [
    ("my_ties_sign_mean", exercises.check_ties_sign_mean, "✓ TIES sign election + disjoint mean: correct"),
    ("my_dare", exercises.check_dare_rescale, "✓ DARE drop and rescale, E[DARE(τ)] = τ: correct"),
    ("my_cross_term", exercises.check_cross_term, "✓ cross term of merging factors: correct"),
])
def test_solutions_notebook_answers_pass(solutions, answer, checker, success):
    assert checker(solutions[answer]) == success


def test_solutions_notebook_prediction_passes(solutions):
    msg = exercises.check_predict_ties_conflict(solutions["prediction"], solutions["my_win_rate"])
    assert "your prediction matches the measurement" in msg


@pytest.mark.parametrize("checker", [exercises.check_ties_sign_mean, exercises.check_dare_rescale,
                                     exercises.check_cross_term,
                                     lambda fn: exercises.check_predict_ties_conflict(None, fn)])
def test_unattempted_stub_raises_not_implemented(checker):
    def stub(*args):
        raise NotImplementedError

    with pytest.raises(NotImplementedError):
        checker(stub)


# --- exercise 2.1: TIES sign election + disjoint mean ---------------------------------------------

def ties_right(stack):
    """Written from the equations, independent of lorakit.merge."""
    sigma = torch.where(stack.sum(0) >= 0, 1.0, -1.0).to(stack.dtype)
    agree = (stack.sign() == sigma).to(stack.dtype)
    return (stack * agree).sum(0) / agree.sum(0).clamp(min=1)


def _sigma(s):
    return torch.where(s.sum(0) >= 0, 1.0, -1.0).to(s.dtype)


def _ties_in_place(s):
    s[s.sign() != _sigma(s)] = 0                  # zeroes the disagreeing entries of the caller's tensor
    return s.sum(0) / (s != 0).sum(0).clamp(min=1)


RIGHT_TIES = {
    "from the equations": ties_right,
    "package": lambda s: disjoint_mean(s, elect_sign(s)),
    "sign of the mean": lambda s: disjoint_mean(s, s.sign() == torch.where(s.mean(0) >= 0, 1.0, -1.0)),
    "nan_to_num": lambda s: torch.nan_to_num(torch.where(s.sign() == _sigma(s), s, 0.0).sum(0)
                                             / (s.sign() == _sigma(s)).sum(0)),
}

WRONG_TIES = {
    "plain mean": (lambda s: s.mean(0), "plain mean"),
    "divided by N": (lambda s: torch.where(elect_sign(s), s, 0.0).sum(0) / s.shape[0], "not by N"),
    "majority sign": (lambda s: disjoint_mean(s, s.sign() == torch.where(s.sign().sum(0) >= 0, 1.0, -1.0)), "sum"),
    "zeros agree": (lambda s: disjoint_mean(s, torch.where(s.sum(0) >= 0, s >= 0, s <= 0)), "zeros"),
    "zero sum elects -": (lambda s: disjoint_mean(s, s.sign() == torch.where(s.sum(0) > 0, 1.0, -1.0)), "elects \\+"),
    "sign(sum) with 0 -> 0": (lambda s: disjoint_mean(s, s.sign() == s.sum(0).sign()), "elects \\+"),
    "plain sum": (lambda s: s.sum(0), "plain sum|values differ"),
    "agreeing sum, not divided": (lambda s: torch.where(elect_sign(s), s, 0.0).sum(0), "divide"),
    "no clamp: 0/0": (lambda s: torch.where(elect_sign(s), s, 0.0).sum(0) / elect_sign(s).sum(0), "NaN"),
    "mean of the nonzero entries": (lambda s: s.sum(0) / (s != 0).sum(0).clamp(min=1), "elected sign"),
    "sign times largest magnitude": (lambda s: _sigma(s) * s.abs().max(0).values, "values differ"),
    "zeros": (lambda s: torch.zeros_like(s[0]), "values differ"),
    "input unchanged": (lambda s: s, "shape"),
    "wrong axis": (lambda s: ties_right(s.movedim(0, -1)), "shape"),
    "float32": (lambda s: ties_right(s).float(), "float32"),
    "modifies the stack in place": (_ties_in_place, "in place"),
}


@pytest.mark.parametrize("answer", RIGHT_TIES.values(), ids=RIGHT_TIES)
def test_ties_accepts(answer):
    exercises.check_ties_sign_mean(answer)


@pytest.mark.parametrize("wrong, hint", WRONG_TIES.values(), ids=WRONG_TIES)
def test_ties_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_ties_sign_mean(wrong)


# --- exercise 2.2: DARE drop and rescale -----------------------------------------------------------

def dare_right(tau, p, generator):
    keep = torch.rand(tau.shape, generator=generator, dtype=tau.dtype) >= p
    return torch.where(keep, tau / (1 - p), torch.zeros_like(tau))


def _mask(t, q, g):
    """Bernoulli(q) mask drawn from g."""
    return torch.bernoulli(torch.full_like(t, q), generator=g)


def _dare_in_place(t, p, g):
    return t.mul_(_mask(t, 1 - p, g)).div_(1 - p)


RIGHT_DARE = {
    "rand >= p": dare_right,
    "package": dare_drop,
    "bernoulli": lambda t, p, g: t * _mask(t, 1 - p, g) / (1 - p),
    "float32 mask": lambda t, p, g: t * torch.bernoulli(torch.full(t.shape, 1 - p), generator=g) / (1 - p),
}

WRONG_DARE = {
    "no rescale": (lambda t, p, g: t * _mask(t, 1 - p, g), "unchanged"),
    "rescaled by 1/p": (lambda t, p, g: t * _mask(t, 1 - p, g) / p, "not by 1/p"),
    "rescaled by (1-p)": (lambda t, p, g: t * _mask(t, 1 - p, g) * (1 - p), "multiplied"),
    "p is the keep probability": (lambda t, p, g: t * _mask(t, p, g) / p, "drop"),
    "no generator": (lambda t, p, g: t * torch.bernoulli(torch.full_like(t, 1 - p)) / (1 - p), "generator"),
    # one fixed mask for every call: right on one draw, biased on average
    "one fixed mask": (lambda t, p, g: t * _mask(t, 1 - p, torch.Generator().manual_seed(3)) / (1 - p),
                       "mean over many draws"),
    "drops the smallest entries": (lambda t, p, g: torch.where(t.abs() >= t.abs().quantile(p), t / (1 - p), 0.0),
                                   "mean over many draws"),
    "rescaled by the observed keep rate": (lambda t, p, g: (lambda m: t * m / m.mean())(_mask(t, 1 - p, g)),
                                           "τ/\\(1-p\\)"),
    "nothing dropped": (lambda t, p, g: t.clone(), "dropped"),
    "zeros": (lambda t, p, g: torch.zeros_like(t), "dropped"),
    "float32": (lambda t, p, g: (t * _mask(t, 1 - p, g) / (1 - p)).float(), "float32"),
    "modifies tau in place": (_dare_in_place, "in place"),
    "transposed": (lambda t, p, g: dare_right(t, p, g).T, "shape"),
}


@pytest.mark.parametrize("answer", RIGHT_DARE.values(), ids=RIGHT_DARE)
def test_dare_accepts(answer):
    exercises.check_dare_rescale(answer)


@pytest.mark.parametrize("wrong, hint", WRONG_DARE.values(), ids=WRONG_DARE)
def test_dare_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_dare_rescale(wrong)


# --- exercise 2.3: the cross term of merging factors -----------------------------------------------

def cross_right(updates):
    out = 0
    for i, a in enumerate(updates):
        for j, b in enumerate(updates):
            if i != j:
                out = out + math.sqrt(a.scaling * b.scaling) * (a.B @ b.A)
    return out


def _averaged(updates):
    return sum(math.sqrt(u.scaling) * u.B for u in updates) @ sum(math.sqrt(u.scaling) * u.A for u in updates)


def _pairs(ups, weight, cond=lambda i, j: i != j):
    return sum(weight(a, b) * (a.B @ b.A) for i, a in enumerate(ups) for j, b in enumerate(ups) if cond(i, j))


def _cross_in_place(ups):
    for u in ups:                                    # folds √s into the caller's factors
        u.A.mul_(math.sqrt(u.scaling))
        u.B.mul_(math.sqrt(u.scaling))
    return _pairs(ups, lambda a, b: 1.0)


def _cross_float32_accumulator(ups):
    out = torch.zeros(ups[0].B.shape[0], ups[0].A.shape[1])   # float32 by default
    out += cross_right(ups)
    return out


RIGHT_CROSS = {
    "double loop": cross_right,
    "product minus the true sum": lambda ups: _averaged(ups) - sum(u.delta() for u in ups),
    "B_j A_i (the same terms)": lambda ups: _pairs(ups, lambda a, b: math.sqrt(a.scaling * b.scaling)),
}

WRONG_CROSS = {
    "whole product": (_averaged, "whole product"),
    "i < j only": (lambda ups: _pairs(ups, lambda a, b: math.sqrt(a.scaling * b.scaling), lambda i, j: i < j), "i < j"),
    "no scaling": (lambda ups: _pairs(ups, lambda a, b: 1.0), "√"),
    "s_i s_j": (lambda ups: _pairs(ups, lambda a, b: a.scaling * b.scaling), "not s_i s_j"),
    "negated": (lambda ups: sum(u.delta() for u in ups) - _averaged(ups), "sign"),
    "the true sum": (lambda ups: sum(u.delta() for u in ups), "i = j"),
    "averaged factors": (lambda ups: cross_right(ups) / len(ups) ** 2, "averaged"),
    "1.5 x": (lambda ups: 1.5 * cross_right(ups), None),
    "transposed": (lambda ups: cross_right(ups).T, "shape"),
    "zeros": (lambda ups: torch.zeros(ups[0].B.shape[0], ups[0].A.shape[1], dtype=torch.float64), "values differ"),
    "float32 accumulator": (_cross_float32_accumulator, "float32"),
    "scales the factors in place": (_cross_in_place, "in place"),
}


@pytest.mark.parametrize("answer", RIGHT_CROSS.values(), ids=RIGHT_CROSS)
def test_cross_term_accepts(answer):
    exercises.check_cross_term(answer)


@pytest.mark.parametrize("wrong, hint", WRONG_CROSS.values(), ids=WRONG_CROSS)
def test_cross_term_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_cross_term(wrong)


# --- exercise 2.4 (predict → run → interpret): TIES against anti-correlated tasks -------------------

def win_rate_right(stack):
    """Written from (2.3), independent of lorakit.merge."""
    sigma = torch.where(stack.sum(0) >= 0, 1.0, -1.0).to(stack.dtype)
    return (stack.sign() == sigma).reshape(len(stack), -1).to(stack.dtype).mean(1)


def _agree(s, rule):
    return (s.sign() == rule(s)).reshape(len(s), -1).double()


RIGHT_WIN = {
    "from the equations": win_rate_right,
    "package": lambda s: elect_sign(s).reshape(len(s), -1).double().mean(1),
    "numpy": lambda s: torch.from_numpy((np.sign(s.numpy()) == np.where(s.numpy().sum(0) >= 0, 1.0, -1.0))
                                        .reshape(len(s), -1).mean(1)),
}

WRONG_WIN = {
    "counts, not fractions": (lambda s: _agree(s, lambda s: torch.where(s.sum(0) >= 0, 1.0, -1.0)).sum(1), "counts"),
    "a zero sum elects −": (lambda s: _agree(s, lambda s: torch.where(s.sum(0) > 0, 1.0, -1.0)).mean(1), "elects +"),
    "majority of signs": (lambda s: _agree(s, lambda s: torch.where(s.sign().sum(0) >= 0, 1.0, -1.0)).mean(1), "SUM"),
    "zeros agree": (lambda s: (_agree(s, lambda s: torch.where(s.sum(0) >= 0, 1.0, -1.0)) + (s == 0).reshape(len(s), -1))
                    .clamp(max=1).mean(1), "zeros never agreeing"),
    "over nonzero entries only": (lambda s: _agree(s, lambda s: torch.where(s.sum(0) >= 0, 1.0, -1.0)).sum(1)
                                  / (s != 0).reshape(len(s), -1).sum(1), "expected the fractions"),
    "positive fraction": (lambda s: (s > 0).reshape(len(s), -1).double().mean(1), "expected the fractions"),
    "per entry, not per task": (lambda s: elect_sign(s).double().mean(0), "one fraction per task"),
    "float32": (lambda s: win_rate_right(s).float(), "float32"),
    "in place": (lambda s: win_rate_right(s.abs_()), "in place"),
    "a list": (lambda s: win_rate_right(s).tolist(), "torch.Tensor"),
}


def test_ties_conflict_accepts_any_prediction():
    for prediction in ("more", "less", "same"):
        msg = exercises.check_predict_ties_conflict(prediction, win_rate_right)
        assert "measured 'less'" in msg and ("matches" in msg) == (prediction == "less")


def test_ties_conflict_measurement_is_what_it_says():
    """The pair is anti-correlated, and TIES' cosine with τ_2 is below task arithmetic's (recomputed by hand)."""
    from lorakit.course.exercises.nb02 import anticorrelated_pair

    pair = anticorrelated_pair()
    assert float(torch.corrcoef(pair)[0, 1]) < -0.5
    sigma = torch.where(pair.sum(0) >= 0, 1.0, -1.0).double()
    agree = (pair.sign() == sigma).double()
    ties = (pair * agree).sum(0) / agree.sum(0).clamp(min=1)
    cos = lambda x, y: float(x @ y / (x.norm() * y.norm()))
    assert cos(ties, pair[1]) < cos(pair.sum(0), pair[1]) - 0.02


@pytest.mark.parametrize("answer", RIGHT_WIN.values(), ids=RIGHT_WIN)
def test_ties_conflict_accepts(answer):
    exercises.check_predict_ties_conflict("more", answer)


@pytest.mark.parametrize("wrong, hint", WRONG_WIN.values(), ids=WRONG_WIN)
def test_ties_conflict_rejects(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_predict_ties_conflict("less", wrong)


@pytest.mark.parametrize("prediction", [None, "better", 1.0, "TIES"])
def test_ties_conflict_needs_a_prediction(prediction):
    with pytest.raises(AssertionError, match="prediction"):
        exercises.check_predict_ties_conflict(prediction, win_rate_right)
