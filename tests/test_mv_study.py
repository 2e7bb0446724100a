"""lorakit.stats.mv_study / mv_study / mv_run: the magnitude-variance claims, against brute force and end to end."""

from __future__ import annotations

import json
import math
from itertools import combinations
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lorakit.lora.measures import magnitude_variance_pairwise
from lorakit.stats.correlation import spearman_rho
from lorakit.errors import LorakitError
from lorakit.lora.update import LoRAUpdate
from lorakit.merge import merge_adapters
from lorakit.stats.mv_study import (bootstrap_spearman, fixed_effects_slope, leave_one_task_out, multi_bootstrap,
                              normalized_difference, pair_bootstrap_over_tasks)
from lorakit.run.mv_study import (beats_majority, choose_lr, claim_a_record, claim_b_record, claim_c_record, group_mv,
                              merge_dense, pair_mv_matrix, task_groups, tune_full_ft)
from lorakit.stats.paired import paired_bootstrap

stats = pytest.importorskip("scipy.stats")
VERDICTS = {"held", "contradicted", "inconclusive"}


def _correct(rng, shape, p):
    return (rng.random(shape) < p).astype(np.float64)


def test_multi_bootstrap_with_two_arrays_is_paired_bootstrap():
    rng = np.random.default_rng(0)
    a = {f"t{t}": _correct(rng, (3, 40 + 7 * t), 0.7) for t in range(3)}
    b = {t: _correct(rng, v.shape, 0.6) for t, v in a.items()}
    want = paired_bootstrap(a, b, n_resamples=2500, seed=4, block=1000)
    got = multi_bootstrap({t: np.stack([a[t], b[t]]) for t in a}, lambda acc: (acc[0] - acc[1]).mean(-1),
                          n_resamples=2500, seed=4, block=1000)
    assert got.ci.estimate == pytest.approx(want.ci.estimate, abs=1e-12)
    np.testing.assert_allclose(got.resamples, want.resamples, atol=1e-12)
    assert (got.ci.low, got.ci.high) == pytest.approx((want.ci.low, want.ci.high), abs=1e-12)


def test_multi_bootstrap_resample_by_hand():
    """One resample, recomputed with explicit loops from the same random stream."""
    rng = np.random.default_rng(1)
    scores = {"x": _correct(rng, (4, 2, 9), 0.6), "y": _correct(rng, (4, 2, 5), 0.8) + 0.1}
    got = multi_bootstrap(scores, normalized_difference, n_resamples=1, seed=7)
    g = np.random.Generator(np.random.PCG64(7))
    seed_idx = g.integers(0, 2, size=(1, 2), dtype=np.int32)[0]
    ratios = np.zeros(2)
    for name in ("x", "y"):
        a = scores[name]
        ex = g.integers(0, a.shape[2], size=(1, a.shape[2]), dtype=np.int32)[0]
        acc = [np.mean([a[k, s, i] for s in seed_idx for i in ex]) for k in range(4)]
        ratios += np.array([acc[0] / acc[1], acc[2] / acc[3]]) / 2
    assert got.resamples[0] == pytest.approx(ratios[0] - ratios[1], abs=1e-12)
    point = np.mean([scores[t][0].mean() / scores[t][1].mean() - scores[t][2].mean() / scores[t][3].mean()
                     for t in scores])
    assert got.ci.estimate == pytest.approx(point, abs=1e-12)


def test_pair_bootstrap_over_tasks_by_hand():
    rng = np.random.default_rng(2)
    d = rng.normal(size=(5, 5))
    d = d + d.T
    got = pair_bootstrap_over_tasks(d, n_resamples=300, seed=3)
    g, boot = np.random.Generator(np.random.PCG64(3)), []
    while len(boot) < 300:
        idx = g.integers(0, 5, size=5)
        vals = [d[idx[j], idx[m]] for j, m in combinations(range(5), 2) if idx[j] != idx[m]]
        if vals:
            boot.append(np.mean(vals))
    assert got.estimate == pytest.approx(d[np.triu_indices(5, 1)].mean())
    assert (got.low, got.high) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])), abs=1e-12)
    with pytest.raises(LorakitError, match="symmetric"):
        pair_bootstrap_over_tasks(d + np.triu(np.ones((5, 5)), 1))


