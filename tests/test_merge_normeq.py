"""Norm-equalised task arithmetic ``ta_normeq`` (docs/methods.md §4.6) against dense numpy brute force.

The reference forms every ``ΔW_i = s_i B_i A_i`` densely in float64 numpy, takes its Frobenius norm
with ``np.linalg.norm`` and sums ``λ (m̄ / ‖ΔW_i‖) ΔW_i``; lorakit computes the norms from the
factors' ``(r, r)`` Gram matrices. Folder merging is checked against peft's own weight changes
(``merge_and_unload``) of real PEFT adapter folders (the zoo of test_merge_cli).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_lora import MODULES
from test_merge_cli import cli, max_diff, peft_deltas_of, zoo  # noqa: F401  (zoo: the module's fixture)
from transformers import AutoModelForSequenceClassification

from lorakit.errors import LorakitError
from lorakit.lora.update import LoRAUpdate
from lorakit.lora.peft import read_adapter
from lorakit.adapters.merge_folders import merge_adapter_folders
from lorakit.merge import (
    METHODS,
    factored_frobenius_sq,
    merge_adapters,
    merge_layer,
    normeq_coefficients,
    resolve_variant,
)
from lorakit.adapters.merge_folders import SUMMARY_FILE


def random_updates(ranks=(4, 2, 6), d_out=20, d_in=16, scales=(1.0, 7.0, 0.2), scalings=(2.0, 0.5, 4.0),
                   seed=0, dtype=torch.float32):
    """Updates with different ranks, scalings and magnitudes (so norm equalisation matters)."""
    g = torch.Generator().manual_seed(seed)
    return [LoRAUpdate(torch.randn(r, d_in, generator=g, dtype=dtype),
                       torch.randn(d_out, r, generator=g, dtype=dtype) * scale, s)
            for r, scale, s in zip(ranks, scales, scalings)]


def numpy_normeq(deltas, lam):
    """λ Σ_i (m̄/‖ΔW_i‖_F) ΔW_i on dense float64 arrays; zero updates skipped, m̄ over the others."""
    deltas = [np.asarray(d, dtype=np.float64) for d in deltas]
    norms = np.array([np.linalg.norm(d, "fro") for d in deltas])
    kept = norms > 1e-9 * max(norms.max(), 1e-300)
    if not kept.any():
        return np.zeros_like(deltas[0])
    m_bar = norms[kept].mean()
    return lam * sum((m_bar / n) * d for d, n, k in zip(deltas, norms, kept) if k)


def dense_np(u: LoRAUpdate) -> np.ndarray:
    return u.scaling * (u.B.double().numpy() @ u.A.double().numpy())


def test_registered_with_lam_only_and_not_factored():
    spec = METHODS["ta_normeq"]
    assert dict(spec.params) == {"lam": 1.0}
    assert not spec.factored and spec.dense is None and spec.url.startswith("https://arxiv.org/abs/")
    with pytest.raises(LorakitError, match="density"):
        merge_layer(random_updates(), "ta_normeq", density=0.5)


def test_factored_norm_equals_dense_norm():
    for u in random_updates(dtype=torch.float64):
        sq, bound = factored_frobenius_sq(u)
        assert sq == pytest.approx(np.linalg.norm(dense_np(u), "fro") ** 2, rel=1e-12)
        assert sq <= bound


@pytest.mark.parametrize("lam", [1.0, 0.35, -2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_numpy_brute_force(lam, dtype):
    updates = random_updates(dtype=dtype)
    got = merge_layer(updates, "ta_normeq", lam=lam)
    expected = numpy_normeq([dense_np(u) for u in updates], lam)
    assert got.dtype == torch.float32 and got.shape == (20, 16)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    # not vacuous: plain task arithmetic differs (the norms are far apart)
    ta = merge_layer(updates, "task_arithmetic", lam=lam).double().numpy()
    assert np.abs(ta - expected).max() > 0.1 * np.abs(expected).max()


def test_every_task_enters_with_the_mean_norm_and_the_norm_sum_is_kept():
    updates = random_updates(dtype=torch.float64)
    c = normeq_coefficients(updates).numpy()
    norms = np.array([np.linalg.norm(dense_np(u), "fro") for u in updates])
    np.testing.assert_allclose(c * norms, np.full(3, norms.mean()), rtol=1e-12)
    assert (c * norms).sum() == pytest.approx(norms.sum(), rel=1e-12)


def test_equal_norms_is_plain_task_arithmetic_and_common_scale_passes_through():
    updates = random_updates(scales=(1.0, 1.0, 1.0), scalings=(2.0, 2.0, 2.0), ranks=(4, 4, 4))
    norms = [factored_frobenius_sq(u)[0] ** 0.5 for u in updates]
    equal = [LoRAUpdate(u.A, u.B / n, 1.0) for u, n in zip(updates, norms)]  # every ‖ΔW_i‖ = 1
    torch.testing.assert_close(merge_layer(equal, "ta_normeq", lam=0.6), merge_layer(equal, "task_arithmetic", lam=0.6),
                               rtol=1e-5, atol=1e-6)
    # one task 10× larger: only the mean norm changes (the result is the old one times m̄'/m̄)
    big = [LoRAUpdate(updates[0].A, 10 * updates[0].B, updates[0].scaling), *updates[1:]]
    ratio = (10 * norms[0] + norms[1] + norms[2]) / sum(norms)
    torch.testing.assert_close(merge_layer(big, "ta_normeq"), ratio * merge_layer(updates, "ta_normeq"),
                               rtol=1e-5, atol=1e-5)


def test_one_update_comes_back_bit_for_bit():
    (u,) = random_updates(ranks=(4,), scales=(3.0,), scalings=(2.0,))
    assert torch.equal(merge_layer([u], "ta_normeq"), u.delta())


def test_zero_update_is_skipped_without_nan():
    updates = random_updates(dtype=torch.float64)
    zero_B = LoRAUpdate(updates[1].A, torch.zeros_like(updates[1].B), 2.0)  # B = 0, as before training
    a = torch.randn(1, 16, dtype=torch.float64)
    b = torch.randn(20, 1, dtype=torch.float64)
    cancels = LoRAUpdate(torch.cat([a, a]), torch.cat([b, -b], dim=1), 3.0)  # B A = b aᵀ − b aᵀ = 0, factors ≠ 0
    assert factored_frobenius_sq(cancels)[1] > 1
    for zero in (zero_B, cancels):
        layer = [updates[0], zero, updates[2]]
        got = merge_layer(layer, "ta_normeq", lam=0.8)
        assert torch.isfinite(got).all()
        assert normeq_coefficients(layer)[1] == 0
        expected = numpy_normeq([dense_np(updates[0]), dense_np(updates[2])], 0.8)
        np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    everything_zero = merge_layer([zero_B, cancels], "ta_normeq")
    assert torch.equal(everything_zero, torch.zeros(20, 16))


def test_merge_adapters_layer_by_layer():
    names = ["layer.0.q", "layer.1.v"]
    adapters = [{n: random_updates(seed=10 * k + i)[k] for i, n in enumerate(names)} for k in range(3)]
    merged = merge_adapters(adapters, "ta_normeq", lam=0.5)
    assert list(merged) == names
    for n in names:
        expected = numpy_normeq([dense_np(ad[n]) for ad in adapters], 0.5)
        np.testing.assert_allclose(merged[n].double().numpy(), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_as_do_base_without_decoupling_or_orthogonalising_is_itself():
    assert resolve_variant("do_ta_normeq") == ("do", {"base": "ta_normeq"})
    updates = random_updates()
    got = merge_layer(updates, "do", base="ta_normeq", decouple=False, orthogonalize=False, lam=0.7)
    assert torch.equal(got, merge_layer(updates, "ta_normeq", lam=0.7))


# ----------------------------------------------------------------------------------------------
# lorakit merge: PEFT adapter folders (refactored by SVD: per-task coefficients are not a plain concatenation)
# ----------------------------------------------------------------------------------------------

NAMES, WEIGHTS = ["plain", "rslora", "alpha_r"], [1.0, 0.5, -2.0]


def peft_reference(zoo, lam):
    """numpy normeq of peft's own weight changes (merge_and_unload − W0), each times its folder weight."""
    return {m: torch.from_numpy(numpy_normeq([w * zoo.deltas[n][m].double().numpy() for n, w in zip(NAMES, WEIGHTS)],
                                             lam)) for m in MODULES}


