"""Tests of DO-Merging's orthogonalisation (lorakit.merge.ortho): the fast solver vs a frozen copy of the old one."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pytest
import torch

from lorakit.errors import LorakitError
from lorakit.merge.ortho import OrthoReport, orthogonalize_factors

# ----------------------------------------------------------------------------------------------
# The reference: orthogonalize_factors as of commit 9c693f4 (autograd on the full n-column
# problem, Adam per entry of the original coordinates), frozen here verbatim but for names.
# ----------------------------------------------------------------------------------------------

_REF_LR = {"adam": 0.05, "gd": 0.1}


def _reference_rows(mats, side):
    rows = [m.to(torch.float64) if side == "A" else m.to(torch.float64).T for m in mats]
    if any(x.ndim != 2 or x.shape[1] != rows[0].shape[1] for x in rows):
        raise LorakitError("the factors do not share their size")
    return rows


def _reference_loss(base: list[torch.Tensor], deltas: list[torch.Tensor], offdiag: torch.Tensor, gamma: float):
    rows = torch.cat([b + d for b, d in zip(base, deltas)], dim=0)
    gram = rows @ rows.T
    cross = ((gram * offdiag) ** 2).sum() / 2
    return cross + gamma * sum((d**2).sum() for d in deltas), cross


def reference_orthogonalize_factors(
    mats: Sequence[torch.Tensor],
    side: str = "A",
    gamma: float = 1.0,
    steps: int = 200,
    lr: float | None = None,
    optimizer: str = "adam",
    normalize_factors: bool = True,
) -> tuple[list[torch.Tensor], OrthoReport]:
    """The orthogonalisation as of commit 9c693f4 (autograd, full coordinates), frozen."""
    if optimizer not in _REF_LR:
        raise LorakitError(f"optimizer must be one of {sorted(_REF_LR)}, got {optimizer!r}")
    rows = _reference_rows(mats, side)
    norms = [float(torch.linalg.vector_norm(x)) for x in rows]
    scales = [n / math.sqrt(x.shape[0]) if normalize_factors and n > 0 else 1.0 for x, n in zip(rows, norms)]
    base = [x / s for x, s in zip(rows, scales)]
    sizes = [x.shape[0] for x in rows]
    owner = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(sizes)).to(rows[0].device)
    offdiag = (owner[:, None] != owner[None, :]).to(torch.float64)

    if lr is None:
        lr = _REF_LR[optimizer]
    if optimizer == "adam":  # per-entry steps relative to each task's RMS entry
        rates = [lr * math.sqrt(float((b**2).mean())) if b.numel() else 0.0 for b in base]
    else:
        rates = [lr] * len(base)

    def evaluate(deltas):
        deltas = [d.detach().requires_grad_(True) for d in deltas]
        loss, cross = _reference_loss(base, deltas, offdiag, gamma)
        grads = torch.autograd.grad(loss, deltas)
        return deltas, float(loss.detach()), float(cross.detach()), [g.detach() for g in grads]

    deltas, loss, cross, grads = evaluate([torch.zeros_like(b) for b in base])
    cross_before, history = cross, [loss]
    beta1, beta2, adam_eps = 0.9, 0.999, 1e-16
    m = v = None  # Adam moments; reset after a rejected step so the next move is a descent direction
    t, tried, rejected = 0, 0, 0
    shrink = 1.0  # halved after every rejected step
    for _ in range(steps):
        if math.sqrt(sum(float((g**2).sum()) for g in grads)) <= 1e-12 or shrink < 2.0**-20:
            break
        tried += 1
        if optimizer == "adam":
            if m is None:
                t, m, v = 0, [torch.zeros_like(g) for g in grads], [torch.zeros_like(g) for g in grads]
            t += 1
            m = [beta1 * mi + (1 - beta1) * g for mi, g in zip(m, grads)]
            v = [beta2 * vi + (1 - beta2) * g**2 for vi, g in zip(v, grads)]
            moves = [(mi / (1 - beta1**t)) / ((vi / (1 - beta2**t)).sqrt() + adam_eps) for mi, vi in zip(m, v)]
        else:
            moves = grads
        proposal = [d.detach() - shrink * rate * mv for d, rate, mv in zip(deltas, rates, moves)]
        cand, c_loss, c_cross, c_grads = evaluate(proposal)
        if c_loss <= loss:
            deltas, loss, cross, grads = cand, c_loss, c_cross, c_grads
            history.append(loss)
        else:
            shrink *= 0.5
            rejected += 1
            m = v = None
    moved = len(history) > 1

    if moved:
        new_rows = [x + s * d.detach() for x, s, d in zip(rows, scales, deltas)]
    else:
        new_rows = rows
    rel = tuple(
        float(torch.linalg.vector_norm(y - x)) / n if n > 0 else 0.0 for x, y, n in zip(rows, new_rows, norms)
    )
    new_mats = [y if side == "A" else y.T for y in new_rows]
    report = OrthoReport(
        side=side,
        cross_before=cross_before,
        cross_after=cross,
        relative_perturbation=rel,
        loss_history=tuple(history),
        steps=tried,
        rejected=rejected,
        lr=lr,
    )
    return new_mats, report



# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------

def factors(ranks, dim, side="A", shared=0.0, seed=0, scales=None):
    """Random LoRA-like factors: A_i ``r_i × dim`` (entries ~ 1/√dim), or B_i ``dim × r_i``.

    ``shared``: the first two tasks share a component of squared cosine ``shared`` (adapters
    started from the same seed); ``scales`` multiplies each task.
    """
    gen = torch.Generator().manual_seed(seed)
    common = torch.randn(max(ranks), dim, generator=gen, dtype=torch.float64)
    out = []
    for t, r in enumerate(ranks):
        a = torch.randn(r, dim, generator=gen, dtype=torch.float64)
        if shared and t < 2:
            a = math.sqrt(shared) * common[:r] + math.sqrt(1 - shared) * a
        a = a / math.sqrt(dim) * (scales[t] if scales else 1.0)
        out.append(a if side == "A" else 0.1 * a.T.contiguous())
    return out


def loss_of(mats, new, side, gamma, normalize=True):
    """L(δ) of docs/methods.md §3.3 recomputed from the returned factors, in the solver's units."""
    rows = [m.double() if side == "A" else m.double().T for m in mats]
    hats = [m.double() if side == "A" else m.double().T for m in new]
    scales = [float(x.norm()) / math.sqrt(x.shape[0]) if normalize and float(x.norm()) > 0 else 1.0 for x in rows]
    N = [x / s for x, s in zip(rows, scales)]
    H = [y / s for y, s in zip(hats, scales)]
    cross = sum(float(((H[i] @ H[j].T) ** 2).sum()) for i in range(len(H)) for j in range(i + 1, len(H)))
    return cross + gamma * sum(float(((h - x) ** 2).sum()) for h, x in zip(H, N))