def test_spearman_leave_one_out_and_bootstrap_match_scipy():
    rng = np.random.default_rng(3)
    tasks = [f"t{i}" for i in range(6)]
    groups = [g for g in combinations(tasks, 2)]
    x, y = rng.normal(size=len(groups)), rng.normal(size=len(groups))
    x[3] = x[4]  # a tie
    assert spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    loto = leave_one_task_out(groups, x, y)
    for t in tasks:
        keep = [t not in g for g in groups]
        assert loto[t]["n"] == sum(keep)
        assert loto[t]["spearman"] == pytest.approx(stats.spearmanr(x[keep], y[keep])[0], abs=1e-12)
    ci = bootstrap_spearman(x, y, n_resamples=200, seed=5)
    g, boot = np.random.Generator(np.random.PCG64(5)), []
    for _ in range(200):
        idx = g.integers(0, len(x), size=len(x))
        r = stats.spearmanr(x[idx], y[idx])[0]
        if not math.isnan(r):
            boot.append(r)
    assert (ci.low, ci.high) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])), abs=1e-10)


def _groups(n_tasks=8):
    tasks = [f"t{i}" for i in range(n_tasks)]
    return tasks, [g for k in (2, 3) for g in combinations(tasks, k)]


def test_fixed_effects_slope_matches_lstsq_and_t():
    tasks, groups = _groups()
    rng = np.random.default_rng(4)
    x, y = rng.random(len(groups)), rng.normal(size=len(groups))
    got = fixed_effects_slope(groups, x, y)
    X = np.array([[xi, float(len(g) == 3)] + [float(t in g) / len(g) for t in tasks] for xi, g in zip(x, groups)])
    coef = np.linalg.lstsq(X, y, rcond=None)[0]
    df = len(y) - X.shape[1]
    se = math.sqrt(np.sum((y - X @ coef) ** 2) / df * np.linalg.pinv(X.T @ X)[0, 0])
    assert got["slope"] == pytest.approx(coef[0], abs=1e-10)
    assert got["se"] == pytest.approx(se, rel=1e-9)
    half = stats.t.ppf(0.975, df) * se
    assert got["ci"] == pytest.approx([coef[0] - half, coef[0] + half], rel=1e-7)
    assert got["p_value"] == pytest.approx(2 * stats.t.sf(abs(coef[0]) / se, df), rel=1e-6, abs=1e-12)


def test_fixed_effects_remove_a_single_task_confound():
    """One task raises x and lowers y of every group it is in: Spearman is strongly negative, β is not."""
    tasks, groups = _groups()
    rng = np.random.default_rng(5)
    bad = [float("t0" in g) for g in groups]
    x = 0.2 + 0.3 * np.array(bad) + 0.02 * rng.random(len(groups))
    y = 0.9 - 0.3 * np.array(bad) / np.array([len(g) for g in groups]) + 0.01 * rng.normal(size=len(groups))
    assert spearman_rho(x, y) < -0.4
    fe = fixed_effects_slope(groups, x, y)
    assert fe["ci"][0] < 0 < fe["ci"][1]
    planted = y - 2.0 * x  # a real within-task slope of −2 is found
    fe2 = fixed_effects_slope(groups, x, planted)
    assert fe2["ci"][0] < -2.0 < fe2["ci"][1] and fe2["ci"][1] < 0
    with pytest.raises(LorakitError, match="rank-deficient"):
        fixed_effects_slope(groups[:5], x[:5], y[:5])


