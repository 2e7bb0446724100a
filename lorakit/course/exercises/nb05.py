r"""Exercise checkers of notebook 05 (DO-Merging: decouple and orthogonalize).

Symbols as in the notebook: :math:`\Delta W` is ``(d_out, d_in)``; :math:`A_i` is ``(r_i, d_in)``;
the A-side loss is :math:`L_A(\delta) = \sum_{i<j} \lVert (A_i+\delta_i)(A_j+\delta_j)^\top \rVert_F^2
+ \gamma \sum_i \lVert \delta_i \rVert_F^2` (5.4), in the factors' own units.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ...lora.update import LoRAUpdate
from ...merge import decouple, factor_cross_terms, merge_layer
from ._common import as_number as _as_number, as_tensor as _as_tensor_of_dtype, assert_unmodified as _assert_unmodified
from ._common import check_choice as _check_choice, ok as _ok, random_lora as _random_lora
from ._common import report_prediction as _report_prediction


def _factors(seed: int, ranks: Sequence[int], d_in: int) -> list[torch.Tensor]:
    """Random float64 ``r_i × d_in`` factors, one per rank in ``ranks``."""
    g = torch.Generator().manual_seed(1000 + seed)
    return [torch.randn(r, d_in, generator=g, dtype=torch.float64) for r in ranks]


def _as_tensor(x, what: str) -> torch.Tensor:
    return _as_tensor_of_dtype(x, what, torch.float64)


def check_decouple_in(fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> str:
    """Exercise 5.1: ``fn(delta)`` must return ``(alpha, direction)`` for axis ``"in"`` (5.3).

    ``alpha[j] = ‖ΔW[:, j]‖₂`` (shape ``(d_in,)``), ``direction = ΔW diag(α)⁻¹`` with unit columns,
    ``α ⊙ direction = ΔW``, and an all-zero column gives a zero direction column (not NaN).
    """
    for seed, (d_out, d_in) in enumerate([(9, 6), (5, 11), (7, 7)]):
        A, B = _random_lora(50 + seed, d_out, d_in, 3)
        delta = 1.5 * (B @ A)
        delta[:, 1] = 0.0  # a zero column, as after TIES' trimming
        passed = delta.clone()
        out = fn(passed)
        assert isinstance(out, tuple) and len(out) == 2, "return a tuple (alpha, direction)"
        _assert_unmodified({"delta": delta}, {"delta": passed})
        if (isinstance(out[0], torch.Tensor) and tuple(out[0].shape) == (d_out, d_in)
                and isinstance(out[1], torch.Tensor) and out[1].numel() == d_in):
            raise AssertionError("the order is (alpha, direction): return the norms first, then the direction")
        alpha, direction = _as_tensor(out[0], "alpha"), _as_tensor(out[1], "direction")
        want_alpha, want_dir = decouple(delta, "in")
        if alpha.shape == (d_out,) and d_out != d_in:
            raise AssertionError(f"alpha has {d_out} entries, one per output row; axis 'in' has one norm per input "
                                 f"column, length d_in = {d_in}: reduce over dim 0 of the (d_out, d_in) matrix")
        assert tuple(alpha.reshape(-1).shape) == (d_in,), f"alpha must have shape (d_in,) = ({d_in},), got {tuple(alpha.shape)}"
        alpha = alpha.reshape(-1)
        assert tuple(direction.shape) == (d_out, d_in), f"direction must have ΔW's shape {(d_out, d_in)}"
        if d_out == d_in and torch.allclose(alpha, decouple(delta, "out")[0], rtol=1e-6):
            raise AssertionError("those are row norms (axis 'out'); a column of ΔW is ΔW[:, j]: reduce over dim 0")
        if torch.allclose(alpha, want_alpha**2, rtol=1e-6):
            raise AssertionError("alpha holds squared norms; take the square root")
        assert torch.allclose(alpha, want_alpha, rtol=1e-6, atol=1e-9), "alpha differs from the column norms ‖ΔW[:, j]‖₂"
        if not torch.isfinite(direction).all():
            raise AssertionError("the all-zero column gave NaN or inf: give a column whose norm is 0 a zero direction "
                                 "(e.g. torch.where(alpha > eps, 1 / alpha, 0))")
        assert torch.equal(direction[:, 1], torch.zeros(d_out, dtype=torch.float64)), \
            "an all-zero column of ΔW must give an all-zero direction column"
        if torch.allclose(direction, delta / delta.norm(), rtol=1e-6):
            raise AssertionError("you divided by the Frobenius norm of ΔW; divide each column by its own norm")
        if d_out == d_in and torch.allclose(direction, torch.nan_to_num(delta / want_alpha[:, None]), rtol=1e-6):
            raise AssertionError("you divided row i by α[i]; divide column j by its own norm: ΔW / α[None, :]")
        assert torch.allclose(direction, want_dir, rtol=1e-6, atol=1e-9), \
            "direction must be ΔW with every column divided by its norm (unit columns)"
        assert torch.allclose(alpha[None, :] * direction, delta, rtol=1e-9, atol=1e-12), (
            "α ⊙ W̃ must give back ΔW (to 1e-9); if you added an eps to every norm, guard only the zero columns "
            "instead: torch.where(alpha > eps, 1 / alpha, 0)")
    return _ok("α ⊙ W̃ = ΔW with one norm per input column, zero columns → 0")


def check_factor_cross_loss(fn: Callable[[Sequence[torch.Tensor]], torch.Tensor | float]) -> str:
    """Exercise 5.2: ``fn(As)`` must return ``Σ_{i<j} ‖A_i A_jᵀ‖²_F`` for ``r_i × d_in`` factors ``As``."""
    for seed, (ranks, d_in) in enumerate([((3, 3, 3), 10), ((2, 4), 7), ((4, 1, 3, 2), 12)]):
        As = _factors(seed, ranks, d_in)
        passed = [a.clone() for a in As]
        got = _as_number(fn(passed), "the loss")
        _assert_unmodified({"As": As}, {"As": passed})
        want = sum(float((c**2).sum()) for c in factor_cross_terms(As, "A").values())
        pairs = [(i, j) for i in range(len(As)) for j in range(i + 1, len(As))]
        wrong = {
            "that counts every pair twice (i ≠ j); sum over i < j only": 2 * want,
            "those are the d_in × d_in products A_iᵀ A_j; the overlap of two row spaces is the r × r matrix A_i A_jᵀ":
                sum(float(((As[i].T @ As[j]) ** 2).sum()) for i, j in pairs) if len(set(ranks)) == 1 else float("nan"),
            "the loss squares the Frobenius norm: ‖A_i A_jᵀ‖²_F, not ‖A_i A_jᵀ‖_F":
                sum(float((As[i] @ As[j].T).norm()) for i, j in pairs),
            "that is the signed sum of the entries of A_i A_jᵀ; square them (a signed sum has no minimum)":
                sum(float((As[i] @ As[j].T).sum()) for i, j in pairs),
            "that includes the i = j terms ‖A_i A_iᵀ‖²_F; only pairs of different tasks count":
                want + sum(float(((a @ a.T) ** 2).sum()) for a in As),
            "that is the mean of the squared entries of A_i A_jᵀ; ‖·‖²_F is their sum":
                sum(float(((As[i] @ As[j].T) ** 2).mean()) for i, j in pairs),
            "that is the mean over the pairs; (5.4) sums over the pairs i < j": want / len(pairs),
        }
        for hint, value in wrong.items():
            if abs(got - value) <= 1e-8 * max(1.0, abs(value)) and abs(got - want) > 1e-8 * max(1.0, want):
                raise AssertionError(hint)
        assert abs(got - want) <= 1e-8 * max(1.0, want), f"expected {want:.6f}, got {got:.6f}"
    q, _ = torch.linalg.qr(torch.randn(15, 9, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    carved = [q[:, 3 * k:3 * k + 3].T for k in range(3)]
    assert abs(_as_number(fn(carved), "the loss")) < 1e-12, "blocks of one orthonormal matrix must give 0"
    return _ok("cross term Σ_{i<j} ‖A_i A_jᵀ‖²_F")


def _reference_step(As, deltas, gamma, lr):
    """One GD step on L_A (5.4), gradient by autograd (independent of the notebook's formula)."""
    ds = [d.clone().requires_grad_(True) for d in deltas]
    hats = [a + d for a, d in zip(As, ds)]
    loss = sum(((hats[i] @ hats[j].T) ** 2).sum() for i in range(len(As)) for j in range(i + 1, len(As)))
    loss = loss + gamma * sum((d**2).sum() for d in ds)
    grads = torch.autograd.grad(loss, ds)
    return [d.detach() - lr * g for d, g in zip(ds, grads)]


def check_ortho_gd_step(fn: Callable[..., Sequence[torch.Tensor]]) -> str:
    """Exercise 5.3: ``fn(As, deltas, gamma, lr)`` must return ``[δ_i − lr ∇_{δ_i} L_A]`` (5.4–5.5), raw units."""
    for seed, (ranks, d_in, gamma, lr) in enumerate([((3, 3, 3), 10, 0.5, 0.01), ((2, 4), 8, 2.0, 0.003),
                                                      ((3, 2, 2, 1), 9, 0.0, 0.02)]):
        As = _factors(10 + seed, ranks, d_in)
        g = torch.Generator().manual_seed(77 + seed)
        deltas = [0.3 * torch.randn(a.shape, generator=g, dtype=torch.float64) for a in As]
        passed = {"As": [a.clone() for a in As], "deltas": [d.clone() for d in deltas]}
        got = fn(passed["As"], passed["deltas"], gamma, lr)
        _assert_unmodified({"As": As, "deltas": deltas}, passed)
        got = list(got)
        assert len(got) == len(As), f"return one δ_i per task ({len(As)}), got {len(got)}"
        for k, (x, a) in enumerate(zip(got, As)):
            assert isinstance(x, torch.Tensor), f"each new δ_i must be a torch.Tensor, got {type(x).__name__}"
            assert x.shape == a.shape, f"δ_{k} must have A_{k}'s shape {tuple(a.shape)}, got {tuple(x.shape)}"
        got = [_as_tensor(x, "each new δ_i") for x in got]
        want = _reference_step(As, deltas, gamma, lr)
        close = lambda xs, ys: all(torch.allclose(x, y, rtol=1e-9, atol=1e-12) for x, y in zip(xs, ys))
        if close(got, want):
            continue
        if close(got, [d + (d - w) for d, w in zip(deltas, want)]):
            raise AssertionError("you stepped uphill: gradient descent subtracts lr · gradient")
        if gamma and close(got, [w + lr * 2 * gamma * d for d, w in zip(deltas, want)]):
            raise AssertionError("the penalty γ Σ‖δ_i‖² is missing from the gradient (its gradient is 2γ δ_i)")
        if close(got, [d - 0.5 * (d - w) for d, w in zip(deltas, want)]):
            raise AssertionError("the gradient is off by a factor 2: d‖X‖²_F = 2⟨X, dX⟩")
        if gamma and close(got, [w + lr * gamma * d for d, w in zip(deltas, want)]):
            raise AssertionError("the penalty's gradient is 2γ δ_i, not γ δ_i: d‖δ‖²_F = 2⟨δ, dδ⟩")
        cross_only = _reference_step(As, deltas, 0.0, lr)
        if close(got, [w + 0.5 * (d - c) for d, w, c in zip(deltas, want, cross_only)]):
            raise AssertionError("the cross-term gradient is missing its factor 2: ∇_{δ_i} = 2 Σ_{j≠i} (Â_i Â_jᵀ) Â_j")
        hats = [a + d for a, d in zip(As, deltas)]
        upper = [d - lr * (2 * gamma * d + sum((2 * (hats[i] @ hats[j].T) @ hats[j] for j in range(i + 1, len(As))),
                                               torch.zeros_like(d))) for i, d in enumerate(deltas)]
        if close(got, upper):
            raise AssertionError("δ_i appears in the pairs (i, j) and (j, i): its gradient has a term for every j ≠ i, "
                                 "not only j > i")
        if close(got, [a + w for a, w in zip(As, want)]):
            raise AssertionError("return the new perturbations δ_i, not the new factors A_i + δ_i")
        zero_step = _reference_step(As, [torch.zeros_like(d) for d in deltas], gamma, lr)
        if close(got, [d + z - 2 * lr * gamma * d for d, z in zip(deltas, zero_step)]):
            raise AssertionError("the cross terms use the perturbed factors Â_i = A_i + δ_i, not A_i alone")
        raise AssertionError("the new δ_i differ from δ_i − lr · ∇_{δ_i} L_A; check the cross-term gradient "
                             "2 Σ_{j≠i} (Â_i Â_jᵀ) Â_j and the penalty 2γ δ_i")
    return _ok("one gradient-descent step on L_A")


MAGNITUDE_CHOICES = ("larger", "smaller", "same")


def magnitude_toy(b_scales: Sequence[float] = (1.0, 0.1, 0.3), d: int = 64, r: int = 4, seed: int = 1) -> list[LoRAUpdate]:
    """Notebook 05's toy: one random rank-r update of a d × d layer per task, task i's B scaled by b_scales[i]."""
    g = torch.Generator().manual_seed(seed)
    return [LoRAUpdate(torch.randn(r, d, generator=g, dtype=torch.float64) / r,
                       c * torch.randn(d, r, generator=g, dtype=torch.float64), 2.0) for c in b_scales]


def do_norm_ratio(updates: Sequence[LoRAUpdate]) -> float:
    """‖ΔW*_DO‖_F / ‖ΔW*_TA‖_F with λ = 1: DO decoupling only (axis "in", mean magnitudes) over task arithmetic."""
    do = merge_layer(list(updates), "do", orthogonalize=False).double()
    return float(do.norm() / merge_layer(list(updates), "task_arithmetic").double().norm())


def mean_over_rms(updates: Sequence[LoRAUpdate]) -> float:
    """(5.7)'s estimate of :func:`do_norm_ratio` for mutually orthogonal columns: √(Σ_j N ᾱ_j² / Σ_j Σ_i α_ij²)."""
    alphas = torch.stack([u.delta().double().norm(dim=0) for u in updates])      # (N, d_in)
    return float((len(updates) * alphas.mean(0).pow(2).sum() / alphas.pow(2).sum()).sqrt())


def check_predict_do_magnitude(prediction: str | None, fn: Callable[[Sequence[LoRAUpdate]], float]) -> str:
    """Exercise 5.4 (predict → run → interpret): is the decoupled merge larger or smaller than task arithmetic's?

    ``prediction`` (any of :data:`MAGNITUDE_CHOICES`) is the learner's guess for section 1's toy;
    ``fn(updates)`` must return ‖ΔW*_DO‖_F / ‖ΔW*_TA‖_F at λ = 1 (decoupling only, axis ``"in"``,
    α* the mean of the α_i), checked against ``merge_layer`` on unequal, equal and identical updates
    and on updates with an all-zero column.
    """
    same = magnitude_toy((1.0,), seed=4)[0]
    zero_col = magnitude_toy((1.0, 0.5), d=12, r=2, seed=5)
    zero_col[1] = LoRAUpdate(zero_col[1].A.clone(), zero_col[1].B, zero_col[1].scaling)
    zero_col[1].A[:, 3] = 0.0
    cases = [("section 1's toy (B scaled 1 : 0.1 : 0.3)", magnitude_toy()),
             ("three updates of equal scale", magnitude_toy((1.0, 1.0, 1.0), seed=2)),
             ("the same update twice", [same, LoRAUpdate(same.A, same.B, same.scaling)]),
             ("two updates, one with an all-zero column", zero_col),
             ("two 20 × 20 updates, B scaled 1 : 0.2", magnitude_toy((1.0, 0.2), d=20, r=3, seed=6))]
    gots = []
    for _, ups in cases:
        passed = [LoRAUpdate(u.A.clone(), u.B.clone(), u.scaling) for u in ups]
        gots.append(_as_number(fn(passed), "the ratio"))
        _assert_unmodified({"updates": ups}, {"updates": passed})
    choice = _check_choice(prediction, MAGNITUDE_CHOICES, "is ‖ΔW*_DO‖ larger, smaller or the same as ‖ΔW*_TA‖?")
    for (label, ups), got in zip(cases, gots):
        want = do_norm_ratio(ups)
        if abs(got - want) <= 1e-5 * want:
            continue
        n = len(ups)
        if got != got:
            raise AssertionError(f"{label}: NaN: an all-zero column has α = 0, so W̃ = ΔW / α is 0/0 there; give it a zero "
                                 "direction (notebook 05, section 2)")
        if abs(got * want - 1) <= 1e-5:
            raise AssertionError(f"{label}: that is ‖TA‖ / ‖DO‖; the ratio asked for is ‖ΔW*_DO‖ / ‖ΔW*_TA‖")
        if abs(got - n * want) <= 1e-5 * n * want:
            raise AssertionError(f"{label}: α* is the MEAN of the α_i (5.2), not their sum")
        if abs(got - want ** 2) <= 1e-5 * want ** 2:
            raise AssertionError(f"{label}: that is a ratio of squared norms; take ‖·‖_F itself")
        dirs = sum(decouple(u.delta(), "in")[1] for u in ups)
        ta = sum(u.delta() for u in ups)
        if abs(got - float(dirs.norm() / ta.norm())) <= 1e-5 * got:
            raise AssertionError(f"{label}: that merges the directions without putting the magnitude α* back: ΔW* = α* ⊙ Σ W̃_i")
        if abs(got - mean_over_rms(ups)) <= 1e-9 * got:
            raise AssertionError(f"{label}: that is (5.7)'s estimate for orthogonal columns; compute the two merges themselves")
        raise AssertionError(f"{label}: expected {want:.6f}, got {got:.6f}; DO's merge is α* ⊙ Σ_i W̃_i with one "
                             "norm per input column (axis 'in'), task arithmetic Σ_i ΔW_i, both at λ = 1")
    ratio, estimate = gots[0], mean_over_rms(cases[0][1])
    measured = "smaller" if ratio < 0.95 else "larger" if ratio > 1.05 else "same"
    why = ("per input column j, task arithmetic gives Σ_i α_ij w_ij and DO gives ᾱ_j Σ_i w_ij (unit w_ij). For "
           "nearly orthogonal columns ‖Σ_i α_ij w_ij‖² ≈ Σ_i α_ij² and ‖ᾱ_j Σ_i w_ij‖² ≈ N ᾱ_j², so the ratio is "
           f"mean(α) / rms(α) ≤ 1 (5.7): {estimate:.3f} here. It is 1 only when every task has the same magnitude in "
           f"every column (three updates of equal scale give {gots[1]:.3f}: their column norms still differ a little) "
           f"or when the directions coincide ({gots[2]:.3f} for the same update twice). The decoupled merge is shorter, so λ, chosen on validation, must make up for it: "
           "DO tends to want a larger λ than task arithmetic.")
    return _report_prediction(choice, measured, f"‖DO‖ / ‖TA‖ = {ratio:.3f} on the toy", why)
