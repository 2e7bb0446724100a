"""Training, caching and evaluation on the real packaged model and real tasks (ci profile)."""

import math

import numpy as np
import pytest
import torch

from lorakit.eval.encoder import Evaluator
from lorakit.eval.scorer import normalized_accuracy
from lorakit.run.search import select_and_report
from lorakit.errors import LorakitError
from lorakit.train.cache import cache_key
from lorakit.train.encoder import load_trained, train_adapter, train_config
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
    from lorakit.train.encoder import _make_peft_model
    from lorakit.train.inits import task_seed
    from lorakit.lora.peft import read_adapter

    p = get_profile("ci", steps=2, train_examples=32)
    trained = train_adapter("rt_subjectivity", p, freeze_A=True, seed=3, cache=False, progress=False)
    init = read_adapter(_make_peft_model(p, 2, "standard", task_seed(3, "rt_subjectivity", p.task_seeds)))
    for m, upd in trained.updates.items():
        assert torch.equal(upd.A, init[m].A)
        assert upd.B.abs().max() > 0


def test_task_seed_shared_and_per_task():
    """shared: the run's seed for every task; per_task: seed + CRC-32 of the name (checked with binascii)."""
    import binascii

    from lorakit.train.inits import task_seed

    assert task_seed(5, "rt_sentiment") == task_seed(5, "reuters_r8") == 5
    a, b = task_seed(5, "rt_sentiment", "per_task"), task_seed(5, "rt_subjectivity", "per_task")
    assert a == (5 + binascii.crc32(b"rt_sentiment")) % 2**31 and a != b
    assert task_seed(6, "rt_sentiment", "per_task") == (a + 1) % 2**31  # seeds still step apart
    with pytest.raises(LorakitError, match="unknown task_seeds"):
        task_seed(0, "t", "random")


def test_per_task_seeds_give_each_task_its_own_A():
    """Two 2-label tasks: with shared seeds their adapters start (steps=0) from the identical A,
    with per_task seeds from different ones; per_task changes the cache key, shared keeps the old one."""
    p = get_profile("ci", steps=0, train_examples=16, val_examples=16, test_examples=16)
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

    def correct_tasks(self, lam, adapters, split="test"):
        """A one-element "correctness" whose mean is f(λ) (select_and_report reads test through this)."""
        self.calls.append((lam, split))
        return {t: torch.tensor([self.f(lam)], dtype=torch.float64) for t in adapters}


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
    from lorakit.run.search import edge_extension

    tried = [{"lam": 0.1, "density": 0.2}, {"lam": 0.5, "density": 0.2}]
    assert edge_extension({"lam": 0.1, "density": 0.2}, tried) == {"lam": 0.05, "density": 0.2}
    assert edge_extension({"lam": 0.5, "density": 0.2}, tried) == {"lam": 0.75, "density": 0.2}
    assert edge_extension({"lam": 0.3}, tried + [{"lam": 0.3}]) is None
    assert edge_extension({"density": 0.2}, tried) is None
    assert edge_extension({"lam": 0.1}, [{"lam": 0.1}]) is None


# --- the packed evaluation path against the old code (frozen here) ---------------------------------

@torch.no_grad()
def _old_predict(model, encodings, batch_size, device="cpu"):
    """lorakit.train.loop.predict before the packed path: HF's forward, batches cut to their longest text."""
    model.eval()
    preds = []
    for i in range(0, encodings["input_ids"].shape[0], batch_size):
        batch = {k: v[i : i + batch_size].to(device) for k, v in encodings.items()}
        width = int(batch["attention_mask"].sum(1).max())
        preds.append(model(**{k: v[:, :width] for k, v in batch.items()}).logits.argmax(-1).cpu())
    return torch.cat(preds)


