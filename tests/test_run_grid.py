"""The experiment grid gives the same results.json on both tracks as before it was written once for both.

The golden files in ``tests/data/`` were written by the two track runners before the grid and the
search moved to ``lorakit.run`` (commit "golden results of both tracks' grids", made with the code of
that commit); this test re-runs the same small grids and compares every field except those that
name the moment, the machine, the paths and the timings. Regenerate them only for a change that is
meant to alter results: ``python tests/test_run_grid.py --write``.

Each grid exercises every branch of the search: a two-point λ grid with an edge extension, the
second stage (density, drop rate, γ, λ × factors), test curves, two inits (OSRM's A) and both a
method with a precompute (DO's orthogonalisation) and without.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lorakit.profiles import TUNE_GRID

DATA = Path(__file__).resolve().parent / "data"
DROP = {"date", "machine", "command", "out", "lorakit", "adapter", "timings", "throughput", "model", "path"}
SIZES = dict(train_examples=48, val_examples=12, test_examples=12, steps=4, max_length=24, lam_grid=(0.5, 1.0),
             lam_extend=1, tune_grid=TUNE_GRID, test_curves=True, eval_dtype="float32", threads=1, seeds=(0,))
METHODS = ["task_arithmetic", "ties", "do", "do_ties", "ta_normeq"]


def strip(value):
    """``value`` without the fields that name the moment, the machine, paths or timings."""
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in DROP and not k.endswith("seconds")}
    if isinstance(value, list):
        return [strip(v) for v in value]
    if isinstance(value, float) and value != value:
        return "NaN"  # NaN != NaN: compare it as a word
    return value


def encoder_results(tmp: Path) -> dict:
    from lorakit.run.encoder import run_benchmark

    return run_benchmark("ci", tasks=["rt_subjectivity", "election_tweets"], methods=METHODS, inits=["standard", "osrm"],
                         out=tmp / "encoder", progress=False, figures=False, log=lambda s: None, **SIZES)


def causal_results(tmp: Path, model: str) -> dict:
    from lorakit.run.causal import run_causal_benchmark

    return run_causal_benchmark("ci", tasks=["verb_past", "noun_plural"], methods=METHODS, inits=["standard", "osrm"],
                                out=tmp / "causal", progress=False, figures=False, log=lambda s: None, model=model,
                                **dict(SIZES, max_length=32))


def saved(tmp: Path, track: str) -> dict:
    return strip(json.loads((tmp / track / "results.json").read_text()))


@pytest.mark.slow
def test_encoder_grid_results_are_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    encoder_results(tmp_path)
    assert saved(tmp_path, "encoder") == json.loads((DATA / "grid_golden_encoder.json").read_text())


@pytest.mark.slow
def test_causal_grid_results_are_unchanged(tmp_path, monkeypatch, tiny_llama_folder):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    causal_results(tmp_path, tiny_llama_folder)
    assert saved(tmp_path, "causal") == json.loads((DATA / "grid_golden_causal.json").read_text())


if __name__ == "__main__" and "--write" in sys.argv:  # regenerate the golden files (see the docstring)
    import os
    import tempfile

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    os.environ["LORAKIT_CACHE"] = str(tmp / "cache")
    from conftest import tiny_llama_folder as fixture  # the same tiny Llama as the test's fixture

    class _Factory:
        def mktemp(self, name):
            path = tmp / name
            path.mkdir()
            return path

    encoder_results(tmp)
    causal_results(tmp, fixture.__wrapped__(_Factory()))
    for track in ("encoder", "causal"):
        (DATA / f"grid_golden_{track}.json").write_text(json.dumps(saved(tmp, track), indent=0, sort_keys=True) + "\n")
    print("wrote", *(DATA / f"grid_golden_{t}.json" for t in ("encoder", "causal")))


# ----------------------------------------------------------------------------------------------
# The search reads each method's tuned hyperparameter from the registry and names no method
# ----------------------------------------------------------------------------------------------

#: what the search did before methods declared it (the old per-name table in lorakit.run.encoder)
EXPECTED_SECOND = {"task_arithmetic": "lam", "ties": "density", "dare": "drop_rate", "knots": "density",
                   "do": "gamma", "do_ties": "density", "do_dare": "drop_rate", "ta_normeq": "lam"}


def test_every_benchmark_method_tunes_what_it_declares():
    from lorakit.profiles import ALL_METHODS, get_profile
    from lorakit.run.search import method_grid, method_refine, tuned_param

    p = get_profile("cpu")
    assert set(EXPECTED_SECOND) == set(ALL_METHODS)
    for method, key in EXPECTED_SECOND.items():
        assert (tuned_param(method) or "lam") == key, method
        chosen = dict(method_grid(method, p)[2])
        tried = method_refine(method, p)(chosen)
        changed = {k for q in tried for k in q if q[k] != chosen.get(k)}
        assert changed == {key} and len(tried) == 2, (method, tried)
    assert method_grid("ties", p)[0] == {"lam": p.lam_grid[0], "density": 0.2}
    assert method_grid("do_dare", p)[0] == {"lam": p.lam_grid[0], "drop_rate": 0.5, "base": "dare"}
    assert method_grid("do", p)[0] == {"lam": p.lam_grid[0], "base": "task_arithmetic"}


def test_a_new_method_gets_its_search_from_its_registration(monkeypatch):
    import dataclasses

    from lorakit.merge import METHODS
    from lorakit.profiles import get_profile
    from lorakit.run.search import method_grid, method_refine

    fake = dataclasses.replace(METHODS["dare"], name="fake_method", tune="drop_rate", tune_in_grid=False)
    monkeypatch.setitem(METHODS, "fake_method", fake)
    p = get_profile("cpu")
    assert method_grid("fake_method", p) == [{"lam": lam} for lam in p.lam_grid]
    assert method_refine("fake_method", p)({"lam": 0.3}) == [{"lam": 0.3, "drop_rate": v} for v in p.tune_grid["drop_rate"]]


def test_the_search_module_names_no_method():
    import ast

    from lorakit.merge import METHODS
    from lorakit.run import grid, search

    for module in (search, grid):
        tree = ast.parse(Path(module.__file__).read_text())
        names = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not names & set(METHODS), (module.__name__, names & set(METHODS))
