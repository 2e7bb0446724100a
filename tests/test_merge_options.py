"""``lorakit merge`` output options: --dtype, --max-shard-size, --dry-run, --summary-json, per-layer
progress, and an interrupt (SIGTERM) mid-merge leaving nothing behind (lorakit.cli.merge)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file
from test_lora import MODULES, tmp_siblings
from test_merge_cli import assert_nothing_written, cli, error_line, load_base, peft_deltas_of, zoo  # noqa: F401
from transformers import AutoModelForSequenceClassification

from lorakit.errors import LorakitError
from lorakit.lora.peft import ADAPTER_WEIGHTS
from lorakit.adapters.merge_folders import SUMMARY_FILE, merge_adapter_folders
from lorakit.adapters.plan import parse_size

REPO = Path(__file__).resolve().parents[1]


def _dtypes(path: Path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys()}


def test_dtype_of_the_written_adapter(zoo, tmp_path, capsys):
    folders = [zoo.paths["plain"], zoo.paths["rslora"]]
    base_args = [*folders, "--method", "ties", "--head-from", 0, "--no-progress"]
    assert cli([*base_args, "--out", tmp_path / "f32"], capsys)[0] == 0
    rc, stdout, err = cli([*base_args, "--dtype", "bfloat16", "--out", tmp_path / "bf16"], capsys)
    assert rc == 0, err
    assert "PEFT adapter (bfloat16)" in stdout
    assert _dtypes(tmp_path / "bf16" / ADAPTER_WEIGHTS) == {"BF16"}  # factors and head
    assert _dtypes(tmp_path / "f32" / ADAPTER_WEIGHTS) == {"F32"}
    reference, got = peft_deltas_of(zoo, tmp_path / "f32"), peft_deltas_of(zoo, tmp_path / "bf16")
    for m in MODULES:  # bfloat16 keeps 8 bits of mantissa: about 1 % of each factor
        assert float((got[m] - reference[m]).abs().max()) < 2e-2 * float(reference[m].abs().max())


def test_dtype_of_the_merged_model(zoo, tmp_path):
    folders, common = [zoo.paths["plain"], zoo.paths["alpha_r"]], dict(format="merged", base=str(zoo.base), progress=False)
    merge_adapter_folders(folders, "task_arithmetic", out=tmp_path / "f32", **common)
    summary = merge_adapter_folders(folders, "task_arithmetic", out=tmp_path / "f16", dtype="float16", **common)
    assert summary["dtype"] == "float16"
    assert _dtypes(tmp_path / "f16" / "model.safetensors") == {"F16"}
    full = AutoModelForSequenceClassification.from_pretrained(tmp_path / "f32").state_dict()
    half = AutoModelForSequenceClassification.from_pretrained(tmp_path / "f16", dtype=torch.float16).state_dict()
    for key, tensor in full.items():  # W0 + ΔW* in float32, rounded once
        torch.testing.assert_close(half[key], tensor.half(), atol=0, rtol=0)


def test_sharded_merged_model(zoo, tmp_path, capsys):
    folders = [zoo.paths["plain"], zoo.paths["rslora"]]
    argv = [*folders, "--method", "ties", "--format", "merged", "--base", zoo.base, "--head-from", 0, "--no-progress"]
    assert cli([*argv, "--out", tmp_path / "one"], capsys)[0] == 0
    rc, _, err = cli([*argv, "--max-shard-size", "40KB", "--out", tmp_path / "sharded"], capsys)
    assert rc == 0, err
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 2 and sorted(set(index["weight_map"].values())) == shards
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    assert all((tmp_path / "sharded" / s).stat().st_size < 80_000 for s in shards)
    one = AutoModelForSequenceClassification.from_pretrained(tmp_path / "one").state_dict()
    sharded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "sharded").state_dict()
    assert sorted(one) == sorted(sharded)
    for key in one:
        torch.testing.assert_close(sharded[key], one[key], atol=0, rtol=0)


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9 and parse_size("500MiB") == 500 * 2**20 and parse_size("1.5kb") == 1500
    assert parse_size(1234) == 1234 and parse_size(None) is None
    for bad in ("big", "0MB", "-1GB", "5 parsecs"):
        with pytest.raises(LorakitError, match="max shard size"):
            parse_size(bad)


OPTION_ERRORS = {  # extra argv: text of the one error line
    "shard_on_adapter": (["--max-shard-size", "1GB"], "format 'merged' only"),
    "bad_shard_size": (["--format", "merged", "--base", "BASE", "--max-shard-size", "lots"], "max shard size"),
    "dry_run_wrong_base": (["--format", "merged", "--base", "GPT2", "--dry-run"], "missing in the base model"),
}


@pytest.mark.parametrize("case", list(OPTION_ERRORS))
def test_bad_options_are_one_line_and_write_nothing(zoo, case, tmp_path, capsys):
    extra, expected = OPTION_ERRORS[case]
    if "GPT2" in extra:
        from transformers import GPT2Config, GPT2Model

        GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100, n_positions=16)).save_pretrained(tmp_path / "gpt2")
    extra = [{"BASE": zoo.base, "GPT2": tmp_path / "gpt2"}.get(a, a) for a in extra]
    out = tmp_path / "out"
    rc, stdout, err = cli([zoo.paths["plain"], "--method", "ties", *extra, "--out", out], capsys)
    assert expected in error_line(rc, err) and stdout == ""
    assert_nothing_written(out)
    with pytest.raises(LorakitError, match="dtype must be one of"):
        merge_adapter_folders([zoo.paths["plain"]], "ties", dtype="int8", progress=False)


@pytest.mark.parametrize("fmt", ["adapter", "merged"])
def test_dry_run_checks_plans_and_writes_nothing(zoo, fmt, tmp_path, capsys):
    out, plan = tmp_path / "out", tmp_path / "plan.json"
    argv = [zoo.paths["plain"], zoo.paths["rslora"], "--method", "ties", "--dry-run", "--out", out, "--no-progress",
            "--summary-json", plan, *(["--format", "merged", "--base", zoo.base] if fmt == "merged" else ["--rank", 6])]
    rc, stdout, err = cli(argv, capsys)
    assert rc == 0, err
    assert_nothing_written(out)
    assert stdout.startswith("dry run: would merge 2 adapter(s) with ties") and "memory       about" in stdout
    record = json.loads(plan.read_text())
    assert record["dry_run"] is True and record["energy"] is None
    memory = record["memory"]
    assert memory["peak"] == memory["adapters"] + memory["layer"] + memory["base"]
    if fmt == "merged":
        params = sum(p.numel() for p in load_base(zoo).parameters())
        assert memory["base"] == memory["output"] == 4 * params and "BertForSequenceClassification" in stdout
    else:
        assert record["rank"] == {"min": 6, "max": 6} and memory["base"] == 0
        assert memory["output"] == 4 * 6 * sum(2 * 32 for _ in MODULES)  # rank 6 × (d_out + d_in), float32
    # no --out needed for a dry run; an existing --out is still refused (the check a real run does)
    assert cli([zoo.paths["plain"], "--method", "ties", "--dry-run", "--no-progress"], capsys)[0] == 0
    out.mkdir()
    rc, _, err = cli([zoo.paths["plain"], "--method", "ties", "--dry-run", "--out", out], capsys)
    assert "already exists" in error_line(rc, err)


def test_summary_json_and_yaml_keys(zoo, tmp_path, capsys):
    config = {"adapters": [str(zoo.paths["plain"]), str(zoo.paths["bin"])], "method": "task_arithmetic", "out": "merged",
              "summary_json": "reports/merge.json", "dtype": "float16", "progress": False}
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(config))
    rc, _, err = cli(["--config", tmp_path / "merge.yaml"], capsys)
    assert rc == 0, err
    beside = json.loads((tmp_path / "reports" / "merge.json").read_text())
    inside = json.loads((tmp_path / "merged" / SUMMARY_FILE).read_text())
    assert beside["dtype"] == "float16" and {k: v for k, v in beside.items() if k != "seconds"} == {
        k: v for k, v in inside.items() if k != "seconds"}
    assert {t.dtype for t in load_file(tmp_path / "merged" / ADAPTER_WEIGHTS).values()} == {torch.float16}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**config, "out": "x", "dry_run": "yes"}))
    rc, _, err = cli(["--config", tmp_path / "bad.yaml"], capsys)
    assert "dry_run has the wrong type" in error_line(rc, err)


def test_progress_names_each_layer(zoo, tmp_path, capsys):
    rc, _, err = cli([zoo.paths["plain"], zoo.paths["rslora"], "--method", "ties", "--out", tmp_path / "o"], capsys)
    assert rc == 0
    assert "merging (ties)" in err and f"{len(MODULES)}/{len(MODULES)}" in err and MODULES[-1] in err


def _slow_adapters(root: Path, n_layers: int = 24, width: int = 768) -> list[Path]:
    """Two peft adapters on a stack of 768×768 Linear layers: TIES + an exact SVD take ~0.4 s a layer."""
    folders = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(n_layers)])
        pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=[str(i) for i in range(n_layers)]))
        with torch.no_grad():
            for name, param in pm.named_parameters():
                if "lora_B" in name:
                    param.normal_()
        pm.save_pretrained(root / f"a{seed}")
        folders.append(root / f"a{seed}")
    return folders


def test_sigterm_mid_merge_leaves_nothing(tmp_path):
    folders = _slow_adapters(tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "lorakit.cli", "merge", *map(str, folders), "--method", "ties",
                             "--out", str(out), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not tmp_siblings(tmp_path, "out"):  # the temporary output folder: writing has begun
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.5)
        parts = list(tmp_siblings(tmp_path, "out")[0].iterdir())
        assert proc.poll() is None and [p.name for p in parts] == [f"{ADAPTER_WEIGHTS}.part"]  # mid-write
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and stdout == ""
    assert [line for line in stderr.splitlines() if line.strip()] == ["error: interrupted; nothing was written"]
    assert not out.exists() and tmp_siblings(tmp_path, "out") == []