def test_lr_choice_and_majority_rule():
    assert choose_lr({1e-4: [0.6, 0.7], 3e-4: [0.8, 0.7], 1e-3: [0.75, 0.75]}) == 3e-4
    assert choose_lr({1e-4: [0.7], 3e-4: [0.7]}) == 1e-4  # ties: the first
    assert beats_majority(0.6, 0.5) and not beats_majority(0.59, 0.5)
    with pytest.raises(LorakitError):
        choose_lr({})


def test_tune_full_ft_keeps_and_excludes_with_per_task_seeds():
    calls = []

    def fake(task, p, seed, lr, progress):
        calls.append((task, seed, lr))
        val = {1e-4: 0.55, 1e-3: 0.95 if task == "rt_subjectivity" else 0.52}[lr]
        return SimpleNamespace(metrics={"val_acc": val, "test_acc": val - 0.01}, task=task)

    from lorakit.profiles import get_profile
    from lorakit.train.inits import task_seed

    p = get_profile("ci", task_seeds="per_task")
    good = tune_full_ft("rt_subjectivity", p, [1e-4, 1e-3], seeds=(0, 1), train_fn=fake)
    assert good.kept and good.chosen_lr == 1e-3 and good.at_edge and set(good.adapters) == {0, 1}
    s0, s1 = task_seed(0, "rt_subjectivity", "per_task"), task_seed(1, "rt_subjectivity", "per_task")
    assert calls == [("rt_subjectivity", s0, 1e-4), ("rt_subjectivity", s0, 1e-3), ("rt_subjectivity", s1, 1e-3)]
    assert [r["seed"] for r in good.runs[1e-3]] == [0, 1] and len(good.runs[1e-4]) == 1
    calls.clear()
    both = tune_full_ft("rt_subjectivity", p, [1e-4, 1e-3], seeds=(0, 1), train_fn=fake, tune_seeds=(0, 1))
    assert len(calls) == 4 and both.chosen_lr == 1e-3
    with pytest.raises(LorakitError, match="tune_seeds"):
        tune_full_ft("rt_subjectivity", p, [1e-4], seeds=(0,), train_fn=fake, tune_seeds=(5,))
    bad = tune_full_ft("election_tweets", p, [1e-4, 1e-3], seeds=(0,), train_fn=fake)
    assert not bad.kept and bad.chosen_lr == 1e-4 and "majority" in bad.reason
    rec = json.loads(json.dumps(bad.record()))
    assert rec["majority_val"] == pytest.approx(bad.majority_val) and rec["runs"]["0.0001"][0]["val_acc"] == 0.55


@pytest.mark.parametrize("method, params", [("task_arithmetic", {"lam": 0.7}), ("ties", {"lam": 0.5, "density": 0.3}),
                                            ("dare", {"lam": 0.8, "drop_rate": 0.4, "seed": 3})])
def test_merge_dense_equals_merge_adapters_on_dense_updates(method, params):
    g = torch.Generator().manual_seed(0)
    ads = [{m: LoRAUpdate.from_dense(torch.randn(6, 5, generator=g)) for m in ("q", "v")} for _ in range(3)]
    got, want = merge_dense(ads, method, **params), merge_adapters(ads, method, **params)
    for m in want:
        torch.testing.assert_close(got[m], want[m], rtol=1e-5, atol=1e-6)
    with pytest.raises(LorakitError, match="dense rule"):
        merge_dense(ads, "do")


def test_group_mv_is_the_pairwise_measure_of_the_group():
    g = torch.Generator().manual_seed(1)
    tasks = ["a", "b", "c", "d"]
    ups = {t: {m: LoRAUpdate(torch.randn(2, 7, generator=g), torch.randn(5, 2, generator=g), 2.0) for m in ("q", "v")}
           for t in tasks}
    M = pair_mv_matrix(ups, tasks)
    assert np.allclose(M, M.T) and np.all(np.diag(M) == 0)
    for grp in ([0, 1], [0, 2, 3], [0, 1, 2, 3]):
        assert group_mv(M, grp) == pytest.approx(magnitude_variance_pairwise([ups[tasks[i]] for i in grp]), abs=1e-12)
    with pytest.raises(LorakitError):
        group_mv(M, [1])


