"""Tests of lorakit.run.bench on tiny shapes: record fields, JSON-ability, peft ratios."""

from __future__ import annotations

import json
import math

import pytest

import peft.utils.merge_utils  # noqa: F401  (imported at collection: peft's import takes seconds)

from lorakit.run.bench import LLAMA3_8B_SHAPES, bench_llm_shapes, bench_merge
from lorakit.merge import METHODS


def test_bench_merge_records():
    records = bench_merge(
        n_tasks=3, d_out=24, d_in=16, r=4, repeats=1, params={"do": {"steps": 5}}
    )
    json.dumps(records)  # JSON-able
    assert [rec["method"] for rec in records] == list(METHODS)
    for rec in records:
        assert {"method", "params", "n_tasks", "d_out", "d_in", "r", "device", "lorakit_s", "peft_s", "ratio"} <= set(rec)
        assert rec["lorakit_s"] > 0 and (rec["n_tasks"], rec["d_out"], rec["d_in"], rec["r"]) == (3, 24, 16, 4)
        if rec["method"] in ("task_arithmetic", "ties", "dare"):
            assert rec["peft_s"] > 0 and math.isfinite(rec["ratio"]) and rec["ratio"] > 0
        else:
            assert rec["peft_s"] is None and rec["ratio"] is None
    do = next(rec for rec in records if rec["method"] == "do")
    assert do["ortho_s"] > 0 and do["params"]["steps"] == 5
    assert set(do["ortho"]) == {"A", "B"} and len(do["ortho"]["A"]["relative_perturbation"]) == 3
    assert do["ortho"]["B"]["cross_after"] < do["ortho"]["B"]["cross_before"]


def test_bench_llm_shapes_records():
    assert LLAMA3_8B_SHAPES["k_proj"] == (1024, 4096) and LLAMA3_8B_SHAPES["down_proj"] == (4096, 14336)
    assert len(LLAMA3_8B_SHAPES) == 7
    shapes = {"q_proj": (8, 8), "down_proj": (8, 20)}
    records = bench_llm_shapes(
        n_tasks=2, r=2, n_layers=2, methods=["task_arithmetic", "do"], shapes=shapes, params={"do": {"steps": 3}}
    )
    json.dumps(records)
    assert [rec["method"] for rec in records] == ["task_arithmetic", "do"]
    for rec in records:
        assert rec["n_layers"] == 2 and rec["modules"] == ["q_proj", "down_proj"]
        assert rec["total_s"] > 0 and rec["total_s"] == sum(rec["module_s"].values())
        assert rec["per_layer_s"] == rec["total_s"] / 2
        assert rec["peak_mem_bytes"] > 0 and isinstance(rec["mem_source"], str)


def test_peft_call_does_the_same_merge_as_lorakit():
    """The ratio compares equal work: peft's call on the dense ΔW_i gives lorakit's merge of the factors."""
    import torch

    from lorakit.run.bench import _peft_call, random_updates, resolve_bench_method
    from lorakit.merge import merge_layer, resolve_params

    updates = random_updates(3, 12, 10, 2, seed=5)
    dense = [u.delta(torch.float32) for u in updates]
    for name, given in [("task_arithmetic", {"lam": 0.7}), ("ties", {"density": 0.3}), ("dare", {"seed": 3})]:
        method, _ = resolve_bench_method(name)
        ours = merge_layer(updates, method, **given)
        theirs = _peft_call(method, resolve_params(method, given), dense)()
        assert torch.allclose(ours, theirs, atol=1e-6), name
    assert _peft_call("knots", resolve_params("knots", {}), dense) is None


def test_resolve_bench_method_variants():
    import pytest

    from lorakit.run.bench import resolve_bench_method
    from lorakit.errors import LorakitError

    assert resolve_bench_method("do_dare") == ("do", {"base": "dare"})
    assert resolve_bench_method("do", {"do": {"steps": 4}}) == ("do", {"steps": 4})
    with pytest.raises(LorakitError):
        resolve_bench_method("do_nope")


def test_bench_llm_shapes_roofline_fields():
    shapes = {"q_proj": (32, 16), "down_proj": (16, 48)}
    (rec,) = bench_llm_shapes(n_tasks=3, r=2, n_layers=2, methods=["ties"], shapes=shapes)
    assert rec["bandwidth_bytes_s"] > 0 and rec["stack_bytes"] == 3 * 16 * 48 * 4
    # one read + write of each module's float32 stack, summed over the 2 layers
    expected = {name: 2 * 2 * 3 * d_out * d_in * 4 / rec["bandwidth_bytes_s"] for name, (d_out, d_in) in shapes.items()}
    assert rec["roofline_module_s"] == pytest.approx(expected)
    assert rec["roofline_s"] == pytest.approx(sum(expected.values())) and rec["roofline_s"] > 0
    assert rec["x_roofline"] == pytest.approx(rec["total_s"] / rec["roofline_s"]) and rec["x_roofline"] > 0
    assert rec["peft"]["x_roofline"] == pytest.approx(rec["peft"]["total_s"] / rec["roofline_s"])
