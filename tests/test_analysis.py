"""Tests of lorakit.lora.measures: magnitudes, magnitude variance, cosines, direction share, spectrum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lorakit.lora.measures import (
    column_magnitudes,
    cosine_matrix,
    direction_share,
    interference_exact,
    interference_from_magnitudes,
    layer_magnitude_variance,
    magnitude_shares,
    magnitude_variance,
    spectrum,
)
from lorakit.errors import LorakitError
from lorakit.lora.update import LoRAUpdate


def lora(r=3, d_out=12, d_in=10, seed=0, scale=1.0, scaling=2.0):
    gen = torch.Generator().manual_seed(seed)
    return LoRAUpdate(torch.randn(r, d_in, generator=gen), scale * torch.randn(d_out, r, generator=gen), scaling)


def test_column_magnitudes_axes_and_inputs():
    u = lora()
    delta = u.delta(torch.float64)
    col = column_magnitudes(u, "in")
    row = column_magnitudes(delta, "out")
    assert col.shape == (10,) and row.shape == (12,) and col.dtype == torch.float64
    np.testing.assert_allclose(col.numpy(), np.linalg.norm(delta.numpy(), axis=0), rtol=1e-12)
    np.testing.assert_allclose(row.numpy(), np.linalg.norm(delta.numpy(), axis=1), rtol=1e-12)
    with pytest.raises(LorakitError, match="axis"):
        column_magnitudes(delta, "cols")


def test_magnitude_variance_hand_example():
    # one column, two tasks with column norms 1 and 3: std 1 (ddof 0), mean 2 -> CV 0.5
    t1 = torch.zeros(2, 2, dtype=torch.float64)
    t1[0, 0] = 1.0
    t1[:, 1] = torch.tensor([3.0, 4.0])  # column norm 5
    t2 = torch.zeros(2, 2, dtype=torch.float64)
    t2[1, 0] = -3.0
    t2[0, 1] = 5.0  # column norm 5
    assert magnitude_variance([t1, t2]) == pytest.approx((0.5 + 0.0) / 2)
    # Frobenius variant: norms sqrt(26) and sqrt(34)
    f1, f2 = math.sqrt(26), math.sqrt(34)
    expected = abs(f1 - f2) / 2 / ((f1 + f2) / 2)
    assert magnitude_variance([t1, t2], kind="frobenius") == pytest.approx(expected)


def test_magnitude_variance_is_zero_for_equal_magnitudes_and_scale_free():
    u = lora(seed=1)
    flipped = LoRAUpdate(u.A, -u.B, u.scaling)  # same column norms, other direction
    assert magnitude_variance([u, flipped]) == pytest.approx(0.0, abs=1e-12)
    tasks = [lora(seed=s, scale=c) for s, c in ((2, 1.0), (3, 0.1), (4, 0.3))]
    mv = magnitude_variance(tasks)
    scaled = [LoRAUpdate(t.A, 8.0 * t.B, t.scaling) for t in tasks]  # ×8 is exact in float32
    assert magnitude_variance(scaled) == pytest.approx(mv, rel=1e-12)
    equal = [lora(seed=s) for s in (2, 3, 4)]
    assert mv > 2 * magnitude_variance(equal)  # B scales 1 : 0.1 : 0.3 vary far more


def test_magnitude_variance_ignores_all_zero_columns():
    a, b = lora(seed=5).delta(torch.float64), lora(seed=6).delta(torch.float64)
    ref = magnitude_variance([a, b])
    a0, b0 = torch.cat([a, torch.zeros(12, 1, dtype=torch.float64)], 1), torch.cat([b, torch.zeros(12, 1, dtype=torch.float64)], 1)
    got = magnitude_variance([a0, b0])
    assert math.isfinite(got) and got == pytest.approx(ref)


def test_magnitude_variance_over_adapters_averages_layers():
    adapters = [{"q": lora(seed=10 + t), "v": lora(seed=20 + t, scale=1 + t)} for t in range(3)]
    per = magnitude_variance(adapters, per_layer=True)
    assert set(per) == {"q", "v"}
    assert magnitude_variance(adapters) == pytest.approx((per["q"] + per["v"]) / 2)
    assert per["q"] == pytest.approx(magnitude_variance([ad["q"] for ad in adapters]))
    assert magnitude_variance(adapters, axis="out") != pytest.approx(magnitude_variance(adapters))
    with pytest.raises(LorakitError, match="different layers"):
        magnitude_variance([adapters[0], {"q": adapters[1]["q"]}])
    with pytest.raises(LorakitError, match="kind"):
        magnitude_variance(adapters, kind="l1")


def test_cosine_matrix_matches_numpy_and_handles_zero():
    deltas = [lora(seed=s).delta(torch.float64) for s in range(3)] + [torch.zeros(12, 10, dtype=torch.float64)]
    cos = cosine_matrix(deltas)
    flat = np.stack([d.numpy().ravel() for d in deltas[:3]])
    ref = flat @ flat.T / np.outer(np.linalg.norm(flat, axis=1), np.linalg.norm(flat, axis=1))
    np.testing.assert_allclose(cos[:3, :3].numpy(), ref, rtol=1e-12)
    assert torch.isfinite(cos).all() and torch.equal(cos[3], torch.zeros(4, dtype=torch.float64))
    assert torch.equal(cos, cos.T)


def test_cosine_matrix_over_adapters_is_of_the_concatenated_task_vectors():
    adapters = [{"q": lora(seed=30 + t), "v": lora(seed=40 + t, d_out=5)} for t in range(2)]
    cos = cosine_matrix(adapters)
    vecs = [torch.cat([ad["q"].delta(torch.float64).ravel(), ad["v"].delta(torch.float64).ravel()]) for ad in adapters]
    expected = float(vecs[0] @ vecs[1] / (vecs[0].norm() * vecs[1].norm()))
    assert cos[0, 1].item() == pytest.approx(expected, rel=1e-12)


def test_direction_share_of_a_sum_of_orthogonal_equal_tasks():
    eye = torch.eye(6, dtype=torch.float64)
    tasks = [torch.outer(eye[i], eye[i]) for i in range(3)]  # orthogonal, equal norm
    share = direction_share(sum(tasks), tasks)
    np.testing.assert_allclose(share.numpy(), np.full(3, 1 / math.sqrt(3)), rtol=1e-12)
    dominated = direction_share(10 * tasks[0] + tasks[1] + tasks[2], tasks)
    assert dominated[0] > 0.95 and dominated[1] < 0.15


def test_spectrum_matches_numpy_and_lora_rank():
    u = lora(r=3)
    s = spectrum(u)
    ref = np.linalg.svd(u.delta(torch.float64).numpy(), compute_uv=False)
    np.testing.assert_allclose(s.numpy(), ref, rtol=1e-10, atol=1e-12 * ref[0])
    assert s.shape == (10,) and torch.all(s[:-1] >= s[1:])
    assert (s[3:] < 1e-10 * s[0]).all() and (s[:3] > 1e-3 * s[0]).all()


def test_analysis_input_errors():
    with pytest.raises(LorakitError, match="2-D"):
        spectrum(torch.zeros(3))
    with pytest.raises(LorakitError, match="shapes"):
        cosine_matrix([torch.zeros(2, 3), torch.zeros(3, 2)])
    with pytest.raises(LorakitError, match="at least one"):
        cosine_matrix([])


# ----------------------------------------------------------------------------------------------
# The bias-free (pairwise) magnitude variance and the A-subspace overlap
# ----------------------------------------------------------------------------------------------

from itertools import combinations  # noqa: E402

from lorakit.lora.measures import layer_magnitude_variance, magnitude_variance_pairwise, subspace_overlap  # noqa: E402


def iid_adapters(n, gen, d_out=10, d_in=8, r=2):
    """N i.i.d. one-layer LoRA updates: random factors and a log-normal task scale each."""
    out = []
    for _ in range(n):
        scale = math.exp(0.5 * torch.randn(1, generator=gen, dtype=torch.float64).item())
        A = torch.randn(r, d_in, generator=gen, dtype=torch.float64)
        B = scale * torch.randn(d_out, r, generator=gen, dtype=torch.float64)
        out.append(LoRAUpdate(A, B, 2.0))
    return out


def test_pairwise_magnitude_variance_is_the_mean_of_the_pairs_and_equals_mv_for_two():
    adapters = [{"q": lora(seed=50 + t, scale=1 + t), "v": lora(seed=60 + t, d_out=5)} for t in range(4)]
    assert magnitude_variance_pairwise(adapters[:2]) == pytest.approx(magnitude_variance(adapters[:2]), rel=1e-12)
    per = magnitude_variance_pairwise(adapters, per_layer=True)
    for name in ("q", "v"):
        pairs = [magnitude_variance([adapters[i][name], adapters[k][name]]) for i, k in combinations(range(4), 2)]
        assert per[name] == pytest.approx(np.mean(pairs), rel=1e-12)
    frob = magnitude_variance_pairwise(adapters, kind="frobenius")
    pairs = [magnitude_variance([adapters[i], adapters[k]], kind="frobenius") for i, k in combinations(range(4), 2)]
    assert frob == pytest.approx(np.mean(pairs), rel=1e-12)
    # scale-free, zero for equal magnitudes, and not the population MV for N > 2
    scaled = [{k: LoRAUpdate(u.A, 8.0 * u.B, u.scaling) for k, u in ad.items()} for ad in adapters]
    assert magnitude_variance_pairwise(scaled) == pytest.approx(magnitude_variance_pairwise(adapters), rel=1e-12)
    u = lora(seed=1)
    assert magnitude_variance_pairwise([u, LoRAUpdate(u.A, -u.B, u.scaling), u]) == pytest.approx(0.0, abs=1e-12)
    assert magnitude_variance_pairwise(adapters) != pytest.approx(magnitude_variance(adapters), rel=1e-3)
    with pytest.raises(LorakitError, match="at least 2"):
        magnitude_variance_pairwise([u])
    with pytest.raises(LorakitError, match="kind"):
        magnitude_variance_pairwise(adapters, kind="l1")


def test_pairwise_magnitude_variance_ignores_columns_zero_in_both_tasks():
    a, b = lora(seed=5).delta(torch.float64), lora(seed=6).delta(torch.float64)
    z = torch.zeros(12, 1, dtype=torch.float64)
    mags = torch.stack([column_magnitudes(torch.cat([a, z], 1)), column_magnitudes(torch.cat([b, z], 1))])
    assert layer_magnitude_variance(mags, pairwise=True) == pytest.approx(magnitude_variance_pairwise([a, b]))
    assert layer_magnitude_variance(torch.zeros(3, 4), pairwise=True) == 0.0


def test_pairwise_magnitude_variance_is_bias_free_in_n_and_the_population_one_is_not():
    gen = torch.Generator().manual_seed(0)
    draws = 300
    pairwise, population, sample = {}, {}, {}
    for n in (2, 4, 8):
        pw, pop, ddof1 = [], [], []
        for _ in range(draws):
            tasks = iid_adapters(n, gen)
            pw.append(magnitude_variance_pairwise(tasks))
            pop.append(magnitude_variance(tasks))
            mags = torch.stack([column_magnitudes(t) for t in tasks])
            ddof1.append(float((mags.std(0, correction=1) / mags.mean(0)).mean()))
        pairwise[n] = (np.mean(pw), np.std(pw) / math.sqrt(draws))
        population[n], sample[n] = np.mean(pop), np.mean(ddof1)
    ref, se = pairwise[2]
    for n in (4, 8):
        mean, se_n = pairwise[n]
        assert abs(mean - ref) < 4 * math.hypot(se, se_n) and abs(mean / ref - 1) < 0.05, (n, pairwise)
    # the population CV (3.2) trends with N (the bias the pairwise form removes), the ddof=1 CV too
    assert population[2] < population[4] < population[8] and population[8] / population[2] > 1.3, population
    assert sample[2] < sample[4] < sample[8] and sample[8] / sample[2] > 1.15, sample


def test_subspace_overlap_identical_orthogonal_random():
    eye = torch.eye(12, dtype=torch.float64)
    u1 = LoRAUpdate(eye[:3] * 2.0, torch.randn(5, 3, dtype=torch.float64))
    same_A = LoRAUpdate(u1.A.clone(), torch.randn(5, 3, dtype=torch.float64))
    mixed = LoRAUpdate(torch.randn(3, 3, dtype=torch.float64) @ u1.A, torch.randn(5, 3, dtype=torch.float64))
    ortho = LoRAUpdate(eye[3:6], torch.randn(5, 3, dtype=torch.float64))
    over = subspace_overlap([u1, same_A, mixed, ortho])
    np.testing.assert_allclose(over[:3, :3].numpy(), np.ones((3, 3)), atol=1e-10)  # same row space
    np.testing.assert_allclose(over[3, :3].numpy(), 0.0, atol=1e-12)
    assert torch.allclose(over, over.T)
    gen = torch.Generator().manual_seed(3)
    d, r = 200, 4
    rand = [LoRAUpdate(torch.randn(r, d, generator=gen, dtype=torch.float64), torch.ones(2, r, dtype=torch.float64))
            for _ in range(6)]
    off = subspace_overlap(rand)[~torch.eye(6, dtype=torch.bool)]
    assert off.mean().item() == pytest.approx(r / d, rel=0.25)
    nested = LoRAUpdate(eye[:1], torch.ones(5, 1, dtype=torch.float64))  # rank 1 inside u1's rank-3 space
    assert subspace_overlap([nested, u1])[0, 1].item() == pytest.approx(1.0)
    zero = LoRAUpdate(torch.zeros(2, 12, dtype=torch.float64), torch.zeros(5, 2, dtype=torch.float64))
    assert subspace_overlap([zero, u1])[0, 1].item() == 0.0
    with pytest.raises(LorakitError, match="LoRA factors"):
        subspace_overlap([u1.delta(), same_A.delta()])
    adapters = [{"q": u1, "v": ortho}, {"q": same_A, "v": u1}]
    per = subspace_overlap(adapters, per_layer=True)
    assert per["q"][0, 1].item() == pytest.approx(1.0) and per["v"][0, 1].item() == pytest.approx(0.0, abs=1e-12)
    assert subspace_overlap(adapters)[0, 1].item() == pytest.approx(0.5)


# --- (3.3)-(3.5): shares of a merged column and the interference they predict ------------------------

def _orthogonal_columns(mags: np.ndarray, d_out: int, seed: int) -> list[torch.Tensor]:
    """N updates whose column j is α_i[j] q_i with q_1..q_N orthonormal (fresh ones per column)."""
    rng = np.random.default_rng(seed)
    n, d = mags.shape
    out = np.zeros((n, d_out, d))
    for j in range(d):
        q, _ = np.linalg.qr(rng.standard_normal((d_out, n)))
        for i in range(n):
            out[i, :, j] = mags[i, j] * q[:, i]
    return [torch.from_numpy(x) for x in out]


def test_magnitude_shares_sum_to_one_and_give_mv_as_n_times_their_spread():
    rng = np.random.default_rng(0)
    mags = rng.uniform(0.1, 2.0, (5, 7))
    w = magnitude_shares(torch.from_numpy(mags)).numpy()
    assert np.allclose(w, mags / mags.sum(0))
    assert np.allclose(w.sum(0), 1.0)
    cv = mags.std(0) / mags.mean(0)                      # numpy, ddof = 0
    assert np.allclose(cv, 5 * w.std(0))                 # CV = N · std(w)
    assert abs(layer_magnitude_variance(torch.from_numpy(mags)) - float((5 * w.std(0)).mean())) < 1e-12
    z = torch.zeros(3, 2, dtype=torch.float64)
    assert torch.isnan(magnitude_shares(z)).all()


def test_interference_from_magnitudes_equals_the_exact_ratio_for_orthogonal_directions():
    rng = np.random.default_rng(1)
    mags = rng.uniform(0.2, 3.0, (4, 6))
    deltas = _orthogonal_columns(mags, d_out=9, seed=2)
    exact = interference_exact(deltas).numpy()
    brute = np.array([np.mean([np.sum(sum(deltas[i][:, j].numpy() for i in range(4) if i != k) ** 2)
                               / np.sum(deltas[k][:, j].numpy() ** 2) for j in range(6)]) for k in range(4)])
    assert np.allclose(exact, brute)
    assert np.allclose(interference_from_magnitudes(torch.from_numpy(mags)).numpy(), brute)


def test_interference_floor_is_n_minus_one_at_equal_magnitudes_and_grows_like_4n_cv2():
    n, d = 4, 50
    equal = torch.full((n, d), 0.7, dtype=torch.float64)
    assert torch.allclose(interference_from_magnitudes(equal), torch.full((n,), n - 1.0, dtype=torch.float64))
    rng = np.random.default_rng(3)
    for spread in (0.3, 0.1, 0.02):
        eps = rng.uniform(-1, 1, (n, d))
        eps -= eps.mean(0)
        mags = 1.0 + spread * eps
        mean_r = float(interference_from_magnitudes(torch.from_numpy(mags)).mean())
        assert mean_r > n - 1                                           # Cauchy–Schwarz
        c2 = (mags.std(0) / mags.mean(0)) ** 2
        second_order = n - 1 + 4 * n * c2.mean()
        assert abs(mean_r - second_order) <= 12 * n * (c2 ** 1.5).mean() + 1e-12   # next term is O(c³)


def test_interference_exact_counts_cross_terms_and_checks_input():
    same = torch.ones(5, 3, dtype=torch.float64)
    r = interference_exact([same, same])            # identical directions: ‖ΔW_2‖² / ‖ΔW_1‖² = 1, like orthogonal
    assert torch.allclose(r, torch.ones(2, dtype=torch.float64))
    r3 = interference_exact([same, same, same])     # aligned: ‖2ΔW‖²/‖ΔW‖² = 4, orthogonal would say 2
    assert torch.allclose(r3, torch.full((3,), 4.0, dtype=torch.float64))
    opposite = interference_exact([same, -same, same])  # the others cancel: 0
    assert torch.allclose(opposite[0], torch.tensor(0.0, dtype=torch.float64))
    with pytest.raises(LorakitError, match="N ≥ 2"):
        interference_exact([same])
    with pytest.raises(LorakitError, match="nonzero in every task"):
        interference_from_magnitudes(torch.zeros(2, 3))
