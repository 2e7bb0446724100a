"""lorakit.results.mv_study: the committed magnitude-variance study re-derived from its own numbers, and the
tables and sentences notebook 03 prints from it."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pytest

from lorakit.stats.correlation import spearman_rho
from lorakit.errors import LorakitError
from lorakit.results.mv_study import (CLAIM_TEXT, claim_a_rows, claim_c_rows, full_ft_rows, load_mv_study, mv_study_path,
                               mv_verdict_sentences)
from lorakit.run.mv_study import claim_b_record, claim_c_record

COMMITTED = mv_study_path("cpu")


def _synthetic_study(slope: float, seed: int = 0) -> dict:
    """A study record for 8 tasks whose claim (c) points follow y = slope·x + task effects + noise."""
    rng = np.random.default_rng(seed)
    tasks = [f"t{i}" for i in range(8)]
    effect = dict(zip(tasks, rng.normal(0, 0.05, 8)))
    points = []
    for k in (2, 3):
        for g in combinations(tasks, k):
            x = float(rng.uniform(0.1, 0.5))
            y = 0.9 + slope * x + float(np.mean([effect[t] for t in g])) + float(rng.normal(0, 0.01))
            points.append({"group": list(g), "mv": x, "normalized": y,
                           "per_seed": [{"seed": 0, "normalized": y - 0.01}, {"seed": 1, "normalized": y + 0.01}]})
    pair = {"lora": {s: rng.uniform(0.3, 0.4, (8, 8)) for s in (0, 1, 2)},
            "full_ft": {s: rng.uniform(0.1, 0.2, (8, 8)) for s in (0, 1, 2)}}
    for fam in pair:
        for s, m in pair[fam].items():
            pair[fam][s] = (m + m.T) / 2 * (1 - np.eye(8))
    b = claim_b_record(pair, tasks, n_resamples=500)
    c = claim_c_record(points, n_resamples=500) | {"points": points, "seeds": [0, 1]}
    a = {"ties": {"effect": -0.05, "ci": [-0.08, -0.02], "verdict": "held", "seeds": [0, 1, 2],
                  "normalized_per_seed": {"lora": [0.80, 0.82, 0.78], "full_ft": [0.85, 0.87, 0.83]}},
         "dare": {"effect": 0.01, "ci": [-0.02, 0.04], "verdict": "inconclusive", "seeds": [0, 1, 2],
                  "normalized_per_seed": {"lora": [0.9, 0.9, 0.9], "full_ft": [0.89, 0.89, 0.89]}}}
    ft = {t: {"chosen_lr": 2.5e-4, "runs": {"8.33333e-05": [{"val_acc": 0.6, "test_acc": 0.6}],
                                            "0.00025": [{"val_acc": 0.8, "test_acc": 0.7}, {"val_acc": 0.9, "test_acc": 0.8}]},
              "majority_val": 0.5, "kept": t != "t7", "at_edge": False} for t in tasks}
    return {"tasks": tasks, "full_ft": ft, "claim_a": a, "claim_b": b, "claim_c": c,
            "verdicts": {"a": "inconclusive", "b": b["verdict"], "c": c["verdict"]}}


def test_rows_and_sentences_follow_the_record():
    rec = _synthetic_study(slope=-0.5)
    ft = {r["task"]: r for r in full_ft_rows(rec)}
    assert ft["t0"]["lr"] == 2.5e-4 and ft["t0"]["val_acc"] == pytest.approx(0.85) and ft["t0"]["n_seeds"] == 2
    assert ft["t0"]["test_acc"] == pytest.approx(0.75) and not ft["t7"]["kept"] and ft["t0"]["lrs_tried"] == [8.33333e-05, 2.5e-4]
    a = {r["method"]: r for r in claim_a_rows(rec)}
    assert a["ties"]["lora"] == pytest.approx(0.80) and a["ties"]["full_ft"] == pytest.approx(0.85)
    rows = {r["size"]: r for r in claim_c_rows(rec)}
    assert rows[2]["n"] == 28 and rows[3]["n"] == 56
    for size, r in rows.items():  # the carrier is the task whose removal moves ρ most
        pts = [q for q in rec["claim_c"]["points"] if len(q["group"]) == size]
        loto = {t: spearman_rho(*zip(*[(q["mv"], q["normalized"]) for q in pts if t not in q["group"]]))
                for t in rec["tasks"]}
        want = max(loto, key=lambda t: abs(loto[t] - r["spearman"]))
        assert r["carrier"] == want and r["without_carrier"] == pytest.approx(loto[want])
        assert r["loto_min"] == pytest.approx(min(loto.values())) and r["loto_max"] == pytest.approx(max(loto.values()))
    text = mv_verdict_sentences(rec)
    lines = text.splitlines()
    assert len(lines) == 3 and all(line.startswith("* ") for line in lines)
    for line, key in zip(lines, "abc"):
        assert CLAIM_TEXT[key] in line and f"**{rec['verdicts'][key]}**" in line
    assert "ties 0.800 vs 0.850 (-0.050, 95 % CI [-0.080, -0.020], held)" in lines[0]
    fe = rec["claim_c"]["fixed_effects"]
    assert f"slope β = {fe['slope']:+.3f}" in lines[2]


def test_a_strong_negative_slope_is_held_and_a_positive_one_contradicted():
    """The sentences carry claim (c)'s verdict as the fixed-effects slope decides it."""
    held, against = _synthetic_study(slope=-0.5, seed=1), _synthetic_study(slope=+0.5, seed=1)
    assert held["claim_c"]["verdict"] == "held" and against["claim_c"]["verdict"] == "contradicted"
    assert "**held**" in mv_verdict_sentences(held).splitlines()[2]
    assert "**contradicted**" in mv_verdict_sentences(against).splitlines()[2]
    assert held["claim_b"]["verdict"] == "held"


