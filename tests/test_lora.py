"""lorakit.lora.peft: parity with peft's own merge, save and load (docs/methods.md §1 and §5.1–5.3).

Every adapter here is made by peft itself on a tiny random BERT classifier; ``lora_B`` is
randomised (peft initialises it to zero, which would make every ΔW comparison vacuous). The
reference for ΔW is always peft's ``merge_and_unload`` (``W_merged − W0``), never lorakit's own
formula.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from lorakit.errors import LorakitError
from lorakit.lora.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_WEIGHTS_BIN, apply_deltas, read_adapter, read_head, write_adapter, write_merged
from lorakit.lora.names import PEFT_PREFIX, parse_peft_lora_key, peft_key, peft_lora_key, strip_peft_prefix
from lorakit.lora.update import LoRAUpdate, adapter_deltas, check_compatible, factorize_delta, lora_delta, lora_scaling

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()

VOCAB = 100
NUM_LABELS = 3
MODULES = [
    f"bert.encoder.layer.{i}.attention.self.{t}" for i in range(2) for t in ("query", "value")
]


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def tiny_bert(seed: int = 0, num_labels: int = NUM_LABELS) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        vocab_size=VOCAB, num_labels=num_labels,
    )
    return BertForSequenceClassification(config).eval()


def lora_layers(peft_model) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}


def short(name: str) -> str:
    return name[len("base_model.model."):] if name.startswith("base_model.model.") else name


def make_peft(seed: int = 0, **lora_kwargs):
    """A peft SEQ_CLS model with random lora_B and a random ("trained") head; also W0 per module."""
    base = tiny_bert(seed)
    w0 = {m: base.get_submodule(m).weight.detach().clone() for m in MODULES}
    kwargs = dict(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0, task_type="SEQ_CLS")
    kwargs.update(lora_kwargs)
    pm = get_peft_model(base, LoraConfig(**kwargs))
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for module in lora_layers(pm).values():
            B = module.lora_B["default"].weight
            B.copy_(torch.randn(B.shape, generator=g) * 0.5)
        head = pm.base_model.model.classifier.modules_to_save["default"]
        head.weight.copy_(torch.randn(head.weight.shape, generator=g))
        head.bias.copy_(torch.randn(head.bias.shape, generator=g))
    pm.eval()
    return pm, w0


def peft_merged_deltas(pm, w0) -> dict[str, torch.Tensor]:
    """ΔW as peft computes it: weights after merge_and_unload minus the base weights."""
    merged = copy.deepcopy(pm).merge_and_unload()
    return {m: merged.get_submodule(m).weight.detach() - w0[m] for m in MODULES}


def batch(seed: int = 0, n: int = 3, length: int = 9) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, length // 2:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def assert_one_line(exc: pytest.ExceptionInfo) -> None:
    message = str(exc.value)
    assert message and "\n" not in message


def tmp_siblings(parent: Path, name: str) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(f".{name}.tmp-")]


CONFIGS = {
    "plain": dict(r=4, lora_alpha=8),
    "alpha_lt_r": dict(r=8, lora_alpha=3),
    "r1_big_alpha": dict(r=1, lora_alpha=32),
    "rslora": dict(r=4, lora_alpha=8, use_rslora=True),
    "rslora_r16": dict(r=16, lora_alpha=5, use_rslora=True),
    "patterns": dict(
        r=4, lora_alpha=8,
        rank_pattern={"layer.0.attention.self.query": 2, "layer.1.attention.self.value": 6},
        alpha_pattern={"value": 3, "layer.1.attention.self.query": 20},
    ),
    "rslora_patterns": dict(
        r=4, lora_alpha=8, use_rslora=True,
        rank_pattern={"layer.1.attention.self.query": 2}, alpha_pattern={"layer.0.attention.self.value": 5},
    ),
}


def expected_scaling(cfg: dict, module: str) -> tuple[int, float]:
    """(r, s) per module from the config alone, by hand (suffix match as in peft)."""
    r, alpha = cfg["r"], cfg["lora_alpha"]
    for pattern, value in cfg.get("rank_pattern", {}).items():
        if module == pattern or module.endswith("." + pattern):
            r = value
    for pattern, value in cfg.get("alpha_pattern", {}).items():
        if module == pattern or module.endswith("." + pattern):
            alpha = value
    return r, alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)


# ----------------------------------------------------------------------------------------------
# Basic formulas
# ----------------------------------------------------------------------------------------------


def test_lora_scaling_and_delta_by_hand():
    assert lora_scaling(16, 8) == 2.0
    assert lora_scaling(16, 4, use_rslora=True) == 8.0
    with pytest.raises(LorakitError):
        lora_scaling(8, 0)
    A = torch.arange(6.0).reshape(2, 3)  # r=2, d_in=3
    B = torch.arange(8.0).reshape(4, 2)  # d_out=4
    expected = 0.5 * np.einsum("or,ri->oi", B.numpy(), A.numpy())
    np.testing.assert_allclose(lora_delta(A, B, 0.5).numpy(), expected)
    upd = LoRAUpdate(A, B, 0.5)
    assert (upd.rank, upd.d_in, upd.d_out, upd.shape) == (2, 3, 4, (4, 3))
    torch.testing.assert_close(upd.folded().delta(), upd.delta())
    assert upd.folded().scaling == 1.0
    with pytest.raises(LorakitError):
        LoRAUpdate(A, B.T, 1.0)  # B must be (d_out, r)
    with pytest.raises(LorakitError):
        lora_delta(A, torch.ones(4, 3), 1.0)


# ----------------------------------------------------------------------------------------------
# Reading: live model, safetensors folder, .bin folder — against peft's merge_and_unload
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["model", "safetensors", "bin"])
@pytest.mark.parametrize("cfg_name", list(CONFIGS))
def test_read_adapter_matches_peft_merge_and_unload(cfg_name, source, tmp_path):
    cfg = CONFIGS[cfg_name]
    pm, w0 = make_peft(seed=1, **cfg)
    reference = peft_merged_deltas(pm, w0)
    if source == "model":
        adapter = read_adapter(pm)
    else:
        folder = tmp_path / "adapter"
        pm.save_pretrained(folder, safe_serialization=(source == "safetensors"))
        present = ADAPTER_WEIGHTS if source == "safetensors" else ADAPTER_WEIGHTS_BIN
        absent = ADAPTER_WEIGHTS_BIN if source == "safetensors" else ADAPTER_WEIGHTS
        assert (folder / present).is_file() and not (folder / absent).exists()
        adapter = read_adapter(folder)

    assert sorted(adapter) == sorted(MODULES)
    for module in MODULES:
        upd = adapter[module]
        r, s = expected_scaling(cfg, module)
        assert upd.rank == r, module
        assert upd.scaling == pytest.approx(s, rel=1e-12), module
        assert upd.A.dtype == torch.float32 and upd.B.dtype == torch.float32
        delta = upd.delta()
        assert float(reference[module].abs().max()) > 1e-2  # not vacuous (B was randomised)
        assert float((delta - reference[module]).abs().max()) < 1e-6, module
    # adapter_deltas is the same thing for the whole adapter
    for module, delta in adapter_deltas(adapter).items():
        assert float((delta - reference[module]).abs().max()) < 1e-6


def test_read_adapter_returns_detached_copies():
    pm, _ = make_peft(seed=2)
    adapter = read_adapter(pm)
    layer = lora_layers(pm)["base_model.model." + MODULES[0]]
    before = adapter[MODULES[0]].B.clone()
    with torch.no_grad():
        layer.lora_B["default"].weight.add_(1.0)
    torch.testing.assert_close(adapter[MODULES[0]].B, before)
    assert not adapter[MODULES[0]].A.requires_grad


@pytest.mark.parametrize("safe", [True, False])
def test_read_head_equals_trained_head(safe, tmp_path):
    pm, _ = make_peft(seed=3)
    pm.save_pretrained(tmp_path / "a", safe_serialization=safe)
    head = read_head(tmp_path / "a")
    trained = pm.base_model.model.classifier.modules_to_save["default"]
    assert set(head) == {"classifier.weight", "classifier.bias"}
    torch.testing.assert_close(head["classifier.weight"], trained.weight.detach(), atol=0, rtol=0)
    torch.testing.assert_close(head["classifier.bias"], trained.bias.detach(), atol=0, rtol=0)
    # and it really is the trained head, not the base model's original one
    assert not torch.equal(head["classifier.weight"], tiny_bert(3).classifier.weight)


# ----------------------------------------------------------------------------------------------
# PEFT naming: lorakit's keys are the keys peft itself writes and reads
# ----------------------------------------------------------------------------------------------


def test_peft_key_helpers_by_hand():
    module = "bert.encoder.layer.0.attention.self.query"
    assert PEFT_PREFIX == "base_model.model."
    assert strip_peft_prefix(PEFT_PREFIX + module) == module
    assert strip_peft_prefix(module) == module  # no prefix: unchanged
    assert peft_key("classifier.weight") == "base_model.model.classifier.weight"
    assert peft_lora_key(module, "A") == f"base_model.model.{module}.lora_A.weight"
    assert peft_lora_key(module, "B") == f"base_model.model.{module}.lora_B.weight"
    with pytest.raises(LorakitError, match="'A' or 'B'"):
        peft_lora_key(module, "C")
    assert parse_peft_lora_key(f"base_model.model.{module}.lora_B.default.weight") == (module, "B")
    assert parse_peft_lora_key(f"{module}.lora_A.weight") == (module, "A")
    for not_lora in ("base_model.model.classifier.weight", f"base_model.model.{module}.lora_A.bias",
                     f"base_model.model.{module}.weight"):
        assert parse_peft_lora_key(not_lora) is None


@pytest.mark.parametrize("cfg_name", ["plain", "patterns"])
def test_peft_keys_round_trip_against_keys_peft_writes(cfg_name, tmp_path):
    """Every key of peft's saved adapter_model.safetensors parses to a module of the model, and back."""
    pm, _ = make_peft(seed=10, **CONFIGS[cfg_name])
    pm.save_pretrained(tmp_path / "a")
    saved = load_file(str(tmp_path / "a" / ADAPTER_WEIGHTS))
    lora_keys = {k: parse_peft_lora_key(k) for k in saved if parse_peft_lora_key(k) is not None}
    assert sorted({m for m, _ in lora_keys.values()}) == sorted(MODULES)
    assert sorted(p for _, p in lora_keys.values()) == sorted(["A", "B"] * len(MODULES))
    for key, (module, part) in lora_keys.items():
        assert peft_lora_key(module, part) == key
        layer = pm.base_model.model.get_submodule(module)
        torch.testing.assert_close(saved[key], getattr(layer, f"lora_{part}")["default"].weight.detach())
    head_keys = [k for k in saved if k not in lora_keys]
    assert sorted(strip_peft_prefix(k) for k in head_keys) == ["classifier.bias", "classifier.weight"]
    assert all(peft_key(strip_peft_prefix(k)) == k for k in head_keys)
    # a live model's named_modules: stripped names are the base model's, with the prefix peft's
    for name in lora_layers(pm):
        assert peft_key(strip_peft_prefix(name)) == name and strip_peft_prefix(name) in MODULES


