"""The notebook-07 exercise checkers accept right answers (the solutions', and ones written here) and reject the
typical wrong ones with the hint for that mistake; the answer-kind counts agree with a direct count."""

from __future__ import annotations

import string
from collections import Counter

import pytest

from lorakit.course import exercises
from lorakit.results.causal import answer_kind, answer_kinds, claims_side_by_side
from lorakit.course.exercises.nb07 import wrong_kinds


def right_labels(p, t, eos):
    return [-100] * len(p) + list(t) + [eos]


@pytest.mark.parametrize("wrong, hint", [
    (lambda p, t, eos: list(p) + list(t) + [eos], "put -100 on the prompt"),
    (lambda p, t, eos: [-100] * len(p) + list(t), "eos label is missing"),
    (lambda p, t, eos: (list(p) + list(t) + [eos])[1:] + [-100], "shifted by one"),
    (lambda p, t, eos: [-100] * len(p) + list(t) + [eos, eos], "one label per token"),
])
def test_label_checker_names_each_mistake(wrong, hint):
    assert exercises.check_target_labels(right_labels) == "✓ target-only labels: correct"
    with pytest.raises(AssertionError, match=hint):
        exercises.check_target_labels(wrong)


def test_unanswered_stubs_get_told_what_to_return():
    with pytest.raises(AssertionError, match="list of ints, got NoneType"):
        exercises.check_target_labels(lambda p, t, eos: None)
    with pytest.raises(AssertionError, match="return True or False, got NoneType"):
        exercises.check_normalized_match(lambda p, y: None)


def test_normalized_match_checker():
    def right(p, y):
        norm = lambda s: " ".join(s.casefold().split()).strip(string.punctuation + " ")  # noqa: E731
        return norm(p) == norm(y)

    assert exercises.check_normalized_match(right) == "✓ normalized match: correct"
    with pytest.raises(AssertionError, match="case should not matter"):
        exercises.check_normalized_match(lambda p, y: p.strip(string.punctuation + " ") == y)
    with pytest.raises(AssertionError, match="only case"):
        exercises.check_normalized_match(lambda p, y: True)


def toy_run():
    """Two tasks on the same lemmas; the merged model answers the other task's form twice, copies once."""
    tasks = {"past": {"test_inputs": ["walk", "swim", "jump"], "test_targets": ["walked", "swam", "jumped"],
                      "individual": [{"init": "standard", "seed": 0, "predictions": ["walked", "swam", "jumped"]}],
                      "floor": []},
             "ing": {"test_inputs": ["walk", "swim", "jump"], "test_targets": ["walking", "swimming", "jumping"],
                     "individual": [{"init": "standard", "seed": 0, "predictions": ["walking", "swim", "jumping"]}],
                     "floor": []}}
    rec = {"method": "task_arithmetic", "init": "standard", "seed": 0,
           "predictions": {"past": ["walking", "Swam.", ""], "ing": ["walked", "swim", "jumping"]}}
    others = {t: dict(zip(v["test_inputs"], v["test_targets"])) for t, v in tasks.items()}
    return {"tasks": tasks, "records": [rec]}, others


def test_answer_kinds_count_other_task_copy_and_empty():
    res, others = toy_run()
    counts = answer_kinds(res, "task_arithmetic", "standard", others)
    assert counts["past"] == Counter(right=0, other_task=1, copy=0, empty=1, other=1)  # "Swam." is not exact
    assert counts["ing"] == Counter(right=1, other_task=1, copy=1, empty=0, other=0)
    assert answer_kinds(res, None, "standard", others, model="individual")["ing"]["copy"] == 1
    assert answer_kind("walking", "walked", "walk", "past", others) == "other_task"
    assert wrong_kinds(res, others=others) == Counter(other_task=2, copy=1, empty=1, other=1)
    msg = exercises.check_predict_wrong_kind("copy", res, others=others)
    assert "measured 'other_task'" in msg and "not 'copy'" in msg
    with pytest.raises(AssertionError, match="write your prediction first"):
        exercises.check_predict_wrong_kind(None, res, others=others)


def test_claims_side_by_side_keeps_every_claim():
    from types import SimpleNamespace as R

    rows = claims_side_by_side([R(claim="a", verdict="held"), R(claim="b", verdict="inconclusive")],
                               [R(claim="b", verdict="contradicted"), R(claim="c", verdict="held")])
    assert rows == [("a", "held", "—"), ("b", "inconclusive", "contradicted"), ("c", "—", "held")]


def test_solutions_notebook_passes_on_the_committed_reference():
    """The solutions source run as a script: every checker accepts its answers on the committed causal reference."""
    import runpy
    from pathlib import Path

    ns = runpy.run_path(str(Path(__file__).resolve().parents[1] / "notebooks" / "src" / "solutions__07_solutions.py"))
    assert len(ns["ref"]["seeds"]) >= 3 and ns["result"].startswith("✓ prediction 'copy', measured 'copy'")
