"""Exercise checkers of notebook 02 (merging baselines)."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ...lora.update import LoRAUpdate
from ...merge import disjoint_mean, elect_sign, ties_dense, trim_topk
from ._common import as_tensor as _as_tensor, assert_unmodified as _assert_unmodified, copy_input as _copy
from ._common import check_choice as _check_choice, ok as _ok, random_lora as _random_lora
from ._common import report_prediction as _report_prediction


def _trimmed_stack(seed: int, n: int, shape: tuple[int, ...], density: float) -> torch.Tensor:
    """N random task tensors, each trimmed to its top ``density`` entries (so many are exactly 0)."""
    g = torch.Generator().manual_seed(seed)
    stack = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    return torch.stack([trim_topk(t, density) for t in stack])


def check_ties_sign_mean(fn: Callable[[torch.Tensor], torch.Tensor]) -> str:
    r"""Exercise 2.1: ``fn(stack)`` must return TIES' sign election + disjoint mean of ``stack`` ``(N, ...)``.

    .. math:: \sigma_e = \operatorname{sign}\textstyle\sum_i \hat\tau_{i,e}\ (0 \to +),\quad
        \tau^*_e = \frac{\sum_{i:\operatorname{sign}\hat\tau_{i,e} = \sigma_e} \hat\tau_{i,e}}{\max(1, |\{i:\operatorname{sign}\hat\tau_{i,e}=\sigma_e\}|)}
    """
    cases = [(0, 3, (12, 10), 0.4), (1, 4, (7, 9), 0.2), (2, 2, (30,), 0.7), (3, 5, (6, 6), 1.0)]
    stacks = [_trimmed_stack(seed, n, shape, density) for seed, n, shape, density in cases]
    tie = torch.tensor([[1.0, 0.0, -2.0], [-1.0, 0.0, 0.0]], dtype=torch.float64)
    gots = []
    for stack in stacks + [tie]:
        passed = stack.clone()
        got = fn(passed)
        assert isinstance(got, torch.Tensor), "return a torch.Tensor"
        _assert_unmodified({"stack": stack}, {"stack": passed})
        shape = tuple(stack.shape[1:])
        assert tuple(got.shape) == shape, f"the merged tensor has one task's shape {shape}, got {tuple(got.shape)}"
        got = _as_tensor(got, "the merged tensor")
        if torch.isnan(got).any():
            raise AssertionError("NaN where no task agrees with the elected sign (e.g. every task trimmed there: 0/0); "
                                 "divide by max(1, number of agreeing tasks)")
        gots.append(got)
    wants = [disjoint_mean(s, elect_sign(s)) for s in stacks + [tie]]
    if all(torch.allclose(g, w, atol=1e-10) for g, w in zip(gots, wants)):
        return _ok("TIES sign election + disjoint mean")
    agreeing_sum = lambda s: torch.where(elect_sign(s), s, 0.0).sum(0)
    wrong = {  # answers a learner might write → hint, if the answer matches one on every case
        "that is the plain mean over all tasks; keep only the tasks that agree with the elected sign, and divide by "
        "how many agree": lambda s: s.mean(0),
        "divide by the number of agreeing tasks per entry, not by N": lambda s: agreeing_sum(s) / s.shape[0],
        "elect the sign of the *sum* of the values (TIES' 'total' rule), not the sign that most tasks have":
            lambda s: disjoint_mean(s, s.sign() == torch.where(s.sign().sum(0) >= 0, 1.0, -1.0)),
        "that is the sum of the agreeing values; divide it by how many tasks agree (at least 1)": agreeing_sum,
        "that averages every nonzero entry whatever its sign; keep only the entries that agree with the elected sign":
            lambda s: s.sum(0) / (s != 0).sum(0).clamp(min=1),
    }
    for hint, f in wrong.items():
        if all(torch.allclose(g, f(s), atol=1e-10) for g, s in zip(gots, stacks + [tie])):
            raise AssertionError(hint)
    if all(torch.allclose(g, w, atol=1e-10) for g, w in zip(gots[:-1], wants[:-1])):
        raise AssertionError(f"a sum of exactly 0 elects +: for entries [1, -1], [0, 0] and [-2, 0] expect [1, 0, -2], "
                             f"got {gots[-1].tolist()}")
    raise AssertionError("values differ from TIES' disjoint mean; zeros (trimmed entries) never count as agreeing, "
                         "and a sum of exactly 0 elects +")


def check_dare_rescale(fn: Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]) -> str:
    r"""Exercise 2.2: ``fn(tau, p, generator)`` must drop each entry w.p. ``p`` and rescale survivors by 1/(1−p).

    Checks that survivors equal :math:`\tau_e/(1-p)`, that the dropped fraction is p (within 5
    binomial standard deviations), and that the Monte Carlo mean over many draws is
    :math:`\tau` (within 5 standard errors): :math:`\mathbb{E}[\tilde\tau] = \tau`.
    """
    g0 = torch.Generator().manual_seed(0)
    tau = torch.randn(60, 50, generator=g0, dtype=torch.float64) + 0.5
    n = tau.numel()
    for p in (0.3, 0.8):
        gen = torch.Generator().manual_seed(1)
        passed = tau.clone()
        out = fn(passed, p, gen)
        assert isinstance(out, torch.Tensor) and out.shape == tau.shape, "return a tensor of tau's shape"
        _assert_unmodified({"tau": tau}, {"tau": passed})
        out = _as_tensor(out, "the result")
        kept = out != 0
        frac_dropped = 1.0 - kept.double().mean().item()
        if abs(frac_dropped - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n) and abs(p - 0.5) > 0.1:
            raise AssertionError(f"you dropped {frac_dropped:.2f} of the entries with p={p}: p is the *drop* "
                                 "probability, each entry survives with probability 1-p")
        assert abs(frac_dropped - p) < 5 * math.sqrt(p * (1 - p) / n), (
            f"expected about {p:.0%} of the entries dropped, got {frac_dropped:.1%}")
        if torch.allclose(out[kept], tau[kept]):
            raise AssertionError("the survivors are unchanged: rescale them by 1/(1-p), or the expectation is (1-p)·τ")
        if torch.allclose(out[kept], tau[kept] * (1 - p)):
            raise AssertionError("you multiplied the survivors by (1-p); divide by it, τ/(1-p), so that E = τ")
        if torch.allclose(out[kept], tau[kept] / p):
            raise AssertionError("rescale by 1/(1-p), the survival probability, not by 1/p")
        assert torch.allclose(out[kept], tau[kept] / (1 - p)), "survivors must equal τ/(1-p)"
        # unbiasedness: E[τ̃] = τ, Var[τ̃_e] = τ_e² p/(1-p)
        draws = 400
        gen = torch.Generator().manual_seed(2)
        total = torch.zeros_like(tau)
        for _ in range(draws):
            total += fn(tau.clone(), p, gen)
        mc = total / draws
        se = (tau.abs() * math.sqrt(p / (1 - p) / draws)).clamp(min=1e-12)
        z = ((mc - tau) / se).abs()
        assert z.mean() < 1.5 and (z > 6).double().mean() < 0.01, (
            "the mean over many draws is not τ: E[DARE(τ)] should equal τ; do you draw a fresh mask from the "
            "generator on every call?")
    a = fn(tau.clone(), 0.5, torch.Generator().manual_seed(7))
    b = fn(tau.clone(), 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(a, b), "draw the mask from the given generator, so that the same seed gives the same mask"
    return _ok("DARE drop and rescale, E[DARE(τ)] = τ")


def _factor_average(updates: Sequence[LoRAUpdate]) -> torch.Tensor:
    """peft's ``combination_type="linear"`` with weights 1: (Σ√s_i B_i)(Σ√s_i A_i)."""
    A = sum(math.sqrt(u.scaling) * u.A for u in updates)
    B = sum(math.sqrt(u.scaling) * u.B for u in updates)
    return B @ A


