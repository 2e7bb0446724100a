"""Reading a causal-track run: what kind of answer each merged model gives, and the track's claims beside the encoder's.

Without heads, the prompt alone tells a merged causal LM which task it is doing. A wrong answer can
then be the *right word for another task* (``walking`` when the prompt asks for the past tense of
``walk``): the cross-task confusion that per-task heads hide on the encoder track.
:func:`answer_kinds` sorts every test prediction of a run into :data:`ANSWER_KINDS`, using the other
tasks' targets of the same input (the lexicon tasks share lemmas). :func:`claims_side_by_side`
puts the verdicts of two runs' claim reports (:func:`lorakit.results.reference.claims_report`) in one table;
:func:`causal_reference` finds the committed causal-track reference.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Mapping

from ..eval.causal import exact_match, normalize_answer
from ..errors import LorakitError
from ..data.generative import load_generative_task
from .reference import reference_dir
from .tables import load_results

#: right: exact match; other_task: the input's target in another task of the run; copy: the input
#: itself; empty: nothing before eos; other: anything else
ANSWER_KINDS = ("right", "other_task", "copy", "empty", "other")


def targets_by_input(tasks: list[str]) -> dict[str, dict[str, str]]:
    """``{task: {input: target}}`` over every split of each (generative) task."""
    out = {}
    for t in tasks:
        d = load_generative_task(t, train_examples=None, val_examples=None, test_examples=None)
        out[t] = {x: y for split in (d.train, d.val, d.test) for x, y in zip(*split)}
    return out


def answer_kind(prediction: str, target: str, source: str, task: str, others: Mapping[str, Mapping[str, str]]) -> str:
    """One prediction's kind (:data:`ANSWER_KINDS`); ``others`` = :func:`targets_by_input` of the run's tasks."""
    if exact_match(prediction, target):
        return "right"
    if not prediction.strip():
        return "empty"
    guess = normalize_answer(prediction)
    if any(u != task and normalize_answer(m.get(source, "\0")) == guess for u, m in others.items()):
        return "other_task"
    if guess == normalize_answer(source):
        return "copy"
    return "other"


def answer_kinds(results: Mapping, method: str, init: str, others: Mapping[str, Mapping[str, str]] | None = None,
                 model: str = "merged") -> dict[str, Counter]:
    """Per task, a :class:`Counter` of :data:`ANSWER_KINDS` over every seed's test predictions.

    ``model``: ``"merged"`` (``method``'s records with ``init``), ``"individual"`` or ``"floor"``
    (``method`` ignored). Needs a causal run with predictions (``lorakit run --model smollm2``).
    """
    tasks = list(results["tasks"])
    others = others if others is not None else targets_by_input(tasks)
    if model == "merged":
        runs = [r["predictions"] for r in results["records"] if r["method"] == method and r["init"] == init]
    else:
        runs = []
        for t in tasks:
            for i, e in enumerate(e for e in results["tasks"][t][model] if e["init"] == init):
                while len(runs) <= i:
                    runs.append({})
                runs[i][t] = e["predictions"]
    counts = {t: Counter({k: 0 for k in ANSWER_KINDS}) for t in tasks}
    for preds in runs:
        for t in tasks:
            info = results["tasks"][t]
            for p, y, x in zip(preds[t], info["test_targets"], info["test_inputs"]):
                counts[t][answer_kind(p, y, x, t, others)] += 1
    return counts


def claims_side_by_side(encoder_rows, causal_rows) -> list[tuple[str, str, str]]:
    """``(claim, encoder verdict, causal verdict)`` for every claim of either report ("—" where one lacks it)."""
    enc = {r.claim: r.verdict for r in encoder_rows}
    cau = {r.claim: r.verdict for r in causal_rows}
    names = list(enc) + [c for c in cau if c not in enc]
    return [(c, enc.get(c, "—"), cau.get(c, "—")) for c in names]


def causal_reference(folder: str | Path | None = None) -> tuple[str, dict]:
    """(name, results) of the committed causal-track run under ``data/reference/causal/``: the most seeds, then newest.

    The encoder track's references sit one level up (:func:`lorakit.results.reference.reference_runs`); the
    causal ones have their own folder so that nothing reading those mixes the two tracks.
    """
    root = Path(folder) if folder else reference_dir() / "causal"
    runs = {p.parent.name: load_results(p) for p in sorted(root.glob("*/results.json"))}
    runs = {n: r for n, r in runs.items() if r.get("track") == "causal"}
    if not runs:
        raise LorakitError(f"no causal-track reference run under {root}; make one with "
                           f"`lorakit run --model smollm2 --profile cpu --seeds 0 1 2 --out {root}/NAME`")
    name = max(runs, key=lambda n: (len(runs[n]["seeds"]), n))
    return name, runs[name]
