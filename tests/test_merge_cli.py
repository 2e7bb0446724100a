"""``lorakit merge`` on real PEFT adapter folders (lorakit.adapters.merge_folders, lorakit.cli.merge).

Every adapter is made by peft itself (``get_peft_model`` + ``save_pretrained``) on one tiny random
BERT classifier saved to disk, with ``lora_B`` and the classifier head randomised (peft starts B
at zero, which would make every comparison vacuous). References are peft's own numbers: the
weight change of ``merge_and_unload`` and the logits of ``PeftModel.from_pretrained``; or, for the
dense methods, lorakit's in-memory ``merge_adapters`` (itself tested against peft in test_merge).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
import yaml
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from test_lora import MODULES, VOCAB, batch, logits, lora_layers, tiny_bert
from transformers import AutoModelForSequenceClassification

from lorakit.cli import main
from lorakit.lora.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, read_adapter, read_head
from lorakit.lora.update import LoRAUpdate, factorize_delta
from lorakit.merge import METHODS, merge_adapters
from lorakit.cli.merge import parse_params, parse_value
from lorakit.adapters.merge_folders import SUMMARY_FILE, merge_adapter_folders
from lorakit.adapters.factors import truncate_factors

transformers.logging.set_verbosity_error()

SPECS = {  # name: (seed, LoraConfig kwargs, safetensors?)
    "plain": (1, dict(r=4, lora_alpha=8), True),
    "rslora": (2, dict(r=4, lora_alpha=8, use_rslora=True), True),
    "alpha_r": (3, dict(r=8, lora_alpha=3), True),
    "patterns": (4, dict(r=4, lora_alpha=8, rank_pattern={"layer.0.attention.self.query": 2},
                         alpha_pattern={"value": 3}), True),
    "bin": (5, dict(r=2, lora_alpha=16), False),
    "nohead": (6, dict(r=4, lora_alpha=8, task_type=None), True),
    "query_only": (7, dict(r=4, lora_alpha=8, target_modules=["query"]), True),
    "dora": (8, dict(r=4, lora_alpha=8, use_dora=True), True),
}


@dataclasses.dataclass
class Zoo:
    root: Path
    base: Path
    w0: dict[str, torch.Tensor]
    paths: dict[str, Path]
    deltas: dict[str, dict[str, torch.Tensor]]  # peft's merge_and_unload − W0
    logits: dict[str, torch.Tensor]  # the peft model's own logits on batch(0)


def load_base(zoo: Zoo):
    return AutoModelForSequenceClassification.from_pretrained(zoo.base).eval()


def save_peft_adapter(zoo: Zoo, name: str) -> None:
    seed, lora_kwargs, safe = SPECS[name]
    kwargs = {"target_modules": ["query", "value"], "lora_dropout": 0.0, "task_type": "SEQ_CLS", **lora_kwargs}
    pm = get_peft_model(load_base(zoo), LoraConfig(**kwargs))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in lora_layers(pm).values():
            B = module.lora_B["default"].weight
            B.copy_(torch.randn(B.shape, generator=g) * 0.5)
        wrapper = getattr(pm.base_model.model.classifier, "modules_to_save", None)  # the trained head, if any
        if wrapper is not None:
            for param in wrapper["default"].parameters():
                param.copy_(torch.randn(param.shape, generator=g))
    pm.eval()
    zoo.paths[name] = zoo.root / name
    pm.save_pretrained(zoo.paths[name], safe_serialization=safe)
    merged = copy.deepcopy(pm).merge_and_unload()
    zoo.deltas[name] = {m: merged.get_submodule(m).weight.detach() - zoo.w0[m] for m in MODULES if m in zoo.w0}
    zoo.logits[name] = logits(pm, batch(0))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Zoo:
    root = tmp_path_factory.mktemp("zoo")
    tiny_bert(0).save_pretrained(root / "base")
    base = AutoModelForSequenceClassification.from_pretrained(root / "base")
    z = Zoo(root, root / "base", {m: base.get_submodule(m).weight.detach().clone() for m in MODULES}, {}, {}, {})
    for name in SPECS:
        save_peft_adapter(z, name)
    return z


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def cli(argv, capsys) -> tuple[int, str, str]:
    rc = main(["merge", *map(str, argv)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def error_line(rc: int, err: str) -> str:
    """The single ``error: ...`` line (progress bars never start before the checks)."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")] == []