def test_adapter_written_with_peft_keys_has_the_keys_peft_writes(tmp_path):
    """write_adapter's state dict has exactly the key names peft's save_pretrained gives the same model."""
    pm, _ = make_peft(seed=11)
    pm.save_pretrained(tmp_path / "peft")
    head = read_head(tmp_path / "peft")
    write_adapter(read_adapter(pm), tmp_path / "ours", base_model_name="tiny", extra_state=head)
    assert sorted(load_file(str(tmp_path / "ours" / ADAPTER_WEIGHTS))) == sorted(
        load_file(str(tmp_path / "peft" / ADAPTER_WEIGHTS))
    )


# ----------------------------------------------------------------------------------------------
# Writing: a PEFT adapter folder that peft loads, and a merged model folder
# ----------------------------------------------------------------------------------------------


def mixed_adapter(seed: int = 0) -> tuple[dict[str, LoRAUpdate], dict[str, torch.Tensor]]:
    """Mixed ranks (4, 4, 2, 6) and scalings, plus a random classifier head."""
    g = torch.Generator().manual_seed(seed)
    ranks = [4, 4, 2, 6]
    scalings = [0.5, 2.0, 1.7, 3.0]
    adapter = {
        m: LoRAUpdate(torch.randn(r, 32, generator=g) * 0.3, torch.randn(32, r, generator=g) * 0.3, s)
        for m, r, s in zip(MODULES, ranks, scalings)
    }
    head = {
        "classifier.weight": torch.randn(NUM_LABELS, 32, generator=g),
        "classifier.bias": torch.randn(NUM_LABELS, generator=g),
    }
    return adapter, head


