"""The notebook-00 checker (predict → run → interpret: the merge at half strength) accepts a right
answer, rejects each wrong answer of its mutation list with its hint, and reports the measured
direction that the score function gives, whatever the prediction."""

from __future__ import annotations

import pytest
import torch

from lorakit.course import exercises
from lorakit.course.exercises.nb00 import HALF_CHOICES, SAME_WITHIN
from lorakit.lora.update import LoRAUpdate


def right(deltas, lam):
    return lam * torch.stack(deltas).sum(0)


def _adapters():
    g = torch.Generator().manual_seed(3)
    return [{m: LoRAUpdate(torch.randn(2, 6, generator=g), torch.randn(4, 2, generator=g), 2.0) for m in ("q", "v")}
            for _ in range(2)]


def size_score(merged):
    """A stand-in score: falls as the merged update grows (so λ = 0.5 scores higher)."""
    return -sum(float(d.norm()) for d in merged.values())


def test_right_answer_passes_and_reports_the_measured_direction(capsys):
    msg = exercises.check_predict_half_merge("higher", right, size_score, _adapters())
    assert msg.startswith("✓ prediction 'higher', measured 'higher'") and "matches the measurement" in msg
    msg = exercises.check_predict_half_merge("lower", right, lambda m: -size_score(m), _adapters())
    assert "measured 'lower'" in msg and "the measurement says 'lower', not 'lower'" not in msg
    msg = exercises.check_predict_half_merge("lower", right, lambda m: 0.8 + SAME_WITHIN / 10 * len(m), _adapters())
    assert "measured 'about the same'" in msg and "the measurement says 'about the same', not 'lower'" in msg


def test_the_checker_runs_the_learners_function_on_the_real_layers():
    seen = []

    def spy(deltas, lam):
        seen.append((len(deltas), tuple(deltas[0].shape), lam))
        return right(deltas, lam)

    exercises.check_predict_half_merge("higher", spy, size_score, _adapters())
    assert (2, (4, 6), 1.0) in seen and (2, (4, 6), 0.5) in seen


MUTATIONS = {
    "mean instead of sum": (lambda d, lam: lam * torch.stack(d).mean(0), "λ · mean(ΔW_i)"),
    "λ on the first only": (lambda d, lam: lam * d[0] + sum(d[1:]), "not only the first update"),
    "λ ignored": (lambda d, lam: torch.stack(d).sum(0), "does not depend on λ"),
    "first task only": (lambda d, lam: lam * d[0], "only the first task's update"),
    "sum over a tensor dimension": (lambda d, lam: lam * torch.stack(d).sum(1), "shape"),
    "float32": (lambda d, lam: right(d, lam).float(), "float32"),
    "in place": (lambda d, lam: d[0].mul_(lam).add_(lam * sum(d[1:])), "in place"),
    "a list back": (lambda d, lam: [lam * x for x in d], "torch.Tensor"),
    "wrong numbers": (lambda d, lam: right(d, lam) + 1e-3, "expected λ · Σ_i ΔW_i"),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_each_wrong_answer_is_rejected_with_its_hint(name):
    fn, hint = MUTATIONS[name]
    with pytest.raises(AssertionError, match=hint.replace("(", r"\(").replace(")", r"\)").replace("·", "·")):
        exercises.check_predict_half_merge("higher", fn, size_score, _adapters())


@pytest.mark.parametrize("prediction, message", [(None, "write your prediction first"), ("better", "must be one of"),
                                                 (1, "must be one of")])
def test_a_missing_or_unknown_prediction_is_refused(prediction, message):
    with pytest.raises(AssertionError, match=message):
        exercises.check_predict_half_merge(prediction, right, size_score, _adapters())


def test_every_choice_is_accepted():
    for choice in HALF_CHOICES:
        assert "✓ prediction" in exercises.check_predict_half_merge(choice.upper(), right, size_score, _adapters())


def test_unattempted_stub_raises_not_implemented():
    def stub(deltas, lam):
        raise NotImplementedError

    with pytest.raises(NotImplementedError):
        exercises.check_predict_half_merge("higher", stub, size_score, _adapters())