def peft_deltas_of(zoo: Zoo, folder: Path) -> dict[str, torch.Tensor]:
    """ΔW of a written adapter as peft applies it: PeftModel.from_pretrained → merge_and_unload − W0."""
    merged = PeftModel.from_pretrained(load_base(zoo), folder).merge_and_unload()
    return {m: merged.get_submodule(m).weight.detach() - zoo.w0[m] for m in MODULES}


def max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def weighted_adapters(zoo: Zoo, names, weights):
    """lorakit's in-memory adapters with the weights folded into B (the documented meaning)."""
    return [
        {m: LoRAUpdate(u.A, u.B * w, u.scaling) for m, u in read_adapter(zoo.paths[n]).items()}
        for n, w in zip(names, weights)
    ]


# ----------------------------------------------------------------------------------------------
# One adapter: the merge reproduces it
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["plain", "rslora", "alpha_r", "patterns", "bin"])
def test_one_adapter_reproduces_its_weight_change_and_outputs(zoo, name, tmp_path):
    out = tmp_path / "out"
    summary = merge_adapter_folders([zoo.paths[name]], "task_arithmetic", out=out, progress=False)
    assert summary["refactor"].startswith("exact: factors concatenated")
    assert summary["energy"] == {"min": 1.0, "mean": 1.0}
    reference = zoo.deltas[name]
    assert min(float(d.abs().max()) for d in reference.values()) > 1e-2  # not vacuous
    assert max_diff(peft_deltas_of(zoo, out), reference) < 1e-6
    # the single adapter's head is kept, so peft's outputs are the original model's
    loaded = PeftModel.from_pretrained(load_base(zoo), out).eval()
    assert float((logits(loaded, batch(0)) - zoo.logits[name]).abs().max()) < 1e-5
    ranks = {m: u.rank for m, u in read_adapter(zoo.paths[name]).items()}
    assert {m: u.rank for m, u in read_adapter(out).items()} == ranks


IDENTITY = {  # every method, with parameters under which one adapter must come back unchanged
    "ties": {"density": 1.0},
    "dare": {"drop_rate": 0.0},
    "knots": {"base": "task_arithmetic"},
    "do": {},
    "ta_normeq": {},
}


def test_identity_table_covers_every_method():
    assert set(IDENTITY) | {"task_arithmetic"} == set(METHODS)


@pytest.mark.parametrize("method", list(IDENTITY))
def test_one_adapter_every_method_svd_refactor_is_exact(zoo, method, tmp_path):
    out = tmp_path / "out"
    summary = merge_adapter_folders([zoo.paths["alpha_r"]], method, IDENTITY[method], out=out, progress=False)
    assert summary["refactor"] == "exact: SVD at full numerical rank"
    assert summary["energy"]["min"] > 1 - 1e-9
    written = read_adapter(out)
    # a rank-8 ΔW comes back at numerical rank 8, and equal to peft's ΔW
    assert {u.rank for u in written.values()} == {8} and summary["rank"] == {"min": 8, "max": 8}
    assert max_diff({m: u.delta() for m, u in written.items()}, zoo.deltas["alpha_r"]) < 1e-5
    assert max_diff(peft_deltas_of(zoo, out), zoo.deltas["alpha_r"]) < 1e-5


# ----------------------------------------------------------------------------------------------
# Several adapters
# ----------------------------------------------------------------------------------------------


def test_task_arithmetic_equals_weighted_sum_of_peft_deltas(zoo, tmp_path, capsys):
    names, weights, lam = ["plain", "rslora", "alpha_r", "patterns", "bin"], [0.5, -1.0, 2.0, 0.3, 1.5], 0.7
    out = tmp_path / "ta"
    rc, stdout, _ = cli([*(zoo.paths[n] for n in names), "--method", "task_arithmetic", "--param", f"lam={lam}",
                         "--weights", *weights, "--out", out, "--no-progress"], capsys)
    assert rc == 0
    expected = {m: lam * sum(w * zoo.deltas[n][m].double() for n, w in zip(names, weights)) for m in MODULES}
    assert max_diff(peft_deltas_of(zoo, out), expected) < 1e-6
    # exact refactorisation by concatenation: rank Σ r_i per layer (rank_pattern honoured)
    rank_sum = {m: sum(read_adapter(zoo.paths[n])[m].rank for n in names) for m in MODULES}
    assert {m: u.rank for m, u in read_adapter(out).items()} == rank_sum
    assert len(set(rank_sum.values())) > 1  # layers of different rank were written
    for word in ("layers       4", "task_arithmetic (lam=0.7)", "factors concatenated", "energy kept", "time"):
        assert word in stdout
    record = json.loads((out / SUMMARY_FILE).read_text())
    assert record["weights"] == weights and record["method"] == "task_arithmetic"


