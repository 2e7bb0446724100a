"""Build the course notebooks from their percent-format sources and execute them.

Sources live in ``notebooks/src/NN_name.py`` ("# %%" starts a code cell, "# %% [markdown]" a
markdown cell whose lines start with "# "). This writes ``notebooks/NN_name.ipynb`` and, with
``--execute``, runs it top to bottom in a fresh kernel so the committed outputs come from a real
run (in the profile named by ``LORAKIT_PROFILE``).

    python tools/build_notebooks.py [--execute] [names...]
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*")
    ap.add_argument("--execute", action="store_true")
    ap.add_argument("--timeout", type=int, default=1800)
    args = ap.parse_args()
    sources = sorted(SRC.glob("*.py"))
    if args.names:
        sources = [s for s in sources if any(n in s.stem for n in args.names)]
    for src in sources:
        rel = Path(src.stem.replace("__", "/") + ".ipynb")
        out = ROOT / "notebooks" / rel
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


if __name__ == "__main__":
    sys.exit(main())
