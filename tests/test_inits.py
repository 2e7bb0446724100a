"""The A-init registry (lorakit.train.inits) and the geometry of every init (lorakit.osrm.geometry), docs/methods.md §2.13.

Geometry is checked against brute force in numpy (projectors ``Aᵀ(AAᵀ)⁻¹A`` and ``(AAᵀ)^{-1/2}``
from ``np.linalg``); peft's inits against what peft itself builds (``train_adapter`` with zero
steps); the OSRM variants against lorakit.osrm directly. The tests marked slow use the packaged
MiniLM and the ci profile's real tasks.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from lorakit.errors import LorakitError
from lorakit.train.inits import (
    INIT_NAMES,
    get_init,
    init_depends_on_seed,
    init_freezes_A,
    init_geometry_for_tasks,
    init_uses_A,
    peft_A,
    peft_init,
    prepare_init_A,
    random_orthonormal_A,
    task_seed,
)
from lorakit.osrm import init_geometry, leave_one_out_subspaces, own_energy_fraction, subspace
from lorakit.train.inits import osrm_init_for_tasks
from lorakit.profiles import Profile, get_profile
from lorakit.data.tasks import load_task
from lorakit.train.cache import cache_key
from lorakit.train.encoder import train_adapter, train_config

R, D = 4, 48


def graded(k: int, d: int, basis: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(k, d) features with a graded spectrum (std 0.2 … 10) in ``basis``: similar tasks share the basis."""
    stds = torch.linspace(0.2, 10.0, d, dtype=torch.float64)
    return (torch.randn(k, d, generator=g, dtype=torch.float64) * stds) @ basis.T


def similar_tasks(n_tasks=3, n_modules=4, k=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    bases = [torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0] for _ in range(n_modules)]
    return {f"t{i}": {f"m{j}": graded(k, D, bases[j], g) for j in range(n_modules)} for i in range(n_tasks)}


# ----------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------


def test_registry_names_and_capabilities():
    assert INIT_NAMES == ("standard", "gaussian", "osrm", "random_orthonormal", "osrm_task_mean", "osrm_frozen")
    assert [n for n in INIT_NAMES if init_freezes_A(n)] == ["osrm_frozen"]
    assert [n for n in INIT_NAMES if not init_uses_A(n)] == ["standard", "gaussian"]
    assert [n for n in INIT_NAMES if init_depends_on_seed(n)] == ["standard", "gaussian", "random_orthonormal"]
    assert {n: peft_init(n) for n in INIT_NAMES} == {n: "gaussian" if n == "gaussian" else "standard" for n in INIT_NAMES}
    assert get_init("osrm_task_mean").osrm_mode == "task_mean" and get_init("osrm").osrm_mode is None


@pytest.mark.parametrize("call", [get_init, init_freezes_A, init_uses_A, peft_init,
                                  lambda n: prepare_init_A(n, ["a"], "ci", 0)])
def test_unknown_init_is_one_line_naming_the_choices(call):
    with pytest.raises(LorakitError) as err:
        call("svd")
    msg = str(err.value)
    assert "svd" in msg and all(n in msg for n in INIT_NAMES) and "\n" not in msg


def pin_profile() -> Profile:
    return Profile(name="pin", model="minilm", train_examples=192, val_examples=64, test_examples=128, steps=24,
                   batch_size=16, max_length=48, lr=1e-2, rank=8, alpha=16, target_modules=("query", "value"),
                   task_seeds="shared")


def test_old_cache_keys_stay_and_every_init_has_its_own():
    """The keys below were computed with the code before the init registry: cached adapters stay valid."""
    p, A = pin_profile(), {"m": torch.arange(6.0).reshape(2, 3)}
    old = {("standard", False, None): "8cf91bbcbb7430ccf21b", ("gaussian", False, None): "3de79120a6b0c5755f87",
           ("osrm", False, "A"): "151fe8dd27109f4ed077", ("osrm", True, "A"): "752cf47837dca5683dac"}
    for (init, freeze, a), key in old.items():
        assert cache_key(train_config("rt_subjectivity", p, init, freeze, 0, A if a else None)) == key
    keys = {n: cache_key(train_config("t", p, n, init_freezes_A(n), 0, A if init_uses_A(n) else None)) for n in INIT_NAMES}
    assert len(set(keys.values())) == len(INIT_NAMES)
    assert keys["osrm_frozen"] != cache_key(train_config("t", p, "osrm", True, 0, A))  # same A, same freezing, own key