def check_cross_term(fn: Callable[[Sequence[LoRAUpdate]], torch.Tensor]) -> str:
    r"""Exercise 2.3: ``fn(updates)`` must return the cross term of merging the factors, ``(d_out, d_in)``.

    Averaging the factors as peft's ``linear`` does (weights 1) gives
    :math:`\big(\sum_i \sqrt{s_i} B_i\big)\big(\sum_j \sqrt{s_j} A_j\big) = \sum_i s_i B_i A_i
    + \sum_{i \ne j} \sqrt{s_i s_j}\, B_i A_j`; the answer is the second sum.
    """
    cases, gots = [], []
    for seed, (n, scalings) in enumerate([(2, (2.0, 2.0)), (3, (2.0, 0.5, 4.0)), (4, (1.0, 3.0, 0.25, 2.0))]):
        updates = [LoRAUpdate(*_random_lora(10 * seed + k, 9, 7, 3), s) for k, s in enumerate(scalings)]
        passed = _copy(updates)
        got = fn(passed)
        assert isinstance(got, torch.Tensor), "return a torch.Tensor"
        _assert_unmodified({"updates": updates}, {"updates": passed})
        assert tuple(got.shape) == (9, 7), f"the cross term has ΔW's shape (d_out, d_in) = (9, 7), got {tuple(got.shape)}"
        cases.append(updates)
        gots.append(_as_tensor(got, "the cross term"))
    true_sum = lambda ups: sum(u.delta() for u in ups)
    want = lambda ups: _factor_average(ups) - true_sum(ups)
    if all(torch.allclose(g, want(ups), atol=1e-8) for g, ups in zip(gots, cases)):
        return _ok("cross term of merging factors")

    def pairs(ups, weight, keep=lambda i, j: i != j):
        return sum(weight(a, b) * (a.B @ b.A) for i, a in enumerate(ups) for j, b in enumerate(ups) if keep(i, j))

    wrong = {  # answers a learner might write → hint, if the answer matches one on every case
        "that is the whole product of the averaged factors; leave out the i = j terms": _factor_average,
        "B_i A_j and B_j A_i are different matrices: sum over all i ≠ j, not i < j":
            lambda ups: pairs(ups, lambda a, b: math.sqrt(a.scaling * b.scaling), lambda i, j: i < j),
        "each factor carries √s_i of its task's scaling: the (i, j) term is √(s_i s_j)·B_i A_j":
            lambda ups: pairs(ups, lambda a, b: 1.0),
        "each factor carries √s_i, so the (i, j) term is √(s_i s_j)·B_i A_j, not s_i s_j·B_i A_j":
            lambda ups: pairs(ups, lambda a, b: a.scaling * b.scaling),
        "the sign is flipped: cross term = (product of the averaged factors) − (true sum Σ s_i B_i A_i)":
            lambda ups: -want(ups),
        "that is the true sum Σ s_i B_i A_i (the i = j terms); the cross term is everything else":
            true_sum,
        "you averaged the factors (1/N each); peft's linear here sums them with weights 1":
            lambda ups: want(ups) / len(ups) ** 2,
    }
    for hint, f in wrong.items():
        if all(torch.allclose(g, f(ups), atol=1e-8) for g, ups in zip(gots, cases)):
            raise AssertionError(hint)
    raise AssertionError("values differ from Σ_{i≠j} √(s_i s_j) B_i A_j (check which factor comes from which task)")


