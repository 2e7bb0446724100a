"""The committed notebooks are what tools/build_notebooks.py makes of notebooks/src/*.py.

Every ``notebooks/src/X.py`` has its notebook (``solutions__01_x`` → ``notebooks/solutions/01_x.ipynb``),
every notebook has a source, and each notebook's cells (type and source text) equal ``parse(src)``.
Then the ``--keep-outputs`` mode of the tool, on a tiny synthetic source.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SRC = NOTEBOOKS / "src"


def _load_tool():
    spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "tools" / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_tool()
SOURCES = sorted(SRC.glob("*.py"))


def notebook_for(src: Path) -> Path:
    return NOTEBOOKS / (src.stem.replace("__", "/") + ".ipynb")


def cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells]


def first_difference(got: list, want: list) -> str:
    for k, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return (f"cell {k + 1}: notebook has {a[0]} {a[1][:200]!r}, "
                    f"source gives {b[0]} {b[1][:200]!r}")
    return f"the notebook has {len(got)} cells, the source gives {len(want)}"


def test_every_source_has_its_notebook_and_back():
    assert SOURCES, "no notebook sources found"
    missing = [f"{s.relative_to(ROOT)} → {notebook_for(s).relative_to(ROOT)}" for s in SOURCES if not notebook_for(s).is_file()]
    assert not missing, ("sources without a notebook (build them with "
                         "python tools/build_notebooks.py --execute NAME):\n" + "\n".join(missing))
    made = {notebook_for(s).resolve() for s in SOURCES}
    orphans = [str(p.relative_to(ROOT)) for p in sorted(NOTEBOOKS.rglob("*.ipynb"))
               if ".ipynb_checkpoints" not in p.parts and p.resolve() not in made]
    assert not orphans, "notebooks without a source in notebooks/src:\n" + "\n".join(orphans)


@pytest.mark.parametrize("src", SOURCES, ids=[s.stem for s in SOURCES])
def test_notebook_cells_equal_the_source(src):
    out = notebook_for(src)
    if not out.is_file():
        pytest.skip(f"{out.relative_to(ROOT)} missing (reported by the test above)")
    got, want = cells(nbformat.read(out, as_version=4)), cells(build.parse(src))
    assert got == want, (
        f"{out.relative_to(ROOT)} does not match {src.relative_to(ROOT)}: {first_difference(got, want)}. "
        f"Rebuild it: python tools/build_notebooks.py --execute {src.stem} "
        f"(or --keep-outputs {src.stem} if only markdown changed)"
    )


# ----------------------------------------------------------------------------------------------
# --keep-outputs on a synthetic source
# ----------------------------------------------------------------------------------------------

SOURCE = """# %% [markdown]
# # Title
#
# Some text.

# %%
x = 1 + 1
print(x)

# %% [markdown]
# More text.

