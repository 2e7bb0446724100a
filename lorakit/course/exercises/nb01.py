"""Exercise checkers of notebook 01 (LoRA and task vectors)."""

from __future__ import annotations

import math
from typing import Callable

import torch

from ...lora.update import LoRAUpdate, lora_delta, lora_scaling
from ._common import as_number as _as_number, as_tensor as _as_tensor, assert_unmodified as _assert_unmodified
from ._common import check_choice as _check_choice, copy_input as _copy, ok as _ok, random_lora as _random_lora
from ._common import report_prediction as _report_prediction


def check_lora_delta(fn: Callable[[torch.Tensor, torch.Tensor, float, int], torch.Tensor]) -> str:
    """Exercise 1.1: ``fn(A, B, alpha, r)`` must return ΔW = (α/r)·B·A of shape (d_out, d_in)."""
    results = []
    for seed, (d_out, d_in, r, alpha) in enumerate([(12, 10, 3, 6.0), (5, 9, 2, 16.0), (7, 7, 4, 1.0)]):
        A, B = _random_lora(seed, d_out, d_in, r)
        args = {"A": _copy(A), "B": _copy(B)}
        got = fn(args["A"], args["B"], alpha, r)
        assert isinstance(got, torch.Tensor), "return a torch.Tensor"
        _assert_unmodified({"A": A, "B": B}, args)
        assert tuple(got.shape) == (d_out, d_in), (
            f"ΔW must have the Linear weight's shape (d_out, d_in) = {(d_out, d_in)}, got {tuple(got.shape)}; "
            "is it B @ A (not A.T @ B.T)?")
        results.append((A, B, alpha, r, _as_tensor(got, "ΔW")))
    if all(torch.allclose(got, lora_delta(A, B, lora_scaling(alpha, r)), atol=1e-5) for A, B, alpha, r, got in results):
        return _ok("ΔW = (α/r)·B·A")
    wrong = {  # scalings a learner might use instead of s = α/r → hint, if the answer matches on every case
        "you forgot the scaling s = α/r": lambda a, r: 1.0,
        "you multiplied by α but did not divide by r: s = α/r": lambda a, r: a,
        "the scaling is upside down: s = α/r, not r/α": lambda a, r: r / a,
        "that is rsLoRA's α/√r; plain LoRA uses s = α/r": lambda a, r: a / math.sqrt(r),
        "the scaling is applied twice: (α/r)² instead of α/r": lambda a, r: (a / r) ** 2,
    }
    for hint, scaling in wrong.items():
        if all(torch.allclose(got, scaling(alpha, r) * (B @ A), atol=1e-5) for A, B, alpha, r, got in results):
            raise AssertionError(hint)
    raise AssertionError("values differ from (α/r)·B·A; check the scaling α/r")


def check_rslora_scaling(fn: Callable[[float, int], float]) -> str:
    """Exercise 1.2: ``fn(alpha, r)`` must return rsLoRA's scaling α/√r."""
    cases = [(16, 8), (8, 64), (1, 1), (32, 16), (12, 9)]
    gots = [_as_number(fn(alpha, r), "the scaling") for alpha, r in cases]
    wants = [lora_scaling(alpha, r, use_rslora=True) for alpha, r in cases]
    close = lambda x, y: abs(x - y) <= 1e-6 * abs(y)  # float32 rounding allowed
    if all(close(g, w) for g, w in zip(gots, wants)):
        return _ok("rsLoRA scaling α/√r")
    wrong = {  # formulas a learner might write → hint (given only when the answer matches them on every case)
        "that is plain LoRA's α/r; rsLoRA divides by √r": lambda a, r: a / r,
        "you multiplied by √r; rsLoRA divides by √r: α/√r": lambda a, r: a * math.sqrt(r),
        "that takes the root of α too: √(α/r); only r goes under the root, α/√r": lambda a, r: math.sqrt(a / r),
        "math.isqrt rounds √r down to an integer; use math.sqrt (α/√r)": lambda a, r: a / math.isqrt(r),
    }
    for hint, f in wrong.items():
        if all(close(g, f(a, r)) for g, (a, r) in zip(gots, cases)):
            raise AssertionError(hint)
    (alpha, r), got, want = next((c, g, w) for c, g, w in zip(cases, gots, wants) if not close(g, w))
    raise AssertionError(f"for α={alpha}, r={r} expected {want:.4f}, got {got:.4f}")