def reference_logits(adapter, head, inputs) -> torch.Tensor:
    """base + ΔW with the adapter's head, built without peft."""
    ref = tiny_bert(0)
    apply_deltas(ref, adapter_deltas(adapter))
    with torch.no_grad():
        ref.classifier.weight.copy_(head["classifier.weight"])
        ref.classifier.bias.copy_(head["classifier.bias"])
    return logits(ref, inputs)


@pytest.mark.parametrize("task_type", [None, "SEQ_CLS"])
def test_write_adapter_loads_in_peft_with_same_logits(task_type, tmp_path):
    adapter, head = mixed_adapter()
    out = write_adapter(adapter, tmp_path / "out", base_model_name="tiny-bert", extra_state=head, task_type=task_type)
    assert out == tmp_path / "out" and (out / ADAPTER_CONFIG).is_file() and (out / ADAPTER_WEIGHTS).is_file()
    assert tmp_siblings(tmp_path, "out") == []

    loaded = PeftModel.from_pretrained(tiny_bert(0), out).eval()
    ranks = {short(n): m.lora_A["default"].weight.shape[0] for n, m in lora_layers(loaded).items()}
    assert ranks == {m: u.rank for m, u in adapter.items()}  # rank_pattern honoured by peft
    inputs = batch(1)
    expected = reference_logits(adapter, head, inputs)
    got = logits(loaded, inputs)
    assert float((got - expected).abs().max()) < 1e-5
    # ... and without the adapter's head the logits differ (the head was really loaded)
    assert float((logits(tiny_bert(0), inputs) - expected).abs().max()) > 1e-2

    # lorakit reads back what it wrote: same ΔW, same head
    back = read_adapter(out)
    assert sorted(back) == sorted(adapter)
    for m, upd in adapter.items():
        assert float((back[m].delta() - upd.delta()).abs().max()) < 1e-6
    back_head = read_head(out)
    assert set(back_head) == set(head)
    for k in head:
        torch.testing.assert_close(back_head[k], head[k], atol=0, rtol=0)


