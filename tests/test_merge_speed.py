"""The chunked TIES / DARE kernels (lorakit.merge.ties, .dare, .blocks): exact parity with peft and
with the unchunked reference rules, on inputs that force every path (sampled bracket, ties at the
threshold, zero columns, density 1, k = 0 / 1, many blocks), and bounded memory."""

from __future__ import annotations

import warnings

import pytest
import torch
from peft.utils import merge_utils as pm

from lorakit.run.bench import random_updates
from lorakit.run.timing import peak_memory as _peak, reset_peak as _reset_peak
from lorakit.lora.update import LoRAUpdate
from lorakit.merge import blocks, dare, disjoint_mean, elect_sign, merge_layer, ties, trim_topk
from lorakit.merge.blocks import FactorBlocks, bernoulli_keep, elect_disjoint_mean_, row_spans, stack_deltas


def reference_ties(stack, lam, density):
    """The old rule: topk trim per task, then elect + disjoint mean on the whole stack."""
    trimmed = torch.stack([trim_topk(t, density) for t in stack])
    return lam * disjoint_mean(trimmed, elect_sign(trimmed))


@pytest.fixture
def small_blocks(monkeypatch):
    """Force the sampled-bracket path and many blocks on small inputs."""
    monkeypatch.setattr(ties, "EXACT_NUMEL", 0)
    monkeypatch.setattr(ties, "SAMPLE_SIZE", 512)
    monkeypatch.setattr(blocks, "BLOCK_ENTRIES", 8 * 16 * 24)


def integer_updates(n, d_out, d_in, r=2, seed=0, zero_cols=0):
    """ΔW with small integer entries: magnitudes tie everywhere, also at the threshold."""
    gen = torch.Generator().manual_seed(seed)
    ups = []
    for _ in range(n):
        A = torch.randint(-2, 3, (r, d_in), generator=gen).float()
        A[:, :zero_cols] = 0
        ups.append(LoRAUpdate(A, torch.randint(-2, 3, (d_out, r), generator=gen).float(), 1.0))
    return ups


def peft_ties(ups, lam, density):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # density 1
        return pm.ties([u.delta(torch.float32) for u in ups], torch.full((len(ups),), lam), density)


CASES = [
    ("gaussian", lambda: random_updates(5, 70, 48, 4, seed=3), [0.2, 0.5, 0.9, 1.0]),
    ("ties at the threshold", lambda: integer_updates(4, 64, 40), [0.1, 0.3, 0.6]),
    ("zero columns", lambda: integer_updates(3, 64, 40, seed=2, zero_cols=25), [0.2, 0.5, 0.8]),
    ("k = 0 and k = 1", lambda: random_updates(3, 20, 16, 2, seed=4), [1e-4, 1 / 320 + 1e-9]),
]