# ----------------------------------------------------------------------------------------------
# random_orthonormal: OSRM's norm and orthonormality, a random subspace
# ----------------------------------------------------------------------------------------------


def test_random_orthonormal_rows_have_osrms_norm_and_are_reproducible():
    shapes = {"a.query": D, "a.value": D, "b.query": 2 * D}
    A = random_orthonormal_A(shapes, R, seed=7)
    osrm_A = subspace(similar_tasks()["t0"]["m0"], R)
    for m, d in shapes.items():
        assert A[m].shape == (R, d) and A[m].dtype == torch.float64
        torch.testing.assert_close(A[m] @ A[m].T, torch.eye(R, dtype=torch.float64), atol=1e-12, rtol=0)
        torch.testing.assert_close(A[m].norm(dim=1), osrm_A.norm(dim=1), atol=1e-12, rtol=0)  # both 1
    again = random_orthonormal_A({"a.value": D}, R, seed=7)  # one module alone: the same matrix
    assert torch.equal(again["a.value"], A["a.value"])
    assert not torch.allclose(A["a.query"], A["a.value"])
    assert not torch.allclose(random_orthonormal_A(shapes, R, seed=8)["a.query"], A["a.query"])
    with pytest.raises(LorakitError, match="between 1 and d_in"):
        random_orthonormal_A({"m": 3}, R, seed=0)


def test_random_overlap_is_r_over_d_and_similar_osrm_tasks_overlap_more():
    features = similar_tasks(n_tasks=3, n_modules=40)
    shapes = {m: D for m in features["t0"]}
    rand = {t: random_orthonormal_A(shapes, R, task_seed(0, t, "per_task")) for t in features}
    g_rand = init_geometry(rand, features)
    assert g_rand["random"] == pytest.approx(R / D)
    assert abs(g_rand["overlap"] - R / D) < 0.015  # E[O] = r/d exactly; 120 pairs of std ≈ 0.02 each
    for t in features:
        assert abs(g_rand["energy"][t] - R / D) < 0.03
    g_osrm = init_geometry(leave_one_out_subspaces(features, R), features)
    assert g_osrm["overlap"] > 0.5 > 5 * R / D  # the tasks share their least-used directions
    assert max(g_osrm["energy"].values()) < 0.1 * R / D  # and A_t avoids its own task's energy too


# ----------------------------------------------------------------------------------------------
# init_geometry against numpy
# ----------------------------------------------------------------------------------------------


def numpy_geometry(A_by_task, features):
    tasks, modules = list(A_by_task), list(A_by_task[next(iter(A_by_task))])
    overlaps, energy = [], {t: [] for t in tasks}
    for m in modules:
        P = {}
        for t in tasks:
            A, H = A_by_task[t][m].numpy(), features[t][m].numpy()
            P[t] = A.T @ np.linalg.inv(A @ A.T) @ A
            w, V = np.linalg.eigh(A @ A.T)
            inv_sqrt = V @ np.diag(w**-0.5) @ V.T
            energy[t].append(np.linalg.norm(H @ A.T @ inv_sqrt) ** 2 / np.linalg.norm(H) ** 2)
        r = A_by_task[tasks[0]][m].shape[0]
        overlaps += [np.linalg.norm(P[i] @ P[j]) ** 2 / r for i, j in itertools.combinations(tasks, 2)]
    return float(np.mean(overlaps)), {t: float(np.mean(v)) for t, v in energy.items()}


