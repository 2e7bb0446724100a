"""``lorakit merge`` on every layer kind peft adapts in models people use (lorakit.adapters.merge_folders).

Each case is a tiny random model saved to disk and two adapters made by peft itself
(``get_peft_model`` + ``save_pretrained``, ``lora_B``, lora biases and heads randomised: peft
starts them at zero). For each case:

* task arithmetic (``--format merged``) equals :math:`W_0 + \\sum_i w_i \\Delta_i` with
  :math:`\\Delta_i` peft's own ``merge_and_unload`` change of every tensor, to 1e-6;
* the written adapter, loaded by ``PeftModel.from_pretrained`` and merged by peft, gives the
  ``--format merged`` model's outputs (task arithmetic and TIES).

Cases: Llama-style GQA (q/k/v/o/gate/up/down, k/v narrower than q, rank/alpha patterns), GPT-2's
``Conv1D`` with ``fan_in_fan_out``, a regex ``target_modules``, ``layers_to_transform``,
``modules_to_save`` beyond the classifier, ``lora_bias``; embedding LoRA is refused.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from lorakit.errors import LorakitError
from lorakit.lora.peft import read_head
from lorakit.merge import METHODS
from lorakit.adapters.merge_folders import merge_adapter_folders

transformers.logging.set_verbosity_error()
# peft 0.21 warns about its own 1-D lora_B.bias tensors when saving a lora_bias adapter
pytestmark = pytest.mark.filterwarnings("ignore:Adapter 'default'.*invalid shape")
VOCAB = 100
WEIGHTS = [0.7, -1.3]


def llama():
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config)


def gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=16))


def bert():
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                     vocab_size=VOCAB, num_labels=3)
    return transformers.BertForSequenceClassification(config)


LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CASES = {  # name: (model builder, auto class, LoraConfig kwargs of both adapters, extra kwargs of the second)
    "llama_gqa": (llama, AutoModelForCausalLM, dict(r=4, lora_alpha=8, target_modules=LLAMA_TARGETS, task_type="CAUSAL_LM"),
                  dict(rank_pattern={"k_proj": 2}, alpha_pattern={"down_proj": 3}, use_rslora=True)),
    "gpt2_conv1d": (gpt2, AutoModelForCausalLM, dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"],
                                                      fan_in_fan_out=True, task_type="CAUSAL_LM"), dict(r=2)),
    "bert_regex": (bert, AutoModelForSequenceClassification,
                   dict(r=4, lora_alpha=8, target_modules=r".*layer\.1\.(attention\.self\.(query|key)|output\.dense)",
                        task_type="SEQ_CLS"), dict(lora_alpha=5)),
    "bert_layers_to_transform": (bert, AutoModelForSequenceClassification,
                                 dict(r=4, lora_alpha=8, target_modules=["query", "value", "dense"], layers_to_transform=[1],
                                      layers_pattern="layer", task_type="SEQ_CLS"), dict(r=3)),
    "bert_modules_to_save": (bert, AutoModelForSequenceClassification,
                             dict(r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["pooler.dense"],
                                  task_type="SEQ_CLS"), {}),
    "bert_lora_bias": (bert, AutoModelForSequenceClassification,
                       dict(r=4, lora_alpha=8, target_modules=["query", "value"], lora_bias=True, task_type="SEQ_CLS"), {}),
}


@dataclasses.dataclass
class Case:
    name: str
    base: Path
    auto: type
    adapters: list[Path]
    deltas: list[dict[str, torch.Tensor]]  # peft's merge_and_unload − base, every tensor
    head: set[str]  # state keys of modules_to_save (kept from adapter 0 with head_from=0)
    w0: dict[str, torch.Tensor]

    def load(self):
        return self.auto.from_pretrained(self.base).eval()

    @property
    def head_from(self):
        return 0 if self.head else None


def _randomise(pm, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in pm.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.5)


def make_case(name: str, root: Path) -> Case:
    build, auto, kwargs, second = CASES[name]
    torch.manual_seed(0)
    build().save_pretrained(root / "base")
    w0 = {k: v.clone() for k, v in auto.from_pretrained(root / "base").state_dict().items()}
    adapters, deltas = [], []
    for i, extra in enumerate(({}, second)):
        pm = get_peft_model(auto.from_pretrained(root / "base"), LoraConfig(lora_dropout=0.0, **{**kwargs, **extra}))
        _randomise(pm, seed=10 + i)
        pm.save_pretrained(root / f"a{i}")
        merged = copy.deepcopy(pm).merge_and_unload().state_dict()
        adapters.append(root / f"a{i}")
        deltas.append({k: merged[k] - w0[k] for k in w0})
    head = {k for k in read_head(adapters[0]) if ".lora_" not in k}
    return Case(name, root / "base", auto, adapters, deltas, head, w0)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory) -> Case:
    return make_case(request.param, tmp_path_factory.mktemp(request.param))


def inputs():
    g = torch.Generator().manual_seed(3)
    return {"input_ids": torch.randint(1, VOCAB, (2, 9), generator=g)}


def outputs(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs()).logits


def state_change(case: Case, model) -> dict[str, torch.Tensor]:
    return {k: v - case.w0[k] for k, v in model.state_dict().items()}


def max_diff(a: dict, b: dict, keys) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in keys)


def test_task_arithmetic_merged_equals_weighted_sum_of_peft_deltas(case, tmp_path):
    out = tmp_path / "m"
    merge_adapter_folders(case.adapters, "task_arithmetic", weights=WEIGHTS, out=out, format="merged",
                          base=str(case.base), head_from=case.head_from, progress=False)
    got = state_change(case, case.auto.from_pretrained(out).eval())
    body = [k for k in case.w0 if k not in case.head]
    expected = {k: sum(w * d[k].double() for w, d in zip(WEIGHTS, case.deltas)) for k in body}
    changed = [k for k in body if float(expected[k].abs().max()) > 1e-2]
    assert len(changed) >= 3  # not vacuous: several tensors really change (3 for the regex case)
    assert max_diff(got, expected, body) < 1e-6
    if case.head:  # adapter 0's head (modules_to_save), exactly
        trained = {k: case.w0[k] + case.deltas[0][k] for k in case.head}
        assert max_diff({k: got[k] + case.w0[k] for k in case.head}, trained, case.head) < 1e-6


@pytest.mark.parametrize("method,params", [("task_arithmetic", {}), ("ties", {"density": 0.5})])
def test_written_adapter_gives_the_merged_models_outputs(case, method, params, tmp_path):
    common = dict(params=params, weights=WEIGHTS, head_from=case.head_from, progress=False)
    if case.name == "bert_lora_bias" and not METHODS[method].factored:
        with pytest.raises(LorakitError, match="lora_bias.*task arithmetic"):
            merge_adapter_folders(case.adapters, method, out=tmp_path / "a", **common)
        assert not (tmp_path / "a").exists()
        return
    merge_adapter_folders(case.adapters, method, out=tmp_path / "a", **common)
    merge_adapter_folders(case.adapters, method, out=tmp_path / "m", format="merged", base=str(case.base), **common)
    merged = case.auto.from_pretrained(tmp_path / "m").eval()
    via_peft = PeftModel.from_pretrained(case.load(), tmp_path / "a").merge_and_unload().eval()
    assert float((outputs(via_peft) - outputs(merged)).abs().max()) < 1e-5
    assert float((outputs(merged) - outputs(case.load())).abs().max()) > 1e-3  # the merge changed something
    if METHODS[method].factored:  # exact refactoring: peft's weights equal the merged model's
        keys = list(case.w0)
        assert max_diff(state_change(case, via_peft), state_change(case, merged), keys) < 1e-6


def test_embedding_lora_is_refused_with_a_reason(tmp_path):
    torch.manual_seed(0)
    base = bert()
    pm = get_peft_model(base, LoraConfig(r=2, target_modules=["word_embeddings", "query"], task_type="SEQ_CLS"))
    pm.save_pretrained(tmp_path / "emb")
    with pytest.raises(LorakitError) as exc:
        merge_adapter_folders([tmp_path / "emb"], "task_arithmetic", out=tmp_path / "o", progress=False)
    message = str(exc.value)
    assert "embedding layer bert.embeddings.word_embeddings" in message and "target_modules" in message
    assert "\n" not in message and not (tmp_path / "o").exists()
