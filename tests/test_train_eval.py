"""Training, caching and evaluation on the real packaged model and real tasks (ci profile)."""

import math

import pytest
import torch

from lorakit.evaluate import Evaluator, normalized_accuracy, select_and_report
from lorakit.errors import LorakitError
from lorakit.train import cache_key, load_trained, train_adapter, train_config
from lorakit.profiles import get_profile

pytestmark = pytest.mark.slow


def test_adapters_beat_majority_and_are_cached(ci_adapters):
    for task, adapter in ci_adapters.items():
        assert adapter.metrics["test_acc"] > adapter.metrics["majority_test"], task
        assert len(adapter.updates) == 12  # 6 layers × {query, value}
        for upd in adapter.updates.values():
            assert upd.A.shape == (8, 384) and upd.B.shape == (384, 8)
            assert upd.scaling == pytest.approx(16 / 8)
            assert upd.B.abs().max() > 0  # training moved B away from its zero init
        again = load_trained(adapter.path)
        for m, upd in adapter.updates.items():
            assert torch.equal(again.updates[m].A, upd.A) and torch.equal(again.updates[m].B, upd.B)
        assert set(again.head) == {"classifier.weight", "classifier.bias"}


def test_cache_hit_returns_identical_adapter(ci_adapters):
    a = ci_adapters["rt_subjectivity"]
    b = train_adapter("rt_subjectivity", "ci", progress=False)
    assert b.path == a.path
    assert all(torch.equal(b.updates[m].B, a.updates[m].B) for m in a.updates)


def test_cache_key_changes_with_everything_that_matters():
    p = get_profile("ci")
    base = cache_key(train_config("t", p, "standard", False, 0))
    assert cache_key(train_config("t", p, "standard", False, 1)) != base
    assert cache_key(train_config("t", p, "gaussian", False, 0)) != base
    assert cache_key(train_config("t", p, "standard", True, 0)) != base
    assert cache_key(train_config("t", p.replace(steps=p.steps + 1), "standard", False, 0)) != base
    assert cache_key(train_config("t", p, "osrm", False, 0, {"m": torch.ones(2, 3)})) != \
        cache_key(train_config("t", p, "osrm", False, 0, {"m": torch.zeros(2, 3)}))
    assert cache_key(train_config("t", p, "standard", False, 0)) == base


def test_evaluator_reproduces_peft_accuracy(ci_adapters):
    """W0 + s·B·A with the task's head must predict exactly as the peft model did during training."""
    ev = Evaluator(list(ci_adapters), "ci")
    for task, adapter in ci_adapters.items():
        assert ev.score(adapter.deltas, adapter.head, task, "test") == pytest.approx(adapter.metrics["test_acc"], abs=1e-12)
        assert ev.score(adapter.deltas, adapter.head, task, "val") == pytest.approx(adapter.metrics["val_acc"], abs=1e-12)


def test_evaluator_restores_base_weights(ci_adapters):
    ev = Evaluator(list(ci_adapters), "ci")
    before = {n: p.detach().clone() for n, p in ev.model.named_parameters() if "classifier" not in n}
    adapter = ci_adapters["rt_subjectivity"]
    ev.score(adapter.deltas, adapter.head, "rt_subjectivity", "val")
    after = dict(ev.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_merging_one_task_with_lambda_one_reproduces_its_accuracy(ci_adapters):
    task = "election_tweets"
    single = {task: ci_adapters[task]}
    ev = Evaluator([task], "ci")
    upd = single[task].updates
    rec = select_and_report(ev, single, lambda lam: {m: lam * u.delta() for m, u in upd.items()},
                            [{"lam": 0.0}, {"lam": 1.0}])
    assert rec["params"] == {"lam": 1.0}
    assert rec["avg_normalized"] == pytest.approx(1.0)
    assert rec["accuracy"][task] == pytest.approx(single[task].metrics["test_acc"])
    # the λ curve keeps every grid point, and λ=0 (the base model with the task head) is worse
    assert [c["params"]["lam"] for c in rec["curve"]] == [0.0, 1.0]
    assert rec["curve"][0]["val_normalized"] < rec["curve"][1]["val_normalized"]


def test_nan_delta_is_refused(ci_adapters):
    ev = Evaluator(["rt_subjectivity"], "ci")
    adapter = ci_adapters["rt_subjectivity"]
    bad = {m: torch.full_like(d, float("nan")) for m, d in adapter.deltas.items()}
    with pytest.raises(LorakitError, match="NaN"):
        ev.score(bad, adapter.head, "rt_subjectivity")


def test_normalized_accuracy_definition():
    got = normalized_accuracy({"a": 0.4, "b": 0.9}, {"a": 0.8, "b": 0.9})
    assert got == {"a": 0.5, "b": 1.0}
    assert math.isnan(normalized_accuracy({"a": 0.3}, {"a": 0.0})["a"])


def test_freeze_A_keeps_A_fixed():
    """freeze_A: A stays at its initialisation (compare with a second untrained init of the same seed)."""
    from lorakit.train import _make_peft_model
    from lorakit.lora import read_adapter

    p = get_profile("ci", steps=2, train_examples=32)
    trained = train_adapter("rt_subjectivity", p, freeze_A=True, seed=3, cache=False, progress=False)
    init = read_adapter(_make_peft_model(p, 2, "standard", 3))
    for m, upd in trained.updates.items():
        assert torch.equal(upd.A, init[m].A)
        assert upd.B.abs().max() > 0


def test_unknown_init_and_missing_osrm_matrix():
    with pytest.raises(LorakitError, match="unknown init"):
        train_adapter("rt_subjectivity", "ci", init="svd")
    with pytest.raises(LorakitError, match="init_A"):
        train_adapter("rt_subjectivity", "ci", init="osrm")