def test_write_adapter_roundtrip_through_peft_merge(tmp_path):
    """An adapter written by lorakit, loaded and merged by peft, gives the same ΔW."""
    adapter, head = mixed_adapter(seed=5)
    out = write_adapter(adapter, tmp_path / "out", base_model_name="tiny", extra_state=head)
    w0 = {m: tiny_bert(0).get_submodule(m).weight.detach().clone() for m in MODULES}
    merged = PeftModel.from_pretrained(tiny_bert(0), out).merge_and_unload()
    for m, upd in adapter.items():
        delta = merged.get_submodule(m).weight.detach() - w0[m]
        assert float((delta - upd.delta()).abs().max()) < 1e-6, m


def test_write_merged_loads_with_from_pretrained(tmp_path):
    adapter, _ = mixed_adapter(seed=2)
    deltas = adapter_deltas(adapter)
    model = tiny_bert(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = write_merged(model, deltas, tmp_path / "merged")
    assert out == tmp_path / "merged" and tmp_siblings(tmp_path, "merged") == []
    # the caller's model is restored (W + ΔW − ΔW: equal up to fp32 rounding)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0)

    loaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert loaded.config.num_labels == NUM_LABELS
    inputs = batch(3)
    ref = tiny_bert(0)
    apply_deltas(ref, deltas)
    expected = logits(ref, inputs)
    assert float((logits(loaded, inputs) - expected).abs().max()) < 1e-5
    assert float((logits(tiny_bert(0), inputs) - expected).abs().max()) > 1e-3
    for m in MODULES:
        torch.testing.assert_close(loaded.get_submodule(m).weight, ref.get_submodule(m).weight, atol=1e-6, rtol=0)


def test_write_merged_of_peft_adapter_equals_peft_model(tmp_path):
    """End to end: peft adapter → read_adapter → write_merged has the peft model's logits (head included)."""
    pm, _ = make_peft(seed=4, r=4, lora_alpha=12, use_rslora=True)
    inputs = batch(4)
    expected = logits(pm, inputs)
    pm.save_pretrained(tmp_path / "adapter")
    base = tiny_bert(4)
    with torch.no_grad():
        for k, v in read_head(tmp_path / "adapter").items():
            base.get_parameter(k).copy_(v)
    out = write_merged(base, adapter_deltas(read_adapter(tmp_path / "adapter")), tmp_path / "merged")
    loaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert float((logits(loaded, inputs) - expected).abs().max()) < 1e-5


# ----------------------------------------------------------------------------------------------
# factorize_delta against a brute-force SVD
# ----------------------------------------------------------------------------------------------


def test_factorize_delta_full_rank_is_exact():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(24, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 32, generator=g, dtype=torch.float64)
    A, B, energy = factorize_delta(delta)
    assert A.shape == (24, 32) and B.shape == (24, 24)  # full SVD rank: min(d_out, d_in)
    assert energy == 1.0
    torch.testing.assert_close(B @ A, delta, atol=1e-10, rtol=0)
    A5, B5, energy5 = factorize_delta(delta, rank=5)  # the true rank: nothing is lost
    assert A5.shape == (5, 32) and B5.shape == (24, 5)
    torch.testing.assert_close(B5 @ A5, delta, atol=1e-10, rtol=0)
    assert energy5 == pytest.approx(1.0, abs=1e-12)
    # float32 in, float32 out, still exact to fp32 precision
    A32, B32, _ = factorize_delta(delta.float(), rank=5)
    assert A32.dtype == torch.float32 and B32.dtype == torch.float32
    torch.testing.assert_close(B32 @ A32, delta.float(), atol=1e-5, rtol=0)


def test_factorize_delta_truncated_energy_is_singular_value_ratio():
    g = torch.Generator().manual_seed(1)
    delta = torch.randn(20, 30, generator=g, dtype=torch.float64)
    k = 6
    A, B, energy = factorize_delta(delta, rank=k)
    s = np.linalg.svd(delta.numpy(), compute_uv=False)
    expected = float((s[:k] ** 2).sum() / (s**2).sum())
    assert energy < 1.0
    assert energy == pytest.approx(expected, rel=1e-10)
    # Eckart–Young: the residual is exactly the cut singular values
    residual = float(((delta - B @ A) ** 2).sum())
    assert residual == pytest.approx(float((s[k:] ** 2).sum()), rel=1e-8)
    # balanced factors: A Aᵀ = Bᵀ B = Σ_k
    torch.testing.assert_close(A @ A.T, B.T @ B, atol=1e-10, rtol=0)
    np.testing.assert_allclose(np.diag((A @ A.T).numpy()), s[:k], rtol=1e-10)


def test_factorize_delta_zero_and_rank_above_full():
    A, B, energy = factorize_delta(torch.zeros(4, 6))
    assert energy == 1.0 and float((B @ A).abs().max()) == 0.0
    delta = torch.randn(4, 6, dtype=torch.float64)
    A, B, energy = factorize_delta(delta, rank=50)
    assert A.shape == (4, 6) and B.shape == (4, 4) and energy == 1.0


# ----------------------------------------------------------------------------------------------
# Errors: one LorakitError with a one-line message
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def saved_adapter(tmp_path) -> Path:
    pm, _ = make_peft(seed=6)
    folder = tmp_path / "adapter"
    pm.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_factor_in_saved_adapter(saved_adapter, value):
    path = saved_adapter / ADAPTER_WEIGHTS
    state = load_file(str(path))
    key = f"base_model.model.{MODULES[2]}.lora_A.weight"
    assert key in state
    state[key][1, 3] = value
    save_file(state, str(path))
    with pytest.raises(LorakitError, match="NaN or inf") as exc:
        read_adapter(saved_adapter)
    assert MODULES[2] in str(exc.value)
    assert_one_line(exc)


def test_nan_factor_in_live_model():
    pm, _ = make_peft(seed=7)
    with torch.no_grad():
        lora_layers(pm)["base_model.model." + MODULES[1]].lora_B["default"].weight[0, 0] = float("nan")
    with pytest.raises(LorakitError, match="NaN") as exc:
        read_adapter(pm)
    assert_one_line(exc)


@pytest.mark.parametrize("garbage", [b"", b"not a safetensors file at all" * 10, b"\xff" * 8 + b"{}" * 50])
def test_corrupt_safetensors(saved_adapter, garbage):
    (saved_adapter / ADAPTER_WEIGHTS).write_bytes(garbage)
    with pytest.raises(LorakitError, match="corrupt") as exc:
        read_adapter(saved_adapter)
    assert_one_line(exc)
    with pytest.raises(LorakitError, match="corrupt"):
        read_head(saved_adapter)


def test_truncated_safetensors(saved_adapter):
    path = saved_adapter / ADAPTER_WEIGHTS
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])  # header intact, data cut
    with pytest.raises(LorakitError) as exc:
        read_adapter(saved_adapter)
    assert_one_line(exc)


