"""Generative tasks of the causal-LM track: ``(input, target)`` strings per split, from cards of ``type: generative``.

The cards live beside the classification ones (``data/tasks``, :mod:`lorakit.data.tasks`) and share their
readers, the split cut (:data:`lorakit.data.splits.SPLIT_SEED`, text-disjoint splits) and the BIG-bench fetch
step; only the rows are strings on both sides, and each card carries a prompt template.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..causal import PROMPT_TEMPLATE, format_prompt
from ..errors import LorakitError
from .splits import _cut_splits, _split_sizes
from .tasks import TaskCard, _read_pools, get_card


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
        """The split's inputs formatted with the card's prompt template (:func:`lorakit.causal.format_prompt`)."""
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
    train_examples, val_examples, test_examples = _split_sizes(profile, train_examples, val_examples, test_examples)
    card = get_card(name)
    if not card.generative:
        raise LorakitError(f"task {name!r} is a classification task (the encoder track): load it with "
                           "lorakit.data.tasks.load_task")
    train_pool, test_pool = _read_pools(name)
    rows = list(train_pool) + list(test_pool or ())
    long = sum(len(t.split()) > card.max_target_words for _, t in rows)
    if long > 0.05 * len(rows):
        raise LorakitError(f"task {name!r} has {long} of {len(rows)} targets over {card.max_target_words} words; "
                           "the generative track needs short targets (raise max_target_words in its card to accept them)")
    train, val, test = _cut_splits(name, train_pool, test_pool)

    def keep(split: list, n: int | None) -> tuple[list[str], list[str]]:
        split = [r for r in split if len(r[1].split()) <= card.max_target_words][: n if n is not None else None]
        return [x for x, _ in split], [t for _, t in split]

    return GenerativeTaskData(name, keep(train, train_examples), keep(val, val_examples), keep(test, test_examples),
                              card, {"dropped_long_targets": long})
