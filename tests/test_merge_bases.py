"""``lorakit merge --format merged --base minilm`` on adapters trained on MiniLM wrapped as a task model.

The packaged MiniLM is a bare ``BertModel`` (``architectures: ["BertModel"]``); adapters trained
on ``BertForSequenceClassification`` name their modules ``bert.encoder…``. The base is loaded in
the class the adapters say (peft's ``task_type``, else their head), or their names are matched
modulo the wrapper prefix ``bert.`` (lorakit.adapters.base_model). References: peft's own
``merge_and_unload`` weight changes, and the written adapter's outputs through peft.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModel, AutoModelForSequenceClassification

from lorakit.data.models import resolve_model_path
from lorakit.cli import main
from lorakit.lora.peft import read_head
from lorakit.adapters.merge_folders import SUMMARY_FILE

transformers.logging.set_verbosity_error()
MODULES = [f"encoder.layer.{i}.attention.self.{t}" for i in range(6) for t in ("query", "value")]
LABELS = 2
WEIGHTS = [0.5, 1.5]


@pytest.fixture(scope="module")
def minilm():
    return resolve_model_path("minilm")


@pytest.fixture(scope="module")
def w0(minilm):
    bare = AutoModel.from_pretrained(minilm)
    return {m: bare.get_submodule(m).weight.detach().clone() for m in MODULES}


def make_adapters(minilm, root: Path, task_type, modules_to_save=None):
    """Two peft adapters on MiniLM as BertForSequenceClassification; returns (folders, peft ΔW per adapter)."""
    folders, deltas = [], []
    for seed in (1, 2):
        torch.manual_seed(0)  # the same fresh classifier in every wrapper
        model = AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=LABELS)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0, task_type=task_type,
                            modules_to_save=modules_to_save)
        pm = get_peft_model(model, config)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in pm.named_parameters():
                if "lora_B" in name or "modules_to_save" in name:
                    param.copy_(torch.randn(param.shape, generator=g) * 0.3)
        folder = root / f"{task_type}_{seed}"
        pm.save_pretrained(folder)
        merged = copy.deepcopy(pm).merge_and_unload()
        deltas.append({m: merged.get_submodule(f"bert.{m}").weight.detach() for m in MODULES})
        folders.append(folder)
    return folders, deltas


def cli(argv, capsys):
    rc = main(["merge", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def batch():
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(1000, 2000, (2, 8), generator=g), "attention_mask": torch.ones(2, 8, dtype=torch.long)}


@pytest.mark.parametrize("task_type,modules_to_save", [("SEQ_CLS", None), (None, ["classifier"])])
def test_seq_cls_adapters_on_minilm_merge_with_base_minilm(minilm, w0, task_type, modules_to_save, tmp_path, capsys):
    folders, merged_weights = make_adapters(minilm, tmp_path, task_type, modules_to_save)
    out = tmp_path / "merged"
    rc, stdout, err = cli([*folders, "--method", "task_arithmetic", "--weights", *WEIGHTS, "--format", "merged",
                           "--base", "minilm", "--head-from", 1, "--out", out, "--no-progress"], capsys)
    assert rc == 0, err
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.num_labels == LABELS
    expected = {m: w0[m] + sum(w * (d[m] - w0[m]) for w, d in zip(WEIGHTS, merged_weights)) for m in MODULES}
    diff = max(float((model.get_submodule(f"bert.{m}").weight.detach() - expected[m]).abs().max()) for m in MODULES)
    assert diff < 1e-6
    assert min(float((expected[m] - w0[m]).abs().max()) for m in MODULES) > 1e-2
    head = read_head(folders[1])
    torch.testing.assert_close(model.classifier.weight, head["classifier.weight"], atol=0, rtol=0)
    if task_type is None:
        assert "no task_type" in stdout and "AutoModelForSequenceClassification" in stdout

    # the written adapter, through peft on MiniLM, gives the merged model's outputs
    rc, _, err = cli([*folders, "--method", "task_arithmetic", "--weights", *WEIGHTS, "--head-from", 1,
                      "--out", tmp_path / "adapter", "--no-progress"], capsys)
    assert rc == 0, err
    base = AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=LABELS)
    via_peft = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert float((via_peft(**batch()).logits - model(**batch()).logits).abs().max()) < 1e-5


def test_wrapper_prefix_is_matched_on_a_bare_base(minilm, w0, tmp_path, capsys):
    """No task_type and no head: MiniLM loads as its own BertModel and ``bert.`` is stripped from the names."""
    folders, merged_weights = make_adapters(minilm, tmp_path, None)
    out = tmp_path / "bare"
    rc, stdout, err = cli([*folders, "--method", "task_arithmetic", "--format", "merged", "--base", "minilm",
                           "--out", out, "--no-progress"], capsys)
    assert rc == 0, err
    assert "wrapper prefix" in stdout and "BertModel" in stdout
    model = AutoModel.from_pretrained(out)
    assert type(model).__name__ == "BertModel"
    for m in MODULES:
        expected = w0[m] + sum(d[m] - w0[m] for d in merged_weights)
        assert float((model.get_submodule(m).weight.detach() - expected).abs().max()) < 1e-6
    assert (out / SUMMARY_FILE).is_file()


def test_bare_model_adapters_merge_into_a_task_model(tmp_path, capsys):
    """The other way round: adapters of a bare BertModel (``encoder.…``) into a saved BertForSequenceClassification."""
    from test_lora import tiny_bert

    tiny = tiny_bert(0)
    tiny.save_pretrained(tmp_path / "cls")
    tiny.bert.save_pretrained(tmp_path / "bare")
    pm = get_peft_model(AutoModel.from_pretrained(tmp_path / "bare"), LoraConfig(r=2, target_modules=["query"]))
    with torch.no_grad():
        for name, param in pm.named_parameters():
            if "lora_B" in name:
                param.normal_()
    pm.save_pretrained(tmp_path / "a")
    expected = copy.deepcopy(pm).merge_and_unload()
    rc, stdout, err = cli([tmp_path / "a", "--method", "task_arithmetic", "--format", "merged", "--base", tmp_path / "cls",
                           "--out", tmp_path / "o", "--no-progress"], capsys)
    assert rc == 0, err
    assert "wrapper prefix" in stdout
    got = AutoModelForSequenceClassification.from_pretrained(tmp_path / "o")
    for i in range(2):
        name = f"encoder.layer.{i}.attention.self.query"
        torch.testing.assert_close(got.get_submodule(f"bert.{name}").weight, expected.get_submodule(name).weight,
                                   atol=1e-6, rtol=0)
