"""Every task of every profile's default list, on both tracks, loads offline from what ``make`` installs.

This test cannot be skipped: it has no skip and no importorskip. With an empty ``LORAKIT_CACHE``, no
``LORAKIT_DATA`` export, the hub switched off and every network connection refused, it loads each task
of the ``ci``, ``cpu`` and ``gpu`` default lists of the encoder track (:data:`lorakit.profiles.PROFILES`)
and of the causal-LM track (:data:`lorakit.profiles.CAUSAL_PROFILES`), and checks that each split
holds what the profile asks for. A task that needs a download (BIG-bench's sdist through pip, a hub
dataset) fails here instead of being skipped, which is how the product broke unnoticed before.

Split sizes. A profile's sizes are what it asks for; a task whose pool holds fewer gives all it has
(the split rule: a 60/20/20 cut, or an official test file halved into validation and test, less texts
seen in an earlier split; computed here from the raw pool). The encoder's ``ci`` and ``cpu`` lists,
what ``make run`` and the notebooks use, must give exactly what they ask. Elsewhere a split may fall
short of the ask only down to the split rule's capacity, and never below a floor: the ``gpu`` test
split holds at least :data:`MIN_TEST` examples (a per-task accuracy standard error of at most
2.5 points). Today the causal track's two adjective tasks (787 lemmas) fall short in ``cpu`` training
(472 of 512) and in ``gpu`` validation and test; its split is rebuilt by the evidence issue.
"""

from __future__ import annotations

import socket
import subprocess

import pytest

import lorakit.data.bigbench as bigbench
import lorakit.data.tasks as tasks
from lorakit.profiles import CAUSAL_PROFILES
from lorakit.data.generative import load_generative_task
from lorakit.profiles import PROFILES
from lorakit.data.splits import cut_splits

#: the fewest test examples a task may give, per (track, profile) that may fall short of its ask; the causal
#: adjective tasks hold 787 lemmas, so 158 test examples in gpu (the evidence issue rebuilds that split)
MIN_TEST = {("encoder", "gpu"): 400, ("causal", "cpu"): 80, ("causal", "gpu"): 150}
#: (track, profile) pairs whose every split must be exactly what the profile asks
EXACT = {("encoder", "ci"), ("encoder", "cpu"), ("causal", "ci")}

ENCODER = sorted({(name, task) for name, p in PROFILES.items() for task in p.tasks + p.course_tasks})
CAUSAL = sorted({(name, task) for name, p in CAUSAL_PROFILES.items() for task in p.tasks})


class NetworkUsed(AssertionError):
    pass


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty cache, no export folder, the hub off, and every download path made to fail loudly."""
    cache = tmp_path / "empty-cache"
    monkeypatch.setenv("LORAKIT_CACHE", str(cache))
    monkeypatch.delenv("LORAKIT_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise NetworkUsed(f"a task tried to reach the network or run a download ({args[:2]!r})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(bigbench, "fetch_folders", refuse)
    tasks.task_cards.cache_clear()
    tasks.read_pools.cache_clear()
    yield cache
    tasks.task_cards.cache_clear()
    tasks.read_pools.cache_clear()
    assert not (cache / "bigbench").exists(), "a task wrote into the BIG-bench cache"


def test_every_profile_lists_only_offline_sources():
    """No default task comes from the BIG-bench sdist or the hub (the sources a fresh machine lacks)."""
    for track, table in (("encoder", ENCODER), ("causal", CAUSAL)):
        for profile, name in table:
            kind = tasks.get_card(name).source.get("kind")
            assert kind not in ("bigbench", "hf_datasets"), f"{track} {profile}: {name} needs a download ({kind})"


def _capacity(name: str) -> dict[str, int]:
    """Split sizes of the full pools under the split rule (what a profile asking for everything gets)."""
    train_pool, test_pool = tasks.read_pools(name)
    train, val, test = cut_splits(name, train_pool, test_pool)
    return {"train": len(train), "val": len(val), "test": len(test)}


def check_sizes(track: str, profile, name: str, sizes: dict[str, int]) -> None:
    """Each split holds what ``profile`` asks for, or, where allowed, all the split rule gives."""
    asked = {"train": profile.train_examples, "val": profile.val_examples, "test": profile.test_examples}
    if (track, profile.name) in EXACT:
        assert sizes == asked, (track, profile.name, name, sizes)
        return
    capacity = _capacity(name)
    for split, n in asked.items():
        want = capacity[split] if n is None else min(n, capacity[split])
        assert sizes[split] == want, (track, profile.name, name, split, sizes, capacity)
    assert sizes["test"] >= MIN_TEST[(track, profile.name)], (track, profile.name, name, sizes)


@pytest.mark.parametrize("profile,name", ENCODER)
def test_encoder_task_loads_offline_with_profile_sizes(offline, profile, name):
    data = tasks.load_task(name, profile=PROFILES[profile])
    check_sizes("encoder", PROFILES[profile], name, data.sizes())
    assert data.num_labels >= 2 and len(set(data.train[1])) == data.num_labels, "a label never seen in training"
    assert data.majority_baseline("test") < 0.9, "a task that is nearly one class leaves a merge nothing to lose"


@pytest.mark.parametrize("profile,name", CAUSAL)
def test_causal_task_loads_offline_with_profile_sizes(offline, profile, name):
    data = load_generative_task(name, profile=CAUSAL_PROFILES[profile])
    check_sizes("causal", CAUSAL_PROFILES[profile], name, data.sizes())
    assert all(t.strip() for t in data.test[1]), "an empty target"


def test_the_guard_catches_a_download(offline):
    """The fixture really fails a task that needs the BIG-bench sdist (so the tests above can fail)."""
    card = next(c for c in tasks.task_cards().values() if c.source.get("kind") == "bigbench")
    with pytest.raises((NetworkUsed, tasks.LorakitError)):
        tasks.fetch_bigbench([card.name])
