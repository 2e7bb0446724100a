"""``lorakit bench`` (both modes) on tiny shapes: JSON fields, exact command, table, errors."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shlex

import peft.utils.merge_utils  # noqa: F401  (imported at collection: peft's import takes seconds)
import pytest
import torch

from lorakit import cli
from lorakit.run import bench
from lorakit.cli import bench as bench_cli
from lorakit.cli.bench import llm_report, write_json

TINY_LLM = {"q_proj": (24, 16), "down_proj": (16, 40)}


@pytest.fixture
def tiny_shapes(monkeypatch):
    monkeypatch.setattr(bench_cli, "BENCH_SHAPES", {"tiny": (20, 12, 4)})
    monkeypatch.setattr(bench, "LLAMA3_8B_SHAPES", TINY_LLM)


def _run(argv, capsys):
    rc = cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _check_header(payload, argv, mode):
    assert payload["mode"] == mode
    assert payload["command"] == shlex.join(["lorakit", *argv])
    assert dt.datetime.fromisoformat(payload["date"]).tzinfo is not None
    machine = payload["machine"]
    assert {"platform", "torch", "cpu_count", "torch_threads", "device"} <= set(machine)
    assert machine["torch"] == torch.__version__ and machine["device"] == "cpu"


def test_bench_default_mode_writes_json_and_table(tiny_shapes, tmp_path, capsys):
    out = tmp_path / "sub" / "bench.json"
    argv = ["bench", "--tasks", "3", "--repeats", "1", "--methods", "task_arithmetic", "ties", "dare", "knots",
            "--device", "cpu", "--out", str(out)]
    rc, stdout, _ = _run(argv, capsys)
    assert rc == 0
    payload = json.loads(out.read_text())
    _check_header(payload, argv, "merge")
    assert payload["settings"]["shapes"] == {"tiny": {"d_out": 20, "d_in": 12, "r": 4}}
    assert [r["method"] for r in payload["results"]] == ["task_arithmetic", "ties", "dare", "knots"]
    for rec in payload["results"]:
        assert rec["shape"] == "tiny" and (rec["n_tasks"], rec["d_out"], rec["d_in"], rec["r"]) == (3, 20, 12, 4)
        assert rec["lorakit_s"] > 0
        if rec["method"] == "knots":  # peft has no KnOTS
            assert rec["peft_s"] is None and rec["ratio"] is None
        else:
            assert rec["peft_s"] > 0 and math.isclose(rec["ratio"], rec["lorakit_s"] / rec["peft_s"])
    lines = stdout.splitlines()
    assert any(line.startswith("tiny 20x12 r=4") and "ties" in line for line in lines)
    assert lines[-1] == f"wrote {out}"
    assert [p.name for p in out.parent.iterdir()] == ["bench.json"]  # no temporary file left


def test_bench_llm_shapes_layers_and_extrapolation(tiny_shapes, tmp_path, capsys):
    out = tmp_path / "llm.json"
    argv = ["bench", "--llm-shapes", "--layers", "2", "--tasks", "2", "--methods", "task_arithmetic", "dare",
            "--out", str(out)]
    rc, stdout, _ = _run(argv, capsys)
    assert rc == 0
    payload = json.loads(out.read_text())
    _check_header(payload, argv, "llm_shapes")
    settings = payload["settings"]
    assert settings["layers_run"] == 2 and settings["full_model_layers"] == 32 and settings["r"] == 16
    assert settings["shapes"] == {k: {"d_out": a, "d_in": b} for k, (a, b) in TINY_LLM.items()}
    assert "extrapolated" in payload["notes"] and "VmHWM" in payload["notes"]["memory"]
    for rec in payload["results"]:
        assert rec["n_layers"] == 2 and rec["modules"] == list(TINY_LLM)
        assert math.isclose(rec["per_layer_s"], rec["total_s"] / 2)
        assert math.isclose(rec["extrapolated_full_model_s"], 32 * rec["per_layer_s"])
        assert rec["peak_mem_bytes"] >= rec["baseline_bytes"] > 0 and rec["mem_source"]
        peft = rec["peft"]
        assert peft["total_s"] > 0 and math.isclose(rec["ratio"], rec["total_s"] / peft["total_s"])
        assert math.isclose(peft["extrapolated_full_model_s"], 32 * peft["per_layer_s"])
        assert rec["ortho"] is None
    assert "2/32 layer(s) run" in stdout and "extrapolated" in stdout


def test_bench_llm_shapes_peft_on_the_first_layers_only(tiny_shapes, tmp_path, capsys):
    out = tmp_path / "llm.json"
    argv = ["bench", "--llm-shapes", "--layers", "3", "--peft-layers", "1", "--tasks", "2", "--methods", "ties",
            "--out", str(out)]
    rc, stdout, _ = _run(argv, capsys)
    assert rc == 0
    rec = json.loads(out.read_text())["results"][0]
    assert rec["n_layers"] == 3 and len(rec["layer_s"]) == 3 and math.isclose(sum(rec["layer_s"]), rec["total_s"])
    assert rec["peft_layers"] == 1 and len(rec["peft"]["layer_s"]) == 1
    assert math.isclose(rec["ratio"], rec["layer_s"][0] / rec["peft"]["total_s"])  # same layer, same tensors
    assert rec["roofline_s"] > 0 and math.isclose(rec["x_roofline"], rec["total_s"] / rec["roofline_s"])
    assert math.isclose(rec["peft"]["x_roofline"], rec["peft"]["total_s"] / (rec["roofline_s"] / 3))


def test_bench_llm_shapes_all_layers_is_called_measured(tiny_shapes, tmp_path, capsys):
    argv = ["bench", "--llm-shapes", "--peft-layers", "0", "--tasks", "2", "--methods", "task_arithmetic",
            "--out", str(tmp_path / "llm.json")]
    rc, stdout, _ = _run(argv, capsys)
    rec = json.loads((tmp_path / "llm.json").read_text())["results"][0]
    assert rc == 0 and rec["n_layers"] == 32 and rec["peft"] is None and rec["peft_layers"] == 0
    assert "32/32 layer(s) run" in stdout and "full model = measured" in stdout


def test_llm_report_do_reports_orthogonalisation_per_layer():
    payload = llm_report(
        2, ["do", "do_ties", "knots"], 1, "cpu", shapes=TINY_LLM, r=4,
        params={"do": {"steps": 3}, "do_ties": {"steps": 3}},
    )
    json.dumps(payload)
    by_name = {rec["method"]: rec for rec in payload["results"]}
    assert by_name["do_ties"]["params"]["base"] == "ties" and by_name["do"]["params"]["steps"] == 3
    for name in ("do", "do_ties"):
        ortho = by_name[name]["ortho"]
        assert ortho["per_layer_s"] > 0 and set(ortho["module_s"]) == set(TINY_LLM)
        assert math.isclose(ortho["extrapolated_full_model_s"], 32 * ortho["per_layer_s"])
        assert by_name[name]["peft"] is None and by_name[name]["ratio"] is None
    assert by_name["knots"]["ortho"] is None and by_name["knots"]["peft"] is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--layers", "2"], "--layers only applies with --llm-shapes"),
        (["bench", "--peft-layers", "1"], "--peft-layers needs --llm-shapes"),
        (["bench", "--llm-shapes", "--peft-layers", "-1"], "--peft-layers needs --llm-shapes and a count >= 0"),
        (["bench", "--llm-shapes", "--layers", "0"], "--layers must be between 1 and 32"),
        (["bench", "--llm-shapes", "--layers", "33"], "--layers must be between 1 and 32"),
        (["bench", "--tasks", "1"], "--tasks must be at least 2"),
        (["bench", "--repeats", "0"], "--repeats must be at least 1"),
        (["bench", "--methods", "nope"], "unknown merge method 'nope'"),
        (["bench", "--device", "tpu"], "--device must be cpu or cuda"),
    ],
)
def test_bench_user_errors_are_one_line(argv, message, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc, _, err = _run([*argv, "--out", str(out)], capsys)
    assert rc == 2 and message in err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bench_cuda_without_gpu_is_an_error(tmp_path, capsys):
    rc, _, err = _run(["bench", "--device", "cuda", "--out", str(tmp_path / "b.json")], capsys)
    assert rc == 2 and "no CUDA device" in err


def test_write_json_replaces_atomically(tmp_path):
    path = tmp_path / "x.json"
    write_json(path, {"a": 1})
    write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