@torch.no_grad()
def _old_score(ev, deltas, head, task, split):
    """Evaluator.score before the packed path: ΔW in place, the old predict, the clones copied back.
    Returns (accuracy, predictions in the set's sorted order)."""
    originals = {}
    try:
        for name, delta in deltas.items():
            originals[name] = ev._modules[name].weight.detach().clone()
            ev._modules[name].weight.add_(delta)
        ev._swap_head(head)
        es = ev.sets[(task, split)]
        preds = _old_predict(ev.model, es.encodings, ev.profile.eval_batch_size)
        return float((preds == es.labels).float().mean()), preds
    finally:
        for name, weight in originals.items():
            ev._modules[name].weight.copy_(weight)


def _grid_calls(adapters, lams=(0.5, 1.0)):
    """(deltas, head, task, split): each adapter alone, then task arithmetic at each λ, every task, both splits."""
    calls = [(a.deltas, a.head, t, s) for t, a in adapters.items() for s in ("val", "test")]
    for lam in lams:
        merged = {m: lam * sum(a.deltas[m] for a in adapters.values()) for m in next(iter(adapters.values())).deltas}
        calls += [(merged, a.head, t, s) for t, a in adapters.items() for s in ("val", "test")]
    return calls


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_packed_and_generic_paths_give_exactly_the_old_accuracies(ci_adapters):
    """A small real run (two trained ci adapters; alone, and merged at λ = 1): the packed path predicts
    every text as the old code did, so every accuracy is equal; packed = False (what other models and
    CUDA get) is the old code path under inference_mode, on the same calls (the old predictions are
    computed once per call for both)."""
    ev = Evaluator(list(ci_adapters), "ci")
    assert ev.packed and ev._fast is not None  # MiniLM on the CPU takes the packed path
    flips = compared = 0
    for deltas, head, task, split in _grid_calls(ci_adapters, lams=(1.0,)):
        es = ev.sets[(task, split)]
        assert ev._packed_set(deltas, es) is not None
        old_acc, old_preds = _old_score(ev, deltas, head, task, split)
        new_preds = ev._predict_packed(deltas, head, es.packed)
        flips += int((new_preds != old_preds).sum())
        compared += len(old_preds)
        assert ev.score(deltas, head, task, split) == old_acc, (task, split)
        ev.packed = False
        try:
            assert ev._packed_set(deltas, es) is None
            assert ev.score(deltas, head, task, split) == old_acc, ("generic", task, split)
        finally:
            ev.packed = True
    assert flips == 0 and compared == 2 * 2 * (64 + 128)


def test_dynamic_padding_and_packing_change_no_logits(ci_adapters):
    """Logits of HF's forward padded to max_length, cut to each batch's longest text, and of the
    packed path (no padding at all) agree to 1e-5 on a few batches, with a real ΔW and head."""
    from lorakit.train.loop import encode_texts

    task = "election_tweets"
    adapter = ci_adapters[task]
    ev = Evaluator([task], "ci")
    texts = ev.data[task].test[0][:40]
    full = ev.tokenizer(texts, truncation=True, max_length=ev.profile.max_length, padding="max_length", return_tensors="pt")
    dynamic = encode_texts(ev.tokenizer, texts, ev.profile.max_length)
    lengths = full["attention_mask"].sum(1)
    order = torch.argsort(lengths, stable=True)
    # padded to max_length; the shortest batch (sorted) has padding to cut, and its texts differ in length
    assert full["input_ids"].shape[1] == ev.profile.max_length > int(lengths[order[:16]].max()) > int(lengths.min())
    full = {k: v[order] for k, v in full.items()}
    dynamic = {k: v[order] for k, v in dynamic.items()}
    packed = ev._fast.pack(dynamic, 16)
    with torch.inference_mode():
        weights = {n: ev._modules[n].weight for n in ev._fast.linear_names}
        weights.update({n: weights[n] + d for n, d in adapter.deltas.items()})
        for n, d in adapter.deltas.items():
            ev._modules[n].weight.add_(d)
        try:
            ev._swap_head(adapter.head)
            for i in range(0, 40, 16):
                padded = ev.model(**{k: v[i : i + 16] for k, v in full.items()}).logits
                width = int(dynamic["attention_mask"][i : i + 16].sum(1).max())
                cut = ev.model(**{k: v[i : i + 16, :width] for k, v in dynamic.items()}).logits
                j = min(i + 16, 40)
                rows = packed.embeddings[packed.offsets[i] : packed.offsets[j]]
                fast = ev._fast.logits(rows, packed.lengths[i:j], ev._fast.prepare(weights), weights["bert.pooler.dense"],
                                       (ev.model.classifier.weight, ev.model.classifier.bias))
                assert padded.abs().max() > 0.1  # real logits, not zeros
                torch.testing.assert_close(cut, padded, atol=1e-5, rtol=0)
                torch.testing.assert_close(fast, padded, atol=1e-5, rtol=0)
                assert torch.equal(fast.argmax(-1), padded.argmax(-1))
        finally:
            for n, d in adapter.deltas.items():
                ev._modules[n].weight.sub_(d)  # test-only undo; the weights are compared below anyway