CONFLICT_CHOICES = ("more", "less", "same")


def anticorrelated_pair(n: int = 2000, c: float = 0.5, noise: float = 0.3, seed: int = 0) -> torch.Tensor:
    """Two task vectors stacked ``(2, n)`` (float64): τ_1 random, τ_2 = −c·τ_1 + noise·ε (anti-correlated)."""
    g = torch.Generator().manual_seed(seed)
    t1 = torch.randn(n, generator=g, dtype=torch.float64)
    return torch.stack([t1, -c * t1 + noise * torch.randn(n, generator=g, dtype=torch.float64)])


def conflict_shares(stack: torch.Tensor) -> dict[str, torch.Tensor]:
    """cos(merged, τ_i) per task for task arithmetic (the sum) and TIES (density 1, λ 1: election + disjoint mean)."""
    cos = lambda m: torch.stack([(m * t).sum() / (m.norm() * t.norm()) for t in stack])
    return {"task_arithmetic": cos(stack.sum(0)), "ties": cos(ties_dense(stack, lam=1.0, density=1.0))}


def _win_rate_cases() -> list[torch.Tensor]:
    ties = torch.tensor([[1.0, 2.0, 0.0, -1.0], [-1.0, -2.0, 0.0, 1.0]], dtype=torch.float64)  # every sum is 0
    return [anticorrelated_pair(300, seed=1), _trimmed_stack(2, 3, (8, 9), 0.5), _trimmed_stack(3, 4, (40,), 0.3), ties]


