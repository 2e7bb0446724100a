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


def test_task_seed_shared_and_per_task():
    """shared: the run's seed for every task; per_task: seed + CRC-32 of the name (checked with binascii)."""
    import binascii

    from lorakit.train import task_seed

    assert task_seed(5, "rt_sentiment") == task_seed(5, "reuters_r8") == 5
    a, b = task_seed(5, "rt_sentiment", "per_task"), task_seed(5, "rt_subjectivity", "per_task")
    assert a == (5 + binascii.crc32(b"rt_sentiment")) % 2**31 and a != b
    assert task_seed(6, "rt_sentiment", "per_task") == (a + 1) % 2**31  # seeds still step apart
    with pytest.raises(LorakitError, match="unknown task_seeds"):
        task_seed(0, "t", "random")


def test_per_task_seeds_give_each_task_its_own_A():
    """Two 2-label tasks: with shared seeds their adapters start (steps=0) from the identical A,
    with per_task seeds from different ones; per_task changes the cache key, shared keeps the old one."""
    p = get_profile("ci", steps=0, train_examples=16)
    def start(task, mode):
        return train_adapter(task, p.replace(task_seeds=mode), cache=False, progress=False)
    shared = [start(t, "shared") for t in ("rt_sentiment", "rt_subjectivity")]
    own = [start(t, "per_task") for t in ("rt_sentiment", "rt_subjectivity")]
    for m in shared[0].updates:
        assert torch.equal(shared[0].updates[m].A, shared[1].updates[m].A)
        assert not torch.allclose(own[0].updates[m].A, own[1].updates[m].A)
        assert torch.all(own[0].updates[m].B == 0)  # untrained: only the init differs
    assert "task_seeds" not in shared[0].config and own[0].config["task_seeds"] == "per_task"
    assert cache_key(own[0].config) != cache_key(shared[0].config)


def test_unknown_init_and_missing_osrm_matrix():
    with pytest.raises(LorakitError, match="unknown init"):
        train_adapter("rt_subjectivity", "ci", init="svd")
    with pytest.raises(LorakitError, match="init_A"):
        train_adapter("rt_subjectivity", "ci", init="osrm")


class CurveEvaluator:
    """Stands in for Evaluator: every task's accuracy is f(λ), with the merge returning λ itself."""

    def __init__(self, f):
        self.f, self.calls = f, []

    def score_tasks(self, lam, adapters, split="test"):
        self.calls.append((lam, split))
        return {t: self.f(lam) for t in adapters}


def _select(f, grid, extend):
    ev = CurveEvaluator(f)
    tasks = {"a": None, "b": None}
    rec = select_and_report(ev, tasks, lambda lam: lam, [{"lam": g} for g in grid], {"a": 1.0, "b": 1.0},
                            {"a": 1.0, "b": 1.0}, extend_edges=extend)
    return rec, ev


@pytest.mark.parametrize("peak, extend, tried, chosen", [
    (0.3, 2, [0.1, 0.3, 1.0], 0.3),                # inside the grid: nothing added
    (0.09, 2, [0.1, 0.3, 1.0, 0.05], 0.1),         # 0.05 is worse than 0.1: one point, then stop
    (0.05, 2, [0.1, 0.3, 1.0, 0.05, 0.025], 0.05),  # best below the grid, found
    (0.001, 2, [0.1, 0.3, 1.0, 0.05, 0.025], 0.025),  # still at the edge when the budget is spent
    (0.001, 0, [0.1, 0.3, 1.0], 0.1),              # extend_edges=0: the grid alone, as before
    (3.0, 2, [0.1, 0.3, 1.0, 1.5, 2.25], 2.25),    # above the grid
])
def test_edge_extension_tries_beyond_an_edge_lambda(peak, extend, tried, chosen):
    rec, ev = _select(lambda lam: 1.0 - abs(math.log(lam / peak)) / 10, [0.1, 0.3, 1.0], extend)
    assert [c["params"]["lam"] for c in rec["curve"]] == tried
    assert rec["params"]["lam"] == chosen
    assert [c.get("extended", False) for c in rec["curve"]] == [False] * 3 + [True] * (len(tried) - 3)
    # test is scored once, at the chosen point, after all the validation points
    assert [c for c in ev.calls if c[1] == "test"] == [(chosen, "test")] and ev.calls[-1] == (chosen, "test")


def test_edge_extension_rule():
    from lorakit.evaluate import edge_extension

    tried = [{"lam": 0.1, "density": 0.2}, {"lam": 0.5, "density": 0.2}]
    assert edge_extension({"lam": 0.1, "density": 0.2}, tried) == {"lam": 0.05, "density": 0.2}
    assert edge_extension({"lam": 0.5, "density": 0.2}, tried) == {"lam": 0.75, "density": 0.2}
    assert edge_extension({"lam": 0.3}, tried + [{"lam": 0.3}]) is None
    assert edge_extension({"density": 0.2}, tried) is None
    assert edge_extension({"lam": 0.1}, [{"lam": 0.1}]) is None