def test_geometry_matches_numpy_brute_force():
    features = similar_tasks(n_tasks=4, n_modules=3, k=30, seed=3)
    g = torch.Generator().manual_seed(5)
    A = {t: {m: torch.randn(R, D, generator=g, dtype=torch.float64) for m in mods} for t, mods in features.items()}
    A["t1"]["m0"] = A["t0"]["m0"] + 1e-3 * A["t1"]["m0"]  # one near-identical pair: not all overlaps ≈ r/d
    got = init_geometry(A, features)
    overlap, energy = numpy_geometry(A, features)
    assert got["overlap"] == pytest.approx(overlap, rel=1e-9)
    assert got["energy"] == pytest.approx(energy, rel=1e-9)
    M = np.array(got["overlap_matrix"])
    np.testing.assert_allclose(np.diag(M), 1.0, atol=1e-10)
    np.testing.assert_allclose(M, M.T, atol=1e-12)
    assert got["per_module"]["m0"]["overlap"] > got["per_module"]["m1"]["overlap"] + 0.1  # the pair ≈ 1 of 6
    assert own_energy_fraction(A["t2"]["m2"], features["t2"]["m2"]) == got["per_module"]["m2"]["energy"]["t2"]
    one = init_geometry({"t0": A["t0"]}, features)
    assert one["overlap"] is None and one["energy"]["t0"] == pytest.approx(energy["t0"], rel=1e-9)


def test_geometry_rejects_mismatched_input():
    features = similar_tasks(n_tasks=2, n_modules=2, k=10)
    A = {t: {m: torch.randn(R, D, dtype=torch.float64) for m in mods} for t, mods in features.items()}
    cases = [({**A, "t1": {"m0": A["t1"]["m0"]}}, features, "different modules"),
             (A, {"t0": features["t0"]}, "no features of task t1"),
             ({**A, "t1": {"m0": torch.ones(R, D + 1), "m1": A["t1"]["m1"]}}, features, "same d"),
             ({}, features, "no tasks")]
    for a, f, words in cases:
        with pytest.raises(LorakitError, match=words):
            init_geometry(a, f)
    with pytest.raises(LorakitError, match="all zero"):
        own_energy_fraction(A["t0"]["m0"], torch.zeros(3, D))


# ----------------------------------------------------------------------------------------------
# Real model and tasks (ci profile)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ci():
    p = get_profile("ci", extra={"osrm_samples": 16})
    try:
        for t in p.tasks:
            load_task(t, profile=p)
    except LorakitError as exc:  # task data not installed here
        pytest.skip(str(exc))
    return p


@pytest.mark.slow
def test_peft_inits_are_what_training_starts_from(ci):
    """peft_A = the A of train_adapter's untrained model; its statistics are peft's documented ones."""
    task = ci.tasks[0]
    for init in ("standard", "gaussian"):
        assert prepare_init_A(init, [task], ci, 0) is None
        A = peft_A(init, [task], ci, seed=2)[task]
        start = train_adapter(task, ci.replace(steps=0, train_examples=16, val_examples=8, test_examples=8),
                              init=init, seed=2, cache=False, progress=False)
        assert set(A) == set(start.updates) and len(A) == 12
        assert all(torch.equal(A[m], start.updates[m].A) for m in A)
        values = torch.cat([a.flatten() for a in A.values()]).double()
        if init == "standard":  # kaiming_uniform_(a=√5): U(-1/√d_in, 1/√d_in)
            assert values.abs().max() <= 384**-0.5 and values.var() == pytest.approx(1 / (3 * 384), rel=0.05)
        else:  # normal_(std=1/r)
            assert values.std() == pytest.approx(1 / ci.rank, rel=0.05) and values.abs().max() > 384**-0.5