def test_corrupt_bin(tmp_path):
    pm, _ = make_peft(seed=8)
    pm.save_pretrained(tmp_path / "a", safe_serialization=False)
    (tmp_path / "a" / ADAPTER_WEIGHTS_BIN).write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(LorakitError, match="corrupt") as exc:
        read_adapter(tmp_path / "a")
    assert_one_line(exc)


def test_missing_config_and_weights(saved_adapter, tmp_path):
    (saved_adapter / ADAPTER_CONFIG).unlink()
    with pytest.raises(LorakitError, match=ADAPTER_CONFIG) as exc:
        read_adapter(saved_adapter)
    assert_one_line(exc)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ADAPTER_CONFIG).write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    with pytest.raises(LorakitError, match=ADAPTER_WEIGHTS) as exc:
        read_adapter(empty)
    assert_one_line(exc)
    (empty / ADAPTER_CONFIG).write_text("{not json")
    with pytest.raises(LorakitError):
        read_adapter(empty)


def test_dora_is_refused(tmp_path):
    pm, _ = make_peft(seed=9, use_dora=True)
    with pytest.raises(LorakitError, match="DoRA") as exc:
        read_adapter(pm)
    assert_one_line(exc)
    pm.save_pretrained(tmp_path / "dora")
    assert json.loads((tmp_path / "dora" / ADAPTER_CONFIG).read_text())["use_dora"] is True
    with pytest.raises(LorakitError, match="DoRA") as exc:
        read_adapter(tmp_path / "dora")
    assert_one_line(exc)