@pytest.mark.parametrize("method,params", [("ties", {"density": 0.5}), ("dare", {"drop_rate": 0.3, "seed": 4}),
                                           ("do", {"steps": 15})])
def test_written_adapter_and_merged_model_agree(zoo, method, params, tmp_path):
    names, weights = ["plain", "rslora", "alpha_r"], [1.0, 0.5, 2.0]
    folders = [zoo.paths[n] for n in names]
    common = dict(params=params, weights=weights, head_from=1, progress=False)
    s_adapter = merge_adapter_folders(folders, method, out=tmp_path / "a", **common)
    s_merged = merge_adapter_folders(folders, method, out=tmp_path / "m", format="merged", base=str(zoo.base), **common)
    assert s_adapter["rank"]["max"] <= 32 and s_merged["rank"] is None

    # same ΔW* as lorakit's in-memory merge_adapters on the weighted updates (per-layer DARE seeds included)
    reference = merge_adapters(weighted_adapters(zoo, names, weights), method, **params)
    merged_model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    merged_deltas = {m: merged_model.get_submodule(m).weight.detach() - zoo.w0[m] for m in MODULES}
    assert max_diff(merged_deltas, reference) < 1e-6
    assert max_diff(peft_deltas_of(zoo, tmp_path / "a"), reference) < 1e-5

    # the adapter loaded by peft gives the merged model's outputs (adapter 1's head in both)
    adapter_model = PeftModel.from_pretrained(load_base(zoo), tmp_path / "a").eval()
    inputs = batch(2)
    assert float((logits(adapter_model, inputs) - logits(merged_model, inputs)).abs().max()) < 1e-5
    head = read_head(zoo.paths["rslora"])
    torch.testing.assert_close(merged_model.classifier.weight, head["classifier.weight"], atol=0, rtol=0)
    torch.testing.assert_close(read_head(tmp_path / "a")["classifier.weight"], head["classifier.weight"], atol=0, rtol=0)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_rank_truncation_reports_energy_kept(zoo, method, tmp_path, capsys):
    names, k = ["plain", "rslora", "alpha_r"], 3
    out = tmp_path / "r"
    rc, stdout, _ = cli([*(zoo.paths[n] for n in names), "--method", method, "--rank", k, "--out", out, "--no-progress"], capsys)
    assert rc == 0 and f"SVD truncated to rank {k}" in stdout
    summary = json.loads((out / SUMMARY_FILE).read_text())
    dense = merge_adapters([read_adapter(zoo.paths[n]) for n in names], method)
    written = read_adapter(out)
    energies = []
    for m in MODULES:
        U, s, Vt = np.linalg.svd(dense[m].double().numpy())
        energies.append(float((s[:k] ** 2).sum() / (s**2).sum()))
        assert written[m].rank == k
        assert summary["energy_per_layer"][m] == pytest.approx(energies[-1], rel=1e-6)
        best = (U[:, :k] * s[:k]) @ Vt[:k]  # Eckart–Young: the best rank-k approximation
        assert np.abs(written[m].delta().double().numpy() - best).max() < 1e-5
    assert max(energies) < 0.999  # the cut really cut something
    assert summary["energy"]["min"] == pytest.approx(min(energies), rel=1e-6)
    assert summary["energy"]["mean"] == pytest.approx(float(np.mean(energies)), rel=1e-6)
    assert f"min {min(energies):.6f}" in stdout


def test_truncate_factors_equals_dense_svd():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(10, 40, generator=g, dtype=torch.float64), torch.randn(30, 10, generator=g, dtype=torch.float64)
    for k in (1, 4, 10, 50):
        A_k, B_k, energy = truncate_factors(A, B, k)
        A_d, B_d, energy_d = factorize_delta(B @ A, k)
        assert energy == pytest.approx(energy_d, rel=1e-10)
        torch.testing.assert_close(B_k @ A_k, B_d @ A_d, atol=1e-9, rtol=0)