# %%
y = x * 3
y
"""


@pytest.fixture
def tool(tmp_path, monkeypatch):
    """The tool pointed at ``tmp_path`` with one source and an 'executed' notebook built from it."""
    monkeypatch.setattr(build, "ROOT", tmp_path)
    monkeypatch.setattr(build, "SRC", tmp_path / "notebooks" / "src")
    src = tmp_path / "notebooks" / "src" / "01_demo.py"
    src.parent.mkdir(parents=True)
    src.write_text(SOURCE)
    nb = build.parse(src)
    outputs = [[nbformat.v4.new_output("stream", name="stdout", text="2\n")],
               [nbformat.v4.new_output("execute_result", data={"text/plain": "6"}, execution_count=2)]]
    code = [c for c in nb.cells if c.cell_type == "code"]
    for k, (cell, out) in enumerate(zip(code, outputs), start=1):
        cell.outputs, cell.execution_count = out, k
        cell.metadata["execution"] = {"shell.execute_reply": f"2026-01-01T00:00:0{k}Z"}
    nb.metadata["language_info"]["version"] = "3.11.7"
    path = tmp_path / "notebooks" / "01_demo.ipynb"
    nbformat.write(nb, path)
    return src, path


def test_keep_outputs_unchanged_source_is_byte_identical(tool):
    src, path = tool
    before = path.read_bytes()
    assert build.main(["--keep-outputs", "01_demo"]) == 0
    assert path.read_bytes() == before


def test_keep_outputs_markdown_change_keeps_outputs(tool, capsys):
    src, path = tool
    old = nbformat.read(path, as_version=4)
    src.write_text(SOURCE.replace("# Some text.", "# Some better text.\n#\n# A new paragraph.")
                   + "\n# %% [markdown]\n# A new closing cell.\n")
    assert build.main(["--keep-outputs", "01_demo"]) == 0
    new = nbformat.read(path, as_version=4)
    assert cells(new) == cells(build.parse(src))
    assert "A new paragraph." in new.cells[0].source and new.cells[-1].source == "A new closing cell."
    old_code = [c for c in old.cells if c.cell_type == "code"]
    new_code = [c for c in new.cells if c.cell_type == "code"]
    for a, b in zip(old_code, new_code):
        assert (b.outputs, b.execution_count, b.metadata, b.id) == (a.outputs, a.execution_count, a.metadata, a.id)
    assert new.metadata == old.metadata
    assert "outputs kept" in capsys.readouterr().out


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace("y = x * 3", "y = x * 4"), "code cell 2 changed"),
    (lambda s: s + "\n# %%\nz = 0\n", "code cell 3 is new"),
    (lambda s: s.replace("# %%\ny = x * 3\ny\n", ""), "code cell 2 was removed"),
], ids=["changed", "added", "removed"])
def test_keep_outputs_refuses_code_changes_and_writes_nothing(tool, capsys, edit, message):
    src, path = tool
    before = path.read_bytes()
    edited = edit(SOURCE)
    assert edited != SOURCE
    src.write_text(edited)
    assert build.main(["--keep-outputs", "01_demo"]) == 1
    assert path.read_bytes() == before
    err = capsys.readouterr().err
    assert "01_demo.ipynb" in err and message in err
    assert "--execute 01_demo" in err and "nothing written" in err


def test_keep_outputs_takes_a_moved_import_and_a_comment_but_not_a_renamed_call(tool, capsys):
    """A module move changes import lines only: outputs are kept (nbval runs the cell in make test)."""
    src, path = tool
    old = nbformat.read(path, as_version=4)
    src.write_text(SOURCE.replace("y = x * 3", "from math import prod  # moved here\n# a comment\n\ny = x * 3  # x times 3"))
    assert build.main(["--keep-outputs", "01_demo"]) == 0
    new = nbformat.read(path, as_version=4)
    code = [c for c in new.cells if c.cell_type == "code"]
    assert "from math import prod" in code[1].source
    assert code[1].outputs == [c for c in old.cells if c.cell_type == "code"][1].outputs
    src.write_text(SOURCE.replace("y = x * 3", "from math import prod\ny = prod([x, 3])"))
    assert build.main(["--keep-outputs", "01_demo"]) == 1
    assert "code cell 2 changed" in capsys.readouterr().err


def test_keep_outputs_writes_none_when_one_notebook_fails(tool, tmp_path):
    """All or nothing: a good markdown edit in one notebook is not written if another refuses."""
    src, path = tool
    other_src = src.with_name("02_other.py")
    other_src.write_text(SOURCE)
    other = tmp_path / "notebooks" / "02_other.ipynb"
    nbformat.write(build.parse(other_src), other)
    src.write_text(SOURCE.replace("# Some text.", "# Edited text."))         # markdown only: fine
    other_src.write_text(SOURCE.replace("x = 1 + 1", "x = 2"))              # code: refused
    before = path.read_bytes(), other.read_bytes()
    assert build.main(["--keep-outputs"]) == 1
    assert (path.read_bytes(), other.read_bytes()) == before


def test_keep_outputs_without_a_notebook_refuses(tool):
    src, path = tool
    path.unlink()
    assert build.main(["--keep-outputs", "01_demo"]) == 1
    assert not path.exists()
