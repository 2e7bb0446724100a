"""Tests of lorakit.merge: registry, peft parity, KnOTS vs brute force, DO-Merging (docs/methods.md §3.8 D1–D9)."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
from peft.utils import merge_utils as pm

from lorakit.lora.measures import direction_share
from lorakit.errors import LorakitError
from lorakit.lora.update import LoRAUpdate
from lorakit.merge import (
    METHODS,
    MergeMethod,
    decouple,
    decouple_update,
    disjoint_mean,
    do_merge_with_report,
    elect_sign,
    factor_cross_terms,
    knots_basis,
    layer_seed,
    merge_adapters,
    merge_layer,
    orthogonalize_factors,
    recompose,
    trim_topk,
)


def make_updates(n=3, r=4, d_out=20, d_in=16, seed=0, scales=None, scaling=2.0, dtype=torch.float32):
    """N random LoRA updates; ``scales`` multiplies each task's B (magnitude differences)."""
    gen = torch.Generator().manual_seed(seed)
    scales = scales or [1.0] * n
    return [
        LoRAUpdate(
            torch.randn(r, d_in, generator=gen, dtype=dtype) / r,
            torch.randn(d_out, r, generator=gen, dtype=dtype) * s,
            scaling,
        )
        for s in scales
    ]


def orthonormal_blocks(n, r, dim, seed=0):
    """N blocks (r × dim) carved from one matrix with orthonormal rows (float64)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, n * r, generator=gen, dtype=torch.float64))
    return [q[:, i * r : (i + 1) * r].T.contiguous() for i in range(n)]


def dense(updates):
    return [u.delta(torch.float32) for u in updates]


# ----------------------------------------------------------------------------------------------
# Registry and parameter errors
# ----------------------------------------------------------------------------------------------


def test_registry_entries_are_complete_and_frozen():
    assert set(METHODS) == {"task_arithmetic", "ties", "dare", "knots", "do", "ta_normeq"}
    for name, spec in METHODS.items():
        assert isinstance(spec, MergeMethod) and spec.name == name
        assert spec.url.startswith("https://arxiv.org/abs/") and spec.paper and spec.description
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.name = "x"
        with pytest.raises(TypeError):
            spec.params["lam"] = 3.0
    assert METHODS["knots"].url == "https://arxiv.org/abs/2410.19735"


def test_shared_parameter_names_have_one_default():
    seen = {}
    for spec in METHODS.values():
        for name in ("lam", "density", "drop_rate", "seed", "combine"):
            if name in spec.params:
                assert seen.setdefault(name, spec.params[name]) == spec.params[name], (name, spec.name)


def test_unknown_method_lists_known_methods():
    with pytest.raises(LorakitError) as err:
        merge_layer(make_updates(), "fisher")
    msg = str(err.value)
    assert "fisher" in msg and all(name in msg for name in METHODS) and "\n" not in msg


def test_unknown_param_lists_the_methods_params():
    with pytest.raises(LorakitError) as err:
        merge_layer(make_updates(), "ties", drop_rate=0.3)
    msg = str(err.value)
    assert "drop_rate" in msg and "density" in msg and "lam" in msg


@pytest.mark.parametrize(
    "method, params, name",
    [
        ("ties", {"density": 0.0}, "density"),
        ("ties", {"density": 1.5}, "density"),
        ("ties", {"density": float("nan")}, "density"),
        ("dare", {"drop_rate": 1.0}, "drop_rate"),
        ("dare", {"drop_rate": -0.1}, "drop_rate"),
        ("task_arithmetic", {"lam": float("inf")}, "lam"),
        ("task_arithmetic", {"lam": float("nan")}, "lam"),
        ("task_arithmetic", {"lam": "1"}, "lam"),
        ("dare", {"seed": 1.5}, "seed"),
        ("dare", {"combine": "mean"}, "combine"),
        ("do", {"steps": -1}, "steps"),
        ("do", {"steps": 2.5}, "steps"),
        ("do", {"gamma": -1.0}, "gamma"),
        ("do", {"lr": 0.0}, "lr"),
        ("do", {"optimizer": "sgd"}, "optimizer"),
        ("do", {"magnitude_axis": "rows"}, "magnitude_axis"),
        ("do", {"magnitude_merge": "max"}, "magnitude_merge"),
        ("do", {"base": "do"}, "base"),
        ("knots", {"base": "knots"}, "base"),
        ("knots", {"base": "do"}, "base"),
    ],
)
def test_out_of_range_params_raise_one_line_errors(method, params, name):
    with pytest.raises(LorakitError) as err:
        merge_layer(make_updates(), method, **params)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_base_param_unused_by_the_base_is_an_error():
    ups = make_updates()
    with pytest.raises(LorakitError, match="density"):
        merge_layer(ups, "do", density=0.3)  # default base task_arithmetic has no density
    with pytest.raises(LorakitError, match="drop_rate"):
        merge_layer(ups, "knots", drop_rate=0.3)  # knots' default base is ties
    with pytest.raises(LorakitError, match="drop_rate"):
        merge_layer(ups, "do", base="knots", drop_rate=0.3, steps=0)  # knots → ties takes no drop_rate
    with pytest.raises(LorakitError, match="magnitude_merge"):
        merge_layer(ups, "do", base="knots", magnitude_merge="base", steps=0)
    assert torch.isfinite(merge_layer(ups, "do", base="ties", density=0.3, steps=2)).all()


def test_layer_errors():
    with pytest.raises(LorakitError, match="at least one"):
        merge_layer([], "task_arithmetic")
    ups = make_updates() + make_updates(n=1, d_out=7)
    with pytest.raises(LorakitError, match="shape"):
        merge_layer(ups, "task_arithmetic")


# ----------------------------------------------------------------------------------------------
# Parity with peft.utils.merge_utils on the same dense tensors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("density", [0.05, 0.25, 0.5, 0.9])
def test_trim_matches_peft_prune_and_keeps_exact_count(density):
    tau = torch.randn(30, 17, generator=torch.Generator().manual_seed(1))
    ours = trim_topk(tau, density)
    assert torch.equal(ours, pm.prune(tau, density, method="magnitude"))
    assert int((ours != 0).sum()) == int(density * tau.numel())
    kept = ours[ours != 0].abs()
    assert kept.min() >= tau.abs()[ours == 0].max()  # the kept ones are the largest


def test_trim_density_one_keeps_everything_like_peft():
    tau = torch.randn(5, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(trim_topk(tau, 1.0), pm.prune(tau, 1.0, method="magnitude"))
    assert torch.equal(trim_topk(tau, 1.0), tau)


def test_elect_sign_and_disjoint_mean_match_peft_with_zeros_and_ties():
    stack = torch.tensor([[1.0, -2.0, 0.0, 3.0, 0.0], [-1.0, 1.0, 0.0, -4.0, 2.0], [0.0, 0.5, 0.0, 0.5, -2.0]])
    mask = elect_sign(stack)
    assert torch.equal(mask, pm.calculate_majority_sign_mask(stack, method="total"))
    # column 0 sums to 0 -> elected +1; zeros never agree
    assert mask[:, 0].tolist() == [True, False, False] and not mask[:, 2].any()
    assert torch.equal(disjoint_mean(stack, mask), pm.disjoint_merge(stack, mask))
    # elected signs +, -, +, -, + (sums 0, -0.5, 0, -0.5, 0); mean over the agreeing entries
    assert disjoint_mean(stack, mask).tolist() == [1.0, -2.0, 0.0, -4.0, 2.0]


def test_task_arithmetic_matches_peft():
    ups = make_updates(n=4)
    ours = merge_layer(ups, "task_arithmetic", lam=0.3)
    ref = pm.task_arithmetic(dense(ups), torch.full((4,), 0.3))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("density, lam", [(0.2, 1.0), (0.5, 0.7), (0.9, 1.3)])
def test_ties_matches_peft(density, lam):
    ups = make_updates(n=4, seed=3)
    ours = merge_layer(ups, "ties", lam=lam, density=density)
    ref = pm.ties(dense(ups), torch.full((4,), lam), density)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_dare_drop_draws_peft_mask_from_the_same_generator_state():
    tau = torch.randn(40, 30)
    torch.manual_seed(11)
    ref = pm.prune(tau, 0.7, method="random", rescale=True)
    from lorakit.merge import dare_drop

    ours = dare_drop(tau, 0.3, torch.Generator().manual_seed(11))
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
    assert torch.equal(ours != 0, ref != 0)


@pytest.mark.parametrize("combine, peft_fn", [("linear", pm.dare_linear), ("ties", pm.dare_ties)])
def test_dare_matches_peft_with_the_same_seed(combine, peft_fn):
    ups = make_updates(n=3, seed=5)
    ours = merge_layer(ups, "dare", lam=0.8, drop_rate=0.4, seed=7, combine=combine)
    torch.manual_seed(7)
    ref = peft_fn(dense(ups), torch.full((3,), 0.8), 1.0 - 0.4)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_dare_mask_statistics_and_rescaling():
    ups = make_updates(n=1, d_out=100, d_in=100, seed=2)
    p = 0.3
    out = merge_layer(ups, "dare", drop_rate=p, seed=1)
    full = ups[0].delta()
    dropped = float((out == 0).float().mean())
    assert abs(dropped - p) < 4 * math.sqrt(p * (1 - p) / full.numel())
    kept = out != 0
    torch.testing.assert_close(out[kept], full[kept] / (1 - p), rtol=1e-6, atol=0)
    assert not torch.equal(out, merge_layer(ups, "dare", drop_rate=p, seed=2))


# ----------------------------------------------------------------------------------------------
# KnOTS
# ----------------------------------------------------------------------------------------------


def numpy_knots_ties(updates, lam, density, sigma_on_v=True, rtol=1e-10):
    """Brute force: dense [ΔW_1 … ΔW_N], one numpy SVD, numpy TIES on the ΣVᵀ blocks."""
    deltas = [u.scaling * (u.B.double().numpy() @ u.A.double().numpy()) for u in updates]
    d_in = deltas[0].shape[1]
    U, S, Vt = np.linalg.svd(np.concatenate(deltas, axis=1), full_matrices=False)
    keep = S > rtol * S[0]
    U, S, Vt = U[:, keep], S[keep], Vt[keep]
    blocks = [Vt[:, i * d_in : (i + 1) * d_in] for i in range(len(deltas))]
    if sigma_on_v:
        blocks = [S[:, None] * b for b in blocks]
    trimmed = []
    for b in blocks:
        k = int(density * b.size)
        flat = b.reshape(-1).copy()
        if density < 1:
            flat[np.argsort(-np.abs(flat), kind="stable")[k:]] = 0.0
        trimmed.append(flat.reshape(b.shape))
    stack = np.stack(trimmed)
    sign = np.where(stack.sum(axis=0) >= 0, 1.0, -1.0)
    agree = np.sign(stack) == sign
    merged = lam * (stack * agree).sum(axis=0) / np.maximum(agree.sum(axis=0), 1)
    return U @ merged if sigma_on_v else (U * S) @ merged


@pytest.mark.parametrize("sigma_on_v", [True, False])
@pytest.mark.parametrize("shape", [(20, 16), (9, 30)])
def test_knots_matches_numpy_brute_force(sigma_on_v, shape):
    ups = make_updates(n=3, r=3, d_out=shape[0], d_in=shape[1], seed=4)
    ours = merge_layer(ups, "knots", lam=0.9, density=0.3, sigma_on_v=sigma_on_v)
    ref = numpy_knots_ties(ups, 0.9, 0.3, sigma_on_v)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())


def test_knots_basis_reconstructs_every_task():
    ups = make_updates(n=3, r=4, d_out=12, d_in=10, scaling=3.0)
    basis = knots_basis(ups)
    assert basis.U.shape == (12, 12) and basis.Vt.shape == (3, 12, 10)  # rank min(12, 3·4)
    torch.testing.assert_close(basis.U.T @ basis.U, torch.eye(12, dtype=torch.float64))
    vt = torch.cat(list(basis.Vt), dim=1)
    torch.testing.assert_close(vt @ vt.T, torch.eye(12, dtype=torch.float64))
    for u, v in zip(ups, basis.Vt):
        torch.testing.assert_close(basis.U @ (basis.S[:, None] * v), u.delta(torch.float64))


def test_knots_drops_numerically_zero_singular_values():
    u = make_updates(n=1)[0]
    basis = knots_basis([u, u])  # two identical tasks: rank r, not 2r
    assert basis.S.numel() == u.rank
    zero = LoRAUpdate(torch.randn(4, 16), torch.zeros(20, 4), 2.0)  # peft's B = 0 init
    out = merge_layer([zero, zero], "knots")
    assert torch.equal(out, torch.zeros(20, 16))


def test_knots_with_task_arithmetic_base_is_task_arithmetic():
    ups = make_updates(n=4, seed=9)
    torch.testing.assert_close(
        merge_layer(ups, "knots", base="task_arithmetic", lam=0.4),
        merge_layer(ups, "task_arithmetic", lam=0.4),
        rtol=1e-5,
        atol=1e-6,
    )


# ----------------------------------------------------------------------------------------------
# Invariants shared by all methods
# ----------------------------------------------------------------------------------------------

# Parameters under which one adapter with λ = 1 must come back as its own ΔW.
IDENTITY_PARAMS = {
    "task_arithmetic": {},
    "ties": {"density": 1.0},  # no trimming; one task always agrees with itself
    "dare": {"drop_rate": 0.0},  # nothing dropped, rescale 1
    "knots": {"density": 1.0},  # U Σ V₁ᵀ = ΔW₁ (float64 SVD, so equal up to rounding)
    "ta_normeq": {},
    "do": {},  # decouple/recompose is the identity, orthogonalisation skips one task (D3)
}


@pytest.mark.parametrize("method", list(METHODS))
def test_one_adapter_with_lam_one_returns_its_delta(method):
    (u,) = make_updates(n=1, scaling=4.0)
    out = merge_layer([u], method, lam=1.0, **IDENTITY_PARAMS[method])
    assert out.dtype == torch.float32 and out.shape == u.shape
    if method in ("task_arithmetic", "ties", "dare"):
        assert torch.equal(out, u.delta())  # bit for bit
    else:
        torch.testing.assert_close(out, u.delta(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", list(METHODS))
def test_methods_are_deterministic(method):
    params = {"steps": 20} if method == "do" else {}
    a = merge_layer(make_updates(seed=8), method, **params)
    b = merge_layer(make_updates(seed=8), method, **params)
    assert torch.equal(a, b) and torch.isfinite(a).all()


def test_merge_adapters_matches_merge_layer_and_seeds_layers_apart():
    gen_names = ["model.layers.0.q_proj", "model.layers.1.q_proj"]
    adapters = [
        {name: u for name, u in zip(gen_names, make_updates(n=2, seed=10 * t + 1))} for t in range(3)
    ]
    merged = merge_adapters(adapters, "dare", seed=3, progress=True)
    assert list(merged) == gen_names
    for name in gen_names:
        layer = [ad[name] for ad in adapters]
        assert torch.equal(merged[name], merge_layer(layer, "dare", seed=layer_seed(3, name)))
    assert layer_seed(3, gen_names[0]) != layer_seed(3, gen_names[1])
    ta = merge_adapters(adapters, "task_arithmetic", lam=0.5)
    assert torch.equal(ta[gen_names[0]], merge_layer([ad[gen_names[0]] for ad in adapters], "task_arithmetic", lam=0.5))


def test_merge_adapters_checks_before_work():
    a = {"m": make_updates(n=1)[0]}
    b = {"n": make_updates(n=1)[0]}
    with pytest.raises(LorakitError, match="different modules"):
        merge_adapters([a, b], "task_arithmetic")
    with pytest.raises(LorakitError, match="density"):
        merge_adapters([a, a], "ties", density=2.0)


# ----------------------------------------------------------------------------------------------
# DO-Merging: decoupling (D1, D2, D3)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis, length, unit_dim", [("in", 16, 0), ("out", 20, 1)])
def test_D1_decouple_axis_shapes_unit_directions_and_exact_recompose(axis, length, unit_dim):
    delta = make_updates(n=1, dtype=torch.float64)[0].delta()  # 20 × 16
    magnitude, direction = decouple(delta, axis)
    assert magnitude.shape == (length,)
    norms = torch.linalg.vector_norm(direction, dim=unit_dim)
    torch.testing.assert_close(norms, torch.ones(length, dtype=torch.float64), rtol=1e-14, atol=0)
    torch.testing.assert_close(recompose(magnitude, direction, axis), delta, rtol=1e-15, atol=1e-17)
    # magnitudes are the norms of ΔW itself, one per input column ("in") or output row ("out")
    lines = [delta[:, j] for j in range(16)] if axis == "in" else [delta[i, :] for i in range(20)]
    torch.testing.assert_close(magnitude, torch.stack([v.norm() for v in lines]))


@pytest.mark.parametrize("axis", ["in", "out"])
def test_D2_zero_columns_give_zeros_not_nan(axis):
    delta = make_updates(n=1, dtype=torch.float64)[0].delta()
    if axis == "in":
        delta[:, 3] = 0.0
    else:
        delta[5, :] = 0.0
    magnitude, direction = decouple(delta, axis)
    assert torch.isfinite(direction).all() and torch.isfinite(magnitude).all()
    zero = direction[:, 3] if axis == "in" else direction[5, :]
    assert torch.equal(zero, torch.zeros_like(zero))
    torch.testing.assert_close(recompose(magnitude, direction, axis), delta, rtol=1e-15, atol=0)
    # through DO-Merging: a column that is zero in every task stays zero
    ups = make_updates(n=3)
    for u in ups:
        u.A[:, 3] = 0.0
    out = merge_layer(ups, "do", magnitude_axis=axis, steps=10)
    assert torch.isfinite(out).all()
    if axis == "in":
        assert torch.equal(out[:, 3], torch.zeros(20))


@pytest.mark.parametrize("axis", ["in", "out"])
def test_decouple_update_equals_dense_decouple(axis):
    u = make_updates(n=1, scaling=3.0)[0]
    magnitude, direction = decouple_update(u, axis)
    ref_m, ref_d = decouple(u.delta(torch.float64), axis)
    torch.testing.assert_close(magnitude, ref_m, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(direction.delta(), ref_d, rtol=1e-12, atol=1e-14)


def test_D3_single_task_returns_scaled_update_for_every_switch():
    (u,) = make_updates(n=1, scaling=4.0)
    for options in ({}, {"orthogonalize": False}, {"decouple": False}, {"magnitude_axis": "out"}):
        out = merge_layer([u], "do", **options)
        torch.testing.assert_close(out, u.delta(), rtol=1e-6, atol=1e-7)
        assert not torch.allclose(out, u.B @ u.A, rtol=1e-2)  # the scaling s = 4 is not lost


# ----------------------------------------------------------------------------------------------
# DO-Merging: orthogonalisation (D4, D5, D6, D8)
# ----------------------------------------------------------------------------------------------


def test_D5_cross_terms_are_r_by_r_and_zero_for_carved_blocks():
    gen = torch.Generator().manual_seed(0)
    A = [torch.randn(3, 11, generator=gen), torch.randn(5, 11, generator=gen)]
    B = [torch.randn(13, 3, generator=gen), torch.randn(13, 5, generator=gen)]
    assert factor_cross_terms(A, "A")[(0, 1)].shape == (3, 5)
    assert factor_cross_terms(B, "B")[(0, 1)].shape == (3, 5)
    carved = orthonormal_blocks(3, 4, 30)
    for cross in factor_cross_terms(carved, "A").values():
        assert cross.shape == (4, 4) and cross.abs().max() < 1e-14
    _, report = orthogonalize_factors(carved, "A")
    assert report.cross_before < 1e-28


@pytest.mark.parametrize("optimizer", ["adam", "gd"])
def test_D4_loss_never_increases_and_cross_term_drops(optimizer):
    A = [u.A for u in make_updates(n=3, r=4, d_in=48, seed=1)]
    new, report = orthogonalize_factors(A, "A", optimizer=optimizer, steps=150)
    history = np.array(report.loss_history)
    assert len(history) > 10 and np.all(np.diff(history) <= 0)
    assert report.cross_after < 0.3 * report.cross_before
    for a, b, rel in zip(A, new, report.relative_perturbation):
        assert rel == pytest.approx(float((b - a.double()).norm() / a.double().norm()), rel=1e-12)
        assert 0.01 < rel < 0.2
    after = sum(float((c**2).sum()) for c in factor_cross_terms(new, "A").values())
    before = sum(float((c**2).sum()) for c in factor_cross_terms(A, "A").values())
    assert after < 0.3 * before  # the raw cross term drops too


def test_D4_step_rejection_keeps_loss_monotone_with_a_huge_step():
    B = [u.scaling * u.B for u in make_updates(n=3, r=4, d_out=40, seed=2)]
    _, report = orthogonalize_factors(B, "B", optimizer="gd", lr=50.0, steps=40)
    assert report.rejected > 0
    assert np.all(np.diff(report.loss_history) <= 0) and report.loss_history[-1] < report.loss_history[0]


def test_D4_gamma_trades_perturbation_for_orthogonality():
    A = [u.A for u in make_updates(n=3, r=4, d_in=48, seed=3)]
    _, loose = orthogonalize_factors(A, "A", gamma=0.25, steps=150)
    _, tight = orthogonalize_factors(A, "A", gamma=4.0, steps=150)
    assert max(tight.relative_perturbation) < min(loose.relative_perturbation)
    assert loose.cross_after < tight.cross_after


def test_D4_already_orthogonal_factors_are_left_unchanged():
    A = orthonormal_blocks(3, 4, 24, seed=1)
    B = [b.T.contiguous() * 0.01 for b in orthonormal_blocks(3, 4, 20, seed=2)]
    new_A, rep_A = orthogonalize_factors(A, "A")
    new_B, rep_B = orthogonalize_factors(B, "B")
    assert all(torch.equal(x, y) for x, y in zip(A, new_A)) and all(torch.equal(x, y) for x, y in zip(B, new_B))
    assert rep_A.steps == 0 and rep_A.relative_perturbation == (0.0, 0.0, 0.0)
    ups = [LoRAUpdate(a, b, 2.0) for a, b in zip(A, B)]
    assert torch.equal(merge_layer(ups, "do"), merge_layer(ups, "do", orthogonalize=False))


def test_orthogonalisation_is_scale_aware():
    A = [u.A.double() for u in make_updates(n=3, r=4, d_in=40, seed=4)]
    new, rep = orthogonalize_factors(A, "A", steps=60)
    # one task 1000× larger, all tasks 1e-3×: same relative result
    scaled = [A[0] * 1000.0, A[1] * 1e-3, A[2] * 1e-3]
    new_s, rep_s = orthogonalize_factors(scaled, "A", steps=60)
    np.testing.assert_allclose(rep_s.relative_perturbation, rep.relative_perturbation, rtol=1e-6)
    torch.testing.assert_close(new_s[0] / 1000.0, new[0], rtol=1e-6, atol=1e-12)
    # the raw loss of docs/methods.md §3.3 is not scale-free: the large task barely moves there
    _, raw = orthogonalize_factors(scaled, "A", steps=60, normalize_factors=False)
    assert raw.relative_perturbation != pytest.approx(rep.relative_perturbation, rel=1e-2)


def test_orthogonalisation_edge_cases():
    B = [u.B.double() for u in make_updates(n=3, r=4, d_out=30, seed=5)]
    B[1] = torch.zeros_like(B[1])  # an untrained task (peft's B = 0)
    new, rep = orthogonalize_factors(B, "B", steps=30)
    assert torch.equal(new[1], B[1]) and all(torch.isfinite(b).all() for b in new)
    assert rep.relative_perturbation[1] == 0.0 and rep.relative_perturbation[0] > 0
    same, rep0 = orthogonalize_factors(B, "B", steps=0)
    assert all(torch.equal(x, y) for x, y in zip(B, same)) and rep0.loss_history == (rep0.loss_history[0],)
    with pytest.raises(LorakitError, match="side"):
        orthogonalize_factors(B, "C")


def test_D8_orthogonalisation_and_do_are_bit_identical_across_runs():
    ups = make_updates(n=3, r=4, d_out=24, d_in=24, seed=6)
    a = orthogonalize_factors([u.A for u in ups], "A", steps=50)
    b = orthogonalize_factors([u.A for u in ups], "A", steps=50)
    assert all(torch.equal(x, y) for x, y in zip(a[0], b[0])) and a[1] == b[1]
    assert torch.equal(merge_layer(ups, "do", steps=50), merge_layer(ups, "do", steps=50))


def test_D6_orthogonality_that_survives_normalisation_depends_on_the_axis():
    gen = torch.Generator().manual_seed(7)
    n, r, d = 3, 3, 18
    A_orth = orthonormal_blocks(n, r, d, seed=3)
    B_orth = [b.T.contiguous() for b in orthonormal_blocks(n, r, d, seed=4)]
    A_rand = [torch.randn(r, d, generator=gen, dtype=torch.float64) for _ in range(n)]
    B_rand = [torch.randn(d, r, generator=gen, dtype=torch.float64) for _ in range(n)]
    # axis "in": B-orthogonality gives W̃_iᵀ W̃_j = 0
    dirs = [decouple(b @ a, "in")[1] for a, b in zip(A_rand, B_orth)]
    assert max(float((dirs[i].T @ dirs[j]).abs().max()) for i in range(n) for j in range(i + 1, n)) < 1e-14
    # axis "out": A-orthogonality gives W̃_i W̃_jᵀ = 0
    dirs = [decouple(b @ a, "out")[1] for a, b in zip(A_orth, B_rand)]
    assert max(float((dirs[i] @ dirs[j].T).abs().max()) for i in range(n) for j in range(i + 1, n)) < 1e-14
    # after gradient-descent B-orthogonalisation the axis-"in" overlap drops with the B cross term
    def overlap(Bs):
        dirs = [decouple(b @ a, "in")[1] for a, b in zip(A_rand, Bs)]
        return sum(float((dirs[i].T @ dirs[j]).norm() ** 2) for i in range(n) for j in range(i + 1, n))

    new_B, rep = orthogonalize_factors(B_rand, "B", gamma=0.05, steps=300)
    assert rep.cross_after < 0.1 * rep.cross_before
    assert overlap(new_B) < 0.2 * overlap(B_rand)


# ----------------------------------------------------------------------------------------------
# DO-Merging: magnitude dominance (D7), ablation plumbing (D9), options
# ----------------------------------------------------------------------------------------------


def test_D7_decoupling_fixes_magnitude_dominance():
    ups = make_updates(n=3, r=4, d_out=64, d_in=64, seed=1, scales=[1.0, 0.1, 0.3])
    deltas = [u.delta() for u in ups]
    ta = direction_share(merge_layer(ups, "task_arithmetic"), deltas)
    assert ta[0] > 0.9 and ta[1] < 0.2
    for options in ({}, {"orthogonalize": False}):
        share = direction_share(merge_layer(ups, "do", **options), deltas)
        assert (share > 0.45).all(), (options, share)
    # without the decoupling, orthogonalisation alone leaves the dominance in place
    assert direction_share(merge_layer(ups, "do", decouple=False), deltas)[1] < 0.2


@pytest.mark.parametrize(
    "base, params",
    [
        ("task_arithmetic", {"lam": 0.7}),
        ("ties", {"lam": 0.7, "density": 0.3}),
        ("dare", {"drop_rate": 0.3, "seed": 4, "combine": "ties"}),
        ("knots", {"density": 0.4}),
    ],
)
def test_D9_switches_off_equals_the_base_method_bit_for_bit(base, params):
    ups = make_updates(n=3, seed=12)
    out = merge_layer(ups, "do", base=base, decouple=False, orthogonalize=False, **params)
    assert torch.equal(out, merge_layer(ups, base, **params))


def test_ablation_cells_differ():
    ups = make_updates(n=3, r=4, d_out=24, d_in=24, seed=13, scales=[1.0, 0.2, 0.5])
    cells = {
        (d, o): merge_layer(ups, "do", decouple=d, orthogonalize=o, steps=40)
        for d in (False, True)
        for o in (False, True)
    }
    keys = list(cells)
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            assert not torch.allclose(cells[keys[i]], cells[keys[j]], rtol=1e-3), (keys[i], keys[j])


def test_do_magnitude_rules_and_renormalisation():
    ups = make_updates(n=3, seed=14, scales=[1.0, 0.3, 2.0])
    mags = torch.stack([decouple(u.delta(torch.float64))[0] for u in ups])
    mean_out = merge_layer(ups, "do", orthogonalize=False)
    base_out = merge_layer(ups, "do", orthogonalize=False, magnitude_merge="base")
    torch.testing.assert_close(base_out, 3 * mean_out, rtol=1e-5, atol=1e-7)  # λ Σ α = N · mean α
    renorm = merge_layer(ups, "do", orthogonalize=False, renormalize_direction=True)
    torch.testing.assert_close(
        torch.linalg.vector_norm(renorm.double(), dim=0), mags.mean(dim=0), rtol=1e-5, atol=1e-7
    )
    out_axis = merge_layer(ups, "do", orthogonalize=False, renormalize_direction=True, magnitude_axis="out")
    out_mags = torch.stack([decouple(u.delta(torch.float64), "out")[0] for u in ups]).mean(dim=0)
    torch.testing.assert_close(torch.linalg.vector_norm(out_axis.double(), dim=1), out_mags, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("base", ["ties", "dare", "knots"])
def test_do_runs_with_every_base_and_reports(base):
    ups = make_updates(n=3, seed=15)
    out, report = do_merge_with_report(ups, base=base, steps=20)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert report.ortho_A.side == "A" and report.ortho_B.side == "B"
    assert report.ortho_A.cross_after < report.ortho_A.cross_before
    if base != "knots":
        assert torch.isfinite(merge_layer(ups, "do", base=base, magnitude_merge="base", steps=5)).all()


def test_orthogonalising_once_then_merging_without_it_equals_do_bit_for_bit():
    """The benchmark's shortcut: orthogonalize_adapters once, then do with orthogonalize=False per grid point."""
    from lorakit.merge import orthogonalize_adapters

    adapters = [{"l0": u, "l1": v} for u, v in zip(make_updates(3, seed=1), make_updates(3, seed=2, scales=[1, 5, 0.2]))]
    orth, reports = orthogonalize_adapters(adapters)
    assert set(reports) == {"l0", "l1"} and reports["l0"].ortho_A.cross_after < reports["l0"].ortho_A.cross_before
    for base, params in [("task_arithmetic", {"lam": 0.7}), ("ties", {"lam": 1.0, "density": 0.5})]:
        direct = merge_adapters(adapters, "do", base=base, **params)
        shortcut = merge_adapters(orth, "do", base=base, orthogonalize=False, **params)
        for module in direct:
            assert torch.equal(direct[module], shortcut[module])