@pytest.mark.parametrize("packed", [True, False])
def test_weights_are_restored_bitwise_even_when_scoring_fails_midway(ci_adapters, monkeypatch, packed):
    """An error in the forward (after ΔW was applied on the generic path) leaves every weight bit-identical."""
    import lorakit.eval.encoder as evaluate

    adapter = ci_adapters["rt_subjectivity"]
    ev = Evaluator(["rt_subjectivity"], "ci")
    ev.packed = packed
    before = _params(ev.model)
    seen = {}

    def boom(*args, **kwargs):
        name = next(iter(adapter.deltas))
        seen["modified"] = not torch.equal(ev._modules[name].weight, before[name + ".weight"])
        raise RuntimeError("midway")

    if packed:
        monkeypatch.setattr(evaluate.PackedBert, "logits", boom)
    else:
        monkeypatch.setattr(evaluate, "predict", boom)
    with pytest.raises(RuntimeError, match="midway"):
        ev.score(adapter.deltas, adapter.head, "rt_subjectivity", "val")
    assert seen["modified"] is (not packed)  # the generic path had ΔW applied when it failed
    after = dict(ev.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before if not n.startswith("classifier"))
    monkeypatch.undo()
    # and a successful score afterwards leaves them bit-identical too
    ev.score(adapter.deltas, adapter.head, "rt_subjectivity", "val")
    assert all(torch.equal(before[n], p) for n, p in ev.model.named_parameters() if not n.startswith("classifier"))


def test_delta_outside_the_packed_layers_takes_the_generic_path(ci_adapters):
    """A ΔW on the embeddings (which the packed path caches) is scored by the generic path, exactly as before."""
    adapter = ci_adapters["rt_subjectivity"]
    ev = Evaluator(["rt_subjectivity"], "ci")
    emb = "bert.embeddings.word_embeddings"
    deltas = dict(adapter.deltas, **{emb: 0.05 * torch.randn(ev._modules[emb].weight.shape, generator=torch.Generator().manual_seed(0))})
    es = ev.sets[("rt_subjectivity", "val")]
    assert ev._packed_set(deltas, es) is None and ev._packed_set(adapter.deltas, es) is not None
    assert ev.score(deltas, adapter.head, "rt_subjectivity", "val") == _old_score(ev, deltas, adapter.head, "rt_subjectivity", "val")[0]
    with pytest.raises(LorakitError, match="not in the base model"):
        ev.score({"bert.nowhere": torch.zeros(2, 2)}, adapter.head, "rt_subjectivity", "val")


