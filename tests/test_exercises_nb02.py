"""The notebook-02 exercise checkers accept right answers and reject the typical wrong ones."""

from __future__ import annotations

import math

import pytest
import torch

from lorakit import exercises
from lorakit.merge import dare_drop, disjoint_mean, elect_sign


# --- exercise 2.1: TIES sign election + disjoint mean ---------------------------------------------

def ties_right(stack):
    """Written from the equations, independent of lorakit.merge."""
    sigma = torch.where(stack.sum(0) >= 0, 1.0, -1.0).to(stack.dtype)
    agree = (stack.sign() == sigma).to(stack.dtype)
    return (stack * agree).sum(0) / agree.sum(0).clamp(min=1)


def test_ties_right_answers_pass():
    exercises.check_ties_sign_mean(ties_right)
    exercises.check_ties_sign_mean(lambda s: disjoint_mean(s, elect_sign(s)))


@pytest.mark.parametrize("wrong, hint", [
    (lambda s: s.mean(0), "plain mean"),
    (lambda s: torch.where(elect_sign(s), s, 0.0).sum(0) / s.shape[0], "not by N"),
    (lambda s: disjoint_mean(s, s.sign() == torch.where(s.sign().sum(0) >= 0, 1.0, -1.0)), "sum"),
    # zeros counted as agreeing (≥ 0 instead of the sign): divides by too many
    (lambda s: disjoint_mean(s, torch.where(s.sum(0) >= 0, s >= 0, s <= 0)), "zeros"),
    # a zero sum elects − instead of +
    (lambda s: disjoint_mean(s, s.sign() == torch.where(s.sum(0) > 0, 1.0, -1.0)), None),
    (lambda s: s.sum(0), None),
])
def test_ties_wrong_answers_fail(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_ties_sign_mean(wrong)


# --- exercise 2.2: DARE drop and rescale -----------------------------------------------------------

def dare_right(tau, p, generator):
    keep = torch.rand(tau.shape, generator=generator, dtype=tau.dtype) >= p
    return torch.where(keep, tau / (1 - p), torch.zeros_like(tau))


def test_dare_right_answers_pass():
    exercises.check_dare_rescale(dare_right)
    exercises.check_dare_rescale(dare_drop)  # lorakit's own


@pytest.mark.parametrize("wrong, hint", [
    (lambda t, p, g: t * torch.bernoulli(torch.full_like(t, 1 - p), generator=g), "unchanged"),
    (lambda t, p, g: t * torch.bernoulli(torch.full_like(t, 1 - p), generator=g) / p, "not by 1/p"),
    (lambda t, p, g: t * torch.bernoulli(torch.full_like(t, p), generator=g) / p, "drop"),
    (lambda t, p, g: t * torch.bernoulli(torch.full_like(t, 1 - p)) / (1 - p), "generator"),
    # one fixed mask for every call: right on one draw, biased on average
    (lambda t, p, g: t * torch.bernoulli(torch.full_like(t, 1 - p), generator=torch.Generator().manual_seed(3)) / (1 - p),
     "mean over many draws"),
])
def test_dare_wrong_answers_fail(wrong, hint):
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


def test_cross_term_right_answer_passes():
    exercises.check_cross_term(cross_right)


def _averaged(updates):
    return sum(math.sqrt(u.scaling) * u.B for u in updates) @ sum(math.sqrt(u.scaling) * u.A for u in updates)


@pytest.mark.parametrize("wrong, hint", [
    (_averaged, "whole product"),
    (lambda ups: sum(math.sqrt(a.scaling * b.scaling) * a.B @ b.A for i, a in enumerate(ups)
                     for j, b in enumerate(ups) if i < j), "i < j"),
    (lambda ups: sum(a.B @ b.A for i, a in enumerate(ups) for j, b in enumerate(ups) if i != j), "√"),
    (lambda ups: sum(math.sqrt(a.scaling * b.scaling) * b.B @ a.A for i, a in enumerate(ups)
                     for j, b in enumerate(ups) if i != j) * 1.5, None),
    (lambda ups: (_averaged(ups) - sum(u.delta() for u in ups)).T, "shape"),
])
def test_cross_term_wrong_answers_fail(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_cross_term(wrong)
