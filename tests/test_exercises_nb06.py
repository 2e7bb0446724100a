"""The notebook-06 exercise checkers accept right answers (the solutions notebook's, and one written here
with numpy, independently of lorakit) and reject each plausible wrong answer with a useful hint.

Synthetic runs come from ``tests/test_results.py``'s ``make_run``, so nothing here needs the committed
reference; one test runs the solutions on it when a ≥ 2-seed cpu run with per-example data exists.
"""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

import numpy as np
import pytest

from lorakit.course import exercises
from lorakit.eval.correctness import record_correct
from lorakit.errors import LorakitError
from lorakit.course.exercises import nb06
from lorakit.results.reference import reference_runs
from lorakit.results.tables import load_results
from lorakit.stats.paired import paired_bootstrap
from test_results import bernoulli, brute_bootstrap, lose, make_run

SOLUTIONS = Path(__file__).resolve().parents[1] / "notebooks" / "src" / "solutions__06_solutions.py"


def synthetic_run(n_seeds: int, seed: int = 5) -> dict:
    """DO loses 10 % of the adapters' right answers, TA 15–30 % depending on the seed (a seed effect)."""
    rng = np.random.default_rng(seed)
    ind = bernoulli(rng, 0.85, n_seeds)
    fracs = np.linspace(0.15, 0.3, n_seeds)
    ta = {t: np.stack([v[k] & (rng.random(v.shape[1]) >= f) for k, f in enumerate(fracs)]) for t, v in ind.items()}
    return make_run({("task_arithmetic", "standard"): ta, ("do", "standard"): lose(rng, ind, 0.1)}, {"standard": ind})


@pytest.fixture(scope="module")
def run4():
    return synthetic_run(4)


def numpy_bootstrap(a, b, n_resamples, seed, *, resample_seeds=True, paired=True, level=0.95, reduce=np.mean,
                    drop_last=False, a_only=False, swap=False):
    """The shared paired bootstrap by index gathering (and the wrong variants the checker must reject)."""
    rng = np.random.default_rng(seed)
    tasks = list(a)[:-1] if drop_last else list(a)
    s = a[tasks[0]].shape[0]
    seeds = rng.integers(0, s, (n_resamples, s)) if resample_seeds else np.tile(np.arange(s), (n_resamples, 1))
    per_task = []
    for t in tasks:
        n = a[t].shape[1]
        ia = rng.integers(0, n, (n_resamples, n))
        ib = ia if paired else rng.integers(0, n, (n_resamples, n))
        ma = np.stack([a[t][k][ia].mean(axis=1) for k in range(s)], axis=1)          # (R, S)
        mb = np.stack([b[t][k][ib].mean(axis=1) for k in range(s)], axis=1) * (not a_only)
        per_task.append(np.take_along_axis(ma - mb, seeds, axis=1).mean(axis=1))
    boot = reduce(np.stack(per_task, axis=1), axis=1)
    est = float(reduce(np.array([a[t].mean() - (0.0 if a_only else b[t].mean()) for t in tasks])))
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return (est, float(high), float(low)) if swap else (est, float(low), float(high))


def numpy_width_ratio(results, k_first=slice(0, 1)):
    a, b = nb06.do_vs_ta(results)
    width = lambda x, y: np.subtract(*numpy_bootstrap(x, y, 10_000, 0)[2:0:-1])
    one = width({t: v[k_first] for t, v in a.items()}, {t: v[k_first] for t, v in b.items()})
    return one / width(a, b)


# ---- helpers ---------------------------------------------------------------------------------------


def test_per_example_decodes_the_records_in_seed_order(run4):
    shuffled = dict(run4, records=run4["records"][::-1])
    got = nb06.per_example(shuffled, "do", "standard")
    recs = sorted((r for r in run4["records"] if r["method"] == "do"), key=lambda r: r["seed"])
    for t in run4["tasks"]:
        assert np.array_equal(got[t], np.stack([record_correct(r, t) for r in recs]).astype(float))
    assert list(nb06.per_example(run4, "do", "standard", seeds=[2, 0])["a"].sum(axis=1)) == \
        [got["a"][0].sum(), got["a"][2].sum()]


def test_per_example_errors_say_what_to_do():
    rng = np.random.default_rng(1)
    ind = bernoulli(rng, 0.8, 2)
    old = make_run({("do", "standard"): lose(rng, ind, 0.1)}, {"standard": ind}, per_example=False)
    with pytest.raises(LorakitError, match="no per-example predictions.*reference_for_exercises"):
        nb06.per_example(old, "do", "standard")
    with pytest.raises(LorakitError, match="no records of ties with init standard.*pick one of"):
        nb06.per_example(old, "ties", "standard")


