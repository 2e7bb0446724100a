r"""Exercise checkers of notebook 06 (re-testing a benchmark claim from its per-example predictions).

Symbols as in :mod:`lorakit.stats.paired`: methods :math:`A` (``do``) and :math:`B` (``task_arithmetic``),
both with the standard init, score :math:`a_{tsi}, b_{tsi} \in \{0, 1\}` on task :math:`t` (of
:math:`T`), seed :math:`s` (of :math:`S`), test example :math:`i` (of :math:`n_t`); the test split is
the same in every seed. The difference is :math:`\hat\Delta = \frac1T\sum_t (\bar a_t - \bar b_t)`,
:math:`\bar a_t = \frac{1}{S n_t}\sum_{s,i} a_{tsi}`; its CI is the "shared" paired bootstrap
(:func:`lorakit.stats.paired.paired_bootstrap`): per resample seeds :math:`s^*_1..s^*_S` (one draw for all
tasks), then per task examples :math:`i^*_1..i^*_{n_t}` (one draw for every drawn seed, and for A and B).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np

from ...eval.correctness import encode_correct
from ...errors import LorakitError
from ...results.metrics import merged_scores, seeds_of
from ...results.reference import claims_report, reference_runs
from ...results.tables import load_results
from ...stats.paired import row_counts, paired_bootstrap
from ._common import as_number as _as_number, check_choice as _check_choice, ok as _ok
from ._common import report_prediction as _report_prediction

Scores = dict[str, np.ndarray]
Bootstrap = Callable[[Scores, Scores, int, int], tuple]
CHECK_RESAMPLES, REAL_RESAMPLES, TOLERANCE = 20_000, 10_000, 0.01


def per_example(results: Mapping, method: str, init: str, seeds: list[int] | None = None) -> Scores:
    """``{task: (S, n_t) float64 0/1}``: test correctness of ``method`` (``init``) per seed (sorted) and example.

    Read from the records' ``test_correct`` (:func:`lorakit.results.metrics.merged_scores`); ``seeds``: a subset
    (default: every seed the method has). Runs made before per-example data was recorded: an error.
    """
    seeds = sorted(seeds if seeds is not None else seeds_of(results, method, init))
    if not seeds:
        have = sorted({(r["method"], r["init"]) for r in results.get("records", [])})
        raise LorakitError(f"no records of {method} with init {init} in this run; pick one of {have}")
    scores, recorded = merged_scores(results, method, init, seeds)
    if not recorded:
        raise LorakitError("this run has no per-example predictions (made before lorakit recorded them); "
                           "use nb06.reference_for_exercises() or re-run with `lorakit run`")
    return scores


def do_vs_ta(results: Mapping) -> tuple[Scores, Scores]:
    """(a, b): :func:`per_example` of ``do`` and of ``task_arithmetic``, standard init, on their common seeds."""
    common = sorted(set(seeds_of(results, "do", "standard")) & set(seeds_of(results, "task_arithmetic", "standard")))
    if not common:
        raise LorakitError("the run needs do and task_arithmetic with the standard init on a common seed; "
                           "use nb06.reference_for_exercises()")
    return per_example(results, "do", "standard", common), per_example(results, "task_arithmetic", "standard", common)


def _recorded(results: Mapping) -> bool:
    return bool(results.get("records")) and all("test_correct" in r for r in results["records"])


def reference_for_exercises(folder: str | None = None) -> dict:
    """The committed ``cpu``-profile reference run the exercises use: the most seeds, then per-example data.

    Ties go to the run whose folder name sorts last (the newest). Any run with ≥ 2 seeds beats every
    1-seed run; exercise 6.2 needs one.
    """
    runs = {name: load_results(path) for name, path in reference_runs(folder).items()}
    cpu = {name: r for name, r in runs.items() if r.get("profile") == "cpu"}
    if not cpu:
        raise LorakitError("no cpu-profile reference run under data/reference; make one with `make run` and "
                           "commit its folder")
    return cpu[max(cpu, key=lambda n: (len(cpu[n]["seeds"]), _recorded(cpu[n]), n))]


def _task_means(a: Scores, b: Scores) -> tuple[np.ndarray, np.ndarray]:
    """(T,) accuracies :math:`\bar a_t`, :math:`\bar b_t` over seeds and examples."""
    return np.array([v.mean() for v in a.values()]), np.array([v.mean() for v in b.values()])


def variant_resamples(a: Scores, b: Scores, n_resamples: int, seed: int, *, seeds: bool = True,
                      paired: bool = True) -> np.ndarray:
    r"""(R,) resampled :math:`\hat\Delta^*` of variants of the shared bootstrap (the checker's wrong answers).

    ``seeds=False``: the S seeds are kept as they are (only examples resampled); ``paired=False``: B
    draws its own example indices, independent of A's. Both True: the shared bootstrap itself.
    """
    rng = np.random.default_rng(seed)
    s = next(iter(a.values())).shape[0]
    idx = rng.integers(0, s, (n_resamples, s)) if seeds else np.tile(np.arange(s), (n_resamples, 1))
    out = np.zeros(n_resamples)
    for u, v in zip(a.values(), b.values()):
        n = u.shape[1]
        wa = row_counts(rng.integers(0, n, (n_resamples, n)), n)
        wb = wa if paired else row_counts(rng.integers(0, n, (n_resamples, n)), n)
        per_a, per_b = np.take_along_axis(wa @ u.T, idx, 1), np.take_along_axis(wb @ v.T, idx, 1)  # (R, S)
        out += (per_a - per_b).mean(axis=1) / (n * len(a))
    return out


def toy_scores(kind: str, n_seeds: int = 4, seed: int = 0, sizes: tuple[int, ...] = (90, 150, 120)) -> tuple[Scores, Scores]:
    """Synthetic ``(a, b)``, ``{task: (S, n_t) float64 0/1}``: B loses some of A's right answers.

    ``crossed``: each example has a fixed difficulty (shared by seeds), seeds differ in how many right
    answers B loses (a seed effect), plus per-seed noise; ``independent``: fresh answers in every seed,
    no seed effect; ``identical``: one draw repeated in every seed; ``seed_shift``: as ``crossed`` with
    a large seed effect.
    """
    if kind not in ("crossed", "independent", "identical", "seed_shift"):
        raise LorakitError(f"unknown toy kind {kind!r}; use crossed, independent, identical or seed_shift")
    rng = np.random.default_rng(seed)
    loss = {"crossed": np.linspace(0.06, 0.26, n_seeds), "seed_shift": np.linspace(0.05, 0.5, n_seeds)}.get(
        kind, np.full(n_seeds, 0.15))
    a, b = {}, {}
    for t, n in enumerate(sizes):
        z = rng.standard_normal(n)  # example difficulty, the same in every seed
        noise = rng.standard_normal((n_seeds, n)) * (1.5 if kind == "independent" else 0.5)
        right = (z[None, :] * (kind != "independent") + noise + 0.3 * t) > -0.8
        lost = rng.random((n_seeds, n)) < loss[:, None]
        if kind == "identical":
            right, lost = np.repeat(right[:1], n_seeds, 0), np.repeat(lost[:1], n_seeds, 0)
        a[f"task{t}"], b[f"task{t}"] = right.astype(np.float64), (right & ~lost).astype(np.float64)
    return a, b


def toy_results(kind: str, n_seeds: int = 4, seed: int = 0, sizes: tuple[int, ...] = (50, 80, 60)) -> dict:
    """A minimal results dict holding :func:`toy_scores` as ``do`` (A) and ``task_arithmetic`` (B), standard init."""
    a, b = toy_scores(kind, n_seeds, seed, sizes)
    records = [{"method": m, "init": "standard", "seed": s, "accuracy": {t: float(x[t][s].mean()) for t in x},
                "test_correct": {t: encode_correct(x[t][s] > 0.5) for t in x}}
               for m, x in (("do", a), ("task_arithmetic", b)) for s in range(n_seeds)]
    return {"profile": f"toy-{kind}", "seeds": list(range(n_seeds)), "inits": ["standard"],
            "methods": ["do", "task_arithmetic"], "tasks": {t: {"n_test": v.shape[1]} for t, v in a.items()},
            "records": records}


def _copy(x: Scores) -> Scores:
    return {t: np.array(v, copy=True) for t, v in x.items()}


def _call_bootstrap(fn: Bootstrap, a: Scores, b: Scores, n_resamples: int, seed: int) -> tuple[float, float, float]:
    """The learner's ``(estimate, low, high)``, with the inputs checked to be left unchanged."""
    pa, pb = _copy(a), _copy(b)
    out = fn(pa, pb, n_resamples, seed)
    if not all(np.array_equal(pa[t], a[t]) and np.array_equal(pb[t], b[t]) for t in a):
        raise AssertionError("your function changed `a` or `b` in place; leave the inputs as they are "
                             "(work on copies: d = a[t] - b[t] makes a new array)")
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise AssertionError("return a tuple (estimate, low, high) of three numbers")
    return tuple(_as_number(x, w) for x, w in zip(out, ("the estimate", "low", "high")))  # type: ignore[return-value]


def _check_estimate(est: float, a: Scores, b: Scores, label: str) -> None:
    ma, mb = _task_means(a, b)
    d, want = ma - mb, float((ma - mb).mean())
    pooled = sum(float((a[t] - b[t]).sum()) for t in a) / sum(v.size for v in a.values())
    wrong = {"that is B − A; the difference asked for is a − b (DO − TA)": -want,
             "that is A's accuracy alone; the estimate is the difference of the two methods": float(ma.mean()),
             "that is the largest per-task difference; the statistic is the mean over tasks": float(d.max()),
             "the last task is missing: average over every task of the dict": float(d[:-1].mean()),
             "that pools every example of every task (larger tasks weigh more); take each task's accuracy "
             "difference, then their plain mean over tasks": pooled}
    if abs(est - want) <= 1e-9:
        return
    for hint, value in wrong.items():
        if abs(est - value) <= 1e-9:
            raise AssertionError(f"{label}: {hint}")
    raise AssertionError(f"{label}: the estimate should be {want:.6f} (mean over tasks of mean(a[t]) − mean(b[t])), "
                         f"got {est:.6f}")


def _check_interval(low: float, high: float, a: Scores, b: Scores, label: str) -> None:
    """Endpoints within :data:`TOLERANCE` of the package's shared bootstrap, else the nearest wrong variant."""
    if low > high:
        raise AssertionError(f"{label}: low {low:.4f} > high {high:.4f}: return (estimate, low, high), the 2.5 % "
                             "quantile first")
    ref = paired_bootstrap(a, b, n_resamples=CHECK_RESAMPLES, seed=1)
    want = (ref.ci.low, ref.ci.high)
    if abs(low - want[0]) <= TOLERANCE and abs(high - want[1]) <= TOLERANCE:
        return
    q = lambda x, p=0.95: tuple(np.quantile(x, [(1 - p) / 2, (1 + p) / 2]).tolist())
    candidates = {
        "that is a 68 % interval (the 16 % and 84 % quantiles); a 95 % CI takes the 2.5 % and 97.5 % quantiles":
            q(ref.resamples, 0.68),
        "too narrow: the seeds were not resampled. Draw S seeds with replacement (one draw per resample, shared "
        "by all tasks): seed-to-seed variation is part of the uncertainty": q(variant_resamples(a, b, CHECK_RESAMPLES, 2, seeds=False)),
        "too wide: A and B got different example indices. Pair them: the same drawn examples for a and b, so "
        "an example both get right (or wrong) cancels in the difference": q(variant_resamples(a, b, CHECK_RESAMPLES, 3, paired=False)),
        "that draws fresh examples for every drawn seed (the 'nested' design); here the test examples are the "
        "same in every seed, so draw one set of example indices per task and use it for every drawn seed":
            (lambda r: (r.ci.low, r.ci.high))(paired_bootstrap(a, b, n_resamples=CHECK_RESAMPLES, seed=4, examples="nested")),
    }
    for hint, (lo, hi) in candidates.items():
        if abs(low - lo) <= TOLERANCE and abs(high - hi) <= TOLERANCE:
            raise AssertionError(f"{label}: CI [{low:.4f}, {high:.4f}]: {hint}")
    raise AssertionError(f"{label}: CI [{low:.4f}, {high:.4f}] (width {high - low:.4f}) but the shared paired bootstrap "
                         f"gives [{want[0]:.4f}, {want[1]:.4f}] (width {want[1] - want[0]:.4f}, ± {TOLERANCE} allowed)")


def claims_accuracy_row(results: Mapping):
    """``claims_report(results, metric="accuracy")``'s row "DO-Merging (do) beats task_arithmetic"."""
    report = claims_report(results, metric="accuracy", osrm_inits=(), n_resamples=REAL_RESAMPLES)
    for row in report.rows:
        if row.claim == "DO-Merging (do) beats task_arithmetic":
            return row
    raise LorakitError("this run's claims have no DO-Merging (do) vs task_arithmetic row (standard init); "
                       "use nb06.reference_for_exercises()")


def check_paired_bootstrap(fn: Bootstrap, results: Mapping) -> str:
    r"""Exercise 6.1: ``fn(a, b, n_resamples, seed)`` → ``(estimate, low, high)`` of the 95 % shared paired bootstrap.

    ``a``, ``b``: ``{task: (S, n_t) 0/1}``. Checked on synthetic scores against
    :func:`lorakit.stats.paired.paired_bootstrap` (estimate to 1e-9, endpoints within 0.01 at 20 000
    resamples), then on ``results``' DO − TA (standard init) against ``claims_report(results,
    metric="accuracy")``'s row, printed side by side.
    """
    for label, (a, b) in (("toy, 4 seeds × 3 tasks", toy_scores("crossed", 4, seed=11)),
                          ("toy, 2 seeds × 2 tasks", toy_scores("crossed", 2, seed=12, sizes=(70, 130)))):
        est, low, high = _call_bootstrap(fn, a, b, CHECK_RESAMPLES, 5)
        _check_estimate(est, a, b, label)
        _check_interval(low, high, a, b, label)
    a, b = do_vs_ta(results)
    est, low, high = _call_bootstrap(fn, a, b, REAL_RESAMPLES, 0)
    row = claims_accuracy_row(results)
    print(f"DO − TA accuracy, standard init, {row.n_seeds} seed(s) × {len(a)} tasks:\n"
          f"  yours:         {est:+.4f}  95 % CI [{low:+.4f}, {high:+.4f}]\n"
          f"  claims_report: {row.effect:+.4f}  95 % CI [{row.ci_low:+.4f}, {row.ci_high:+.4f}]  ({row.verdict})")
    _check_estimate(est, a, b, "the reference run")
    if low > high or abs(low - row.ci_low) > TOLERANCE or abs(high - row.ci_high) > TOLERANCE:
        raise AssertionError(f"the reference run: your CI differs from claims_report's by more than {TOLERANCE}; "
                             "it passed on the toys, so check the run's arrays (every task, every seed)")
    return _ok("the paired bootstrap over seeds × examples reproduces the claims report's CI")


WIDTH_CHOICES = ("sqrt", "same", "between")
WIDTH_TOLERANCE = 0.05  # relative: a bootstrap width of 10 000 resamples varies by about 1 %


def _first_seeds(x: Scores, k: int) -> Scores:
    return {t: v[:k] for t, v in x.items()}


def seed_widths(results: Mapping, n_resamples: int = REAL_RESAMPLES, seed: int = 0) -> tuple[float, float, int]:
    r"""(width with the first seed only, width with all S seeds, S) of the 95 % CI of DO − TA (accuracy, standard init).

    Widths :math:`U - L` of :func:`lorakit.stats.paired.paired_bootstrap` (shared) on :func:`do_vs_ta`'s
    (S, n_t) arrays, cut to (1, n_t) for the first. Needs S ≥ 2.
    """
    a, b = do_vs_ta(results)
    s = next(iter(a.values())).shape[0]
    if s < 2:
        raise LorakitError(f"exercise 6.2 compares 1 seed with all seeds, and this run has {s} seed(s) "
                           f"({results.get('seeds')}); use nb06.reference_for_exercises() (a run with ≥ 2 seeds) "
                           "or make one with `lorakit run --seeds 0 1 2 3 4`")
    one = paired_bootstrap(_first_seeds(a, 1), _first_seeds(b, 1), n_resamples=n_resamples, seed=seed).ci
    full = paired_bootstrap(a, b, n_resamples=n_resamples, seed=seed).ci
    return one.high - one.low, full.high - full.low, s


def width_ratio(results: Mapping) -> float:
    """width(first seed only) / width(all seeds) of :func:`seed_widths`."""
    w1, w_all, _ = seed_widths(results)
    return w1 / w_all


def _check_ratio(got: float, results: Mapping, widths: tuple[float, float, int], label: str) -> float:
    """``want`` = width(1 seed) / width(all seeds) from ``widths`` (:func:`seed_widths`); hints for wrong ratios."""
    want = widths[0] / widths[1]
    close = lambda x: abs(got - x) <= WIDTH_TOLERANCE * abs(x)
    if close(want):
        return want
    a, b = do_vs_ta(results)
    last = paired_bootstrap({t: v[-1:] for t, v in a.items()}, {t: v[-1:] for t, v in b.items()},
                            n_resamples=REAL_RESAMPLES, seed=0).ci
    wrong = {"that is width(all seeds) / width(1 seed); the ratio asked for is width(1 seed) / width(all seeds)": 1 / want,
             "that is a ratio of squared widths (variances); take the widths themselves": want**2,
             "that uses the last seed; the 1-seed CI uses the first seed only, a[t][:1] and b[t][:1]":
                 (last.high - last.low) / widths[1]}
    for hint, value in wrong.items():
        if close(value):
            raise AssertionError(f"{label}: {hint}")
    raise AssertionError(f"{label}: expected width(1 seed) / width(all seeds) ≈ {want:.3f} (± {100 * WIDTH_TOLERANCE:g} %), "
                         f"got {got:.3f}; use paired_bootstrap(..., n_resamples=10_000, seed=0) on do_vs_ta's arrays")


def _measured(ratio: float, s: int) -> str:
    """``sqrt`` / ``same`` / ``between`` from where ``ratio`` lies between 1 and √S on a log scale.

    ``wider`` (no choice offered) when the all-seed CI is wider than the 1-seed one by the same margin.
    """
    position = math.log(max(ratio, 1e-12)) / math.log(math.sqrt(s))
    return ("sqrt" if position >= 0.75 else "between" if position > 0.25 else "same" if position >= -0.25
            else "wider")


def _why(results: Mapping, widths: tuple[float, float, int], toys: Mapping[str, float]) -> tuple[str, str]:
    """(evidence, explanation) of exercise 6.2, every statement conditional on the measured numbers."""
    w1, w_all, s = widths
    a, b = do_vs_ta(results)
    w_ex = float(np.diff(np.quantile(variant_resamples(a, b, REAL_RESAMPLES, 0, seeds=False), [0.025, 0.975]))[0])
    per_seed = np.mean([(a[t] - b[t]).mean(axis=1) for t in a], axis=0)  # (S,) DO − TA per seed
    root, shrink = math.sqrt(s), w1 / w_ex
    evidence = f"width {w1:.4f} with 1 seed, {w_all:.4f} with {s}: ratio {w1 / w_all:.2f}, √{s} = {root:.2f}"
    why = (f"holding the {s} seeds fixed and resampling only the test examples gives a CI {w_ex:.4f} wide, "
           f"{shrink:.2f}× narrower than one seed's (√{s} = {root:.2f}× if the per-example noise were independent "
           "between seeds). ")
    if shrink < 0.75 * root:
        why += ("It shrinks less because the test examples are the same in every seed: an example that favours one "
                "method tends to favour it in every seed, and that part does not average out over seeds; only the "
                "seed-to-seed part of the per-example noise does. ")
    else:
        why += "It shrinks about that much: here the per-example differences change from seed to seed. "
    why += (f"Resampling seeds then adds the seed-to-seed variation (DO − TA per seed from {per_seed.min():+.4f} "
            f"to {per_seed.max():+.4f}), which one seed cannot show, giving {w_all:.4f}")
    why += (": wider than the 1-seed CI, which was too narrow (it left the seed part out)." if w_all > w1 else ".")
    why += (f" On toy runs with 4 seeds the ratio is {toys['independent']:.2f} with fresh answers in every seed, "
            f"{toys['identical']:.2f} with the same answers in every seed and {toys['seed_shift']:.2f} with a large "
            "seed effect")
    why += (" (even fresh answers give less than √4 = 2: the shared bootstrap counts the seed × example noise in "
            "both of its parts)." if toys["independent"] < 0.9 * 2 else ".")
    return evidence, why


def check_predict_seed_width(prediction: str | None, fn: Callable[[Mapping], float], results: Mapping) -> str:
    """Exercise 6.2 (predict → run → interpret): with S seeds instead of 1, how much narrower is the CI of DO − TA?

    ``prediction``: one of :data:`WIDTH_CHOICES` (``"sqrt5"``-style spellings count as ``"sqrt"``);
    ``fn(results)`` must return :func:`width_ratio` (± 5 %), checked on three toy runs and on
    ``results``, which needs ≥ 2 seeds.
    """
    widths = seed_widths(results)  # the ≥ 2 seeds error comes before anything else
    toys = {}
    for kind in ("independent", "identical", "seed_shift"):
        toy = toy_results(kind, 4, seed=21)
        toys[kind] = _check_ratio(_as_number(fn(toy), "the ratio"), toy, seed_widths(toy), f"toy run ({kind})")
    ratio = _check_ratio(_as_number(fn(results), "the ratio"), results, widths, "the reference run")
    if isinstance(prediction, str) and prediction.strip().lower().replace("√", "sqrt").startswith("sqrt"):
        prediction = "sqrt"
    choice = _check_choice(prediction, WIDTH_CHOICES, "is the CI with every seed √S× narrower, the same, or between?")
    evidence, why = _why(results, widths, toys)
    return _report_prediction(choice, _measured(ratio, widths[2]), evidence, why)
