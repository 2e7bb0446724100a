"""lorakit.profiles: ci / cpu / gpu, the LORAKIT_PROFILE and LORAKIT_THREADS variables, overrides."""

from __future__ import annotations

import dataclasses
import doctest

import pytest
import torch

import lorakit.profiles as profiles
from lorakit.errors import LorakitError
from lorakit.profiles import PROFILES, Profile, apply_threads, default_profile_name, get_profile, with_overrides


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("LORAKIT_PROFILE", raising=False)
    monkeypatch.delenv("LORAKIT_THREADS", raising=False)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_three_profiles_exist_and_scale_up(no_cuda):
    assert {"ci", "cpu", "gpu"} <= set(PROFILES)
    ci, cpu, gpu = (get_profile(n) for n in ("ci", "cpu", "gpu"))
    assert (ci.name, cpu.name, gpu.name) == ("ci", "cpu", "gpu")
    assert ci.steps < cpu.steps < gpu.steps
    assert ci.train_examples < cpu.train_examples
    assert gpu.train_examples is None or gpu.train_examples > cpu.train_examples
    assert ci.test_examples <= cpu.test_examples <= gpu.test_examples
    assert len(ci.tasks) >= 2 and set(ci.tasks) <= set(cpu.tasks) <= set(gpu.tasks)
    assert ci.device == cpu.device == "cpu"
    assert PROFILES["gpu"].device == "cuda"
    for p in (ci, cpu, gpu):
        assert p.alpha > 0 and p.rank > 0 and p.lr > 0 and p.seeds and p.lam_grid
        assert all(0 < lam <= 1 for lam in p.lam_grid)
        assert p.threads >= 1


@pytest.mark.parametrize("name", ["ci", "cpu"])
def test_profile_tasks_have_cards(name):
    from lorakit.data.tasks import list_tasks

    assert set(PROFILES[name].tasks) <= set(list_tasks())


def test_env_selects_profile(monkeypatch, no_cuda):
    monkeypatch.setenv("LORAKIT_PROFILE", "ci")
    assert default_profile_name() == "ci"
    assert get_profile().name == "ci"
    assert get_profile(None).train_examples == PROFILES["ci"].train_examples
    # an explicit argument wins over the variable
    assert get_profile("cpu").name == "cpu"
    monkeypatch.setenv("LORAKIT_PROFILE", "gpu")
    assert get_profile().name == "gpu"


def test_default_without_env_depends_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_profile_name() == "cpu" and get_profile().name == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_profile_name() == "gpu"
    p = get_profile()
    assert p.name == "gpu" and p.device == "cuda"


def test_gpu_falls_back_to_cpu_without_cuda(no_cuda):
    p = get_profile("gpu")
    assert p.device == "cpu"
    # everything else is still the gpu profile
    assert dataclasses.replace(p, device="cuda") == PROFILES["gpu"]
    assert get_profile(PROFILES["gpu"]).device == "cpu"
    assert get_profile("ci", device="cuda").device == "cpu"


def test_gpu_keeps_cuda_when_available(fake_cuda):
    assert get_profile("gpu").device == "cuda"


def test_overrides_apply_and_do_not_mutate(no_cuda):
    before = PROFILES["ci"]
    p = get_profile("ci", train_examples=7, steps=3, seeds=[4, 5], tasks=["reuters_r8"], lr=None)
    assert (p.train_examples, p.steps, p.seeds, p.tasks) == (7, 3, (4, 5), ("reuters_r8",))
    assert p.lr == before.lr  # None = not given
    assert p.name == "ci"
    assert PROFILES["ci"] is before and PROFILES["ci"].steps != 3
    assert p.replace(steps=9).steps == 9 and p.steps == 3
    assert with_overrides(before, max_length=12).max_length == 12
    # a Profile object is accepted as the name
    assert get_profile(p, batch_size=2).train_examples == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.steps = 1  # type: ignore[misc]


def test_unknown_profile_and_field(monkeypatch, no_cuda):
    with pytest.raises(LorakitError, match="unknown profile 'laptop'") as exc:
        get_profile("laptop")
    for name in ("ci", "cpu", "gpu"):
        assert name in str(exc.value)
    assert "\n" not in str(exc.value)
    monkeypatch.setenv("LORAKIT_PROFILE", "tiny")
    with pytest.raises(LorakitError, match="unknown profile 'tiny'"):
        get_profile()
    monkeypatch.delenv("LORAKIT_PROFILE")
    with pytest.raises(LorakitError, match="stepz") as exc:
        get_profile("ci", stepz=3)
    assert "steps" in str(exc.value)  # the known fields are listed
    with pytest.raises(LorakitError, match="stepz"):
        PROFILES["cpu"].replace(stepz=3)


def test_threads_variable(monkeypatch, no_cuda):
    monkeypatch.setenv("LORAKIT_THREADS", "3")
    assert get_profile("ci").threads == 3
    assert get_profile("gpu").threads == 3
    assert get_profile("ci", threads=2).threads == 2  # an explicit argument wins
    assert get_profile("ci", threads=None).threads == 3  # None means "not given"
    monkeypatch.setenv("LORAKIT_THREADS", " 5 ")
    assert get_profile("cpu").threads == 5
    monkeypatch.setenv("LORAKIT_THREADS", "")
    assert get_profile("gpu").threads == PROFILES["gpu"].threads


@pytest.mark.parametrize("bad", ["two", "1.5", "4x"])
def test_bad_threads_variable(monkeypatch, no_cuda, bad):
    monkeypatch.setenv("LORAKIT_THREADS", bad)
    with pytest.raises(LorakitError, match="LORAKIT_THREADS") as exc:
        get_profile("ci")
    assert repr(bad) in str(exc.value) and "\n" not in str(exc.value)
    assert get_profile("ci", threads=1).threads == 1  # not read when given explicitly


def test_apply_threads():
    old = torch.get_num_threads()
    try:
        apply_threads(dataclasses.replace(PROFILES["ci"], threads=1))
        assert torch.get_num_threads() == 1
        apply_threads(dataclasses.replace(PROFILES["ci"], threads=0))  # 0: leave torch alone
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)


def test_module_doctest(no_cuda):
    result = doctest.testmod(profiles, verbose=False)
    assert result.attempted >= 1 and result.failed == 0


def test_profile_is_a_frozen_dataclass_with_documented_fields():
    names = {f.name for f in dataclasses.fields(Profile)}
    for field in ("train_examples", "val_examples", "test_examples", "steps", "seeds", "max_length", "device", "threads"):
        assert field in names


def test_gpu_profile_tasks_have_cards():
    from lorakit.data.tasks import list_tasks

    missing = sorted(set(PROFILES["gpu"].tasks) - set(list_tasks()))
    assert not missing, f"gpu profile names tasks without a card in data/tasks: {missing}"


def test_course_tasks_are_the_profiles_own_and_default_to_all():
    from lorakit.course.notebook import course_tasks
    from lorakit.profiles import PROFILES

    for p in PROFILES.values():
        assert set(course_tasks(p)) <= set(p.tasks) and course_tasks(p)
    assert course_tasks(get_profile("ci")) == list(get_profile("ci").tasks)  # empty course_tasks: every task
    cpu = get_profile("cpu")
    assert len(course_tasks(cpu)) == 5 < len(cpu.tasks)
    assert len(course_tasks(cpu)) * (len(course_tasks(cpu)) - 1) // 2 >= 10  # notebook 03 needs ≥ 10 pairs
    with pytest.raises(LorakitError, match="not among profile cpu's tasks"):
        course_tasks(get_profile("cpu", course_tasks=("rt_sentiment", "glue_rte")))