def test_task_groups_counts_and_subset():
    tasks = [f"t{i}" for i in range(8)]
    assert len(task_groups(tasks)) == 28 + 56
    sub = task_groups(tasks, max_groups=10)
    assert len(sub) == 10 and sub == task_groups(tasks, max_groups=10) and set(sub) <= set(task_groups(tasks))


def test_claim_records_on_synthetic_numbers():
    rng = np.random.default_rng(6)
    tasks, seeds = ["a", "b", "c"], [0, 1]
    ind = {fam: {s: {t: _correct(rng, 200, 0.9) for t in tasks} for s in seeds} for fam in ("lora", "full_ft")}
    worse = {"lora": {s: {t: _correct(rng, 200, 0.5) for t in tasks} for s in seeds},
             "full_ft": {s: {t: _correct(rng, 200, 0.85) for t in tasks} for s in seeds}}
    a = claim_a_record(worse, ind, n_resamples=500)
    assert a["verdict"] == "held" and a["ci"][1] < 0
    same = claim_a_record({"lora": worse["full_ft"], "full_ft": worse["full_ft"]},
                          {"lora": ind["full_ft"], "full_ft": ind["full_ft"]}, n_resamples=500)
    assert same["verdict"] == "inconclusive" and same["effect"] == pytest.approx(0.0, abs=1e-12)
    sym = lambda m: (m + m.T) * (1 - np.eye(3))  # noqa: E731
    pair = {"lora": {s: sym(0.3 + 0.01 * rng.random((3, 3))) for s in seeds},
            "full_ft": {s: sym(0.1 + 0.01 * rng.random((3, 3))) for s in seeds}}
    b = claim_b_record(pair, tasks, n_resamples=500)
    assert b["verdict"] == "held" and b["effect"] > 0 and b["over_tasks"]["verdict"] in VERDICTS
    t8, groups = _groups()
    points = [{"group": list(g), "mv": float(rng.random()), "normalized": float(rng.random())} for g in groups]
    c = claim_c_record(points, n_resamples=200)
    assert set(c["by_size"]) == {"2", "3"} and c["verdict"] in VERDICTS
    assert set(c["by_size"]["2"]["leave_one_task_out"]) == set(t8)


def test_study_end_to_end_tiny(tmp_path, monkeypatch):
    """The whole study on 3 ci tasks × 2 seeds at a tiny size: JSON structure and three-valued verdicts."""
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    from lorakit.run.mv_grid import run_study
    from lorakit.profiles import get_profile

    p = get_profile("ci", train_examples=32, val_examples=16, test_examples=24, steps=2, batch_size=8, max_length=16,
                    lam_grid=(1.0,))
    lines = []  # margin −1 keeps every (barely trained) full FT, so claims (a) and (b) run
    rec = run_study(p, seeds=[0, 1], lr_factors=(1.0,), margin=-1.0, methods=("dare",),
                    c_lams=(1.0,), n_resamples=200, log=lines.append)
    rec = json.loads(json.dumps(rec))
    assert rec["tasks"] == list(p.tasks) and rec["kept_tasks"] == rec["tasks"] and rec["task_seeds"] == "per_task"
    assert set(rec["verdicts"]) == {"a", "b", "c", "a_dare"} and rec["verdicts"]["a"] == rec["verdicts"]["a_dare"]
    assert set(rec["verdicts"].values()) <= VERDICTS
    for m in ("dare",):
        assert rec["claim_a"][m]["ci"][0] <= rec["claim_a"][m]["effect"] <= rec["claim_a"][m]["ci"][1]
        assert set(rec["claim_a"][m]["runs"]["full_ft"]) == {"0", "1"}
    assert len(rec["claim_b"]["mv_per_seed"]["lora"]) == 2 and rec["claim_b"]["verdict"] in VERDICTS
    assert len(rec["claim_c"]["points"]) == 3 + 1 and rec["claim_c"]["by_size"]["2"]["n"] == 3
    assert rec["claim_c"]["tasks_note"] and any(line.startswith("(c)") for line in lines)
    assert set(rec["seconds"]) == {"train_lora", "train_full_ft", "individual", "claims_a_b", "claim_c", "total"}
    for t, ft in rec["full_ft"].items():
        assert ft["chosen_lr"] == pytest.approx(p.lr / 20) and len(ft["runs"]["0.0005"]) == 2