def test_heads_are_dropped_by_default_and_kept_with_head_from(zoo, tmp_path, capsys):
    folders = [zoo.paths[n] for n in ("plain", "nohead", "alpha_r")]
    rc, stdout, _ = cli([*folders, "--method", "task_arithmetic", "--out", tmp_path / "drop", "--no-progress"], capsys)
    assert rc == 0 and "dropped the heads (classifier) of adapters 0, 2" in stdout and "--head-from" in stdout
    assert read_head(tmp_path / "drop") == {}
    assert json.loads((tmp_path / "drop" / ADAPTER_CONFIG).read_text())["task_type"] is None
    PeftModel.from_pretrained(load_base(zoo), tmp_path / "drop")  # loads without a head

    rc, stdout, _ = cli([*folders, "--method", "task_arithmetic", "--head-from", 2, "--out", tmp_path / "keep", "--no-progress"], capsys)
    assert rc == 0 and "kept the head of adapter 2" in stdout
    kept, original = read_head(tmp_path / "keep"), read_head(zoo.paths["alpha_r"])
    assert set(kept) == set(original) == {"classifier.weight", "classifier.bias"}
    for key in kept:
        torch.testing.assert_close(kept[key], original[key], atol=0, rtol=0)
    assert not torch.equal(original["classifier.weight"], read_head(zoo.paths["plain"])["classifier.weight"])

    rc, _, err = cli([*folders, "--method", "task_arithmetic", "--head-from", 1, "--out", tmp_path / "none"], capsys)
    assert "has no head" in error_line(rc, err)
    assert_nothing_written(tmp_path / "none")


def test_yaml_config_has_the_same_keys_and_command_line_overrides(zoo, tmp_path, capsys):
    shutil.copytree(zoo.paths["plain"], tmp_path / "a")
    shutil.copytree(zoo.paths["rslora"], tmp_path / "b")
    config = {"adapters": ["a", "b"], "method": "ties", "params": {"density": 0.5, "lam": 1.5},
              "weights": [1.0, 0.5], "out": "merged", "rank": 6, "progress": False}
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(config))
    rc, _, err = cli(["--config", tmp_path / "merge.yaml", "--param", "density=0.25"], capsys)
    assert rc == 0, err
    python = merge_adapter_folders([tmp_path / "a", tmp_path / "b"], "ties", {"density": 0.25, "lam": 1.5},
                                   weights=[1.0, 0.5], rank=6, out=tmp_path / "python", progress=False)
    assert json.loads((tmp_path / "merged" / SUMMARY_FILE).read_text())["params"] == python["params"]
    from_yaml, from_python = load_file(tmp_path / "merged" / ADAPTER_WEIGHTS), load_file(tmp_path / "python" / ADAPTER_WEIGHTS)
    assert sorted(from_yaml) == sorted(from_python)
    for key in from_yaml:
        torch.testing.assert_close(from_yaml[key], from_python[key], atol=0, rtol=0)

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**config, "out": "x", "densty": 0.5}))
    rc, _, err = cli(["--config", tmp_path / "bad.yaml"], capsys)
    assert "unknown key densty" in error_line(rc, err)
    assert_nothing_written(tmp_path / "x")


def test_parse_param_values():
    assert [parse_value(v) for v in ("3", "-2", "0.5", "1e-3", "true", "False", "none", "ties")] == [
        3, -2, 0.5, 1e-3, True, False, None, "ties"]
    assert isinstance(parse_value("3"), int) and isinstance(parse_value("3.0"), float)
    assert parse_params(["density=0.5", "base = ties", "lr=null"]) == {"density": 0.5, "base": "ties", "lr": None}


def test_python_api_through_lorakit_merge(zoo):
    import lorakit.adapters.merge_folders

    summary = lorakit.adapters.merge_folders.merge_adapter_folders([zoo.paths["plain"], zoo.paths["bin"]], "dare", progress=False)
    assert summary["out"] is None and summary["layers"] == len(MODULES) and summary["params"]["drop_rate"] == 0.5


# ----------------------------------------------------------------------------------------------
# Streaming and atomic output
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["adapter", "merged"])
def test_one_dense_layer_at_a_time(zoo, fmt, tmp_path, monkeypatch):
    """When layer l+1 is merged, no ΔW* of an earlier layer is still alive."""
    spec = METHODS["ties"]
    alive: list[weakref.ref] = []
    live_counts = []

    def spy(updates, **params):
        live_counts.append(sum(ref() is not None for ref in alive))
        delta = spec.function(updates, **params)
        alive.append(weakref.ref(delta))
        return delta

    monkeypatch.setitem(METHODS, "ties", dataclasses.replace(spec, function=spy))
    merge_adapter_folders([zoo.paths["plain"], zoo.paths["rslora"]], "ties", out=tmp_path / "o", format=fmt,
                          base=str(zoo.base) if fmt == "merged" else None, progress=False)
    assert live_counts == [0] * len(MODULES)