def test_reference_for_exercises_prefers_the_most_seeds(tmp_path):
    def write(name, profile, seeds, recorded=True):
        rec = {"method": "do", "init": "standard", "seed": 0} | ({"test_correct": {}} if recorded else {})
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"profile": profile, "seeds": seeds, "records": [rec]}))

    write("ci-big", "ci", [0, 1, 2, 3, 4, 5])
    with pytest.raises(LorakitError, match="no cpu-profile reference run"):
        nb06.reference_for_exercises(tmp_path)
    write("cpu-old", "cpu", [0], recorded=False)
    write("cpu-one", "cpu", [0])
    assert nb06.reference_for_exercises(tmp_path)["records"][0].get("test_correct") == {}  # recorded beats not
    write("cpu-three", "cpu", [0, 1, 2])
    assert nb06.reference_for_exercises(tmp_path)["seeds"] == [0, 1, 2]


def test_the_checkers_reference_and_variants_agree_with_plain_loops():
    """paired_bootstrap (the checker's reference) and variant_resamples match a brute-force loop / numpy."""
    a, b = nb06.toy_scores("crossed", 4, seed=11, sizes=(40, 60, 50))
    brute = brute_bootstrap({"a": a, "b": b}, {"d": lambda acc: (acc["a"] - acc["b"]).mean()}, 4000)["d"]
    ref = paired_bootstrap(a, b, n_resamples=20_000, seed=1).ci
    assert np.quantile(brute, [0.025, 0.975]) == pytest.approx([ref.low, ref.high], abs=0.01)
    for kw in ({}, {"seeds": False}, {"paired": False}):
        mine = np.quantile(nb06.variant_resamples(a, b, 20_000, 2, **kw), [0.025, 0.975])
        theirs = numpy_bootstrap(a, b, 20_000, 3, resample_seeds=kw.get("seeds", True), paired=kw.get("paired", True))
        assert mine == pytest.approx(theirs[1:], abs=0.006)


# ---- exercise 6.1 ----------------------------------------------------------------------------------


def test_numpy_answer_passes_and_prints_the_claims_row(run4, capsys):
    msg = exercises.check_paired_bootstrap(numpy_bootstrap, run4)
    assert msg == "✓ the paired bootstrap over seeds × examples reproduces the claims report's CI: correct"
    out = capsys.readouterr().out
    row = nb06.claims_accuracy_row(run4)
    assert f"claims_report: {row.effect:+.4f}  95 % CI [{row.ci_low:+.4f}, {row.ci_high:+.4f}]" in out
    a, b = nb06.do_vs_ta(run4)
    assert row.effect == pytest.approx(np.mean([a[t].mean() - b[t].mean() for t in a]), abs=1e-12)
    assert row.metric == "accuracy" and row.n_seeds == 4


def test_one_seed_run_is_fine_for_exercise_1():
    assert "correct" in exercises.check_paired_bootstrap(numpy_bootstrap, synthetic_run(1))