CASES = {
    "independent": dict(ranks=[8, 8, 8], dim=384),
    "shared component": dict(ranks=[8, 8, 8, 8], dim=192, shared=0.5, seed=1),
    "strongly shared": dict(ranks=[4, 4, 4], dim=96, shared=0.9, seed=2),
    "different ranks": dict(ranks=[2, 4, 8, 3], dim=96, seed=3),
    "side B": dict(ranks=[8, 8, 8], dim=256, side="B", seed=4),
    "side B, ranks, shared": dict(ranks=[4, 8, 6], dim=128, side="B", shared=0.5, seed=5),
    "scales spread": dict(ranks=[4, 4, 4], dim=96, seed=6, scales=[1000.0, 1.0, 1e-3]),
    "n below K": dict(ranks=[4, 4, 4, 4], dim=12, seed=7),
}
ORTHO_OPTIONS = [
    dict(optimizer="adam"),
    dict(optimizer="adam", normalize_factors=False),
    dict(optimizer="gd"),
    dict(optimizer="gd", normalize_factors=False),
]


def case(name):
    spec = CASES[name]
    return factors(**spec), spec.get("side", "A")


# ----------------------------------------------------------------------------------------------
# New against the frozen reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", ORTHO_OPTIONS, ids=lambda o: "-".join(map(str, o.values())))
@pytest.mark.parametrize("name", list(CASES))
def test_final_loss_matches_the_reference(name, options):
    """GD is the same algorithm (row-space coordinates are exact); default Adam ends no higher, at the optimum."""
    mats, side = case(name)
    old_mats, old = reference_orthogonalize_factors(mats, side, **options)
    new_mats, new = orthogonalize_factors(mats, side, **options)
    lo, ln = old.loss_history[-1], new.loss_history[-1]
    assert ln == pytest.approx(loss_of(mats, new_mats, side, 1.0, options.get("normalize_factors", True)), rel=1e-10)
    assert new.cross_before == pytest.approx(old.cross_before, rel=1e-12)
    assert new.loss_history[0] == pytest.approx(old.loss_history[0], rel=1e-12)
    if options["optimizer"] == "gd":  # same iterates up to rounding
        k = min(len(old.loss_history), len(new.loss_history), 60)
        np.testing.assert_allclose(new.loss_history[:k], old.loss_history[:k], rtol=1e-12)
        assert ln == pytest.approx(lo, rel=1e-12)
        for a, b in zip(old_mats, new_mats):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-7 * float(a.abs().max()))
        np.testing.assert_allclose(new.relative_perturbation, old.relative_perturbation, rtol=1e-6)
        return
    assert ln <= lo * (1 + 1e-10)  # Adam per row never ends above Adam per entry
    if not (name == "scales spread" and options.get("normalize_factors") is False):  # old is far from it there
        _, best = orthogonalize_factors(mats, side, **{**options, "optimizer": "gd", "lr": 0.1, "steps": 3000})
        assert ln <= best.loss_history[-1] * (1 + 1e-9)  # at the 3000-step optimum
        assert lo <= best.loss_history[-1] * (1 + 1e-5)  # the old 200 Adam steps were (nearly) there too
        np.testing.assert_allclose(new.relative_perturbation, best.relative_perturbation, rtol=1e-4)
        np.testing.assert_allclose(old.relative_perturbation, best.relative_perturbation, rtol=3e-3)


