"""lorakit.adapters.factors: writing a dense merged layer as LoRA factors (exact and randomized SVD)."""

import numpy as np
import pytest
import torch

from lorakit.lora.update import factorize_delta
from lorakit.adapters.factors import RSVD_OVERSAMPLE, randomized_factors, refactor_dense, use_randomized


def spectrum_matrix(d_out, d_in, singular_values, seed=0):
    gen = torch.Generator().manual_seed(seed)
    k = len(singular_values)
    U = torch.linalg.qr(torch.randn(d_out, k, generator=gen, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(d_in, k, generator=gen, dtype=torch.float64)).Q
    return (U * torch.as_tensor(singular_values, dtype=torch.float64)) @ V.T


def test_randomized_recovers_an_exactly_low_rank_matrix():
    delta = spectrum_matrix(600, 400, torch.linspace(3.0, 1.0, 12)).float()
    A, B, energy = randomized_factors(delta, 12)
    assert A.shape == (12, 400) and B.shape == (600, 12)
    assert torch.allclose(B @ A, delta, atol=1e-5)
    assert energy == pytest.approx(1.0, abs=1e-6)


def test_randomized_energy_is_exact_for_its_factors_and_near_eckart_young():
    delta = spectrum_matrix(900, 500, np.logspace(0, -2, 200), seed=1).float()
    for k in (8, 40):
        A, B, energy = randomized_factors(delta, k)
        # energy kept = ‖BA‖² / ‖ΔW‖², and BA is a projection of ΔW, so the residual is the rest
        approx = (B @ A).double()
        kept = float(approx.pow(2).sum() / delta.double().pow(2).sum())
        residual = float((delta.double() - approx).pow(2).sum() / delta.double().pow(2).sum())
        assert energy == pytest.approx(kept, rel=1e-4)
        assert kept + residual == pytest.approx(1.0, abs=1e-4)
        optimum = factorize_delta(delta.double(), k)[2]  # numpy-independent: brute-force SVD below
        s = np.linalg.svd(delta.double().numpy(), compute_uv=False)
        assert optimum == pytest.approx(float((s[:k] ** 2).sum() / (s**2).sum()), rel=1e-9)
        assert optimum * 0.99 <= energy <= optimum + 1e-6


def test_randomized_is_deterministic_and_seeded():
    delta = torch.randn(300, 200, generator=torch.Generator().manual_seed(3))
    a1, b1, e1 = randomized_factors(delta, 10)
    a2, b2, e2 = randomized_factors(delta, 10)
    assert torch.equal(a1, a2) and torch.equal(b1, b2) and e1 == e2
    a3, _, _ = randomized_factors(delta, 10, seed=1)
    assert not torch.equal(a1, a3)


def test_refactor_dense_takes_the_randomized_path_only_for_ranks_well_below_the_layer():
    assert not use_randomized((4096, 4096), None)
    assert use_randomized((4096, 4096), 128)
    assert not use_randomized((64, 48), 8)  # small layers: exact SVD, as before
    assert not use_randomized((4096, 256), 256 - RSVD_OVERSAMPLE)
    small = torch.randn(64, 48, generator=torch.Generator().manual_seed(4))
    A, B, energy = refactor_dense(small, 8)
    A2, B2, energy2 = factorize_delta(small.double(), 8)
    assert torch.allclose(B @ A, (B2 @ A2).float(), atol=1e-5) and energy == pytest.approx(energy2)


def test_refactor_dense_big_layer_rank_k_close_to_optimum():
    delta = spectrum_matrix(1024, 768, np.logspace(0, -1.5, 300), seed=5).float()
    A, B, energy = refactor_dense(delta, 32)
    assert A.shape == (32, 768) and B.dtype == torch.float32
    assert energy >= 0.99 * factorize_delta(delta.double(), 32)[2]


def test_zero_layer_gives_zero_factors():
    A, B, energy = randomized_factors(torch.zeros(200, 300), 4)
    assert energy == 1.0 and not (B @ A).any()