def test_tool_passes_its_options_and_writes_the_json(tmp_path, monkeypatch):
    """tools/mv_study.py: --tasks/--seeds/--profile and the other options reach run_study; one JSON comes out."""
    import importlib.util
    from pathlib import Path

    import lorakit.run.mv_grid

    spec = importlib.util.spec_from_file_location("mv_tool", Path(__file__).resolve().parents[1] / "tools" / "mv_study.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    seen = {}

    def fake_run(profile, tasks, seeds, **kw):
        seen.update(profile=profile, tasks=tasks, seeds=seeds, **kw)
        return {"profile": profile, "verdicts": {"a": "held", "b": "inconclusive", "c": "contradicted"}}

    monkeypatch.setattr(lorakit.run.mv_grid, "run_study", fake_run)
    out = tmp_path / "r.json"
    assert tool.main(["--profile", "ci", "--tasks", "a", "b", "--seeds", "0", "3", "--lr-factors", "0.5,2",
                      "--c-lams", "0.3,1", "--max-groups", "5", "--c-seeds", "3", "--ft-tune-seeds", "0", "3", "--out", str(out)]) == 0
    assert seen["profile"] == "ci" and seen["tasks"] == ["a", "b"] and seen["seeds"] == [0, 3]
    assert seen["lr_factors"] == [0.5, 2.0] and seen["c_lams"] == [0.3, 1.0] and seen["max_groups"] == 5
    assert seen["c_seeds"] == [3] and seen["ft_tune_seeds"] == [0, 3]
    rec = json.loads(out.read_text())
    assert set(rec["verdicts"].values()) <= VERDICTS and "command" in rec and "machine" in rec
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # nothing half-written left beside it


def test_tool_full_ft_only_warms_the_cache_per_task_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """--full-ft-only: tune_full_ft per task with the study's lrs, seeds and margin; no study, no JSON."""
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    import lorakit.run.mv_grid
    import lorakit.run.mv_study
    from lorakit.profiles import get_profile

    spec = importlib.util.spec_from_file_location("mv_tool2", Path(__file__).resolve().parents[1] / "tools" / "mv_study.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    calls = []

    def fake_tune(task, p, lrs, seeds, margin, tune_seeds=None):
        calls.append((task, p.name, p.task_seeds, list(lrs), list(seeds), margin, tune_seeds))
        return SimpleNamespace(reason=f"reason {task}", kept=task != "b")

    monkeypatch.setattr(lorakit.run.mv_grid, "tune_full_ft", fake_tune)  # the name full_ft_choices calls
    monkeypatch.setattr(lorakit.run.mv_grid, "run_study", lambda *a, **k: pytest.fail("the study must not run"))
    monkeypatch.chdir(tmp_path)
    assert tool.main(["--profile", "ci", "--tasks", "a", "b", "--seeds", "0", "2", "--lr-factors", "1,3",
                      "--full-ft-only", "--out", str(tmp_path / "x.json")]) == 0
    lr = get_profile("ci").lr / 20
    assert calls == [(t, "ci", "per_task", [lr, 3 * lr], [0, 2], lorakit.run.mv_study.MAJORITY_MARGIN, None) for t in "ab"]
    out = capsys.readouterr().out
    assert "full FT a: reason a → kept" in out and "full FT b: reason b → excluded" in out
    assert list(tmp_path.iterdir()) == []
