"""docs/methods.md: every citation of it in the code, tests, tools and notebook sources resolves.

A citation is ``docs/methods.md`` followed by section numbers and labels, e.g.
"docs/methods.md §3.3, D5", "docs/methods.md §3.2–3.4", "docs/methods.md §1 and §5.1–5.3",
"docs/methods.md D7". A section ``§X`` or ``§X.Y`` must be the number of a heading
(``### 3.3 Orthogonalisation …``); a label (``D5``, ``H3``, ranges like ``D1–D9``) cited after the
document, or elsewhere on the same line ("H1–H9 of docs/methods.md §2.12"), must be defined there:
the first cell of a table row, ``| **D5** | …``. The old name of the team spec must not be cited any more.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "methods.md"
DOC_NAME = "docs/methods.md"
OLD_NAME = "papers" + ".md"  # split so that a rename of the old name leaves this file alone

SECTION = r"§\s?\d+(?:\.\d+)?(?:\s?[–-]\s?§?\d+(?:\.\d+)?)?"
LABEL = r"\b[DH]\d+(?:\s?[–-]\s?[DH]?\d+)?\b"
REF = rf"(?:{SECTION}|{LABEL})"
CHAIN = re.compile(rf"docs/methods\.md\s*({REF}(?:(?:\s*(?:,|/|and|&)\s*|\s+){REF})*)")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.M)
# where a label is defined: the first cell of a table row, "| **D5** | what goes wrong | check |"
LABEL_ROW = re.compile(r"^\|\s*\*\*([DH]\d+)\*\*\s*\|", re.M)


def citing_files() -> list[Path]:
    me = Path(__file__).resolve()
    files = [
        *ROOT.glob("lorakit/**/*.py"),
        *ROOT.glob("tests/*.py"),
        *ROOT.glob("tools/*.py"),
        *ROOT.glob("notebooks/src/*.py"),
    ]
    return sorted(f for f in files if f.resolve() != me)


def expand_sections(text: str) -> list[str]:
    """``§3.2–3.4`` → 3.2, 3.3, 3.4; ``§5.1–5.3`` → 5.1 … 5.3; ``§2`` → 2."""
    out = []
    for m in re.finditer(r"§\s?(\d+(?:\.\d+)?)(?:\s?[–-]\s?§?(\d+(?:\.\d+)?))?", text):
        lo, hi = m.group(1), m.group(2)
        if hi is None:
            out.append(lo)
            continue
        lo_major, _, lo_minor = lo.partition(".")
        hi_major, _, hi_minor = hi.partition(".")
        if lo_minor and hi_minor and lo_major == hi_major:
            out += [f"{lo_major}.{k}" for k in range(int(lo_minor), int(hi_minor) + 1)]
        else:
            out += [lo, hi]
    return out


def expand_labels(text: str) -> list[str]:
    """``D1–D9`` / ``H1-9`` → every label of the range; ``D4/D5`` → D4, D5."""
    out = []
    for m in re.finditer(r"\b([DH])(\d+)(?:\s?[–-]\s?[DH]?(\d+))?\b", text):
        kind, lo, hi = m.group(1), int(m.group(2)), m.group(3)
        out += [f"{kind}{k}" for k in range(lo, (int(hi) if hi else lo) + 1)]
    return out


def citations() -> list[tuple[str, int, str, list[str], list[str]]]:
    """``(file, line, cited text, sections, labels)`` for every citation of docs/methods.md."""
    found = []
    for path in citing_files():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for m in re.finditer(re.escape(DOC_NAME), text):
            line_no = text.count("\n", 0, m.start()) + 1
            chain = CHAIN.match(text, m.start())
            cited = chain.group(1) if chain else ""
            labels = expand_labels(cited) + expand_labels(lines[line_no - 1])
            found.append((str(path.relative_to(ROOT)), line_no, cited, expand_sections(cited),
                          sorted(set(labels))))
    return found


def doc_text() -> str:
    assert DOC.is_file(), f"{DOC_NAME} is missing"
    return DOC.read_text(encoding="utf-8")


def doc_sections() -> set[str]:
    return set(HEADING.findall(doc_text()))


def test_parsers_on_examples():
    assert expand_sections("§3.2–3.4") == ["3.2", "3.3", "3.4"]
    assert expand_sections("§1 and §5.1–5.3") == ["1", "5.1", "5.2", "5.3"]
    assert expand_sections("§1, §3.2, §3.5") == ["1", "3.2", "3.5"]
    assert expand_labels("D1–D9") == [f"D{k}" for k in range(1, 10)]
    assert expand_labels("D4/D5/D8") == ["D4", "D5", "D8"]
    m = CHAIN.match("docs/methods.md §3.3, D4/D5/D8). Next")
    assert m and m.group(1) == "§3.3, D4/D5/D8"
    m = CHAIN.match("docs/methods.md §3.3. γ = 0.5 removes")
    assert m and m.group(1) == "§3.3"
    m = CHAIN.match("docs/methods.md D7\n")
    assert m and m.group(1) == "D7"
    assert "3.3" in doc_sections() and "2" in doc_sections()


def doc_labels() -> set[str]:
    return set(LABEL_ROW.findall(doc_text()))


def test_headings_and_labels_are_defined_once():
    for kind, found in (("section numbers", HEADING.findall(doc_text())),
                        ("labels", LABEL_ROW.findall(doc_text()))):
        duplicates = sorted({n for n in found if found.count(n) > 1})
        assert not duplicates, f"{DOC_NAME}: {kind} defined more than once: {duplicates}"
    assert {f"D{k}" for k in range(1, 10)} | {f"H{k}" for k in range(1, 10)} <= doc_labels()


def test_every_citation_resolves():
    sections, labels_defined = doc_sections(), doc_labels()
    problems = []
    for where, line, cited, secs, labels in citations():
        for sec in secs:
            if sec not in sections:
                problems.append(f"{where}:{line}: cites §{sec} ({cited!r}), but {DOC_NAME} has no heading {sec}")
        for label in labels:
            if label not in labels_defined:
                problems.append(f"{where}:{line}: cites {label}, but {DOC_NAME} defines no | **{label}** | row")
        if not secs and not labels:
            problems.append(f"{where}:{line}: cites {DOC_NAME} without a section or label")
    assert not problems, "\n".join(problems)


def test_old_spec_name_is_not_cited():
    hits = [
        f"{path.relative_to(ROOT)}:{k}: {line.strip()}"
        for path in citing_files()
        for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if OLD_NAME in line
    ]
    assert not hits, f"cite {DOC_NAME} (same § numbers), not {OLD_NAME}:\n" + "\n".join(hits)


def test_there_are_citations():
    if not citations():
        pytest.fail(f"no file cites {DOC_NAME}; the citation scan is probably broken")
