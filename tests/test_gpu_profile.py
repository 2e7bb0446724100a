"""The ``gpu`` profile end to end on the CPU at toy sizes, for both tracks, before a GPU is ever lent.

Only the sizes are overridden; every other field is the ``gpu`` profile's own: its 10-point λ grid with
edge extension, every method, both inits, the second-stage search, test curves at every grid point
(``test_curves``, a branch no other profile takes), float32 evaluation. Where the code branches on the
device, the CUDA side is forced: the packed evaluator serves only a CPU (``PackedBert.supports`` is
False for ``cuda``), so here it is switched off and every score goes through the generic forward a GPU
run takes. The encoder run reads its model and tasks from a ``lorakit data export`` folder through
``LORAKIT_DATA`` with an empty cache and the network refused, as ``tools/gpu_run.sh`` does on the GPU.
"""

from __future__ import annotations

import json
import socket

import pytest

import lorakit.data.tasks as tasks_mod
from lorakit.run.encoder import run_benchmark
from lorakit.profiles import CAUSAL_PROFILES, get_causal_profile
from lorakit.run.causal import run_causal_benchmark
from lorakit.data.export import export_data
from lorakit.eval.packed_bert import PackedBert
from lorakit.profiles import ALL_METHODS, PROFILES, get_profile

ENCODER_TASKS = ["rt_subjectivity", "election_tweets"]
#: λ alone with its λ-factor second stage, and DO-TIES (the orthogonalisation precompute, density, γ); every
#: method runs the same grid code, and the cpu profile's tests run them all, so two keep this test short
METHODS = ["task_arithmetic", "do_ties"]
TOY = dict(train_examples=24, val_examples=8, test_examples=8, steps=2, max_length=16, seeds=(0,), threads=1)


def _refuse(*args, **kwargs):
    raise AssertionError("the gpu run tried to reach the network")


@pytest.fixture
def cuda_branches(monkeypatch):
    """The evaluator's GPU branch: no packed CPU path (what ``PackedBert.supports`` says for ``cuda``)."""
    calls = []

    def supports(model, device):
        calls.append(str(device))
        return False

    monkeypatch.setattr(PackedBert, "supports", staticmethod(supports))
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    return calls


def test_gpu_profile_is_what_this_test_runs():
    """The toy run differs from ``gpu`` in sizes alone (so a change to the gpu profile reaches this test)."""
    p = get_profile("gpu", **TOY)
    assert p.methods == ALL_METHODS and p.inits == ("standard", "osrm") and p.test_curves
    assert len(p.lam_grid) == 10 and p.tune_grid and p.eval_dtype == "float32"
    assert p.max_length < PROFILES["gpu"].max_length and p.steps < PROFILES["gpu"].steps


@pytest.mark.slow
def test_encoder_gpu_profile_runs_end_to_end_from_an_export(cuda_branches, tmp_path, monkeypatch):
    monkeypatch.delenv("LORAKIT_DATA", raising=False)
    tasks_mod.task_cards.cache_clear(), tasks_mod.read_pools.cache_clear()
    export = export_data(tmp_path / "gpu-data", tasks=ENCODER_TASKS, log=lambda s: None)
    monkeypatch.setenv("LORAKIT_DATA", str(export))
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(tasks_mod, "_package_file", _refuse)  # every task must come from the export
    tasks_mod.task_cards.cache_clear(), tasks_mod.read_pools.cache_clear()
    try:
        res = run_benchmark("gpu", tasks=ENCODER_TASKS, methods=METHODS, out=tmp_path / "run", progress=False,
                            figures=False, log=lambda s: None, **TOY)
    finally:
        tasks_mod.task_cards.cache_clear(), tasks_mod.read_pools.cache_clear()
    assert cuda_branches and set(cuda_branches) == {"cpu"}  # asked, and refused: the generic path scored
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["profile"] == "gpu" and saved["profile_config"]["test_curves"] is True
    assert {(r["method"], r["init"]) for r in saved["records"]} == {(m, i) for m in METHODS for i in ("standard", "osrm")}
    for r in saved["records"]:
        curve = r["curve"]
        assert len(curve) >= 10 and all("test_accuracy" in pt for pt in curve), r["method"]
        assert 0.0 <= r["avg_accuracy"] <= 1.0
    assert saved["tasks"]["rt_subjectivity"]["n_test"] == 8
    assert res["machine"]  # the run note's machine line
    assert not (tmp_path / "empty-cache" / "bigbench").exists()


@pytest.mark.slow
def test_causal_gpu_profile_runs_end_to_end(cuda_branches, tmp_path, monkeypatch, tiny_llama_folder, capsys):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    p = get_causal_profile("gpu", model=tiny_llama_folder, **TOY)
    assert p.lam_grid == CAUSAL_PROFILES["gpu"].lam_grid and p.test_curves
    methods = METHODS
    run_causal_benchmark(p, tasks=["verb_past", "noun_plural"], methods=methods, out=tmp_path / "run",
                         progress=True, figures=False, log=lambda s: None)
    # the run's bar: 2 inits × 1 seed × (2 adapters + 2 methods), with elapsed time and ETA
    err = capsys.readouterr().err
    assert "lorakit run (causal): 8/8 units [" in err and "<00:00" in err and "standard seed 0: adapter verb_past" in err
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["profile"] == "gpu" and saved["eval_dtype"] == "float32"
    assert {(r["method"], r["init"]) for r in saved["records"]} == {(m, i) for m in methods for i in ("standard", "osrm")}
    for r in saved["records"]:
        assert len(r["curve"]) >= 10 and all("test_accuracy" in pt for pt in r["curve"])
        assert all(len(preds) == 8 for preds in r["predictions"].values())