def test_precompute_capability_gives_the_same_merge_bit_for_bit():
    """A registered ``precompute`` (DO's orthogonalisation) done once equals the method doing it itself."""
    from lorakit.lora.update import LoRAUpdate
    from lorakit.merge import METHODS, merge_adapters

    gen = torch.Generator().manual_seed(7)
    adapters = [{m: LoRAUpdate(torch.randn(4, 24, generator=gen), torch.randn(30, 4, generator=gen) * s, 2.0)
                 for m in ("l0", "l1")} for s in (1.0, 3.0, 0.5)]
    assert [n for n, spec in METHODS.items() if spec.precompute is not None] == ["do"]
    prepared, override = METHODS["do"].precompute(adapters, steps=20)
    assert override == {"orthogonalize": False} and prepared[0]["l0"].A.dtype == torch.float64
    assert not torch.equal(prepared[0]["l0"].A, adapters[0]["l0"].A.double())  # it did move the factors
    for base, params in [("task_arithmetic", {"lam": 0.6}), ("dare", {"lam": 1.0, "drop_rate": 0.3})]:
        direct = merge_adapters(adapters, "do", base=base, steps=20, **params)
        shortcut = merge_adapters(prepared, "do", base=base, steps=20, **params, **override)
        assert all(torch.equal(direct[m], shortcut[m]) for m in direct)
    unchanged, none = METHODS["do"].precompute(adapters, orthogonalize=False)
    assert none == {} and unchanged[1]["l1"] is adapters[1]["l1"]
