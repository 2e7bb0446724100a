"""lorakit.reference: finding committed runs and checking the papers' claims against a results dict."""

from __future__ import annotations

import json

import pytest

from lorakit.errors import LorakitError
from lorakit.reference import claims_report, reference_runs


def make_results(norm: dict, individual: dict, curves: dict | None = None) -> dict:
    """A minimal results.json: ``norm[(method, init)]`` = avg normalized, ``individual[init]`` = accuracy."""
    inits = sorted({i for _, i in norm})
    methods = list(dict.fromkeys(m for m, _ in norm))
    records = []
    for (method, init), value in norm.items():
        curve = [{"params": {"lam": lam}, "val_normalized": v} for lam, v in (curves or {}).get((method, init), [])]
        records.append({"method": method, "init": init, "seed": 0, "avg_normalized": value,
                        "avg_accuracy": value, "curve": curve})
    tasks = {"t1": {"individual": [{"init": i, "seed": 0, "test": individual[i]} for i in inits]}}
    return {"inits": inits, "methods": methods, "records": records, "tasks": tasks}


def verdict(report, claim_start):
    found = [held for claim, held in report.verdicts if claim.startswith(claim_start)]
    assert len(found) == 1, report.lines
    return found[0]


def test_do_beats_base_both_ways():
    res = make_results({("task_arithmetic", "standard"): 0.80, ("do", "standard"): 0.85,
                        ("ties", "standard"): 0.90, ("do_ties", "standard"): 0.70}, {"standard": 0.9})
    rep = claims_report(res)
    assert verdict(rep, "DO-Merging (do) beats") is True
    assert verdict(rep, "DO-Merging (do_ties) beats") is False
    assert any("0.850 vs 0.800" in line for line in rep.lines)


def test_osrm_claims_and_tolerance():
    res = make_results(
        {("task_arithmetic", "standard"): 0.70, ("task_arithmetic", "osrm"): 0.75},
        {"standard": 0.900, "osrm": 0.895},
        curves={("task_arithmetic", "standard"): [(0.5, 0.6), (1.0, 0.8)],
                ("task_arithmetic", "osrm"): [(0.5, 0.74), (1.0, 0.76)]},
    )
    rep = claims_report(res, tolerance_pp=1.0)
    assert verdict(rep, "OSRM raises merged accuracy (task_arithmetic)") is True
    assert verdict(rep, "OSRM keeps single-task accuracy") is True      # −0.5 pp within 1 pp
    assert verdict(rep, "OSRM flattens") is True                         # spread 0.02 < 0.2
    assert verdict(claims_report(res, tolerance_pp=0.1), "OSRM keeps") is False


def test_flatness_compares_only_the_lambdas_both_curves_tried():
    """An edge extension (λ=0.05, osrm only) must not count in osrm's spread: over {0.5, 1} osrm is flatter."""
    res = make_results(
        {("task_arithmetic", "standard"): 0.70, ("task_arithmetic", "osrm"): 0.75},
        {"standard": 0.9, "osrm": 0.9},
        curves={("task_arithmetic", "standard"): [(0.5, 0.6), (1.0, 0.8)],
                ("task_arithmetic", "osrm"): [(0.05, 0.1), (0.5, 0.74), (1.0, 0.76)]},
    )
    rep = claims_report(res)
    assert verdict(rep, "OSRM flattens") is True
    assert any("λ in [0.5, 1] 0.020 vs 0.200" in line for line in rep.lines), rep.lines


def test_missing_inits_skip_claims():
    rep = claims_report(make_results({("ties", "standard"): 0.8}, {"standard": 0.9}))
    assert rep.verdicts == [] and "no claim could be checked" in rep.lines[0]


def test_reference_runs_lists_result_folders(tmp_path):
    with pytest.raises(LorakitError, match="no reference runs"):
        reference_runs(tmp_path)
    (tmp_path / "cpu-x").mkdir()
    (tmp_path / "cpu-x" / "results.json").write_text(json.dumps({}))
    (tmp_path / "notes").mkdir()
    assert list(reference_runs(tmp_path)) == ["cpu-x"]


def test_grid_edge_choices_are_flagged():
    from lorakit.reference import grid_edge_choices

    res = make_results({("task_arithmetic", "standard"): 0.8, ("do", "standard"): 0.9}, {"standard": 0.9},
                       curves={("task_arithmetic", "standard"): [(0.3, 0.8), (0.5, 0.7), (1.0, 0.6)],
                               ("do", "standard"): [(0.3, 0.8), (0.5, 0.9), (1.0, 0.6)]})
    res["records"][0]["params"] = {"lam": 0.3}
    res["records"][1]["params"] = {"lam": 0.5}
    assert grid_edge_choices(res) == ["task_arithmetic (standard, λ=0.3)"]
    assert any(line.startswith("caveat: λ was chosen at the edge") for line in claims_report(res).lines)


def test_compare_runs_puts_runs_side_by_side():
    from lorakit.reference import compare_runs, run_setting

    a = make_results({("task_arithmetic", "standard"): 0.8, ("do", "standard"): 0.9}, {"standard": 0.9})
    b = make_results({("do", "standard"): 0.85, ("ties", "osrm"): 0.7}, {"standard": 0.9, "osrm": 0.9})
    rows = compare_runs({"shared": a, "per_task": b})
    assert rows == [
        {"method": "task_arithmetic", "init": "standard", "shared": 0.8, "per_task": None},
        {"method": "do", "init": "standard", "shared": 0.9, "per_task": 0.85},
        {"method": "ties", "init": "osrm", "shared": None, "per_task": 0.7},
    ]
    assert run_setting(a, "task_seeds", "shared") == "shared"
    a["profile_config"] = {"task_seeds": "per_task"}
    assert run_setting(a, "task_seeds", "shared") == "per_task"
    with pytest.raises(LorakitError):
        compare_runs({})


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 400, 401])
def test_per_example_correctness_round_trips(n):
    import numpy as np

    from lorakit.results import decode_correct, encode_correct

    bits = np.random.default_rng(n).random(n) < 0.6
    encoded = encode_correct(bits)
    assert encoded["n"] == n and len(encoded["bits"]) <= 4 * ((n + 7) // 8 + 2) // 3 + 4  # 8 examples a byte
    assert np.array_equal(decode_correct(json.loads(json.dumps(encoded))), bits)


def test_malformed_per_example_correctness_is_a_one_line_error():
    from lorakit.results import decode_correct, record_correct

    with pytest.raises(LorakitError, match="re-run the benchmark"):
        decode_correct({"n": 20, "bits": "AA=="})  # 8 bits for 20 examples
    with pytest.raises(LorakitError, match="malformed"):
        decode_correct({"bits": "AA=="})
    with pytest.raises(LorakitError, match="no per-example predictions"):
        record_correct({"accuracy": {}}, "t")
