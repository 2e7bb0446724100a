r"""Causal-LM primitives of the generative track: prompts, loss masking, batched greedy decoding, exact match.

A causal LM needs no per-task head: every task is "continue this prompt", so after a merge nothing
task-specific is left outside the merged weights (the encoder track's heads absorb task information;
issue #12). One example is an input string and a short target string:

* **prompt** :math:`p = \text{template}(\text{input})`, tokens :math:`x_1 \dots x_P`;
* **sequence** :math:`x = (x_1 \dots x_P,\; y_1 \dots y_T,\; \text{eos})`, the target tokenised on its own
  (``" " + target``, no special tokens), so the boundary is exactly where generation starts;
* **loss** only on the target and eos: with labels :math:`\ell_t = x_t` for :math:`t > P` and
  :math:`\ell_t = -100` (ignored) on the prompt and the padding,

  .. math:: \mathcal L = -\frac{1}{|\mathcal T|}\sum_{t \in \mathcal T} \log p_\theta(x_t \mid x_{<t}),
     \qquad \mathcal T = \{t : \ell_t \ne -100\}

  (:func:`masked_lm_loss`; logits at position :math:`t - 1` predict token :math:`t`);
* **decoding** greedy, batched, prompts **left**-padded so that every row's next token is at the
  same position, with the KV cache of ``model.generate`` (:func:`greedy_generate`);
* **scoring** :func:`exact_match` (whitespace-stripped equality) and :func:`normalized_match`
  (case-folded, inner whitespace collapsed, surrounding punctuation dropped).

Shapes: ``input_ids``, ``attention_mask``, ``labels`` are ``(batch, length)`` int64; logits
``(batch, length, vocab)``.
"""

from __future__ import annotations

import re
import string
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from .errors import LorakitError
from .train.loop import optimizer_step, set_seed, warmup_linear_schedule
from .lora.peft import read_adapter
from .osrm import init_lora_A

IGNORE_INDEX = -100
PROMPT_TEMPLATE = "{input}\nAnswer:"


def format_prompt(text: str, template: str = PROMPT_TEMPLATE) -> str:
    """The prompt the model continues: ``template`` with ``{input}`` replaced by ``text``."""
    if "{input}" not in template:
        raise LorakitError(f"a prompt template needs an {{input}} field, got {template!r}")
    return template.replace("{input}", text)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise LorakitError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return int(pad)


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise LorakitError("the tokenizer has no eos token; a generative task needs one to end its targets")
    return int(tokenizer.eos_token_id)


def encode_for_training(tokenizer, prompts: Sequence[str], targets: Sequence[str], max_length: int,
                        max_target_tokens: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` of prompt + target + eos.

    The prompt is cut from the **left** when the sequence would exceed ``max_length`` (its end, next
    to the answer, is kept); a target longer than ``max_target_tokens`` (default ``max_length // 2``)
    is refused with a one-line error naming it, since a cut target teaches a wrong answer.
    """
    if len(prompts) != len(targets) or not prompts:
        raise LorakitError(f"need as many targets as prompts (and at least one), got {len(prompts)} and {len(targets)}")
    limit = max_target_tokens if max_target_tokens is not None else max_length // 2
    eos, pad = _eos_id(tokenizer), _pad_id(tokenizer)
    rows = []
    for prompt, target in zip(prompts, targets):
        tgt = _ids(tokenizer, " " + target.strip()) + [eos]
        if len(tgt) - 1 > limit:
            raise LorakitError(f"target {target[:40]!r} is {len(tgt) - 1} tokens, over the limit of {limit}; "
                               "generative tasks need short targets")
        src = _ids(tokenizer, prompt)[-(max_length - len(tgt)):] if max_length > len(tgt) else []
        if not src:
            raise LorakitError(f"max_length {max_length} leaves no room for the prompt of {prompt[:40]!r}")
        rows.append((src, tgt))
    length = max(len(s) + len(t) for s, t in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    for i, (src, tgt) in enumerate(rows):
        n = len(src) + len(tgt)
        ids[i, :n] = torch.tensor(src + tgt)
        mask[i, :n] = 1
        labels[i, len(src):n] = torch.tensor(tgt)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathcal L` of the module docstring: mean next-token cross-entropy over the positions whose
    label is not ``-100``. ``logits (B, L, V)`` at position t predict ``labels[:, t + 1]``."""
    shifted, target = logits[:, :-1, :], labels[:, 1:]
    if not bool((target != IGNORE_INDEX).any()):
        raise LorakitError("no target tokens to train on: every label is masked")
    if shifted.dtype in (torch.float16, torch.bfloat16):  # half-precision logits: the softmax in float32
        shifted = shifted.float()
    return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX)


def encode_prompts(tokenizer, prompts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids`` / ``attention_mask`` of the prompts (each cut from the left to ``max_length``)."""
    pad = _pad_id(tokenizer)
    rows = [_ids(tokenizer, p)[-max_length:] for p in prompts]
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, length - len(r):] = torch.tensor(r)
        mask[i, length - len(r):] = 1
    return {"input_ids": ids, "attention_mask": mask}