@pytest.mark.slow
def test_prepared_osrm_variants_and_random_control(ci):
    tasks = list(ci.tasks)
    osrm = prepare_init_A("osrm", tasks, ci, seed=0, progress=False)
    assert prepare_init_A("osrm_frozen", tasks, ci, seed=5, progress=False).keys() == osrm.keys()
    frozen = prepare_init_A("osrm_frozen", tasks, ci, seed=5, progress=False)
    assert all(torch.equal(frozen[t][m], osrm[t][m]) for t in tasks for m in osrm[t])  # same A, any seed
    # the task-mean variant is the feature mode "task_mean" of lorakit.osrm: A_t annihilates the other tasks' means
    mean_A = prepare_init_A("osrm_task_mean", tasks, ci, progress=False)
    via_profile, means = osrm_init_for_tasks(tasks, ci.replace(extra={**ci.extra, "osrm_mode": "task_mean"}),
                                             progress=False, return_features=True)
    for t in tasks:
        for m, A in mean_A[t].items():
            assert torch.equal(A, via_profile[t][m])
            for j in tasks:
                mu = means[j][m].double()
                assert mu.shape == (1, 384)
                ratio = float((mu @ A.T).norm() / mu.norm())
                assert ratio < 1e-9 if j != t else ratio > 1e-4
    rand = prepare_init_A("random_orthonormal", tasks, ci, seed=0)
    assert set(rand[tasks[0]]) == set(osrm[tasks[0]])
    for t in tasks:
        for m, A in rand[t].items():
            assert A.shape == (ci.rank, 384)
            torch.testing.assert_close(A @ A.T, torch.eye(ci.rank, dtype=A.dtype), atol=1e-12, rtol=0)
    m = next(iter(rand[tasks[0]]))
    assert not torch.allclose(rand[tasks[0]][m], rand[tasks[1]][m])  # tasks differ, even with shared task seeds
    assert not torch.allclose(prepare_init_A("random_orthonormal", tasks[:1], ci, seed=1)[tasks[0]][m], rand[tasks[0]][m])


@pytest.mark.slow
@pytest.mark.parametrize("init", ["random_orthonormal", "osrm_frozen"])
def test_train_adapter_takes_the_new_inits(ci, init):
    task = ci.tasks[0]
    p = ci.replace(steps=2, train_examples=32, val_examples=8, test_examples=8)
    init_A = prepare_init_A(init, ci.tasks, ci, seed=0, progress=False)[task]
    with pytest.raises(LorakitError, match=f"init='{init}' needs init_A"):
        train_adapter(task, p, init=init, cache=False, progress=False)
    trained = train_adapter(task, p, init=init, init_A=init_A, cache=False, progress=False)
    assert trained.config["init"] == init and trained.config["freeze_A"] is init_freezes_A(init)
    for m, upd in trained.updates.items():
        same = torch.equal(upd.A, init_A[m].float())
        assert same if init == "osrm_frozen" else not same  # frozen A stays; a trainable one moves
        assert upd.B.abs().max() > 0


@pytest.fixture(scope="module")
def ci_features(ci):
    """``(osrm_A, features)`` of the ci tasks, collected once for the geometry tests."""
    return osrm_init_for_tasks(list(ci.tasks), ci, progress=False, return_features=True)


@pytest.mark.slow
def test_geometry_with_given_features_equals_collecting_them(ci, ci_features):
    given = init_geometry_for_tasks("random_orthonormal", list(ci.tasks), ci, seed=1, osrm_A_and_features=ci_features)
    collected = init_geometry_for_tasks("random_orthonormal", list(ci.tasks), ci, seed=1)
    assert given == collected


@pytest.mark.slow
@pytest.mark.parametrize("init", ["standard", "osrm", "random_orthonormal"])
def test_geometry_for_tasks_on_ci(ci, ci_features, init):
    g = init_geometry_for_tasks(init, list(ci.tasks), ci, seed=0, osrm_A_and_features=ci_features)
    assert g["init"] == init and g["modules"] == 12 and g["random"] == pytest.approx(ci.rank / 384)
    assert set(g["energy"]) == set(ci.tasks) and all(0 <= e <= 1 for e in g["energy"].values())
    if init == "random_orthonormal":
        assert abs(g["overlap"] - g["random"]) < 0.01
    if init == "osrm":  # OSRM reads far less of its own task's features than a random subspace
        assert max(g["energy"].values()) < 0.5 * g["random"]