@pytest.mark.parametrize("gamma", [1.0, 0.25])
@pytest.mark.parametrize("name", ["shared component", "side B, ranks, shared", "n below K"])
def test_full_coordinate_adam_is_the_reference(name, gamma):
    """``row_space=False`` keeps the old algorithm (Adam per entry): same history and factors up to rounding."""
    mats, side = case(name)
    for norm in (True, False):
        old_mats, old = reference_orthogonalize_factors(mats, side, gamma=gamma, normalize_factors=norm)
        new_mats, new = orthogonalize_factors(mats, side, gamma=gamma, normalize_factors=norm, row_space=False)
        assert (new.steps, new.rejected, len(new.loss_history)) == (old.steps, old.rejected, len(old.loss_history))
        np.testing.assert_allclose(new.loss_history, old.loss_history, rtol=1e-10)
        for a, b in zip(old_mats, new_mats):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-10 * float(a.abs().max()))


@pytest.mark.parametrize("name", ["independent", "different ranks", "side B"])
def test_gd_in_the_row_space_equals_gd_in_full_coordinates(name):
    mats, side = case(name)
    reduced = orthogonalize_factors(mats, side, optimizer="gd", steps=40)
    full = orthogonalize_factors(mats, side, optimizer="gd", steps=40, row_space=False)
    np.testing.assert_allclose(reduced[1].loss_history, full[1].loss_history, rtol=1e-13)
    for a, b in zip(reduced[0], full[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12 * float(b.abs().max()))


def test_adam_per_row_does_not_depend_on_the_basis():
    """Rotating the ``n`` coordinates (here: reversing and mixing them) leaves the per-row Adam run unchanged."""
    mats, side = case("shared component")
    q, _ = torch.linalg.qr(torch.randn(192, 192, generator=torch.Generator().manual_seed(9), dtype=torch.float64))
    rotated = [m @ q for m in mats]
    a = orthogonalize_factors(mats, side)
    b = orthogonalize_factors(rotated, side)
    np.testing.assert_allclose(a[1].loss_history, b[1].loss_history, rtol=1e-11)
    for x, y in zip(a[0], b[0]):
        torch.testing.assert_close(x @ q, y, rtol=0, atol=1e-11)
    # so iterating on the K × K row-space coordinates is the same run as on the n columns
    from lorakit.merge.ortho import _descend, _prepare, _step_rates

    full = _prepare(mats, side, True, row_space=False)
    assert full.basis is None and full.coords.shape == (32, 192)
    assert _prepare(mats, side, True, row_space=True).coords.shape == (32, 32)
    history = _descend(full, 1.0, 200, _step_rates(full, 0.05, "adam", True), "adam", True)[1]
    np.testing.assert_allclose(history, a[1].loss_history, rtol=1e-11)


# ----------------------------------------------------------------------------------------------
# The closed form and the properties kept
# ----------------------------------------------------------------------------------------------


def test_closed_form_gradient_equals_autograd():
    from lorakit.merge.ortho import _loss_and_grad

    gen = torch.Generator().manual_seed(3)
    sizes = [2, 3, 4]
    owner = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    offdiag = (owner[:, None] != owner[None, :]).to(torch.float64)
    base = torch.randn(9, 20, generator=gen, dtype=torch.float64)
    delta = (0.1 * torch.randn(9, 20, generator=gen, dtype=torch.float64)).requires_grad_(True)
    loss, cross = _reference_loss(list(torch.split(base, sizes)), list(torch.split(delta, sizes)), offdiag, 0.7)
    (auto,) = torch.autograd.grad(loss, delta)
    mine_loss, mine_cross, mine = _loss_and_grad(base, delta.detach(), offdiag, 0.7)
    assert mine_loss == pytest.approx(float(loss.detach()), rel=1e-13)
    assert mine_cross == pytest.approx(float(cross.detach()), rel=1e-13)
    torch.testing.assert_close(mine, auto, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("options", [{}, {"optimizer": "gd"}, {"row_space": False}, {"optimizer": "gd", "lr": 50.0}])
def test_loss_curve_never_rises(options):
    mats, side = case("side B, ranks, shared")
    _, report = orthogonalize_factors(mats, side, steps=150, **options)
    history = np.array(report.loss_history)
    assert len(history) > 10 and np.all(np.diff(history) <= 0)
    assert report.cross_after < 0.5 * report.cross_before and report.steps >= len(history) - 1
    assert report.steps - report.rejected == len(history) - 1
    if options.get("lr") == 50.0:
        assert report.rejected > 0


def test_orthogonal_factors_and_a_single_task_come_back_bit_identical():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(64, 12, generator=gen, dtype=torch.float64))
    carved = [q[:, i * 4 : (i + 1) * 4].T.contiguous() for i in range(3)]
    for row_space in (True, False):
        new, rep = orthogonalize_factors(carved, "A", row_space=row_space)
        assert all(torch.equal(x, y) for x, y in zip(carved, new)) and rep.steps == 0
        assert rep.relative_perturbation == (0.0, 0.0, 0.0) and rep.loss_history == (rep.loss_history[0],)
    single = [torch.randn(40, 4, generator=gen, dtype=torch.float64)]
    new, rep = orthogonalize_factors(single, "B")
    assert torch.equal(new[0], single[0]) and rep.steps == 0 and rep.cross_before == 0.0


def test_deterministic_and_reported_fields():
    mats, side = case("different ranks")
    a = orthogonalize_factors(mats, side)
    b = orthogonalize_factors(mats, side)
    assert all(torch.equal(x, y) for x, y in zip(a[0], b[0])) and a[1] == b[1]
    rep = a[1]
    assert isinstance(rep, OrthoReport) and rep.side == "A" and rep.lr == 0.05
    assert [tuple(m.shape) for m in a[0]] == [tuple(m.shape) for m in mats] and a[0][0].dtype == torch.float64
    scaled = [y / (float(x.norm()) / math.sqrt(x.shape[0])) for x, y in zip(mats, a[0])]  # in the loss's units
    cross = sum(float((x @ y.T).pow(2).sum()) for i, x in enumerate(scaled) for y in scaled[i + 1 :])
    assert rep.cross_after == pytest.approx(cross, rel=1e-9)
    assert rep.loss_history[-1] == pytest.approx(loss_of(mats, a[0], side, 1.0), rel=1e-10)
    with pytest.raises(LorakitError, match="optimizer"):
        orthogonalize_factors(mats, side, optimizer="sgd")


def test_zero_task_stays_zero():
    mats, side = case("side B")
    mats[1] = torch.zeros_like(mats[1])
    for options in ({}, {"optimizer": "gd"}, {"row_space": False}):
        new, rep = orthogonalize_factors(mats, side, steps=40, **options)
        assert torch.equal(new[1], mats[1]) and rep.relative_perturbation[1] == 0.0
        assert rep.relative_perturbation[0] > 0 and all(torch.isfinite(x).all() for x in new)