@torch.inference_mode()
def greedy_generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, max_length: int = 256,
                    batch_size: int = 32) -> list[str]:
    """Greedy continuations of ``prompts`` (in their order), up to ``max_new_tokens`` or eos.

    Prompts are sorted by token length so each batch pads little, left-padded (:func:`encode_prompts`)
    and decoded with ``model.generate`` (KV cache, ``do_sample=False``); only the new tokens are
    decoded, special tokens dropped, each string stripped.
    """
    was_training = model.training
    model.eval()
    eos, pad = _eos_id(tokenizer), _pad_id(tokenizer)
    lengths = [len(_ids(tokenizer, p)) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    out: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = encode_prompts(tokenizer, [prompts[i] for i in idx], max_length)
            enc = {k: v.to(device) for k, v in enc.items()}
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                 pad_token_id=pad, num_beams=1)
            new = gen[:, enc["input_ids"].shape[1]:]
            for row, i in zip(new.tolist(), idx):
                if eos in row:
                    row = row[:row.index(eos)]
                out[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    finally:
        model.train(was_training)
    return out


def exact_match(prediction: str, target: str) -> bool:
    """``prediction`` equals ``target`` after stripping surrounding whitespace."""
    return prediction.strip() == target.strip()


_SPACE = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    """Case-folded, inner whitespace collapsed to one space, surrounding whitespace and punctuation removed."""
    return _SPACE.sub(" ", text.casefold()).strip().strip(string.punctuation + " ")


def normalized_match(prediction: str, target: str) -> bool:
    """:func:`normalize_answer` of both sides are equal (``"Walked."`` matches ``"walked"``)."""
    return normalize_answer(prediction) == normalize_answer(target)


#: LoRA targets of a Llama-architecture model (SmolLM2, Llama-3): the attention projections; the MLP
#: projections ``gate_proj``, ``up_proj``, ``down_proj`` are an option
LLAMA_ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def train_causal_lora(model, tokenizer, prompts: Sequence[str], targets: Sequence[str], *, steps: int,
                      batch_size: int = 8, lr: float = 2e-3, rank: int = 8, alpha: float = 16,
                      target_modules: Sequence[str] = LLAMA_ATTENTION_TARGETS, max_length: int = 64,
                      seed: int = 0, progress: bool = False, init_A: Mapping[str, torch.Tensor] | None = None,
                      freeze_A: bool = False, init_lora_weights: bool | str = True):
    r"""Fine-tune LoRA factors on ``model`` (a causal LM, wrapped by peft here) for prompt → target.

    Minimises :func:`masked_lm_loss` (target tokens and eos only) with AdamW and lorakit's schedule
    (:func:`lorakit.train.loop.warmup_linear_schedule`); batches of ``batch_size`` drawn without replacement
    from a ``seed``-ed permutation, cut to their longest row. No head: the LM head and embeddings stay
    frozen. Returns ``(peft_model, updates, losses)``: ``updates`` is
    :func:`lorakit.lora.peft.read_adapter` of the trained model, ``{module: LoRAUpdate}`` with
    ``A (r, d_in)``, ``B (d_out, r)``, scaling ``alpha / r`` (for grouped-query attention ``k_proj`` and
    ``v_proj`` have ``d_out = n_kv_heads · head_dim``, smaller than ``q_proj``'s).

    ``init_A`` (``{module: A (r × d_in)}``, OSRM's or a control's, :mod:`lorakit.train.inits`) is written
    into ``lora_A`` with ``lora_B ← 0`` before the first step (:func:`lorakit.osrm.init_lora_A`);
    ``freeze_A`` trains ``B`` only; ``init_lora_weights`` is peft's (``True`` Kaiming-uniform A,
    ``"gaussian"``).
    """
    from peft import LoraConfig, get_peft_model  # lazy: peft imports transformers
    from tqdm.auto import tqdm

    if steps < 1 or batch_size < 1:
        raise LorakitError(f"steps and batch_size must be ≥ 1, got {steps} and {batch_size}")
    enc = encode_for_training(tokenizer, prompts, targets, max_length)
    set_seed(seed)
    config = LoraConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=alpha, target_modules=list(target_modules),
                        lora_dropout=0.0, init_lora_weights=init_lora_weights)
    peft_model = get_peft_model(model, config)
    if init_A:
        init_lora_A(peft_model, init_A, freeze_A=freeze_A)
    elif freeze_A:
        for name, param in peft_model.named_parameters():
            if "lora_A" in name:
                param.requires_grad_(False)
    params = [q for q in peft_model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = warmup_linear_schedule(optimizer, steps)
    gen = torch.Generator().manual_seed(seed)
    n = enc["input_ids"].shape[0]
    order, cursor, losses = torch.randperm(n, generator=gen), 0, []
    device = next(peft_model.parameters()).device
    peft_model.train()
    for _ in tqdm(range(steps), desc="train causal LoRA", disable=not progress, leave=False):
        if cursor + min(batch_size, n) > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor:cursor + batch_size]
        cursor += batch_size
        width = int(enc["attention_mask"][idx].sum(1).max())
        batch = {k: v[idx, :width].to(device) for k, v in enc.items()}
        logits = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        value = optimizer_step(masked_lm_loss(logits, batch["labels"]), optimizer, schedule, "causal LoRA training")
        losses.append(round(value, 5))
    peft_model.eval()
    return peft_model, read_adapter(peft_model), losses