def test_non_lora_peft_type_is_refused(saved_adapter):
    cfg = json.loads((saved_adapter / ADAPTER_CONFIG).read_text())
    cfg["peft_type"] = "IA3"
    (saved_adapter / ADAPTER_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(LorakitError, match="IA3"):
        read_adapter(saved_adapter)


def test_model_without_lora_layers():
    with pytest.raises(LorakitError, match="no LoRA layers") as exc:
        read_adapter(tiny_bert(0))
    assert_one_line(exc)


def test_check_compatible():
    adapter, _ = mixed_adapter(seed=0)
    other, _ = mixed_adapter(seed=1)
    check_compatible([adapter, other], names=["a", "b"])  # same modules and shapes: fine
    check_compatible([adapter])

    fewer = {m: u for m, u in other.items() if m != MODULES[3]}
    with pytest.raises(LorakitError, match="different modules") as exc:
        check_compatible([adapter, fewer], names=["a", "b"])
    assert MODULES[3] in str(exc.value) and str(exc.value).startswith("b ")
    assert_one_line(exc)

    renamed = dict(other)
    renamed["bert.encoder.layer.0.attention.self.key"] = renamed.pop(MODULES[0])
    with pytest.raises(LorakitError, match="different modules"):
        check_compatible([adapter, renamed])

    wrong_shape = dict(other)
    wrong_shape[MODULES[1]] = LoRAUpdate(torch.randn(4, 48), torch.randn(32, 4), 1.0)
    with pytest.raises(LorakitError, match=MODULES[1]) as exc:
        check_compatible([adapter, wrong_shape], names=["a", "b"])
    assert "(32, 48)" in str(exc.value)
    assert_one_line(exc)

    with pytest.raises(LorakitError):
        check_compatible([])


def test_apply_deltas_errors_and_sign():
    model = tiny_bert(0)
    w = model.get_submodule(MODULES[0]).weight.detach().clone()
    d = torch.randn(32, 32)
    apply_deltas(model, {MODULES[0]: d}, sign=-2.0)
    torch.testing.assert_close(model.get_submodule(MODULES[0]).weight.detach(), w - 2.0 * d)

    model = tiny_bert(0)
    with pytest.raises(LorakitError, match="shape") as exc:
        apply_deltas(model, {MODULES[0]: torch.zeros(32, 31)})
    assert_one_line(exc)
    with pytest.raises(LorakitError, match="not in the model") as exc:
        apply_deltas(model, {"bert.encoder.layer.7.attention.self.query": torch.zeros(32, 32)})
    assert_one_line(exc)
    # nothing was changed by the failed calls (each had a single bad entry)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, tiny_bert(0).state_dict()[k], atol=0, rtol=0)


def test_apply_deltas_is_all_or_nothing():
    model = tiny_bert(0)
    good = {MODULES[0]: torch.ones(32, 32), "no.such.module": torch.zeros(32, 32)}
    with pytest.raises(LorakitError):
        apply_deltas(model, good)
    torch.testing.assert_close(model.get_submodule(MODULES[0]).weight, tiny_bert(0).get_submodule(MODULES[0]).weight)


# ----------------------------------------------------------------------------------------------
# _atomic_dir: refuse to clobber, never leave a half-written folder
# ----------------------------------------------------------------------------------------------


def test_existing_output_without_overwrite_is_untouched(tmp_path):
    adapter, head = mixed_adapter()
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(LorakitError, match="already exists") as exc:
        write_adapter(adapter, out, base_model_name="tiny", extra_state=head)
    assert_one_line(exc)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"
    with pytest.raises(LorakitError, match="already exists"):
        write_merged(tiny_bert(0), adapter_deltas(adapter), out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert tmp_siblings(tmp_path, "out") == []

    # with overwrite the old content is replaced
    write_adapter(adapter, out, base_model_name="tiny", extra_state=head, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / ADAPTER_WEIGHTS).is_file()
    assert tmp_siblings(tmp_path, "out") == []


def test_failure_during_write_adapter_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    adapter, head = mixed_adapter()
    with pytest.raises(RuntimeError, match="disk full"):
        write_adapter(adapter, tmp_path / "out", base_model_name="tiny", extra_state=head)
    assert list(tmp_path.iterdir()) == []

    # an existing folder survives a failed overwrite
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("precious")
    with pytest.raises(RuntimeError):
        write_adapter(adapter, old, base_model_name="tiny", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert (old / "keep.txt").read_text() == "precious"


def test_failure_during_write_merged_leaves_nothing_and_restores_model(tmp_path, monkeypatch):
    adapter, _ = mixed_adapter()
    deltas = adapter_deltas(adapter)
    model = tiny_bert(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        write_merged(model, deltas, tmp_path / "merged")
    assert list(tmp_path.iterdir()) == []
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0)

    # a bad delta: a one-line error and no folder
    bad = dict(deltas)
    bad["bert.encoder.layer.9.attention.self.query"] = torch.zeros(32, 32)
    with pytest.raises(LorakitError) as exc:
        write_merged(tiny_bert(0), bad, tmp_path / "merged")
    assert_one_line(exc)
    assert list(tmp_path.iterdir()) == []


def test_write_merged_with_bad_delta_leaves_model_unchanged(tmp_path):
    adapter, _ = mixed_adapter()
    bad = adapter_deltas(adapter)
    bad["bert.encoder.layer.9.attention.self.query"] = torch.zeros(32, 32)  # last: the good ones go first
    model = tiny_bert(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LorakitError):
        write_merged(model, bad, tmp_path / "merged")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0)


def test_unwritable_parent_is_a_lorakit_error(tmp_path):
    adapter, _ = mixed_adapter()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(LorakitError, match="cannot write") as exc:
        write_adapter(adapter, blocker / "out", base_model_name="tiny")
    assert_one_line(exc)


def test_write_adapter_refuses_empty(tmp_path):
    with pytest.raises(LorakitError):
        write_adapter({}, tmp_path / "out", base_model_name="tiny")
    assert not (tmp_path / "out").exists()


def test_atomic_folder_commits_on_success_and_leaves_nothing_on_failure(tmp_path):
    from lorakit.fsutil import atomic_folder

    out = tmp_path / "out"
    with atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("one")
        assert not out.exists()                      # nothing visible until the block ends
    assert (out / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_folder(out) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("boom")
    assert (out / "a.txt").read_text() == "one"      # the old folder survives a failed rewrite
    with pytest.raises(LorakitError, match="already exists"):
        with atomic_folder(out, overwrite=False):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]   # no temp folders left