def _rank_cases() -> list[tuple[str, LoRAUpdate]]:
    """(description, update) pairs: full rank r, rank lost in B, in A, in both, a tiny update, zero."""
    cases = []
    for seed, r in enumerate([1, 3, 5]):
        cases.append((f"random factors with r={r}", LoRAUpdate(*_random_lora(seed, 16, 12, r), 2.0)))
    A, B = _random_lora(9, 16, 12, 4)
    B[:, 0] = 0  # one direction switched off: rank drops below r
    cases.append(("one column of B zeroed", LoRAUpdate(A, B, 1.0)))
    A, B = _random_lora(10, 16, 12, 4)
    A[3] = A[2] + A[1]  # A has rank 3 while B has full rank 4
    cases.append(("one row of A a sum of two others", LoRAUpdate(A, B, 1.0)))
    A, B = _random_lora(11, 16, 12, 3)
    A[2], B[:, 0] = A[1], 0  # rank(A) = rank(B) = 2 but ΔW = (B_1 + B_2) A_1: rank 1
    cases.append(("a column of B zeroed and two equal rows of A", LoRAUpdate(A, B, 1.0)))
    cases.append(("a tiny update (scaling 1e-12)", LoRAUpdate(*_random_lora(12, 16, 12, 3), 1e-12)))
    A, B = _random_lora(13, 16, 12, 3)
    cases.append(("B = 0 (peft's initialisation)", LoRAUpdate(A, torch.zeros_like(B), 2.0)))
    return cases


def check_rank_bound(fn: Callable[[LoRAUpdate], int]) -> str:
    """Exercise 1.3: ``fn(update)`` must return the numerical rank of ΔW (at most r)."""
    cases = _rank_cases()
    gots = []
    for _, upd in cases:
        passed = _copy(upd)
        value = _as_number(fn(passed), "the rank")
        _assert_unmodified({"update": upd}, {"update": passed})
        assert value == int(value), f"the rank is an integer, got {value}"
        gots.append(int(value))
    wants = [int(torch.linalg.matrix_rank(u.delta())) for _, u in cases]  # float64 factors: exact rank
    if gots == wants:
        return _ok("rank(ΔW) ≤ r")
    rank = lambda x: int(torch.linalg.matrix_rank(x))
    wrong = {  # numbers a learner might return instead → hint, if the answer matches them on every case
        "r is only an upper bound on rank(ΔW); compute the rank of ΔW itself (its singular values)":
            lambda u: u.rank,
        "min(d_out, d_in) bounds the rank of any matrix of ΔW's shape; ΔW = s·B·A has rank ≤ r: compute the rank "
        "of ΔW itself (count its singular values above a relative tolerance)": lambda u: min(u.shape),
        "you counted every singular value, float noise (~1e-15 · σ_max) included; count only those above a "
        "tolerance relative to the largest one (e.g. 1e-10 · σ_max, in float64)":
            lambda u: min(u.shape) if u.B.any() else 0,
        "that is the rank of B; ΔW = s·B·A also loses rank where A does: compute the rank of ΔW itself":
            lambda u: rank(u.B),
        "that is the rank of A; ΔW = s·B·A also loses rank where B does: compute the rank of ΔW itself":
            lambda u: rank(u.A),
        "rank(BA) can be below min(rank A, rank B) when B sends a direction of A's rows to 0; compute the rank "
        "of ΔW itself": lambda u: min(rank(u.A), rank(u.B)),
        "an absolute tolerance drops a tiny update entirely; make the tolerance relative to σ_max":
            lambda u: 0 if u.scaling < 1e-6 else rank(u.delta()),
    }
    hint = next((h for h, f in wrong.items() if all(g == f(u) for g, (_, u) in zip(gots, cases))),
                "count the singular values of ΔW above a tolerance relative to the largest one")
    label, got, want = next((lab, g, w) for (lab, _), g, w in zip(cases, gots, wants) if g != w)
    raise AssertionError(f"{label}: rank(ΔW) = {want}, got {got}. {hint}")


