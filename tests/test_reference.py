"""lorakit.results.reference / lorakit.results.claims: committed runs, and the papers' claims as effect, CI, p, Holm, verdict.

The synthetic runs come from ``tests/test_results.py``'s ``make_run`` (explicit per-example
correctness); the CI is checked against a plain-loop bootstrap written there.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lorakit.results.claims import ClaimRow, Options, apply_holm, difference_row
from lorakit.errors import LorakitError
from lorakit.results.reference import claims_report, reference_runs
from lorakit.results.tables import load_results
from lorakit.stats.paired import holm
from test_results import TASKS, bernoulli, brute_bootstrap, lose, make_run

FAST = {"n_resamples": 2000}


def flip(rng, x: dict, up: int, down: int) -> dict:
    """``x`` with, per seed and task, ``up`` wrong answers made right and ``down`` right ones made wrong."""
    out = {}
    for t, v in x.items():
        v = v.copy()
        for row in v:
            wrong, right = np.flatnonzero(~row), np.flatnonzero(row)
            row[rng.choice(wrong, up, replace=False)] = True
            row[rng.choice(right, down, replace=False)] = False
        out[t] = v
    return out


def row_of(report, claim: str):
    found = [r for r in report.rows if r.claim == claim]
    assert len(found) == 1, report.lines
    return found[0]


@pytest.fixture(scope="module")
def do_run():
    """3 seeds: do ≫ task_arithmetic, do_ties ≪ ties, do_dare = dare on average (noisy per example)."""
    rng = np.random.default_rng(11)
    ind = bernoulli(rng, 0.85, 3)
    ta, ties, dare = lose(rng, ind, 0.3), lose(rng, ind, 0.1), lose(rng, ind, 0.2)
    merged = {("task_arithmetic", "standard"): ta, ("do", "standard"): flip(rng, ta, 40, 0),
              ("ties", "standard"): ties, ("do_ties", "standard"): flip(rng, ties, 0, 40),
              ("dare", "standard"): dare, ("do_dare", "standard"): flip(rng, dare, 25, 25)}
    return make_run(merged, {"standard": ind}), merged, ind


def test_difference_ci_matches_a_brute_force_bootstrap(do_run):
    res, merged, ind = do_run
    row = difference_row(res, "do beats ta", "paper", ("do", "standard"), ("task_arithmetic", "standard"),
                         Options(n_resamples=20_000))
    sets = {"a": merged[("do", "standard")], "b": merged[("task_arithmetic", "standard")], "i": ind}
    sets = {k: {t: v.astype(float) for t, v in x.items()} for k, x in sets.items()}
    brute = brute_bootstrap(sets, {"d": lambda a: (a["a"] / a["i"]).mean() - (a["b"] / a["i"]).mean()}, 20_000)["d"]
    low, high = np.quantile(brute, [0.025, 0.975])
    recs = {m: [r["avg_normalized"] for r in res["records"] if r["method"] == m] for m in ("do", "task_arithmetic")}
    assert row.effect == pytest.approx(np.mean(recs["do"]) - np.mean(recs["task_arithmetic"]), abs=1e-12)
    assert row.a == pytest.approx(np.mean(recs["do"]), abs=1e-12)
    assert row.ci_low == pytest.approx(low, abs=0.01) and row.ci_high == pytest.approx(high, abs=0.01)
    p_brute = min(1.0, 2 * min((1 + (brute <= 0).sum()), (1 + (brute >= 0).sum())) / (1 + brute.size))
    assert row.pvalue == pytest.approx(p_brute, abs=2e-3)
    assert row.n_seeds == 3 and "3 seeds × test examples" in row.note


def test_clear_reversed_and_null_differences(do_run):
    res, _, _ = do_run
    rep = claims_report(res, **FAST)
    assert row_of(rep, "DO-Merging (do) beats task_arithmetic").verdict == "held"
    assert row_of(rep, "DO-Merging (do_ties) beats ties").verdict == "contradicted"
    null = row_of(rep, "DO-Merging (do_dare) beats dare")
    assert null.verdict == "inconclusive" and null.ci_low < 0 < null.ci_high and abs(null.effect) < 1e-12
    assert null.pvalue > 0.5
    lines = rep.lines
    assert lines[0].startswith("[held] DO-Merging (do) beats task_arithmetic: normalized accuracy ")
    assert lines[1].startswith("[contradicted] ") and lines[2].startswith("[inconclusive] ")
    assert rep.verdicts[:3] == [("DO-Merging (do) beats task_arithmetic", True),
                                ("DO-Merging (do_ties) beats ties", False), ("DO-Merging (do_dare) beats dare", False)]
    table = rep.table()
    assert table.splitlines()[0].startswith("| verdict | claim |") and "| held | DO-Merging (do) beats" in table
    assert "95 % CI" in row_of(rep, "DO-Merging (do) beats task_arithmetic").rule
    assert rep.as_dicts()[0]["verdict"] == "held"
    assert not any(r.claim.startswith("OSRM") for r in rep.rows)  # no osrm init: skipped
    assert not any("ta_normeq" in r.claim for r in rep.rows)      # no control in the run: skipped
    # the same run scored on raw accuracy: same verdicts here (one normalizer for all)
    raw = claims_report(res, metric="accuracy", **FAST)
    assert [r.verdict for r in raw.rows] == [r.verdict for r in rep.rows] and raw.rows[0].metric == "accuracy"


def test_holm_is_applied_across_the_report(do_run):
    res, _, _ = do_run
    rep = claims_report(res, **FAST)
    tested = [r for r in rep.rows if r.pvalue is not None]
    assert [r.p_holm for r in tested] == pytest.approx(holm([r.pvalue for r in tested]).tolist())
    rows = [ClaimRow(f"c{k}", "", 1, "normalized", None, None, 0.1, 0.01, 0.2, 0.95, p, 3, "held", "rule")
            for k, p in enumerate((0.01, 0.03, 0.04))]
    rows.append(ClaimRow("c3", "", 1, "normalized", None, None, 0.1, math.nan, math.nan, 0.95, None, 1,
                         "inconclusive", "one seed"))
    apply_holm(rows, 0.05)
    assert [r.p_holm for r in rows[:3]] == pytest.approx([0.03, 0.06, 0.06]) and rows[3].p_holm is None
    assert [r.verdict for r in rows] == ["held", "inconclusive", "inconclusive", "inconclusive"]
    assert "Holm-adjusted p = 0.06 ≥ 0.05 over the 3 tested claims" in rows[1].rule
    apply_holm(rows, 0.05, adjust=False)
    assert [r.verdict for r in rows[:3]] == ["held"] * 3


@pytest.fixture(scope="module")
def osrm_run():
    """3 seeds; OSRM raises TA, loses on TIES, beats random_orthonormal and (on TA) gaussian; a ta_normeq control; floors."""
    rng = np.random.default_rng(5)
    ind = {i: bernoulli(rng, 0.85, 3) for i in ("standard", "osrm", "random_orthonormal")}
    ind["osrm"] = flip(rng, ind["standard"], 1, 1)  # single-task accuracy unchanged, example by example
    floor = {i: bernoulli(rng, 0.35, 3) for i in ind}
    ta = lose(rng, ind["standard"], 0.3)
    merged = {("task_arithmetic", "standard"): ta, ("ties", "standard"): lose(rng, ind["standard"], 0.1),
              ("do", "standard"): flip(rng, ta, 50, 0), ("ta_normeq", "standard"): flip(rng, ta, 20, 0),
              ("task_arithmetic", "osrm"): lose(rng, ind["osrm"], 0.15), ("ties", "osrm"): lose(rng, ind["osrm"], 0.3),
              ("do", "osrm"): lose(rng, ind["osrm"], 0.1), ("ta_normeq", "osrm"): lose(rng, ind["osrm"], 0.2),
              ("task_arithmetic", "random_orthonormal"): lose(rng, ind["random_orthonormal"], 0.3),
              ("ties", "random_orthonormal"): lose(rng, ind["random_orthonormal"], 0.3),
              ("do", "random_orthonormal"): lose(rng, ind["random_orthonormal"], 0.3),
              ("ta_normeq", "random_orthonormal"): lose(rng, ind["random_orthonormal"], 0.3)}
    flat = [[(0.1, 0.80), (0.5, 0.82), (1.0, 0.79)], [(0.1, 0.81), (0.5, 0.83), (1.0, 0.80)],
            [(0.1, 0.78), (0.5, 0.82), (1.0, 0.80)]]
    steep = [[(0.1, 0.5), (0.5, 0.8), (1.0, 0.6)], [(0.1, 0.55), (0.5, 0.82), (1.0, 0.6)],
             [(0.05, 0.2), (0.1, 0.5), (0.5, 0.85), (1.0, 0.62)]]  # λ = 0.05 tried by standard only
    curves = {("task_arithmetic", "osrm"): flat, ("task_arithmetic", "standard"): steep}
    ind["gaussian"], floor["gaussian"] = bernoulli(rng, 0.85, 3), bernoulli(rng, 0.35, 3)  # drawn last: the rest unchanged
    merged[("task_arithmetic", "gaussian")] = lose(rng, ind["gaussian"], 0.3)
    merged[("ties", "gaussian")] = lose(rng, ind["gaussian"], 0.05)
    return make_run(merged, ind, floor=floor, curves=curves), merged, ind, floor


def test_osrm_claims_controls_equivalence_and_flatness(osrm_run):
    res, _, _, _ = osrm_run
    rep = claims_report(res, **FAST)
    assert row_of(rep, "DO-Merging (do) beats the norm-equalized control ta_normeq").verdict == "held"
    assert row_of(rep, "OSRM raises merged accuracy (task_arithmetic)").verdict == "held"
    assert row_of(rep, "OSRM raises merged accuracy (ties)").verdict == "contradicted"
    assert row_of(rep, "OSRM beats the scale-matched random_orthonormal init (task_arithmetic)").verdict == "held"
    assert row_of(rep, "OSRM beats the official code's gaussian LoRA init (task_arithmetic)").verdict == "held"
    assert row_of(rep, "OSRM beats the official code's gaussian LoRA init (ties)").verdict == "contradicted"
    assert not any("gaussian" in r.claim and r.claim.endswith("(do)") for r in rep.rows)  # no do × gaussian merge
    keep = row_of(rep, "OSRM keeps single-task accuracy")
    assert keep.verdict == "held" and abs(keep.effect) < 0.01 and keep.metric == "single-task accuracy"
    assert "TOST" in keep.rule
    spread = row_of(rep, "OSRM flattens the λ curve (task arithmetic)")
    d = [0.03 - 0.3, 0.03 - 0.27, 0.04 - 0.35]  # per seed, over the λ both tried (0.05 left out)
    assert spread.effect == pytest.approx(np.mean(d)) and spread.n_seeds == 3
    assert spread.verdict == "held" and spread.ci_high < 0 and spread.direction == -1
    assert any(line.startswith("note: normalized accuracy divides") for line in rep.lines)
    floor = claims_report(res, metric="floor_adjusted", **FAST)
    assert row_of(floor, "OSRM raises merged accuracy (task_arithmetic)").metric == "floor_adjusted"


def test_osrm_variants_are_their_own_family_and_meet_the_default_osrm():
    """osrm_frozen ≫ osrm on TA, = osrm on TIES; a variants report compares each with osrm and standard."""
    rng = np.random.default_rng(21)
    ind = {i: bernoulli(rng, 0.85, 3) for i in ("standard", "osrm")}
    ind["osrm_frozen"] = {t: v.copy() for t, v in ind["osrm"].items()}   # same normalizer as osrm
    merged = {("task_arithmetic", "standard"): lose(rng, ind["standard"], 0.3),
              ("task_arithmetic", "osrm"): lose(rng, ind["osrm"], 0.3),
              ("task_arithmetic", "osrm_frozen"): lose(rng, ind["osrm_frozen"], 0.05)}
    merged[("ties", "standard")] = lose(rng, ind["standard"], 0.2)
    merged[("ties", "osrm")] = lose(rng, ind["osrm"], 0.2)
    merged[("ties", "osrm_frozen")] = {t: v.copy() for t, v in merged[("ties", "osrm")].items()}
    res = make_run(merged, ind)
    default = claims_report(res, **FAST)
    assert not any("osrm_frozen" in r.claim for r in default.rows)      # the papers' family: osrm only
    assert not any("beats the default OSRM" in r.claim for r in default.rows)
    variants = claims_report(res, osrm_inits=("osrm_frozen", "osrm_task_mean"), do_claims=False, **FAST)
    assert all("OSRM (osrm_frozen)" in r.claim for r in variants.rows)   # osrm_task_mean is absent: skipped
    ta = row_of(variants, "OSRM (osrm_frozen) beats the default OSRM (per-token features, A trained) (task_arithmetic)")
    assert ta.verdict == "held" and ta.effect > 0.15 and ta.a > ta.b  # a = osrm_frozen, b = osrm
    same = row_of(variants, "OSRM (osrm_frozen) beats the default OSRM (per-token features, A trained) (ties)")
    assert same.effect == pytest.approx(0.0, abs=1e-12) and same.verdict == "inconclusive"
    assert row_of(variants, "OSRM (osrm_frozen) raises merged accuracy (task_arithmetic)").verdict == "held"


def test_single_task_loss_contradicts_and_small_samples_are_inconclusive(osrm_run):
    res, merged, ind, _ = osrm_run
    rng = np.random.default_rng(9)
    worse = dict(ind, osrm=lose(rng, ind["standard"], 0.08))  # ≈ −7 pp single-task
    rep = claims_report(make_run(merged, worse), **FAST)
    keep = row_of(rep, "OSRM keeps single-task accuracy")
    assert keep.verdict == "contradicted" and keep.ci_high < -0.01
    small = {t: 30 for t in TASKS}
    ind_s = {i: bernoulli(rng, 0.85, 3, small) for i in ("standard", "osrm")}
    m = {(meth, i): lose(rng, ind_s[i], 0.2) for meth in ("task_arithmetic",) for i in ind_s}
    keep = row_of(claims_report(make_run(m, ind_s), **FAST), "OSRM keeps single-task accuracy")
    assert keep.verdict == "inconclusive"  # 90 examples a seed cannot show ±1 pp


def test_one_seed_flatness_is_inconclusive_and_notes_example_noise():
    rng = np.random.default_rng(4)
    ind = {i: bernoulli(rng, 0.85, 1) for i in ("standard", "osrm")}
    merged = {("task_arithmetic", i): lose(rng, ind[i], 0.2) for i in ind}
    curves = {("task_arithmetic", "osrm"): [[(0.5, 0.8), (1.0, 0.81)]],
              ("task_arithmetic", "standard"): [[(0.5, 0.5), (1.0, 0.8)]]}
    rep = claims_report(make_run(merged, ind, curves=curves), **FAST)
    spread = row_of(rep, "OSRM flattens the λ curve (task arithmetic)")
    assert spread.verdict == "inconclusive" and spread.pvalue is None and math.isnan(spread.ci_low)
    assert spread.effect == pytest.approx(0.01 - 0.3)
    raises = row_of(rep, "OSRM raises merged accuracy (task_arithmetic)")
    assert "1 seed: the CI covers only test-example noise" in raises.note


def test_bad_input_is_a_one_line_error(do_run):
    res, _, _ = do_run
    with pytest.raises(LorakitError, match="metric must be one of"):
        claims_report(res, metric="f1")
    with pytest.raises(LorakitError, match="no head-only floor"):
        claims_report(res, metric="floor_adjusted", **FAST)
    with pytest.raises(LorakitError, match="claims need results"):
        claims_report({"inits": ["standard"], "methods": ["do"], "records": []})


def test_missing_inits_skip_claims():
    rng = np.random.default_rng(0)
    ind = bernoulli(rng, 0.8, 1)
    rep = claims_report(make_run({("ties", "standard"): lose(rng, ind, 0.1)}, {"standard": ind}), **FAST)
    assert rep.rows == [] and "no claim could be checked" in rep.lines[0]


@pytest.mark.parametrize("name", sorted(n for n, path in reference_runs().items()
                                         if len(load_results(path)["seeds"]) == 1))
def test_committed_reference_runs_still_report(name):
    """Runs made before per-example data, floors and controls existed: one seed, unpaired CIs, a verdict each.
    (The replicated reference is checked in tests/test_reference_run.py.)"""
    res = load_results(reference_runs()[name])
    rep = claims_report(res, n_resamples=500)
    assert len(rep.rows) >= 10
    for row in rep.rows:
        assert row.verdict in ("held", "contradicted", "inconclusive") and row.rule
    for line in rep.lines[:len(rep.rows)]:
        assert line.split("]")[0] in ("[held", "[contradicted", "[inconclusive")
    do = row_of(rep, "DO-Merging (do) beats task_arithmetic")
    assert do.n_seeds == 1 and "1 seed" in do.note and "no per-example data" in do.note
    assert do.ci_low < do.effect < do.ci_high


def test_reference_runs_lists_result_folders(tmp_path):
    with pytest.raises(LorakitError, match="no reference runs"):
        reference_runs(tmp_path)
    (tmp_path / "cpu-x").mkdir()
    (tmp_path / "cpu-x" / "results.json").write_text(json.dumps({}))
    (tmp_path / "notes").mkdir()
    assert list(reference_runs(tmp_path)) == ["cpu-x"]


def test_grid_edge_choices_are_flagged():
    from lorakit.results.reference import grid_edge_choices

    rng = np.random.default_rng(0)
    ind = bernoulli(rng, 0.8, 1)
    curves = {("task_arithmetic", "standard"): [[(0.3, 0.8), (0.5, 0.7), (1.0, 0.6)]],
              ("do", "standard"): [[(0.3, 0.8), (0.5, 0.9), (1.0, 0.6)]]}
    res = make_run({("task_arithmetic", "standard"): lose(rng, ind, 0.2), ("do", "standard"): lose(rng, ind, 0.1)},
                   {"standard": ind}, curves=curves)
    res["records"][0]["params"] = {"lam": 0.3}
    res["records"][1]["params"] = {"lam": 0.5}
    assert grid_edge_choices(res) == ["task_arithmetic (standard, λ=0.3)"]
    assert any(line.startswith("caveat: λ was chosen at the edge") for line in claims_report(res, **FAST).lines)


def test_compare_runs_puts_runs_side_by_side():
    from lorakit.results.reference import compare_runs, run_setting

    rng = np.random.default_rng(1)
    ind = {i: bernoulli(rng, 0.8, 1) for i in ("standard", "osrm")}
    a = make_run({("task_arithmetic", "standard"): lose(rng, ind["standard"], 0.2),
                  ("do", "standard"): lose(rng, ind["standard"], 0.1)}, {"standard": ind["standard"]})
    b = make_run({("do", "standard"): lose(rng, ind["standard"], 0.15), ("ties", "osrm"): lose(rng, ind["osrm"], 0.3)}, ind)
    norm = {(label, r["method"], r["init"]): r["avg_normalized"] for label, res in (("shared", a), ("per_task", b))
            for r in res["records"]}
    rows = compare_runs({"shared": a, "per_task": b})
    assert rows == [
        {"method": "task_arithmetic", "init": "standard", "shared": norm[("shared", "task_arithmetic", "standard")],
         "per_task": None},
        {"method": "do", "init": "standard", "shared": norm[("shared", "do", "standard")],
         "per_task": norm[("per_task", "do", "standard")]},
        {"method": "ties", "init": "osrm", "shared": None, "per_task": norm[("per_task", "ties", "osrm")]},
    ]
    assert run_setting(a, "task_seeds", "shared") == "per_task"
    del a["profile_config"]
    assert run_setting(a, "task_seeds", "shared") == "shared"
    with pytest.raises(LorakitError):
        compare_runs({})


def test_variant_pairs_skip_names_this_registry_does_not_know():
    from lorakit.results.claims import variant_pairs

    assert variant_pairs(["task_arithmetic", "do", "do_ties", "ta_normeq_from_the_future"]) == {
        "do": "task_arithmetic", "do_ties": "ties"}


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 400, 401])
def test_per_example_correctness_round_trips(n):
    import numpy as np

    from lorakit.eval.correctness import decode_correct, encode_correct

    bits = np.random.default_rng(n).random(n) < 0.6
    encoded = encode_correct(bits)
    assert encoded["n"] == n and len(encoded["bits"]) <= 4 * ((n + 7) // 8 + 2) // 3 + 4  # 8 examples a byte
    assert np.array_equal(decode_correct(json.loads(json.dumps(encoded))), bits)


def test_malformed_per_example_correctness_is_a_one_line_error():
    from lorakit.eval.correctness import decode_correct, record_correct

    with pytest.raises(LorakitError, match="re-run the benchmark"):
        decode_correct({"n": 20, "bits": "AA=="})  # 8 bits for 20 examples
    with pytest.raises(LorakitError, match="malformed"):
        decode_correct({"bits": "AA=="})
    with pytest.raises(LorakitError, match="no per-example predictions"):
        record_correct({"accuracy": {}}, "t")


def test_replicated_reference_prefers_gpu_then_per_task_then_more_seeds(tmp_path):
    from lorakit.results.reference import replicated_reference

    def put(name, profile, seeds, task_seeds=None):
        (tmp_path / name).mkdir()
        cfg = {"task_seeds": task_seeds} if task_seeds else {}
        (tmp_path / name / "results.json").write_text(json.dumps({"profile": profile, "seeds": seeds,
                                                                   "profile_config": cfg}))

    put("ci-a", "ci", [0, 1, 2, 3, 4, 5, 6], "per_task")
    with pytest.raises(LorakitError, match="no cpu or gpu reference run"):
        replicated_reference(tmp_path)
    put("cpu-shared", "cpu", [0, 1, 2, 3, 4, 5, 6], "shared")
    put("cpu-old", "cpu", [0])                                   # made before task_seeds existed: shared
    assert replicated_reference(tmp_path)[0] == "cpu-shared"
    put("cpu-per-task-3", "cpu", [0, 1, 2], "per_task")
    put("cpu-per-task-5", "cpu", [0, 1, 2, 3, 4], "per_task")
    name, res = replicated_reference(tmp_path)
    assert name == "cpu-per-task-5" and res["seeds"] == [0, 1, 2, 3, 4]
    put("gpu-1", "gpu", [0], "shared")
    assert replicated_reference(tmp_path)[0] == "gpu-1"


def test_verdict_sentences_group_rows_in_verdict_order_with_their_cis():
    from lorakit.results.claims import verdict_sentences

    def row(claim, v, eff=0.1, lo=0.05, hi=0.15):
        r = ClaimRow(claim, "", 1, "normalized", None, None, eff, lo, hi, 0.95, 0.01, 5, v, "rule")
        r.verdict = v
        return r

    rows = [row("B", "inconclusive", 0.01, -0.02, 0.04), row("A", "held"), row("C", "held", 0.2, 0.1, 0.3),
            row("S", "inconclusive", -0.05, math.nan, math.nan)]
    text = verdict_sentences(rows).splitlines()
    assert len(text) == 2 and text[0].startswith("* 2 claims held") and "A (+0.100, CI [+0.050, +0.150]); C (" in text[0]
    assert text[1].startswith("* 2 claims are inconclusive") and text[1].endswith("B (+0.010, CI [-0.020, +0.040]); S.")
    assert verdict_sentences([]) == "" and "went the other way" in verdict_sentences([row("D", "contradicted")])