def test_folder_merge_adapter_and_merged_model_match_peft(zoo, tmp_path):  # noqa: F811
    folders = [zoo.paths[n] for n in NAMES]
    expected = peft_reference(zoo, 0.8)
    assert min(float(d.abs().max()) for d in expected.values()) > 1e-2  # not vacuous
    common = dict(params={"lam": 0.8}, weights=WEIGHTS, head_from=0, progress=False)
    summary = merge_adapter_folders(folders, "ta_normeq", out=tmp_path / "a", **common)
    assert summary["refactor"] == "exact: SVD at full numerical rank" and summary["energy"]["min"] > 1 - 1e-9
    assert max_diff(peft_deltas_of(zoo, tmp_path / "a"), expected) < 1e-5
    merge_adapter_folders(folders, "ta_normeq", out=tmp_path / "m", format="merged", base=str(zoo.base), **common)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    assert max_diff({m: model.get_submodule(m).weight.detach() - zoo.w0[m] for m in MODULES}, expected) < 1e-5
    # the folder path and the in-memory path agree (weights fold into B)
    in_memory = merge_adapters([{m: LoRAUpdate(u.A, w * u.B, u.scaling) for m, u in read_adapter(f).items()}
                                for f, w in zip(folders, WEIGHTS)], "ta_normeq", lam=0.8)
    assert max_diff(in_memory, expected) < 1e-5


def test_cli_merge_with_ta_normeq(zoo, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "cli"
    rc, stdout, _ = cli([*(zoo.paths[n] for n in NAMES), "--method", "ta_normeq", "--param", "lam=0.8",
                         "--weights", *WEIGHTS, "--out", out, "--no-progress"], capsys)
    assert rc == 0 and "ta_normeq" in stdout
    assert max_diff(peft_deltas_of(zoo, out), peft_reference(zoo, 0.8)) < 1e-5
    assert json.loads((out / SUMMARY_FILE).read_text())["method"] == "ta_normeq"
