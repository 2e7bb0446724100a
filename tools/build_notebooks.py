"""Build the course notebooks from their percent-format sources and execute them.

Sources live in ``notebooks/src/NN_name.py`` ("# %%" starts a code cell, "# %% [markdown]" a
markdown cell whose lines start with "# "). This writes ``notebooks/NN_name.ipynb`` and, with
``--execute``, runs it top to bottom in a fresh kernel so the committed outputs come from a real
run (in the profile named by ``LORAKIT_PROFILE``).

With ``--keep-outputs`` it rebuilds without executing, for edits that touch markdown, comments or
import paths only (a module moved, its names the same objects): every code cell keeps the outputs,
execution count and metadata of the committed notebook. The code cells of the source must equal the
committed notebook's code cells, in order, once comment lines and ``import`` / ``from … import``
lines are set aside; if any other line of a code cell changed (or a cell was added or removed), it
prints which one and that the notebook needs ``--execute``, writes nothing, and exits with status 1.
``make test`` runs every notebook with nbval, so a moved import that no longer resolves, or resolves
to something else, fails there.

    python tools/build_notebooks.py [--execute | --keep-outputs] [names...]

A name selects every source whose file stem contains it (``04`` → ``04_osrm`` and
``solutions__04_solutions``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "notebooks" / "src"


def parse(path: Path) -> nbformat.NotebookNode:
    cells, kind, lines = [], None, []

    def flush():
        if kind is None:
            return
        text = "\n".join(lines).strip("\n")
        if kind == "markdown":
            text = "\n".join(l[2:] if l.startswith("# ") else l.lstrip("#") for l in text.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(text))
        elif text.strip():
            cells.append(nbformat.v4.new_code_cell(text))

    for line in path.read_text().splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        else:
            lines.append(line)
    flush()
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def notebook_path(src: Path) -> Path:
    """``notebooks/src/solutions__01_x.py`` → ``notebooks/solutions/01_x.ipynb`` (under ``ROOT``)."""
    return ROOT / "notebooks" / (src.stem.replace("__", "/") + ".ipynb")


def _short(text: str, width: int = 60) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def executable_lines(source: str) -> list[str]:
    """The lines of a code cell that ``--keep-outputs`` compares: comments cut, blank and import lines dropped."""
    import io
    import tokenize

    cut: dict[int, int] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                cut[tok.start[0]] = tok.start[1]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        cut = {}  # not Python (a cell magic): compare the lines as they are
    kept = []
    for number, line in enumerate(source.splitlines(), start=1):
        code = line[: cut[number]].rstrip() if number in cut else line.rstrip()
        stripped = code.strip()
        if not stripped or stripped.startswith("from ") or stripped.startswith("import "):
            continue
        kept.append(code)
    return kept


def keep_outputs(nb: nbformat.NotebookNode, old: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode | None, list[str]]:
    """``nb`` (freshly parsed) with the outputs of ``old`` (the committed notebook) kept.

    The code cells of ``nb`` and ``old`` are matched in order; each must have the same source
    text apart from comment and import lines (:func:`executable_lines`). Then every code cell takes ``old``'s outputs, execution count, metadata and id, the
    k-th markdown cell takes the id of ``old``'s k-th markdown cell (when there is one), and the
    notebook keeps ``old``'s metadata. Returns ``(merged, [])``, or ``(None, problems)`` naming
    the first code cell that differs.
    """
    new_code = [c for c in nb.cells if c.cell_type == "code"]
    old_code = [c for c in old.cells if c.cell_type == "code"]
    for k, (a, b) in enumerate(zip(new_code, old_code)):
        if executable_lines(a.source) != executable_lines(b.source):
            return None, [f"code cell {k + 1} changed: source {_short(a.source)!r}, notebook {_short(b.source)!r}"]
    if len(new_code) != len(old_code):
        k = min(len(new_code), len(old_code))
        what = (f"code cell {k + 1} is new ({_short(new_code[k].source)!r})" if len(new_code) > k
                else f"code cell {k + 1} was removed ({_short(old_code[k].source)!r})")
        return None, [f"{what}: the source has {len(new_code)} code cells, the notebook {len(old_code)}"]
    merged = nbformat.from_dict(nbformat.v4.new_notebook(cells=[], metadata=dict(old.metadata or nb.metadata)))
    old_md = iter([c for c in old.cells if c.cell_type == "markdown"])
    old_code_iter = iter(old_code)
    for cell in nb.cells:
        cell = nbformat.from_dict(dict(cell))
        if cell.cell_type == "code":
            prev = next(old_code_iter)
            cell.outputs = prev.get("outputs", [])
            cell.execution_count = prev.get("execution_count")
            cell.metadata = prev.get("metadata", {})
            if "id" in prev:
                cell.id = prev.id
        elif cell.cell_type == "markdown":
            prev = next(old_md, None)
            if prev is not None and "id" in prev:
                cell.id = prev.id
        merged.cells.append(cell)
    return merged, []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--execute", action="store_true", help="run each notebook in a fresh kernel")
    mode.add_argument("--keep-outputs", action="store_true",
                      help="markdown, comment or import-path edits: keep the committed notebook's outputs; refuse if "
                           "any other code line changed")
    ap.add_argument("--timeout", type=int, default=1800)
    args = ap.parse_args(argv)
    sources = sorted(SRC.glob("*.py"))
    if args.names:
        sources = [s for s in sources if any(n in s.stem for n in args.names)]
    if args.keep_outputs:
        return _main_keep_outputs(sources)
    for src in sources:
        out = notebook_path(src)
        rel = out.relative_to(ROOT / "notebooks")
        out.parent.mkdir(parents=True, exist_ok=True)
        nb = parse(src)
        if args.execute:
            from nbclient import NotebookClient

            t0 = time.time()
            NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(out.parent)}}).execute()
            print(f"executed {rel} in {time.time() - t0:.0f} s (profile {os.environ.get('LORAKIT_PROFILE', 'default')})")
        nbformat.write(nb, out)
        print(f"wrote {out.relative_to(ROOT)}")
    return 0


def _main_keep_outputs(sources: list[Path]) -> int:
    """``--keep-outputs``: check every selected notebook first; write all of them or none."""
    planned, failed = [], False
    for src in sources:
        out = notebook_path(src)
        rel = out.relative_to(ROOT)
        if not out.is_file():
            problems = [f"there is no {rel} to take outputs from"]
            merged = None
        else:
            merged, problems = keep_outputs(parse(src), nbformat.read(out, as_version=4))
        if merged is None:
            failed = True
            for problem in problems:
                print(f"warning: {rel}: {problem}", file=sys.stderr)
            print(f"warning: {rel} needs a real run: python tools/build_notebooks.py --execute {src.stem}",
                  file=sys.stderr)
        else:
            planned.append((out, merged))
    if failed:
        print("--keep-outputs is for markdown, comment and import-path edits; nothing written", file=sys.stderr)
        return 1
    for out, merged in planned:
        nbformat.write(merged, out)
        print(f"wrote {out.relative_to(ROOT)} (outputs kept)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