@pytest.mark.parametrize("mutation, hint", [
    ({"resample_seeds": False}, "seeds were not resampled"),
    ({"paired": False}, "different example indices"),
    ({"reduce": np.max}, "largest per-task difference"),
    ({"swap": True}, r"low .* > high"),
    ({"level": 0.68}, "68 % interval"),
    ({"drop_last": True}, "last task is missing"),
    ({"a_only": True}, "A's accuracy alone"),
])
def test_wrong_bootstraps_are_rejected_with_a_hint(run4, mutation, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_paired_bootstrap(lambda a, b, r, s: numpy_bootstrap(a, b, r, s, **mutation), run4)


def test_other_mistakes_are_rejected(run4):
    def in_place(a, b, r, s):
        for t in a:
            a[t] -= b[t]
        return numpy_bootstrap(a, {t: 0 * v for t, v in b.items()}, r, s)

    with pytest.raises(AssertionError, match="changed `a` or `b` in place"):
        exercises.check_paired_bootstrap(in_place, run4)
    with pytest.raises(AssertionError, match="return a tuple"):
        exercises.check_paired_bootstrap(lambda a, b, r, s: numpy_bootstrap(a, b, r, s)[1:], run4)

    def right_on_toys_only(a, b, r, s):  # the run's tasks are "a", "b", "c"; the toys' "task0", ...
        est, low, high = numpy_bootstrap(a, b, r, s)
        return (est, low + 0.02, high + 0.02) if "a" in a else (est, low, high)

    with pytest.raises(AssertionError, match="differs from claims_report's"):
        exercises.check_paired_bootstrap(right_on_toys_only, run4)


# ---- exercise 6.2 ----------------------------------------------------------------------------------


def test_numpy_ratio_passes_and_the_explanation_uses_the_measured_numbers(run4):
    msg = exercises.check_predict_seed_width("sqrt5", numpy_width_ratio, run4)  # "sqrt5" counts as "sqrt"
    w1, w_all, s = nb06.seed_widths(run4)
    assert s == 4 and f"width {w1:.4f} with 1 seed, {w_all:.4f} with 4: ratio {w1 / w_all:.2f}" in msg
    got = [float(x) for x in re.search(r"width ([\d.]+) with 1 seed, ([\d.]+) with", msg).groups()]
    a, b = nb06.do_vs_ta(run4)
    first = {t: v[:1] for t, v in a.items()}, {t: v[:1] for t, v in b.items()}
    for width, (_, lo, hi) in zip(got, (numpy_bootstrap(*first, 10_000, 7), numpy_bootstrap(a, b, 10_000, 7))):
        assert width == pytest.approx(hi - lo, rel=0.05)
    measured = re.search(r"measured '(\w+)'", msg).group(1)
    assert measured == nb06._measured(w1 / w_all, 4) and msg.startswith("✓ prediction 'sqrt'")
    assert ("wider than the 1-seed CI" in msg) == (w_all > w1)


@pytest.mark.parametrize("kind, says", [("identical", "the test examples are the same in every seed"),
                                        ("independent", "It shrinks about that much")])
def test_the_explanation_follows_the_numbers(kind, says):
    msg = exercises.check_predict_seed_width("same", nb06.width_ratio, nb06.toy_results(kind, 4, seed=3))
    assert says in msg


def test_measured_categories():
    assert [nb06._measured(r, 5) for r in (2.2, 1.9, 1.5, 1.05, 0.95, 0.5)] == \
        ["sqrt", "sqrt", "between", "same", "same", "wider"]


@pytest.mark.parametrize("wrong, hint", [
    (lambda res: 1 / numpy_width_ratio(res), r"width\(all seeds\) / width\(1 seed\)"),
    (lambda res: numpy_width_ratio(res) ** 2, "squared widths"),
    (lambda res: numpy_width_ratio(res, slice(-1, None)), "uses the last seed"),
])
def test_wrong_ratios_are_rejected(run4, wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_predict_seed_width("same", wrong, run4)


def test_prediction_must_be_one_of_the_choices(run4):
    with pytest.raises(AssertionError, match="write your prediction first"):
        exercises.check_predict_seed_width(None, nb06.width_ratio, run4)
    with pytest.raises(AssertionError, match="must be one of 'sqrt', 'same', 'between'"):
        exercises.check_predict_seed_width("narrower", nb06.width_ratio, run4)


def test_one_seed_run_says_exercise_2_needs_two_seeds():
    with pytest.raises(LorakitError, match="this run has 1 seed.*reference_for_exercises.*--seeds"):
        exercises.check_predict_seed_width("same", numpy_width_ratio, synthetic_run(1))


@pytest.mark.parametrize("checker", [lambda fn: exercises.check_paired_bootstrap(fn, synthetic_run(2)),
                                     lambda fn: exercises.check_predict_seed_width(None, fn, synthetic_run(2))])
def test_unattempted_stub_raises_not_implemented(checker):
    def stub(*args):
        raise NotImplementedError

    with pytest.raises(NotImplementedError):
        checker(stub)


# ---- the solutions notebook ------------------------------------------------------------------------


def test_solutions_notebook_passes_on_a_synthetic_run(run4, monkeypatch):
    monkeypatch.setattr(nb06, "reference_for_exercises", lambda folder=None: run4)
    ns = runpy.run_path(str(SOLUTIONS))
    assert exercises.check_paired_bootstrap(ns["my_paired_bootstrap"], run4).endswith("correct")
    assert ns["result"].startswith(f"✓ prediction {ns['prediction']!r}")


def _committed_multi_seed_cpu_run() -> bool:
    try:
        runs = [load_results(p) for p in reference_runs().values()]
    except LorakitError:
        return False
    return any(r.get("profile") == "cpu" and len(r["seeds"]) >= 2 and nb06._recorded(r) for r in runs)


@pytest.mark.skipif(not _committed_multi_seed_cpu_run(), reason="no committed ≥ 2-seed cpu reference run yet")
def test_solutions_notebook_passes_on_the_committed_reference():
    ns = runpy.run_path(str(SOLUTIONS))
    assert len(ns["ref_ex"]["seeds"]) >= 2
    assert exercises.check_paired_bootstrap(ns["my_paired_bootstrap"], ns["ref_ex"]).endswith("correct")
    assert ns["result"].startswith(f"✓ prediction {ns['prediction']!r}")