SUM_RANK_CHOICES = ("r", "n*r", "min(d_out, d_in)")


def sum_rank_case(shared_A: bool = False, n: int = 3, d: int = 64, r: int = 4, seed: int = 20) -> list[LoRAUpdate]:
    """The prediction exercise's N rank-r updates of a d × d layer (float64); ``shared_A``: one A for all."""
    ups = [LoRAUpdate(*_random_lora(seed + i, d, d, r), 2.0) for i in range(n)]
    return [LoRAUpdate(ups[0].A, u.B, u.scaling) for u in ups] if shared_A else ups


def _sum_rank_cases() -> list[tuple[str, list[LoRAUpdate]]]:
    cases = [("3 independent rank-4 updates of a 64 × 64 layer", sum_rank_case()),
             ("3 updates sharing one A", sum_rank_case(shared_A=True)),
             ("5 independent rank-3 updates of a 12 × 10 layer (N·r > d_in)",
              [LoRAUpdate(*_random_lora(40 + i, 12, 10, 3), 1.0) for i in range(5)])]
    ups = sum_rank_case(n=2, d=16, r=3, seed=50)
    cases.append(("2 updates sharing one B", [ups[0], LoRAUpdate(ups[1].A, ups[0].B, 0.5)]))
    ups = sum_rank_case(n=3, d=16, r=2, seed=60)
    cases.append(("one of 3 updates with B = 0", [ups[0], ups[1], LoRAUpdate(ups[2].A, torch.zeros_like(ups[2].B), 1.0)]))
    return cases


def check_predict_sum_rank(prediction: str | None, fn: Callable[[list[LoRAUpdate]], int]) -> str:
    """Exercise 1.4 (predict → run → interpret): the rank of a task-arithmetic sum Σ_i ΔW_i.

    ``prediction`` (any of :data:`SUM_RANK_CHOICES` is accepted) is the learner's guess for N = 3
    independent rank-4 updates of a 64 × 64 layer; ``fn(updates)`` must return the numerical rank of
    Σ_i s_i B_i A_i and is checked against ``torch.linalg.matrix_rank`` of the package's sum on cases
    where the sum of the ranks, r, and min(d_out, d_in) are each wrong somewhere.
    """
    cases = _sum_rank_cases()
    gots = []
    for label, ups in cases:
        passed = _copy(ups)
        value = _as_number(fn(passed), "the rank")
        _assert_unmodified({"updates": ups}, {"updates": passed})
        assert value == int(value), f"the rank is an integer, got {value}"
        gots.append(int(value))
    choice = _check_choice(prediction, SUM_RANK_CHOICES, "the rank of ΔW_1 + ΔW_2 + ΔW_3 for independent rank-r updates")
    wants = [int(torch.linalg.matrix_rank(sum(u.delta() for u in ups))) for _, ups in cases]
    if gots != wants:
        label, got, want = next((c[0], g, w) for c, g, w in zip(cases, gots, wants) if g != w)
        rank_sum = sum(u.rank for u in dict(cases)[label])
        hint = ("that is N·r, only an upper bound: compute the rank of the sum itself" if got == rank_sum else
                "compute the rank of Σ_i ΔW_i itself (its singular values above a tolerance relative to the largest)")
        raise AssertionError(f"{label}: rank(Σ ΔW_i) = {want}, got {got}. {hint}")
    n, r, d = 3, 4, 64
    measured = {n * r: "n*r", r: "r", d: "min(d_out, d_in)"}[wants[0]]
    why = (f"Σ_i s_i B_i A_i = [s_1 B_1 … s_N B_N] [A_1; …; A_N], a product through N·r = {n * r} dimensions, so "
           f"rank ≤ N·r; independent random factors reach it ({wants[0]}). With a shared A every row of the sum "
           f"lies in A's r-dimensional row space: rank {wants[1]}. And no sum exceeds min(d_out, d_in) "
           f"({wants[2]} for 5 rank-3 updates of a 12 × 10 layer). Task vectors add up to a larger rank: the merged "
           "update is no longer a rank-r LoRA (notebook 02, section 1).")
    return _report_prediction(choice, measured, f"rank {wants[0]} for N = {n}, r = {r}, d = {d}", why)