def test_missing_or_foreign_study_gives_one_line_errors(tmp_path):
    with pytest.raises(LorakitError, match="tools/mv_study.py --profile gpu"):
        load_mv_study("gpu", tmp_path)
    mv_study_path("ci", tmp_path).write_text(json.dumps({"records": []}))
    with pytest.raises(LorakitError, match="not a magnitude-variance study"):
        load_mv_study("ci", tmp_path)


def test_committed_cpu_study_recomputes_from_its_own_numbers():
    """The committed study's (b) and (c) statistics follow from the pair matrices and group points it
    stores; it has ≥ 8 tasks, ≥ 3 per-task seeds and every pair and triple."""
    rec = load_mv_study("cpu")
    assert rec["profile"] == "cpu" and rec["task_seeds"] == "per_task"
    assert len(rec["tasks"]) >= 8 and len(rec["seeds"]) >= 3 and rec["command"] and rec["date"]
    groups = {tuple(q["group"]) for q in rec["claim_c"]["points"]}
    assert groups == {g for k in (2, 3) for g in combinations(rec["tasks"], k)}
    c = claim_c_record(rec["claim_c"]["points"], n_resamples=5000)
    assert c["verdict"] == rec["claim_c"]["verdict"] == rec["verdicts"]["c"]
    assert c["fixed_effects"]["slope"] == pytest.approx(rec["claim_c"]["fixed_effects"]["slope"], abs=1e-9)
    for size, by in c["by_size"].items():
        assert by["spearman"] == pytest.approx(rec["claim_c"]["by_size"][size]["spearman"], abs=1e-12)
    for q in rec["claim_c"]["points"]:  # each point is the mean over its seeds
        assert q["normalized"] == pytest.approx(np.mean([s["normalized"] for s in q["per_seed"]]), abs=1e-12)
    b = rec["claim_b"]
    kept = b["tasks"]
    assert kept == rec["kept_tasks"]
    for fam in ("lora", "full_ft"):
        assert all(0 <= v < 2 for v in b["mv_per_seed"][fam])
    assert b["effect"] == pytest.approx(np.mean(b["mv_per_seed"]["lora"]) - np.mean(b["mv_per_seed"]["full_ft"]), abs=1e-9)
    assert rec["verdicts"]["b"] == b["verdict"]
    for r in claim_a_rows(rec):
        assert r["ci"][0] <= r["effect"] <= r["ci"][1] and r["n_seeds"] == len(rec["seeds"])
        assert rec["verdicts"][f"a_{r['method']}"] == r["verdict"]
