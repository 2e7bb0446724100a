"""Generative tasks of the causal-LM track: ``(input, target)`` strings per split, from cards of ``type: generative``.

The cards live beside the classification ones (``data/tasks``, :mod:`lorakit.data.tasks`) and share their
readers, the split cut (:data:`lorakit.data.splits.SPLIT_SEED`, text-disjoint splits) and the BIG-bench fetch
step; only the rows are strings on both sides, and each card carries a prompt template.

Text to tokens, for both of the track's layers above (training, decoding), with shapes ``(batch, length)``:

* **prompt** :math:`p = \text{template}(\text{input})`, tokens :math:`x_1 \dots x_P`
  (:func:`format_prompt`; left-padded for generation and OSRM's features: :func:`encode_prompts`);
* **sequence** :math:`x = (x_1 \dots x_P,\; y_1 \dots y_T,\; \text{eos})`, the target tokenised on its own
  (``" " + target``, no special tokens), so the boundary is exactly where generation starts, with
  labels :math:`\ell_t = x_t` for :math:`t > P` and :math:`\ell_t = -100` (:data:`IGNORE_INDEX`) on the
  prompt and the padding (:func:`encode_for_training`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..errors import LorakitError
from .splits import cut_splits, profile_split_sizes
from .tasks import TaskCard, read_pools, get_card

IGNORE_INDEX = -100
PROMPT_TEMPLATE = "{input}\nAnswer:"


def format_prompt(text: str, template: str = PROMPT_TEMPLATE) -> str:
    """The prompt the model continues: ``template`` with ``{input}`` replaced by ``text``."""
    if "{input}" not in template:
        raise LorakitError(f"a prompt template needs an {{input}} field, got {template!r}")
    return template.replace("{input}", text)


def token_ids(tokenizer, text: str) -> list[int]:
    """``text``'s token ids, no special tokens (a target is tokenised on its own, after a space)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def pad_token_id(tokenizer) -> int:
    """The id that pads a batch: the pad token, else eos."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise LorakitError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return int(pad)


def eos_token_id(tokenizer) -> int:
    """The id that ends a target (a generative task needs one)."""
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
    eos, pad = eos_token_id(tokenizer), pad_token_id(tokenizer)
    rows = []
    for prompt, target in zip(prompts, targets):
        tgt = token_ids(tokenizer, " " + target.strip()) + [eos]
        if len(tgt) - 1 > limit:
            raise LorakitError(f"target {target[:40]!r} is {len(tgt) - 1} tokens, over the limit of {limit}; "
                               "generative tasks need short targets")
        src = token_ids(tokenizer, prompt)[-(max_length - len(tgt)):] if max_length > len(tgt) else []
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


def encode_prompts(tokenizer, prompts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids`` / ``attention_mask`` of the prompts (each cut from the left to ``max_length``)."""
    pad = pad_token_id(tokenizer)
    rows = [token_ids(tokenizer, p)[-max_length:] for p in prompts]
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, length - len(r):] = torch.tensor(r)
        mask[i, length - len(r):] = 1
    return {"input_ids": ids, "attention_mask": mask}



@dataclass
class GenerativeTaskData:
    """One generative task's examples: ``(inputs, targets)`` string lists per split, and its card."""

    name: str
    train: tuple[list[str], list[str]]
    val: tuple[list[str], list[str]]
    test: tuple[list[str], list[str]]
    card: TaskCard
    meta: dict = field(default_factory=dict)

    def prompts(self, split: str) -> list[str]:
        """The split's inputs formatted with the card's prompt template (:func:`lorakit.data.generative.format_prompt`)."""
        return [format_prompt(x, self.card.prompt or PROMPT_TEMPLATE) for x in getattr(self, split)[0]]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train[0]), "val": len(self.val[0]), "test": len(self.test[0])}


def load_generative_task(name: str, train_examples: int | None = None, val_examples: int | None = None,
                         test_examples: int | None = None, profile=None) -> GenerativeTaskData:
    """A generative task (card ``type: generative``) with the deterministic splits of :func:`lorakit.data.tasks.load_task`.

    Targets longer than the card's ``max_target_words`` are dropped (``meta["dropped_long_targets"]``);
    a task that would lose more than 5 % of its examples that way is refused: the causal-LM track
    scores exact match of short answers.
    """
    train_examples, val_examples, test_examples = profile_split_sizes(profile, train_examples, val_examples, test_examples)
    card = get_card(name)
    if not card.generative:
        raise LorakitError(f"task {name!r} is a classification task (the encoder track): load it with "
                           "lorakit.data.tasks.load_task")
    train_pool, test_pool = read_pools(name)
    rows = list(train_pool) + list(test_pool or ())
    long = sum(len(t.split()) > card.max_target_words for _, t in rows)
    if long > 0.05 * len(rows):
        raise LorakitError(f"task {name!r} has {long} of {len(rows)} targets over {card.max_target_words} words; "
                           "the generative track needs short targets (raise max_target_words in its card to accept them)")
    train, val, test = cut_splits(name, train_pool, test_pool)

    def keep(split: list, n: int | None) -> tuple[list[str], list[str]]:
        split = [r for r in split if len(r[1].split()) <= card.max_target_words][: n if n is not None else None]
        return [x for x, _ in split], [t for _, t in split]

    return GenerativeTaskData(name, keep(train, train_examples), keep(val, val_examples), keep(test, test_examples),
                              card, {"dropped_long_targets": long})
