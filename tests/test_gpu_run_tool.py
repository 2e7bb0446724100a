"""tools/gpu_run.py: the one prepared GPU command, checked on the CPU by its dry run.

The plan must parse with lorakit's own parser, stay inside the gpu profile's tasks, carry less than the
device tool's 64 MiB, fit its 8-minute budget on the assumed throughput, and give every task the test
examples the gpu profile asks for (up to what the task holds).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from lorakit.profiles import PROFILES

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_run():
    spec = importlib.util.spec_from_file_location("gpu_run", ROOT / "tools" / "gpu_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_plan_is_a_slice_of_the_gpu_profile_that_fits(gpu_run):
    info = gpu_run.plan("OUT")
    gpu = PROFILES["gpu"]
    assert set(info["slice"]["tasks"]) < set(gpu.tasks) and set(info["slice"]["methods"]) <= set(gpu.methods)
    assert set(info["slice"]["inits"]) == set(gpu.inits)
    for task, sizes in info["sizes"].items():
        assert sizes["val"] == gpu.val_examples and 1000 <= sizes["test"] <= gpu.test_examples, task
    assert info["estimate_seconds"]["total"] <= info["budget_seconds"]["slice"]
    assert info["budget_seconds"]["slice"] + info["budget_seconds"]["bench"] <= 600  # one device command
    assert info["carry"]["tree_bytes"] < 16 * 2**20  # leaves room for the export (about 48 MiB)
    assert len(info["commands"]) == len(info["slice"]["inits"]) + 1 and "--device cuda" in info["commands"][-1]


def test_dry_run_prints_plan_sizes_and_commands():
    out = subprocess.run([sys.executable, "tools/gpu_run.py", "--dry-run"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "gpu slice: 5 of 9 gpu tasks" in out and "privacy_qa" in out and "test  2000" in out
    assert "estimate on assumed H100 throughput" in out and "carry: tree" in out
    assert out.count("$ LORAKIT_DATA=.gpu-data lorakit ") == 3


def test_a_wrong_option_in_the_plan_fails_here_not_on_the_gpu(gpu_run, monkeypatch):
    monkeypatch.setattr(gpu_run, "BENCH", ["--llm-shapes", "--no-such-option"])
    with pytest.raises(SystemExit):
        gpu_run.plan("OUT")


def test_gpu_run_sh_refuses_without_the_export(tmp_path):
    script = (ROOT / "tools" / "gpu_run.sh").read_text()
    assert "--execute" in script and ".gpu-data/manifest.json" in script
    copy = tmp_path / "repo" / "tools"
    copy.mkdir(parents=True)
    (copy / "gpu_run.sh").write_text(script)
    res = subprocess.run(["bash", str(copy / "gpu_run.sh")], capture_output=True, text=True)
    assert res.returncode == 2 and "python tools/gpu_run.py --prepare" in res.stderr
