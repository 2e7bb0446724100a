"""Move lorakit modules to new homes and rewrite every import of them: package, tests, tools, notebooks, docs.

    python tools/move_modules.py lorakit.stats=lorakit.stats.paired lorakit.tdist=lorakit.stats.tdist ...

For each ``old=new`` pair (dotted module names) it

1. rewrites the package's relative imports as absolute ones (``from .x import y`` in ``lorakit/a.py``
   → ``from lorakit.x import y``), so that a file's imports no longer depend on where it lies;
2. replaces every ``lorakit.old`` module path by ``lorakit.new`` (whole dotted names, longest first) in
   the package, ``tests/``, ``tools/``, ``notebooks/src/``, ``docs/`` and ``README.md`` (imports,
   ``module:`` references in docstrings, backticked names);
3. moves the files with ``git mv`` (creating each new package's ``__init__.py`` if missing);
4. writes the package's imports of itself back as relative imports from each file's new place.

A module's own names stay as they are: this moves files, it renames nothing. Notebooks are then
rebuilt with ``python tools/build_notebooks.py --keep-outputs`` (import-path edits keep outputs) and
``make test`` runs everything.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lorakit"
TEXT_GLOBS = ["tests/**/*.py", "tools/*.py", "notebooks/src/*.py", "docs/*.md", "README.md", "lorakit/**/*.py"]
FROM_RELATIVE = re.compile(r"^(\s*)from (\.+)([\w.]*) import ", re.M)
FROM_ABSOLUTE = re.compile(r"^(\s*)from (lorakit(?:\.\w+)*) import ", re.M)


def module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(path: Path) -> list[str]:
    """The package a file's relative imports are anchored at."""
    parts = module_of(path).split(".")
    return parts if path.name == "__init__.py" else parts[:-1]


def absolutize(path: Path, text: str) -> str:
    """``from ..x import y`` → ``from lorakit.x import y`` (as seen from ``path``)."""
    anchor = package_of(path)

    def repl(m: re.Match) -> str:
        indent, dots, rest = m.groups()
        base = anchor[: len(anchor) - (len(dots) - 1)]
        return f"{indent}from {'.'.join(base + ([rest] if rest else []))} import "

    return FROM_RELATIVE.sub(repl, text)


def relativize(path: Path, text: str) -> str:
    """``from lorakit.x.y import z`` in a package file → the shortest relative form from ``path``."""
    anchor = package_of(path)

    def repl(m: re.Match) -> str:
        indent, target = m.groups()
        parts = target.split(".")
        common = 0
        while common < min(len(anchor), len(parts)) and anchor[common] == parts[common]:
            common += 1
        dots = "." * (len(anchor) - common + 1)
        return f"{indent}from {dots}{'.'.join(parts[common:])} import "

    return FROM_ABSOLUTE.sub(repl, text)


DOTTED = re.compile(r"(?<![\w.])lorakit(?:\.\w+)*")
FROM_PACKAGE = re.compile(r"^([ \t]*)from lorakit import (\w+)(?: as (\w+))?[ \t]*(#.*)?$", re.M)


def rename(text: str, moves: list[tuple[str, str]]) -> str:
    """Every dotted ``lorakit.…`` name whose module moved, in one pass (a new name is never renamed again),
    and ``from lorakit import module [as name]`` of a moved top-level module."""
    table = dict(moves)

    def dotted(m: re.Match) -> str:
        name = m.group(0)
        for old in sorted(table, key=len, reverse=True):
            if name == old or name.startswith(old + "."):
                return table[old] + name[len(old):]
        return name

    def from_package(m: re.Match) -> str:
        indent, module, alias, comment = m.groups()
        new = table.get(f"lorakit.{module}")
        if new is None:
            return m.group(0)
        parent, _, leaf = new.rpartition(".")
        tail = f"  {comment}" if comment else ""
        return f"{indent}from {parent} import {leaf}" + (f" as {alias or module}" if (alias or module) != leaf else "") + tail

    return FROM_PACKAGE.sub(from_package, DOTTED.sub(dotted, text))


def path_of(module: str) -> Path:
    """A module's file, or a package's folder."""
    folder = ROOT / Path(*module.split("."))
    return folder if (folder / "__init__.py").is_file() else folder.with_suffix(".py")


def main(argv: list[str]) -> int:
    moves = [tuple(a.split("=", 1)) for a in argv]
    for old, new in moves:
        if not path_of(old).exists():
            print(f"error: {old} is not a module file or package ({path_of(old)})", file=sys.stderr)
            return 2
    for path in PACKAGE.rglob("*.py"):
        path.write_text(absolutize(path, path.read_text()))
    files = {p for g in TEXT_GLOBS for p in ROOT.glob(g) if p.is_file()} - {Path(__file__).resolve()}
    for path in files:
        text = path.read_text()
        new = rename(text, moves)
        if new != text:
            path.write_text(new)
    sources = {old: path_of(old) for old, _ in moves}  # before any move makes a new package folder
    for old, new in moves:
        source = sources[old]
        target = ROOT / Path(*new.split(".")) if source.is_dir() else path_of(new)
        target.parent.mkdir(parents=True, exist_ok=True)
        init = target.parent / "__init__.py"
        if not init.exists():
            init.write_text(f'"""{module_of(target.parent / "__init__.py")}."""\n')
            subprocess.run(["git", "add", str(init)], cwd=ROOT, check=True)
        subprocess.run(["git", "mv", str(source), str(target)], cwd=ROOT, check=True)
    for path in PACKAGE.rglob("*.py"):
        path.write_text(relativize(path, path.read_text()))
    print(f"moved {len(moves)} module(s); rebuild notebooks: python tools/build_notebooks.py --keep-outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
