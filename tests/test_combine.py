"""lorakit.run.combine: runs of one profile made side by side (disjoint seeds) or extended later, joined into one."""

from __future__ import annotations

import copy
import json

import pytest

from lorakit.cli import main
from lorakit.run.combine import combine_results
from lorakit.errors import LorakitError
from lorakit.results.tables import summary_rows


def _run(seeds, inits=("standard",), methods=("task_arithmetic",), offset=0.0):
    """A minimal results dict: one record per (init, method, seed), per-task entries per (init, seed)."""
    tasks = {t: {"majority": 0.5, "n_test": 4, "n_val": 2, "n_train": 8, "num_labels": 2, "individual": [], "floor": []}
             for t in ("a", "b")}
    records = []
    for init in inits:
        for seed in seeds:
            for t in tasks:
                tasks[t]["individual"].append({"init": init, "seed": seed, "test": 0.9, "val": 0.9})
                tasks[t]["floor"].append({"init": init, "seed": seed, "test": 0.5})
            for m in methods:
                acc = 0.6 + 0.01 * seed + offset
                records.append({"init": init, "method": m, "seed": seed, "accuracy": {"a": acc, "b": acc},
                                "normalized": {"a": acc / 0.9, "b": acc / 0.9}, "avg_accuracy": acc,
                                "avg_normalized": acc / 0.9, "params": {"lam": 0.5}, "curve": []})
    return {"profile": "ci", "model": "minilm", "profile_config": {"lam_grid": [0.5, 1.0], "task_seeds": "per_task"},
            "machine": {}, "date": "2026-12-02", "tasks": tasks, "inits": list(inits), "methods": list(methods),
            "seeds": list(seeds), "records": records, "adapter_stats": [], "timings": {"train_seconds": 1.0},
            "command": f"lorakit run --seeds {' '.join(map(str, seeds))}"}


def test_disjoint_seeds_join_into_one_run():
    both = combine_results([_run([0, 2]), _run([1])])
    assert both["seeds"] == [0, 1, 2] and len(both["records"]) == 3
    assert [e["seed"] for e in both["tasks"]["a"]["individual"]] == [0, 2, 1]
    assert len(both["tasks"]["b"]["floor"]) == 3 and both["timings"]["train_seconds"] == 2.0
    (row,) = summary_rows(both)
    assert row["n_seeds"] == 3 and row["accuracy_mean"] == pytest.approx(0.61)


def test_a_control_added_later_keeps_shared_entries_once():
    """The second run re-scores standard seed 0 (cached adapters) and adds a method and an init."""
    base = _run([0, 1])
    later = _run([0], inits=("standard", "random_orthonormal"), methods=("task_arithmetic", "ta_normeq"))
    both = combine_results([base, later])
    keys = {(r["init"], r["method"], r["seed"]) for r in both["records"]}
    assert len(keys) == len(both["records"]) == 2 + 3
    assert both["inits"] == ["standard", "random_orthonormal"] and both["methods"] == ["task_arithmetic", "ta_normeq"]
    assert len(both["tasks"]["a"]["individual"]) == 3  # standard 0, 1 and random_orthonormal 0
    # a method or init added later takes its place in the registries' order, unknown names last
    late = _run([0], inits=("gaussian", "zzz_new", "osrm"), methods=("do_dare", "custom", "dare"))
    order = combine_results([both, late])
    assert order["inits"] == ["standard", "gaussian", "osrm", "random_orthonormal", "zzz_new"]
    assert order["methods"] == ["task_arithmetic", "dare", "do_dare", "ta_normeq", "custom"]


def test_disagreeing_duplicates_and_other_profiles_are_refused():
    with pytest.raises(LorakitError, match="disagree"):
        combine_results([_run([0]), _run([0], offset=0.1)])
    other = _run([1])
    other["profile_config"] = dict(other["profile_config"], lam_grid=[0.3])
    with pytest.raises(LorakitError, match="lam_grid"):
        combine_results([_run([0]), other])
    renamed = copy.deepcopy(_run([1]))
    renamed["tasks"]["c"] = renamed["tasks"].pop("b")
    with pytest.raises(LorakitError, match="same tasks"):
        combine_results([_run([0]), renamed])


def test_cli_combine_writes_a_run_folder(tmp_path, capsys):
    for name, seeds in (("x", [0]), ("y", [1])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(_run(seeds)))
    out = tmp_path / "both"
    assert main(["combine", str(tmp_path / "x"), str(tmp_path / "y"), "--out", str(out), "--no-figures"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["seeds"] == [0, 1] and (out / "results.md").is_file() and (out / "RUN.md").is_file()
    assert main(["combine", str(tmp_path / "missing"), "--out", str(tmp_path / "z")]) == 2  # a user error
    assert "no results.json" in capsys.readouterr().err and not (tmp_path / "z").exists()
