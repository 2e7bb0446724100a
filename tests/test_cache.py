"""The on-disk cache of computed initial A: computed once per recipe, loaded bit for bit after, keyed by what
changes A beyond rounding (so a run on another thread count or batch size finds the adapters an earlier one cached)."""

from __future__ import annotations

import pytest
import torch

from lorakit.train.cache import cache_key, cached_init_A, texts_digest
from lorakit.train.inits import osrm_options, osrm_recipe
from lorakit.profiles import get_profile


def _compute_counter():
    calls = []

    def compute():
        calls.append(1)
        g = torch.Generator().manual_seed(len(calls))
        return {"a": {"m.q": torch.randn(2, 5, dtype=torch.float64, generator=g)},
                "b": {"m.q": torch.randn(2, 5, dtype=torch.float64, generator=g)}}

    return compute, calls


def test_a_recipe_is_computed_once_and_loaded_bit_for_bit(monkeypatch, tmp_path):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path))
    compute, calls = _compute_counter()
    recipe = {"init": "osrm-tokens", "texts": {"a": "x", "b": "y"}}
    first = cached_init_A(recipe, compute)
    second = cached_init_A(dict(recipe), compute)
    assert len(calls) == 1
    assert torch.equal(first["a"]["m.q"], second["a"]["m.q"]) and second["a"]["m.q"].dtype == torch.float64
    assert len(list((tmp_path / "init_A").glob("osrm-tokens-*.pt"))) == 1
    assert not list((tmp_path / "init_A").glob("*.part"))  # nothing half-written beside it
    other = cached_init_A({**recipe, "texts": {"a": "x", "b": "z"}}, compute)  # another recipe: computed again
    assert len(calls) == 2 and not torch.equal(other["a"]["m.q"], first["a"]["m.q"])


def test_a_damaged_file_is_recomputed_and_cache_false_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path))
    compute, calls = _compute_counter()
    recipe = {"init": "osrm-tokens", "k": 1}
    cached_init_A(recipe, compute)
    (path,) = (tmp_path / "init_A").glob("*.pt")
    path.write_bytes(b"not a torch file")
    again = cached_init_A(recipe, compute)
    assert len(calls) == 2 and torch.equal(torch.load(path, weights_only=True)["b"]["m.q"], again["b"]["m.q"])
    cached_init_A({"init": "osrm-tokens", "k": 2}, compute, cache=False)
    assert len(calls) == 3 and len(list((tmp_path / "init_A").glob("*.pt"))) == 1


def test_the_osrm_recipe_changes_with_what_changes_A_and_not_with_threads_or_batch_size():
    p = get_profile("ci")
    texts = {"t1": ["a b", "c"], "t2": ["d"]}
    base = cache_key(osrm_recipe(p, texts, osrm_options(p), "encoder"))
    same = [p.replace(eval_batch_size=p.eval_batch_size + 3), p.replace(threads=2), p.replace(device="cuda")]
    assert all(cache_key(osrm_recipe(q, texts, osrm_options(q), "encoder")) == base for q in same)
    changed = [
        osrm_recipe(p.replace(rank=p.rank + 1), texts, osrm_options(p), "encoder"),
        osrm_recipe(p.replace(max_length=p.max_length + 1), texts, osrm_options(p), "encoder"),
        osrm_recipe(p.replace(target_modules=("query",)), texts, osrm_options(p), "encoder"),
        osrm_recipe(p, {"t1": ["a b", "c!"], "t2": ["d"]}, osrm_options(p), "encoder"),
        osrm_recipe(p, {"t1": ["c", "a b"], "t2": ["d"]}, osrm_options(p), "encoder"),  # order of the inputs
        osrm_recipe(p, {**texts, "t3": ["e"]}, osrm_options(p), "encoder"),  # another task set
        osrm_recipe(p, texts, osrm_options(p, "task_mean"), "encoder"),
        osrm_recipe(p, texts, {**osrm_options(p), "osrm_samples": 7}, "encoder"),
        osrm_recipe(p, texts, osrm_options(p), "causal"),
    ]
    keys = [cache_key(r) for r in changed]
    assert base not in keys and len(set(keys)) == len(keys)


@pytest.mark.parametrize("texts", [["ab", "c"], ["a", "bc"]])
def test_texts_digest_separates_the_strings(texts):
    assert texts_digest(texts) != texts_digest(["abc"])