def test_scoring_never_tokenizes_again(ci_adapters, monkeypatch):
    """Each set is tokenized once, in the constructor; scores (both paths, any λ) only read the cache."""
    import lorakit.eval.encoder as evaluate

    ev = Evaluator(list(ci_adapters), "ci")
    calls = []
    monkeypatch.setattr(evaluate, "encode_texts", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(ev, "tokenizer", lambda *a, **k: calls.append(a))
    for packed in (True, False):
        ev.packed = packed
        for deltas, head, task, split in _grid_calls(ci_adapters, lams=(0.5,))[::3]:
            ev.score(deltas, head, task, split)
    assert calls == []


def test_cached_embedding_output_follows_in_place_changes_to_the_embeddings(ci_adapters):
    """The packed path caches each set's embedding output; an in-place change to the embedding weights
    (outside score) makes it recompute, so the score still equals the old code's."""
    adapter = ci_adapters["rt_subjectivity"]
    ev = Evaluator(["rt_subjectivity"], "ci")
    first = ev.score(adapter.deltas, adapter.head, "rt_subjectivity", "val")
    cached = ev.sets[("rt_subjectivity", "val")].packed.embeddings
    with torch.no_grad():
        ev.model.bert.embeddings.LayerNorm.weight.mul_(-1.0)
    changed = ev.score(adapter.deltas, adapter.head, "rt_subjectivity", "val")
    assert ev.sets[("rt_subjectivity", "val")].packed.embeddings is not cached
    assert changed == _old_score(ev, adapter.deltas, adapter.head, "rt_subjectivity", "val")[0] != first


def test_correct_is_per_example_in_the_splits_own_order(ci_adapters):
    """``correct`` un-sorts the length-sorted set: index i is the split's example i, as HF predicts it."""
    from lorakit.data.models import load_base, load_tokenizer
    from lorakit.eval.correctness import decode_correct, encode_correct
    from lorakit.train.loop import encode_texts, predict

    task = "rt_subjectivity"
    adapter = ci_adapters[task]
    ev = Evaluator([task], "ci")
    right = ev.correct(adapter.deltas, adapter.head, task, "test")
    texts, labels = ev.data[task].test
    assert right.dtype == torch.bool and len(right) == len(labels)
    assert float(right.float().mean()) == ev.score(adapter.deltas, adapter.head, task, "test")
    assert not torch.equal(ev.sets[(task, "test")].order, torch.arange(len(labels)))  # the set really is re-ordered
    model = load_base("minilm", num_labels=adapter.head["classifier.weight"].shape[0]).eval()
    with torch.no_grad():
        for name, delta in adapter.deltas.items():
            model.get_submodule(name).weight.add_(delta)
        model.classifier.weight.copy_(adapter.head["classifier.weight"])
        model.classifier.bias.copy_(adapter.head["classifier.bias"])
    preds = predict(model, encode_texts(load_tokenizer("minilm"), texts, ev.profile.max_length), 32, "cpu")
    assert torch.equal(right, preds == torch.tensor(labels))  # example by example, in the split's order
    assert np.array_equal(decode_correct(encode_correct(right)), right.numpy())


def test_bf16_packed_path_keeps_delta_apart_and_agrees_with_float32(ci_adapters):
    """eval_dtype=bfloat16: logits within bf16 rounding of float32's (W_0 + ΔW formed in float32 first:
    the same logits as rounding the merged weights), and predictions equal on almost every text."""
    from lorakit.profiles import native_bf16

    task = "election_tweets"
    adapter = ci_adapters[task]
    ev = Evaluator([task], "ci")
    es = ev.sets[(task, "test")]
    packed = ev._packed_set(adapter.deltas, es)
    with torch.inference_mode():
        base = {n: ev._modules[n].weight for n in ev._fast.linear_names}
        merged = dict(base, **{n: base[n] + d for n, d in adapter.deltas.items()})
        ev._swap_head(adapter.head)
        head = (ev.model.classifier.weight, ev.model.classifier.bias)
        rows, lengths, pooler = packed.embeddings, packed.lengths, base["bert.pooler.dense"]
        ref = ev._fast.logits(rows, lengths, ev._fast.prepare(merged), pooler, head)
        same = ev._fast.logits(rows, lengths, ev._fast.prepare(base, torch.float32, adapter.deltas), pooler, head)
        split = ev._fast.logits(rows, lengths, ev._fast.prepare(base, torch.bfloat16, adapter.deltas), pooler, head)
        rounded = ev._fast.logits(rows, lengths, ev._fast.prepare(merged, torch.bfloat16), pooler, head)
    assert torch.equal(same, ref)  # float32 with deltas given apart: W_0 + ΔW formed exactly as before
    assert torch.equal(split, rounded)  # bf16: the sum is formed in float32, then rounded
    err = (split - ref).abs().mean()
    assert 0 < err < 0.05 * ref.abs().mean()  # bf16 really ran, and stayed close
    assert (split.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.97
    ev16 = Evaluator([task], "ci", eval_dtype="bfloat16")
    assert ev16.eval_dtype == torch.bfloat16
    right16 = ev16.correct(adapter.deltas, adapter.head, task)
    right32 = ev.correct(adapter.deltas, adapter.head, task)
    assert (right16 == right32).float().mean() >= 0.97
    auto = Evaluator([task], "ci", eval_dtype="auto").eval_dtype
    assert auto == (torch.bfloat16 if native_bf16() else torch.float32)


def test_unknown_eval_dtype_is_refused():
    with pytest.raises(LorakitError, match="eval_dtype"):
        Evaluator(["rt_subjectivity"], "ci", eval_dtype="float16")


def test_refine_stage_runs_after_the_lambda_search_and_counts_in_the_budget():
    """refine(chosen) points are tried once the λ search (and its edge extensions) is done, marked
    refined, and the budget counts every validation point; a refined point can win."""
    ev = CurveEvaluator(lambda lam: 1.0 - abs(lam - 0.36))
    tasks = {"a": None, "b": None}
    rec = select_and_report(ev, tasks, lambda lam: lam, [{"lam": g} for g in (0.1, 0.3, 1.0)], {"a": 1.0, "b": 1.0},
                            {"a": 1.0, "b": 1.0}, extend_edges=2,
                            refine=lambda c: [dict(c, lam=round(c["lam"] * f, 4)) for f in (0.8, 1.25)])
    tried = [c["params"]["lam"] for c in rec["curve"]]
    assert tried == [0.1, 0.3, 1.0, 0.24, 0.375]
    assert [c.get("refined", False) for c in rec["curve"]] == [False, False, False, True, True]
    assert rec["params"] == {"lam": 0.375} and rec["budget"] == 5


def test_every_method_gets_the_same_validation_budget():
    """cpu profile: λ grid + two second-stage points for every method, each on its own hyperparameter."""
    from lorakit.run.search import method_grid, method_refine
    from lorakit.profiles import ALL_METHODS

    p = get_profile("cpu")
    chosen = {"task_arithmetic": {"lam": 0.3}, "ties": {"lam": 0.3, "density": 0.2}, "dare": {"lam": 0.3, "drop_rate": 0.5},
              "knots": {"lam": 0.3, "density": 0.2}, "do": {"lam": 0.3}, "do_ties": {"lam": 0.3, "density": 0.2},
              "do_dare": {"lam": 0.3, "drop_rate": 0.5}, "ta_normeq": {"lam": 0.3}}
    sizes, changed = set(), {}
    for m in ALL_METHODS:
        extra = method_refine(m, p)(chosen[m])
        sizes.add(len(method_grid(m, p)) + len(extra))
        changed[m] = {k for q in extra for k, v in q.items() if chosen[m].get(k) != v}
    assert sizes == {len(p.lam_grid) + 2}
    assert changed == {"task_arithmetic": {"lam"}, "ties": {"density"}, "dare": {"drop_rate"}, "knots": {"density"},
                       "do": {"gamma"}, "do_ties": {"density"}, "do_dare": {"drop_rate"}, "ta_normeq": {"lam"}}
    assert method_refine("ties", get_profile("ci")) is None  # ci: no second stage
