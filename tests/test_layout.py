"""Code layout: no import circle between lorakit's modules, no lorakit file over 400 lines.

The import graph is read from the source (``ast``), not by importing: an edge ``a -> b`` is an
``import``/``from ... import`` that runs when ``a`` is imported (module level, class bodies,
``try``/``if`` blocks), not one inside a function, which runs only when called.
``if TYPE_CHECKING:`` blocks never run and are skipped.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lorakit"
MAX_LINES = 400


def module_name(path: Path) -> str:
    """``lorakit/cli/__init__.py`` → ``lorakit.cli``; ``lorakit/cli/bench.py`` → ``lorakit.cli.bench``."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_files() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def import_time_imports(tree: ast.Module):
    """The import statements that run when the module is imported (not those inside functions)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) or _is_type_checking(node):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        stack.extend(ast.iter_child_nodes(node))


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Dotted names an import may load: ``from .x import y`` may load ``pkg.x`` and ``pkg.x.y``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """``{module: the lorakit modules it imports at import time}``."""
    files = module_files()
    graph = {}
    for module, path in files.items():
        deps = set()
        for node in import_time_imports(ast.parse(path.read_text(), str(path))):
            for name in _targets(node, module, path.name == "__init__.py"):
                while name and name not in files:  # `from pkg.mod import func` → pkg.mod
                    name = name.rpartition(".")[0]
                if name and name != module:
                    deps.add(name)
        graph[module] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_graph_sees_the_package():
    graph = import_graph()
    assert {"lorakit", "lorakit.cli", "lorakit.results.tables", "lorakit.run.encoder"} <= set(graph)
    assert "lorakit.results.tables" in graph["lorakit.results.plots"]  # plots reads results, not the benchmark
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle (module-level imports): " + " -> ".join(cycle)


def test_no_file_over_400_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"lorakit files over {MAX_LINES} lines: {long}"


def test_cli_import_stays_light():
    """``lorakit --help`` must not pay for peft, transformers or matplotlib (they load lazily)."""
    code = "import sys, lorakit.cli; print(sorted(m for m in ('peft', 'transformers', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout
    assert out.strip() == "[]"


#: lorakit-internal imports allowed inside a function (so the circle test above still sees every
#: other dependency): ``(module, imported module) → why``.
LAZY_INTERNAL = {
    ("lorakit.run.grid", "lorakit.results.plots"): "plots imports matplotlib; only writing a run's figures needs it",
}


def function_level_internal_imports() -> set[tuple[str, str]]:
    """``(module, lorakit module)`` for every lorakit import that runs only when a function is called."""
    files = module_files()
    found = set()
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        at_import = {id(node) for node in import_time_imports(tree)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in at_import:
                for name in _targets(node, module, path.name == "__init__.py"):
                    while name and name not in files:
                        name = name.rpartition(".")[0]
                    if name.startswith("lorakit") and name != module:
                        found.add((module, name))
    return found


def test_no_hidden_internal_imports():
    """An import inside a function hides a dependency from the circle test: only listed ones are allowed."""
    hidden = function_level_internal_imports() - set(LAZY_INTERNAL)
    assert not hidden, f"lorakit imports inside functions (move them to the top, or list them with a reason): {sorted(hidden)}"


MAX_FUNCTION_LINES = 80


def test_no_function_over_80_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps): {long}"


def _code_strings(tree: ast.Module) -> list[ast.Constant]:
    """String constants that are not docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings]


def test_peft_key_names_only_in_lora():
    """PEFT's ``base_model.model.`` prefix and ``lora_A.weight`` key layout are spelled out in lorakit.lora (names, peft) only."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == PACKAGE / "lora" and path.name in ("names.py", "peft.py"):
            continue
        for node in _code_strings(ast.parse(path.read_text(), str(path))):
            if "base_model.model" in node.value or ".lora_A.weight" in node.value or ".lora_B.weight" in node.value:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.value!r}")
    assert not found, f"PEFT key names outside lorakit.lora (use peft_key / peft_lora_key): {found}"


def test_one_atomic_writer():
    """Temporary files and renames live in lorakit.fsutil (atomic_folder / atomic_file) only."""
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "fsutil.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "replace", "rename", "mkstemp", "mkdtemp", "NamedTemporaryFile") and isinstance(
                    node.func.value, ast.Name) and node.func.value.id in ("os", "tempfile"):
                calls.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.func.value.id}.{node.func.attr}")
    assert not calls, f"hand-written atomic writes (use lorakit.fsutil): {calls}"


# ----------------------------------------------------------------------------------------------
# Floors: each package imports only the packages below it (docs/layout.md of the team's spec)
# ----------------------------------------------------------------------------------------------

#: package (or ground module) → floor; a module imports only lower floors, or its own package
FLOORS = {
    "lorakit.errors": 0,
    "lorakit": 1, "lorakit.fsutil": 1, "lorakit.profiles": 1, "lorakit.stats": 1,  # lorakit: __version__
    "lorakit.lora": 2, "lorakit.data": 2,
    "lorakit.merge": 3, "lorakit.osrm": 3,
    "lorakit.train": 4, "lorakit.adapters": 4,
    "lorakit.eval": 5,
    "lorakit.results": 6,
    "lorakit.run": 7, "lorakit.course": 7,
    "lorakit.cli": 8,
}
MAX_TOP_LEVEL = 17


def home(module: str) -> str:
    """The entry of :data:`FLOORS` a module belongs to (``lorakit.run.grid`` → ``lorakit.run``)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def test_every_module_has_a_floor_and_lorakit_has_few_entries():
    assert {home(m) for m in module_files()} <= set(FLOORS), "a new subpackage needs its floor in FLOORS"
    entries = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert len(entries) <= MAX_TOP_LEVEL, sorted(entries)


def test_no_import_goes_up_or_sideways_a_floor():
    bad = []
    for module, deps in import_graph().items():
        for dep in deps:
            a, b = home(module), home(dep)
            if a == b:
                continue
            if FLOORS[b] >= FLOORS[a]:
                bad.append(f"{module} (floor {FLOORS[a]}) imports {dep} (floor {FLOORS[b]})")
    assert not bad, "imports that go up or sideways a floor:\n" + "\n".join(sorted(bad))


def test_math_below_io_and_tracks_apart():
    """merge/ and osrm/ read LoRA math from lora.update, never the PEFT I/O of lora.peft; no track's
    causal.py imports an encoder.py, nor the reverse."""
    bad = []
    for module, deps in import_graph().items():
        if home(module) in ("lorakit.merge", "lorakit.osrm") and "lorakit.lora.peft" in deps:
            bad.append(f"{module} imports lorakit.lora.peft")
        leaf = module.rsplit(".", 1)[-1]
        for dep in deps:
            if {leaf, dep.rsplit(".", 1)[-1]} == {"causal", "encoder"}:
                bad.append(f"{module} imports {dep}")
    assert not bad, bad


def test_no_private_name_crosses_a_module_and_no_reexport():
    """No ``_name`` is imported from another lorakit module; a module imports a lorakit name only from the
    module that defines it (a package's ``__init__`` may gather its own package's names)."""
    files = module_files()
    defined = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        defined[module] = {getattr(n, "name", None) for n in tree.body} | {
            t.id for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
    bad = []
    for module, path in files.items():
        for node in import_time_imports(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = _targets(node, module, path.name == "__init__.py")[0]
            if source not in files or files[source].name == "__init__.py":
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    bad.append(f"{module} imports the private {source}.{alias.name}")
                elif alias.name not in defined[source]:
                    bad.append(f"{module} imports {alias.name} from {source}, which only re-exports it")
    assert not bad, bad
