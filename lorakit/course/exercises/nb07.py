r"""Exercise checkers of notebook 07 (the causal-LM track): loss masking, normalized match, what merged models get wrong.

Symbols as in :mod:`lorakit.data.generative`: prompt tokens :math:`x_1..x_P`, target tokens :math:`y_1..y_T`,
then eos; the labels of the sequence :math:`(x, y, \text{eos})` are :math:`-100` on the prompt and the
tokens themselves on the target and eos (transformers shifts them by one inside its loss).
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Callable, Mapping, Sequence

from ...data.generative import IGNORE_INDEX
from ...eval.causal import normalized_match
from ...results.causal import ANSWER_KINDS, answer_kinds
from ._common import check_choice as _check_choice, ok as _ok, report_prediction as _report_prediction

WRONG_KINDS = tuple(k for k in ANSWER_KINDS if k != "right")
#: what each kind of wrong answer says about the merge (the checker prints the one measured)
WHY = {
    "other_task": "the merged model still answers with one inflected word, but the prompt alone no longer picks the "
                  "transformation: the other adapters' updates pull it toward their own form of the same word. On the "
                  "encoder track each task's head chooses among that task's labels only, so this cannot show there.",
    "copy": "the merged model keeps the format the adapters taught (one word, then stop) but loses the transformation: "
            "with every task's update scaled well below 1 by the λ chosen on validation, it returns the word it was given.",
    "empty": "the merged update over-learned the stop: eos comes first. A λ too large for some task does this.",
    "other": "the merged model keeps the answer format (one word, then eos) but forms the word wrongly — a wrong "
             "spelling rule, or a different word — so the interference hurts the transformation itself, not only "
             "which task is answered.",
}


def _case(rng: random.Random) -> tuple[list[int], list[int], int]:
    prompt = [rng.randrange(5, 1000) for _ in range(rng.randrange(1, 9))]
    target = [rng.randrange(5, 1000) for _ in range(rng.randrange(1, 5))]
    return prompt, target, rng.randrange(1000, 1010)


def check_target_labels(fn: Callable[[Sequence[int], Sequence[int], int], Sequence[int]], seed: int = 0) -> str:
    """``fn(prompt_ids, target_ids, eos_id)`` → the label row of ``prompt + target + [eos]`` (one list of ints)."""
    rng = random.Random(seed)
    for _ in range(50):
        prompt, target, eos = _case(rng)
        got = fn(list(prompt), list(target), eos)
        if not isinstance(got, (list, tuple)) and not hasattr(got, "tolist"):
            raise AssertionError(f"return the label row as a list of ints, got {type(got).__name__}")
        got = [int(v) for v in (got.tolist() if hasattr(got, "tolist") else got)]
        want = [IGNORE_INDEX] * len(prompt) + target + [eos]
        if got == want:
            continue
        seq = prompt + target + [eos]
        if got == seq:
            raise AssertionError("every token is a label, the prompt too: the loss would teach the model to predict "
                                 "the prompt; put -100 on the prompt positions")
        if got == [IGNORE_INDEX] * len(prompt) + target:
            raise AssertionError("the eos label is missing: without it the model never learns to stop after the "
                                 "answer, and exact match fails on the words it adds")
        if got == (seq[1:] + [IGNORE_INDEX]) or got == [IGNORE_INDEX] * (len(prompt) - 1) + target + [eos, IGNORE_INDEX]:
            raise AssertionError("the labels are shifted by one: transformers shifts them itself (logits at t "
                                 "predict label t + 1); label position t with token t")
        if len(got) != len(seq):
            raise AssertionError(f"the label row has {len(got)} entries but the sequence has {len(seq)} "
                                 "(prompt + target + eos): one label per token")
        raise AssertionError(f"for prompt {prompt}, target {target}, eos {eos} the labels should be {want}, got {got}")
    return _ok("target-only labels")


def check_normalized_match(fn: Callable[[str, str], bool]) -> str:
    """``fn(prediction, target)`` → whether they match after case-folding, collapsing spaces, dropping end punctuation."""
    cases = [("Walked.", "walked"), ("walked", "walked"), ("  sat   Down!", "sat down"), ("walk", "walked"),
             ("walked to the shop", "walked"), ("WENT", "went"), ("", "went"), ("went,", "went"), ("we nt", "went"),
             ("'mice'", "mice"), ("mouses", "mice")]
    for p, y in cases:
        got, want = fn(p, y), normalized_match(p, y)
        if not isinstance(got, bool):
            raise AssertionError(f"return True or False, got {type(got).__name__} for fn({p!r}, {y!r})")
        if got != want:
            hint = ("case should not matter" if p.lower().strip(" .,!'") == y else
                    "inner runs of spaces count as one space" if " ".join(p.split()).lower().strip(" .,!'") == y else
                    "surrounding punctuation should not matter" if p.strip(" .,!'").lower() == y else
                    "only case, spacing and surrounding punctuation are forgiven, not other words or letters")
            raise AssertionError(f"fn({p!r}, {y!r}) returned {got}, expected {want}: {hint}")
    return _ok("normalized match")


def wrong_kinds(results: Mapping, method: str = "task_arithmetic", init: str = "standard",
                others: Mapping | None = None) -> Counter:
    """The wrong answers of ``method`` (``init``) over tasks and seeds, by kind (:data:`WRONG_KINDS`)."""
    total = Counter({k: 0 for k in WRONG_KINDS})
    for counts in answer_kinds(results, method, init, others).values():
        total.update({k: v for k, v in counts.items() if k != "right"})
    return total


def check_predict_wrong_kind(prediction: str | None, results: Mapping, method: str = "task_arithmetic",
                             init: str = "standard", others: Mapping | None = None) -> str:
    """Predict → run → interpret: the most common kind of wrong answer of a merged causal LM in ``results``."""
    prediction = _check_choice(prediction, WRONG_KINDS, "the most common kind of wrong answer after the merge")
    counts = wrong_kinds(results, method, init, others)
    measured = max(WRONG_KINDS, key=lambda k: counts[k])
    wrong = sum(counts.values())
    evidence = ", ".join(f"{k} {counts[k]}" for k in WRONG_KINDS) + f" of {wrong} wrong answers ({method}, {init})"
    why = WHY[measured]
    return _report_prediction(prediction, measured, evidence, why)
