"""The causal track's primitives (lorakit.data.generative, lorakit.train.causal, lorakit.eval.causal) on a tiny random Llama (GQA) with the packaged WordPiece tokenizer: loss masking against a
brute-force log-softmax sum, batched left-padded greedy decoding against an unbatched, cache-free argmax loop."""

from __future__ import annotations

import pytest
import torch

from lorakit.data.generative import IGNORE_INDEX, encode_for_training, encode_prompts, format_prompt
from lorakit.eval.causal import exact_match, greedy_generate, normalize_answer, normalized_match
from lorakit.train.causal import masked_lm_loss
from lorakit.errors import LorakitError

PROMPTS = ["walk", "the cat sat on the mat", "run fast", "jump over the lazy brown dog today", "eat"]
TARGETS = ["walked", "sat down", "ran", "jumped", "ate"]


@pytest.fixture(scope="module")
def tokenizer():
    from lorakit.data.models import load_tokenizer

    tok = load_tokenizer("minilm")
    tok.eos_token = "[SEP]"  # WordPiece has no eos; any special token will do for the mechanics
    return tok


@pytest.fixture(scope="module")
def tiny_llama(tokenizer):
    """2 layers, 4 query heads sharing 2 key/value heads (GQA, as SmolLM2 and Llama-3), float64."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=tokenizer.cls_token_id, initializer_range=0.2)
    return LlamaForCausalLM(cfg).double().eval()


def test_labels_mask_exactly_the_prompt_and_the_padding(tokenizer):
    prompts = [format_prompt(p) for p in PROMPTS]
    enc = encode_for_training(tokenizer, prompts, TARGETS, max_length=64)
    eos = tokenizer.eos_token_id
    for i, (p, t) in enumerate(zip(prompts, TARGETS)):
        src = tokenizer(p, add_special_tokens=False)["input_ids"]
        tgt = tokenizer(" " + t, add_special_tokens=False)["input_ids"] + [eos]
        n = len(src) + len(tgt)
        assert enc["input_ids"][i, :n].tolist() == src + tgt
        assert enc["attention_mask"][i].tolist() == [1] * n + [0] * (enc["input_ids"].shape[1] - n)
        assert enc["labels"][i, :len(src)].eq(IGNORE_INDEX).all() and enc["labels"][i, n:].eq(IGNORE_INDEX).all()
        assert enc["labels"][i, len(src):n].tolist() == tgt


def test_a_long_prompt_is_cut_from_the_left_and_a_long_target_refused(tokenizer):
    prompt = " ".join(["word"] * 50) + " last"
    enc = encode_for_training(tokenizer, [prompt], ["done"], max_length=12)
    ids = enc["input_ids"][0].tolist()
    assert len(ids) == 12 and ids[-3] == tokenizer.convert_tokens_to_ids("last")  # last, done, eos
    with pytest.raises(LorakitError, match="over the limit of 4"):
        encode_for_training(tokenizer, ["x"], ["one two three four five six"], max_length=8)
    with pytest.raises(LorakitError, match="as many targets"):
        encode_for_training(tokenizer, ["x", "y"], ["a"], max_length=8)


def test_masked_loss_equals_a_brute_force_sum_over_target_tokens(tokenizer, tiny_llama):
    enc = encode_for_training(tokenizer, [format_prompt(p) for p in PROMPTS], TARGETS, max_length=64)
    logits = tiny_llama(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    total, count = 0.0, 0
    for i in range(len(PROMPTS)):
        for t in range(1, enc["input_ids"].shape[1]):
            if enc["labels"][i, t] != IGNORE_INDEX:
                total -= torch.log_softmax(logits[i, t - 1], -1)[enc["labels"][i, t]].item()
                count += 1
    assert count == sum(len(tokenizer(" " + t, add_special_tokens=False)["input_ids"]) + 1 for t in TARGETS)
    assert masked_lm_loss(logits, enc["labels"]).item() == pytest.approx(total / count, rel=1e-10)
    # HF's own loss on the same labels (it shifts internally) agrees
    hf = tiny_llama(**enc).loss.item()
    assert hf == pytest.approx(total / count, rel=1e-8)
    with pytest.raises(LorakitError, match="every label is masked"):
        masked_lm_loss(logits, torch.full_like(enc["labels"], IGNORE_INDEX))


def _greedy_one(model, ids: list[int], eos: int, steps: int) -> list[int]:
    """Greedy decoding of one unpadded prompt, no KV cache: argmax of the full forward each step."""
    out = []
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(input_ids=x).logits[0, -1].argmax())
            if nxt == eos:
                break
            out.append(nxt)
            x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
    return out


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(tokenizer, tiny_llama):
    prompts = [format_prompt(p) for p in PROMPTS]
    enc = encode_prompts(tokenizer, prompts, max_length=64)
    assert enc["attention_mask"][:, -1].eq(1).all()  # left padding: every prompt ends at the last column
    got = greedy_generate(tiny_llama, tokenizer, prompts, max_new_tokens=6, batch_size=2)
    for p, g in zip(prompts, got):
        ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        want = tokenizer.decode(_greedy_one(tiny_llama, ids, tokenizer.eos_token_id, 6), skip_special_tokens=True).strip()
        assert g == want
    assert greedy_generate(tiny_llama, tokenizer, prompts[::-1], max_new_tokens=6, batch_size=5) == got[::-1]
    assert not tiny_llama.training


def test_exact_and_normalized_match():
    assert exact_match(" walked ", "walked") and not exact_match("Walked", "walked")
    assert normalized_match("Walked.", "walked") and normalized_match("sat   Down!", "sat down")
    assert not normalized_match("walk", "walked")
    assert normalize_answer("  The  End. ") == "the end"
    with pytest.raises(LorakitError, match="input"):
        format_prompt("x", template="no field")


def test_causal_lora_learns_a_toy_task_and_merged_weights_generate_the_same(tokenizer, tiny_llama):
    """Train LoRA on q/k/v/o of the GQA model to map verbs to fixed answers; then W0 + s·B·A written into a
    copy of the base model (lorakit.lora.peft.apply_deltas) generates exactly what the peft model does."""
    import copy

    from lorakit.profiles import LLAMA_ATTENTION_TARGETS
    from lorakit.train.causal import train_causal_lora
    from lorakit.lora.peft import apply_deltas

    base = copy.deepcopy(tiny_llama)
    prompts = [format_prompt(p) for p in PROMPTS]
    model, updates, losses = train_causal_lora(copy.deepcopy(tiny_llama), tokenizer, prompts, TARGETS, steps=60,
                                               batch_size=5, lr=5e-2, rank=4, alpha=8, seed=0)
    assert losses[-1] < 0.5 * losses[0]
    names = {n.rsplit(".", 1)[-1] for n in updates}
    assert names == set(LLAMA_ATTENTION_TARGETS) and len(updates) == 2 * 4
    for n, u in updates.items():
        d_out = 16 if n.endswith(("k_proj", "v_proj")) else 32  # 2 kv heads × head_dim 8 vs 4 heads × 8
        assert u.A.shape == (4, 32) and u.B.shape == (d_out, 4) and u.scaling == pytest.approx(2.0)
    gen_peft = greedy_generate(model, tokenizer, prompts, max_new_tokens=5)
    apply_deltas(base, {n: u.delta(torch.float64) for n, u in updates.items()})
    assert greedy_generate(base, tokenizer, prompts, max_new_tokens=5) == gen_peft
    assert sum(exact_match(g, t) for g, t in zip(gen_peft, TARGETS)) >= 4
    untrained = greedy_generate(tiny_llama, tokenizer, prompts, max_new_tokens=5)
    assert sum(exact_match(g, t) for g, t in zip(untrained, TARGETS)) == 0