@pytest.mark.parametrize("name, make, densities", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("forced", [False, True], ids=["default", "bracket+blocks"])
def test_fast_ties_equals_peft_and_the_topk_rule_bit_for_bit(name, make, densities, forced, request):
    if forced:
        request.getfixturevalue("small_blocks")
    ups = make()
    for density in densities:
        ours = merge_layer(ups, "ties", lam=0.7, density=density)
        assert torch.equal(ours, reference_ties(stack_deltas(ups), 0.7, density)), (name, density)
        torch.testing.assert_close(ours, peft_ties(ups, 0.7, density), rtol=1e-6, atol=1e-7)
        assert torch.equal(ties.ties_dense(stack_deltas(ups), 0.7, density), ours)


def test_tie_case_really_ties_and_uses_the_topk_choice(small_blocks):
    ups = integer_updates(4, 64, 40)
    rule = ties.trim_rule(FactorBlocks(ups), 0.3)
    assert rule.masks, "integer updates must tie at the threshold"
    for i, mask in rule.masks.items():
        assert int(mask.sum()) == ties.trim_count(64 * 40, 0.3)


def test_zero_columns_take_the_keep_all_branch(small_blocks):
    ups = integer_updates(3, 64, 40, seed=2, zero_cols=25)  # ≤ 15/40 nonzero columns
    rule = ties.trim_rule(FactorBlocks(ups), 0.8)
    assert rule.threshold == [0.0, 0.0, 0.0] and not rule.masks


def test_chunked_equals_unchunked_bit_for_bit(monkeypatch):
    ups = random_updates(4, 300, 96, 8, seed=9)
    whole = merge_layer(ups, "ties", density=0.3)
    whole_dare = merge_layer(ups, "dare", seed=5, combine="ties")
    monkeypatch.setattr(blocks, "BLOCK_ENTRIES", 4 * 16 * 96)
    assert len(FactorBlocks(ups).spans()) > 4
    assert torch.equal(merge_layer(ups, "ties", density=0.3), whole)
    assert torch.equal(merge_layer(ups, "dare", seed=5, combine="ties"), whole_dare)


def test_row_spans_cover_the_rows_with_no_short_block():
    for rows in (16, 17, 31, 100, 1000):
        spans = row_spans(rows, 10, 4, 4 * 10 * 16)
        assert spans[0][0] == 0 and spans[-1][1] == rows * 10
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert all((b - a) // 10 >= 16 for a, b in spans) or len(spans) == 1


def test_factor_blocks_are_bit_identical_to_delta():
    ups = random_updates(3, 200, 64, 16, seed=1)
    src = FactorBlocks(ups)
    got = torch.cat([src.block(a, b) for a, b in row_spans(200, 64, 3, 3 * 64 * 32)], dim=1)
    assert torch.equal(got, stack_deltas(ups).reshape(3, -1))


def test_elect_disjoint_mean_matches_the_two_blocks():
    stack = torch.tensor([[1.0, -2.0, 0.0, 3.0, 0.0], [-1.0, 1.0, 0.0, -4.0, 2.0], [0.0, 0.5, 0.0, 0.5, -2.0]])
    assert torch.equal(elect_disjoint_mean_(stack.clone()), disjoint_mean(stack, elect_sign(stack)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("keep", [0.5, 0.7, 0.123])
def test_bernoulli_keep_is_torch_bernoulli_and_leaves_the_same_state(dtype, keep):
    ours_gen, torch_gen = torch.Generator().manual_seed(21), torch.Generator().manual_seed(21)
    torch.bernoulli(torch.full((7,), 0.3), generator=torch_gen)  # mid-block start
    torch.bernoulli(torch.full((7,), 0.3), generator=ours_gen)
    masks = bernoulli_keep(ours_gen, 3, 1000, keep, dtype)
    for row in masks:
        assert torch.equal(row, torch.bernoulli(torch.full((1000,), keep, dtype=dtype), generator=torch_gen).bool())
    assert torch.equal(ours_gen.get_state(), torch_gen.get_state())


@pytest.mark.parametrize("combine, peft_fn", [("linear", pm.dare_linear), ("ties", pm.dare_ties)])
def test_fast_dare_equals_peft_and_the_torch_bernoulli_rule(combine, peft_fn, monkeypatch):
    monkeypatch.setattr(blocks, "BLOCK_ENTRIES", 4 * 16 * 48)
    ups = random_updates(4, 100, 48, 4, seed=6)
    ours = merge_layer(ups, "dare", lam=0.8, drop_rate=0.3, seed=11, combine=combine)
    torch.manual_seed(11)
    ref = peft_fn([u.delta(torch.float32) for u in ups], torch.full((4,), 0.8), 1.0 - 0.3)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)
    assert torch.equal(ours != 0, ref != 0)
    gen = torch.Generator().manual_seed(11)  # the reference rule with torch.bernoulli's own masks
    dropped = torch.stack([t * torch.bernoulli(torch.full_like(t, 0.7), generator=gen) / 0.7 for t in stack_deltas(ups)])
    expected = 0.8 * (dropped.sum(0) if combine == "linear" else disjoint_mean(dropped, elect_sign(dropped)))
    assert torch.equal(ours, expected)
    assert torch.equal(dare.dare_dense(stack_deltas(ups), 0.8, 0.3, 11, combine), ours)


def test_ties_from_factors_stays_far_below_the_dense_stack_in_memory():
    ups = random_updates(8, 2048, 2048, 16, seed=2)  # dense stack: 8 × 4 M float32 = 128 MiB
    stack_bytes = 8 * 2048 * 2048 * 4
    merge_layer(random_updates(8, 64, 64, 16), "ties")  # warm-up
    source, baseline = _reset_peak(torch.device("cpu"))
    if source != "VmHWM":
        pytest.skip("needs Linux VmHWM")
    merge_layer(ups, "ties", density=0.2)
    fast = _peak(torch.device("cpu"), source) - baseline
    source, baseline = _reset_peak(torch.device("cpu"))
    reference_ties(stack_deltas(ups), 1.0, 0.2)
    dense = _peak(torch.device("cpu"), source) - baseline
    assert dense > stack_bytes  # the reference holds the stack (and its trimmed copy)
    assert fast < 0.75 * stack_bytes, (fast / 2**20, dense / 2**20)
