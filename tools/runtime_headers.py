"""Write the measured runtimes into each notebook's first cell and README's notebook table.

Reads the timing records in ``data/reference/notebook-runtime/`` (``tools/time_notebooks.py``), the
newest per profile and notebook, and rewrites the ``# Runtime …`` paragraph of every
``notebooks/src/0*.py`` and the runtime column of README's table. ``tests/test_notebook_runtime.py``
fails when a header or the table disagrees with the records, so re-run this after re-timing:

    python tools/runtime_headers.py && python tools/build_notebooks.py --keep-outputs
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "notebooks" / "src"
RECORDS = ROOT / "data" / "reference" / "notebook-runtime"

#: what a learner should know beside the numbers, per notebook
NOTES = {
    "00": "Most of it trains the two small adapters of the merge demo (cached afterwards).",
    "01": "It trains one adapter and runs the training loop twice for a few steps.",
    "02": "It trains one adapter per course task (cached for notebooks 03–06), then merges and evaluates them.",
    "03": "It trains a full fine-tune per task beside the LoRA adapters, then merges every pair of tasks.",
    "04": "It trains three sets of adapters: standard, OSRM, and OSRM with $A$ frozen.",
    "05": "It reuses 02's adapters when they are cached.",
    "06": "The live run is the whole benchmark at one seed; in `cpu` that is one seed of the reference's "
          "grid, whose `RUN.md` gives the time per seed.",
    "07": "The live run trains one SmolLM2 adapter per task and init (the first call also dequantises the "
          "packaged model once, about 30 s); in `cpu` it is one seed of the committed causal reference.",
}


#: the ``# Runtime …`` paragraph of a notebook source's first cell (up to a blank or empty-comment line)
RUNTIME_PARAGRAPH = re.compile(r"# Runtime.*?(?=\n\s*\n|\n#\s*\n|\Z)", re.S)


def newest(profile: str) -> dict[str, dict]:
    """``{notebook: {"wall_s", "minutes", "file"}}``, the newest record of ``profile`` for each notebook.

    ``minutes`` is what a header states: the wall time rounded to whole minutes, at least 1.
    """
    out: dict[str, tuple[str, dict]] = {}
    for path in sorted(RECORDS.glob("*.json")):
        rec = json.loads(path.read_text())
        if rec["profile"] != profile:
            continue
        for name, t in rec["notebooks"].items():
            if name not in out or rec["date"] > out[name][0]:
                out[name] = (rec["date"], {"wall_s": t["wall_s"], "minutes": max(1, round(t["wall_s"] / 60)),
                                           "file": path.name})
    return {k: v for k, (_, v) in out.items()}


def paragraph(stem: str, ci: dict, cpu: dict) -> str:
    parts = []
    for profile, table in (("ci", ci), ("cpu", cpu)):
        parts.append(f"`{profile}` ≈ {table[stem]['minutes']} min" if stem in table else f"`{profile}` not measured")
    files = sorted({t[stem]["file"] for t in (ci, cpu) if stem in t})
    text = (f"Runtime, measured from an empty adapter cache with one torch thread on a shared 2-core CPU "
            f"({', '.join(f'`data/reference/notebook-runtime/{f}`' for f in files)}): {' · '.join(parts)} · "
            f"`gpu` not measured (no GPU was lent). {NOTES.get(stem[:2], '')}").strip()
    lines, line = [], "#"
    for word in text.split():
        if len(line) + 1 + len(word) > 100:
            lines.append(line)
            line = "#"
        line += " " + word
    return "\n".join(lines + [line])


def main() -> int:
    ci, cpu = newest("ci"), newest("cpu")
    for src in sorted(SRC.glob("0*.py")):
        text = src.read_text()
        new, n = RUNTIME_PARAGRAPH.subn(lambda _: paragraph(src.stem, ci, cpu), text, count=1)
        if n != 1:
            print(f"{src.name}: no '# Runtime' paragraph in the first cell", file=sys.stderr)
            return 1
        src.write_text(new)
    readme = ROOT / "README.md"
    text = readme.read_text()
    text = text.replace("| # | notebook | what you leave with |\n|---|---|---|",
                        "| # | notebook | what you leave with | runtime (measured) |\n|---|---|---|---|")
    for src in sorted(SRC.glob("0*.py")):
        stem = src.stem
        cell = " · ".join(f"`{p}` {t[stem]['minutes']} min" for p, t in (("ci", ci), ("cpu", cpu)) if stem in t)
        pattern = rf"^(\| {stem[:2]} \| `{stem}` \| [^|]*\|)(.*)$"
        text, n = re.subn(pattern, lambda m: f"{m.group(1)} {cell or 'not measured'} |", text, count=1, flags=re.M)
        if n != 1:
            print(f"README has no table row for {stem}", file=sys.stderr)
            return 1
    readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