def check_predict_ties_conflict(prediction: str | None, fn: Callable[[torch.Tensor], torch.Tensor]) -> str:
    r"""Exercise 2.4 (predict → run → interpret): does TIES' sign election keep more of an anti-correlated task?

    ``prediction`` (any of :data:`CONFLICT_CHOICES`: TIES keeps *more*, *less* or the *same* of the
    smaller task τ_2 as task arithmetic, by cos(merged, τ_2)) is accepted whatever it is;
    ``fn(stack)`` must return, per task, the fraction of entries where its sign agrees with TIES'
    elected sign (trimmed zeros never agree), shape ``(N,)``: checked against ``lorakit.merge.elect_sign``.
    """
    cases, gots = _win_rate_cases(), []
    for stack in cases:
        passed = stack.clone()
        got = fn(passed)
        assert isinstance(got, torch.Tensor), "return a torch.Tensor"
        _assert_unmodified({"stack": stack}, {"stack": passed})
        assert tuple(got.shape) == (stack.shape[0],), f"return one fraction per task, shape ({stack.shape[0]},), got {tuple(got.shape)}"
        gots.append(_as_tensor(got, "the fractions"))
    choice = _check_choice(prediction, CONFLICT_CHOICES, "does TIES keep more, less or the same of task 2?")
    wants = [elect_sign(s).reshape(s.shape[0], -1).double().mean(1) for s in cases]
    for stack, got, want in zip(cases, gots, wants):
        if torch.allclose(got, want, atol=1e-12):
            continue
        if torch.allclose(got, want * stack[0].numel(), atol=1e-9):
            raise AssertionError("those are counts of entries; divide by the number of entries to get fractions")
        if torch.allclose(got, (stack.sign() == torch.where(stack.sum(0) > 0, 1.0, -1.0)).reshape(len(stack), -1).double().mean(1)):
            raise AssertionError("a sum of exactly 0 elects + (TIES' rule, `>= 0`): check the entries where the tasks cancel")
        majority = torch.where(stack.sign().sum(0) >= 0, 1.0, -1.0)
        if torch.allclose(got, (stack.sign() == majority).reshape(len(stack), -1).double().mean(1)):
            raise AssertionError("TIES elects the sign of the SUM of the values (the mass), not the sign most tasks have")
        raise AssertionError(f"expected the fractions {[round(v, 4) for v in want.tolist()]}, got "
                             f"{[round(v, 4) for v in got.tolist()]}: per task, the mean over entries of "
                             "[sign τ_i = elected sign], zeros never agreeing")
    pair = anticorrelated_pair()
    shares, wins = conflict_shares(pair), elect_sign(pair).double().mean(1)
    gain = float(shares["ties"][1] - shares["task_arithmetic"][1])
    measured = "more" if gain > 0.02 else "less" if gain < -0.02 else "same"
    why = (f"task 2 agrees with the elected sign in only {wins[1]:.0%} of the entries (task 1 in {wins[0]:.0%}): "
           "where the tasks disagree, the sign of the sum goes to the larger one, and the disjoint mean then keeps "
           "only its value. TIES resolves a conflict by choosing a winner, which sharpens task 1 "
           f"(cos {shares['task_arithmetic'][0]:.2f} → {shares['ties'][0]:.2f}) at task 2's expense; task arithmetic "
           "lets the two cancel instead. No entry-wise rule can keep both of two directions that truly oppose.")
    evidence = (f"cos(merged, τ_2): task arithmetic {shares['task_arithmetic'][1]:.2f}, TIES {shares['ties'][1]:.2f}")
    return _report_prediction(choice, measured, evidence, why)