@pytest.mark.parametrize("fmt", ["adapter", "merged"])
def test_failure_midway_leaves_nothing_and_keeps_old_output(zoo, fmt, tmp_path, monkeypatch):
    spec, calls = METHODS["ties"], []

    def fail_on_third(updates, **params):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return spec.function(updates, **params)

    monkeypatch.setitem(METHODS, "ties", dataclasses.replace(spec, function=fail_on_third))
    args = dict(format=fmt, base=str(zoo.base) if fmt == "merged" else None, progress=False)
    folders = [zoo.paths["plain"], zoo.paths["rslora"]]
    with pytest.raises(RuntimeError, match="boom"):
        merge_adapter_folders(folders, "ties", out=tmp_path / "o", **args)
    assert_nothing_written(tmp_path / "o")
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("precious")
    calls.clear()
    with pytest.raises(RuntimeError, match="boom"):
        merge_adapter_folders(folders, "ties", out=old, overwrite=True, **args)
    assert [p.name for p in tmp_path.iterdir()] == ["old"] and (old / "keep.txt").read_text() == "precious"


def test_existing_out_needs_overwrite(zoo, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    argv = [zoo.paths["plain"], zoo.paths["rslora"], "--method", "task_arithmetic", "--out", out, "--no-progress"]
    rc, _, err = cli(argv, capsys)
    assert "already exists" in error_line(rc, err) and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert cli([*argv, "--overwrite"], capsys)[0] == 0
    assert not (out / "keep.txt").exists() and (out / ADAPTER_WEIGHTS).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ----------------------------------------------------------------------------------------------
# Bad input: one line, status 2, nothing written
# ----------------------------------------------------------------------------------------------


def _copy(zoo: Zoo, name: str, tmp: Path) -> Path:
    return Path(shutil.copytree(zoo.paths[name], tmp / f"copy_{name}"))


def _edit_config(folder: Path, **changes) -> Path:
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    (folder / ADAPTER_CONFIG).write_text(json.dumps({**config, **changes}))
    return folder


def _poison(folder: Path, part: str, value: float) -> Path:
    state = load_file(folder / ADAPTER_WEIGHTS)
    state[f"base_model.model.{MODULES[1]}.{part}.weight"][0, 1] = value
    save_file(state, folder / ADAPTER_WEIGHTS)
    return folder


BAD = {  # case: (argv builder (zoo, tmp) -> list, text the error must contain)
    "different_base": (lambda z, t: [z.paths["plain"], _edit_config(_copy(z, "rslora", t), base_model_name_or_path="org/other-bert"),
                                     "--method", "ties"], "'org/other-bert'"),
    "different_modules": (lambda z, t: [z.paths["plain"], z.paths["query_only"], "--method", "ties"], "different modules"),
    "missing_safetensors": (lambda z, t: [z.paths["plain"], _unlink(_copy(z, "rslora", t) / ADAPTER_WEIGHTS),
                                          "--method", "ties"], "has no adapter_model.safetensors"),
    "corrupt_safetensors": (lambda z, t: [z.paths["plain"], _garble(_copy(z, "rslora", t) / ADAPTER_WEIGHTS),
                                          "--method", "ties"], "corrupt"),
    "nan_in_A": (lambda z, t: [z.paths["plain"], _poison(_copy(z, "rslora", t), "lora_A", float("nan")),
                               "--method", "ties"], "NaN or inf"),
    "inf_in_B": (lambda z, t: [_poison(_copy(z, "plain", t), "lora_B", float("inf")), z.paths["rslora"],
                               "--method", "ties"], "NaN or inf"),
    "missing_folder": (lambda z, t: [z.paths["plain"], t / "nope", "--method", "ties"], "does not exist"),
    "dora": (lambda z, t: [z.paths["plain"], z.paths["dora"], "--method", "ties"], "DoRA"),
    "unknown_method": (lambda z, t: [z.paths["plain"], "--method", "magic"], "unknown merge method 'magic'"),
    "unknown_param": (lambda z, t: [z.paths["plain"], "--method", "ties", "--param", "drop_rate=0.1"], "no parameter drop_rate"),
    "param_syntax": (lambda z, t: [z.paths["plain"], "--method", "ties", "--param", "density"], "KEY=VALUE"),
    "density_zero": (lambda z, t: [z.paths["plain"], "--method", "ties", "--param", "density=0"], "density must be"),
    "density_above_one": (lambda z, t: [z.paths["plain"], "--method", "ties", "--param", "density=1.5"], "(0, 1]"),
    "negative_rank": (lambda z, t: [z.paths["plain"], "--method", "ties", "--rank", "-2"], "rank must be a positive"),
    "zero_rank": (lambda z, t: [z.paths["plain"], "--method", "ties", "--rank", "0"], "rank must be a positive"),
    "weights_count": (lambda z, t: [z.paths["plain"], z.paths["rslora"], "--method", "ties", "--weights", "1"],
                      "1 weights for 2 adapters"),
    "merged_without_base": (lambda z, t: [z.paths["plain"], "--method", "ties", "--format", "merged"], "--base"),
    "head_from_range": (lambda z, t: [z.paths["plain"], z.paths["rslora"], "--method", "ties", "--head-from", "5"],
                        "head_from=5"),
    "no_method": (lambda z, t: [z.paths["plain"]], "--method"),
    "unknown_device": (lambda z, t: [z.paths["plain"], "--method", "ties", "--device", "tpu9"], "unknown device"),
}


def _unlink(path: Path) -> Path:
    path.unlink()
    return path.parent


def _garble(path: Path) -> Path:
    path.write_bytes(b"\xff" * 8 + b"not safetensors" * 20)
    return path.parent


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_status_2_and_writes_nothing(zoo, case, tmp_path, capsys):
    build, expected = BAD[case]
    (tmp_path / "inputs").mkdir()
    out = tmp_path / "out"
    rc, stdout, err = cli([*build(zoo, tmp_path / "inputs"), "--out", out], capsys)
    assert expected in error_line(rc, err)
    assert stdout == ""
    assert_nothing_written(out)


def test_out_inside_inputs_and_cuda_errors(zoo, tmp_path, capsys):
    a = _copy(zoo, "plain", tmp_path)
    rc, _, err = cli([a, "--method", "ties", "--out", a, "--overwrite"], capsys)
    assert "one of the input adapters" in error_line(rc, err)
    assert (a / ADAPTER_WEIGHTS).is_file()
    if not torch.cuda.is_available():
        rc, _, err = cli([a, "--method", "ties", "--device", "cuda", "--out", tmp_path / "o"], capsys)
        assert "CUDA is not available" in error_line(rc, err)
        assert_nothing_written(tmp_path / "o")


# ----------------------------------------------------------------------------------------------
# fan_in_fan_out (GPT-2's Conv1D): ΔW is stored transposed in the model
# ----------------------------------------------------------------------------------------------


def test_gpt2_conv1d_adapters(tmp_path):
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=16)).save_pretrained(tmp_path / "base")
    folders, total = [], None
    for seed in (1, 2):
        base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
        pm = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True,
                                             task_type="CAUSAL_LM"))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in lora_layers(pm).values():
                module.lora_B["default"].weight.copy_(torch.randn(module.lora_B["default"].weight.shape, generator=g))
        pm.save_pretrained(tmp_path / f"a{seed}")
        folders.append(tmp_path / f"a{seed}")
        merged = copy.deepcopy(pm).merge_and_unload().state_dict()
        w0 = AutoModelForCausalLM.from_pretrained(tmp_path / "base").state_dict()
        delta = {k: merged[k] - w0[k] for k in merged if "c_attn.weight" in k}
        total = delta if total is None else {k: total[k] + delta[k] for k in total}
    merge_adapter_folders(folders, "task_arithmetic", out=tmp_path / "ad", progress=False)
    merge_adapter_folders(folders, "task_arithmetic", out=tmp_path / "m", format="merged", base=str(tmp_path / "base"),
                          progress=False)
    inputs = {"input_ids": torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))}
    merged_model = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    got = {k: v - w0[k] for k, v in merged_model.state_dict().items() if k in total}
    assert max_diff(got, total) < 1e-6
    via_peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "ad").eval()
    assert float((logits(via_peft, inputs) - logits(merged_model, inputs)).abs().max()) < 1e-5
