"""Exercise checkers of notebook 03 (magnitude variance)."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ...lora.measures import column_magnitudes, interference_from_magnitudes, layer_magnitude_variance, magnitude_variance
from ._common import as_number as _as_number, as_tensor as _as_tensor, assert_unmodified as _assert_unmodified
from ._common import check_choice as _check_choice, ok as _ok, random_lora as _random_lora
from ._common import report_prediction as _report_prediction


def _task_deltas(seed: int, n_tasks: int, d_out: int, d_in: int, r: int = 3) -> list[torch.Tensor]:
    """``n_tasks`` random float64 rank-r updates of one layer, with task scales 1, 0.2, 0.5, 3, ..."""
    scales = (1.0, 0.2, 0.5, 3.0, 1.5, 0.7)
    deltas = []
    for i in range(n_tasks):
        A, B = _random_lora(100 * seed + i, d_out, d_in, r)
        deltas.append(scales[i % len(scales)] * (B @ A))
    return deltas


def check_column_magnitudes(fn: Callable[[torch.Tensor], torch.Tensor]) -> str:
    """Exercise 3.1: ``fn(delta)`` must return the input-column norms ``α[j] = ‖ΔW[:, j]‖₂``, shape ``(d_in,)``."""
    for seed, (d_out, d_in) in enumerate([(12, 7), (5, 9), (8, 8)]):
        A, B = _random_lora(seed, d_out, d_in, 3)
        delta = B @ A
        delta[:, seed] = 0.0  # an all-zero column (its norm is 0)
        passed = delta.clone()
        got = fn(passed)
        assert isinstance(got, torch.Tensor), "return a torch.Tensor"
        _assert_unmodified({"delta": delta}, {"delta": passed})
        got = _as_tensor(got, "α").reshape(-1) if got.numel() in (d_in, d_out) else got
        want = column_magnitudes(delta, "in")
        if got.shape == (d_out,) and d_out != d_in:
            raise AssertionError(f"got {d_out} norms (one per output row); the magnitude has one norm per input "
                                 f"column, length d_in = {d_in}: reduce over dim 0 of the (d_out, d_in) matrix")
        assert tuple(got.shape) == (d_in,), f"expected shape (d_in,) = ({d_in},), got {tuple(got.shape)}"
        if torch.allclose(got, want**2, rtol=1e-6):
            raise AssertionError("those are squared norms; take the square root")
        if d_out == d_in and torch.allclose(got, column_magnitudes(delta, "out"), rtol=1e-6):
            raise AssertionError("those are the row norms (one per output); a column of ΔW is ΔW[:, j]: reduce over dim 0")
        if torch.allclose(got, want / d_out**0.5, rtol=1e-6):
            raise AssertionError("that is the root of the mean of the squares; the L2 norm sums them: √(Σ_i ΔW[i, j]²)")
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-9), "values differ from the L2 norms of the columns ΔW[:, j]"
    return _ok("α[j] = ‖ΔW[:, j]‖₂ (one norm per input column)")


def _mv_cases() -> list[list[torch.Tensor]]:
    """Lists of N tasks' ΔW of one layer; the last has a column zero in every task and one zero in one task."""
    cases = [_task_deltas(seed, n, d_out, d_in) for seed, (n, d_out, d_in) in enumerate([(3, 10, 6), (2, 5, 9), (4, 7, 7)])]
    zeros = _task_deltas(3, 3, 8, 6)
    for d in zeros:
        d[:, 0] = 0.0  # zero in every task: left out of the mean
    zeros[1][:, 3] = 0.0  # zero in one task only: still counts
    return cases + [zeros]


def check_magnitude_variance(fn: Callable[[Sequence[torch.Tensor]], float]) -> str:
    """Exercise 3.2: ``fn(deltas)`` (N tasks' ``ΔW`` of one layer) must return the mean over columns of
    the across-task coefficient of variation ``std_i α_i[j] / mean_i α_i[j]`` (population std); columns
    that are zero in every task are left out."""
    cases, gots = _mv_cases(), []
    for deltas in cases:
        passed = [d.clone() for d in deltas]
        got = _as_number(fn(passed), "the magnitude variance")
        _assert_unmodified({"deltas": deltas}, {"deltas": passed})
        if math.isnan(got):
            raise AssertionError("your answer is NaN: a column that is zero in every task has mean 0, and 0/0 = NaN; "
                                 "leave such columns out of the mean over columns, as (3.2) says")
        gots.append(got)
    close = lambda x, y: abs(x - float(y)) < 1e-6 * max(1.0, abs(float(y)))
    if all(close(g, magnitude_variance(ds)) for g, ds in zip(gots, cases)):
        same = _task_deltas(7, 1, 6, 5)[0]
        assert abs(_as_number(fn([same, -same, 2 * same / 2]), "the magnitude variance")) < 1e-9, \
            "equal magnitudes must give 0"
        return _ok("MV = mean_j std_i α_i[j] / mean_i α_i[j]")
    mags = lambda ds: torch.stack([column_magnitudes(d, "in") for d in ds])  # (N, d_in)
    std, mean = (lambda m: m.std(0, correction=0)), (lambda m: m.mean(0))
    per_column = {  # per-column values a learner might average → hint
        "you used the sample std (divides by N − 1); use the population std, torch's correction=0 / numpy's ddof=0":
            lambda m: m.std(0, correction=1) / mean(m),
        "you did not divide by the mean: the raw std changes with the scale of the updates (not scale-free)": std,
        "that is the variance over the mean; the coefficient of variation is std / mean":
            lambda m: m.var(0, correction=0) / mean(m),
        "those are squared column norms; α_i[j] is the norm itself, ‖ΔW_i[:, j]‖₂": lambda m: std(m**2) / mean(m**2),
    }
    whole = {  # whole answers a learner might give → hint
        "that uses one Frobenius norm per task; the measure works per input column":
            lambda ds, m: magnitude_variance(ds, kind="frobenius"),
        "you took norms of the rows (axis 'out'); α_i[j] is the norm of the input column ΔW_i[:, j]":
            lambda ds, m: magnitude_variance(ds, axis="out"),
        "that is std / mean over the columns of each task; the variation is across the tasks: reduce over dim 0 "
        "of the (N, d_in) stack, per column": lambda ds, m: (m.std(1, correction=0) / m.mean(1)).mean(),
        "that is a ratio of averages, mean_j(std) / mean_j(mean); (3.2) averages the per-column ratios std / mean":
            lambda ds, m: std(m)[mean(m) > 0].mean() / mean(m)[mean(m) > 0].mean(),
        "you counted the column that is zero in every task as 0 (nan_to_num, or eps in the denominator); (3.2) "
        "leaves such columns out of the mean": lambda ds, m: torch.nan_to_num(std(m) / mean(m)).mean(),
        "a column that is zero in only some tasks still counts (its mean is > 0): leave out only the columns that "
        "are zero in every task": lambda ds, m: (std(m) / mean(m))[(m > 0).all(0)].mean(),
    }
    for hint, f in per_column.items():  # averaged over the kept columns, or over all with the zero column as 0
        def candidates(ds, f=f):
            m = mags(ds)
            per = f(m)
            return (per[mean(m) > 0].mean(), torch.nan_to_num(per).mean())
        if all(any(close(g, c) for c in candidates(ds)) for g, ds in zip(gots, cases)):
            raise AssertionError(hint)
    for hint, f in whole.items():
        if all(close(g, f(ds, mags(ds))) for g, ds in zip(gots, cases)):
            raise AssertionError(hint)
    got, want = next((g, magnitude_variance(ds)) for g, ds in zip(gots, cases) if not close(g, magnitude_variance(ds)))
    raise AssertionError(f"expected {want:.6f}, got {got:.6f}")


def _measures() -> dict[str, tuple[Callable[[Sequence[torch.Tensor]], float], bool]]:
    """Candidate measures (one layer, list of N ΔW) and whether each is invariant to a common scale."""

    def mags(deltas):
        return torch.stack([column_magnitudes(d, "in") for d in deltas])

    def frob(deltas):
        return torch.stack([torch.linalg.vector_norm(d.to(torch.float64)) for d in deltas])

    return {
        "coefficient of variation of column norms": (lambda ds: magnitude_variance(list(ds)), True),
        "std of column norms": (lambda ds: float(mags(ds).std(0, correction=0).mean()), False),
        "variance of column norms": (lambda ds: float(mags(ds).var(0, correction=0).mean()), False),
        "std of log column norms": (lambda ds: float(mags(ds).log().std(0, correction=0).mean()), True),
        "mean Frobenius norm": (lambda ds: float(frob(ds).mean()), False),
        "largest / smallest Frobenius norm": (lambda ds: float(frob(ds).max() / frob(ds).min()), True),
        "std of Frobenius norms": (lambda ds: float(frob(ds).std(correction=0)), False),
    }


def check_scale_free_test(fn: Callable[[Callable[[Sequence[torch.Tensor]], float]], bool]) -> str:
    """Exercise 3.3: ``fn(measure)`` must say whether ``measure(deltas)`` is unchanged when every task's
    ``ΔW`` is multiplied by the same factor ``c > 0`` (``measure`` takes a list of N ``(d_out, d_in)`` tensors)."""
    for name, (measure, scale_free) in _measures().items():
        verdict = fn(measure)
        assert isinstance(verdict, (bool, int)) or hasattr(verdict, "__bool__"), "return True or False"
        if bool(verdict) != scale_free:
            if scale_free:
                raise AssertionError(
                    f"'{name}' is scale-free but your test says it is not: scale every task by the same c "
                    "(not just one task), and compare with a relative tolerance, not ==")
            raise AssertionError(
                f"'{name}' changes with a common scale but your test says it does not: did you use c = 1 or "
                "c = −1 (norms ignore the sign), or compare the measure of the same updates twice?")
    return _ok("a common rescaling leaves a scale-free measure unchanged")


LOUDER_CHOICES = ("rises", "falls", "dips then rises")
LOUDER_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def _interference_cases() -> list[torch.Tensor]:
    """``(N, d)`` magnitude matrices: random, with a column zero in one task, and equal magnitudes."""
    g = torch.Generator().manual_seed(31)
    spread = torch.rand(3, 9, generator=g, dtype=torch.float64) * 2 + 0.1
    holed = torch.rand(4, 7, generator=g, dtype=torch.float64) + 0.05
    holed[2, 3] = 0.0  # task 2 is silent in column 3: that column has no ratio for task 2, leave it out
    equal = torch.full((5, 4), 0.8, dtype=torch.float64)
    return [spread, holed, equal]


def _interference_mutations(mags: torch.Tensor) -> dict[str, float]:
    """Plausible wrong answers of exercise 3.4 on one ``(N, d)`` matrix, with their hints."""
    keep = (mags > 0).all(0)
    m = mags[:, keep]
    sq, total = m ** 2, (m ** 2).sum(0, keepdim=True)
    lin = m.sum(0, keepdim=True)
    return {
        "that counts task k's own column as interference (S_j / α_k² without the − 1): the other tasks are "
        "i ≠ k": float((total / sq).mean()),
        "those are magnitudes, not energies: (3.4) divides squared norms, Σ_{i≠k} α_i² / α_k²":
            float((lin / m - 1).mean()),
        "that is N − 1, (3.5)'s floor at equal magnitudes, whatever the magnitudes (a ratio of means, "
        "mean S / mean α² − 1, always gives it): average the ratio R_k[j] itself over tasks and columns":
            float(total.mean() / sq.mean() - 1),
        "that is the worst task's ratio; the exercise asks for the mean over tasks": float((total / sq - 1).mean(1).max()),
    }


def check_predict_louder_task(prediction: str | None, fn: Callable[[torch.Tensor], float],
                              layer_mags: dict[str, torch.Tensor], scales: Sequence[float] = LOUDER_SCALES) -> str:
    r"""Exercise 3.4 (predict → run → interpret): one task of a group made louder by a factor c.

    ``fn(mags)`` must return (3.5)'s mean interference-to-signal ratio for an ``(N, d)`` magnitude
    matrix: the mean over tasks k and over the columns where every task is nonzero of
    :math:`R_k[j] = \sum_{i \ne k} \alpha_i[j]^2 / \alpha_k[j]^2`. It is checked against
    :func:`lorakit.lora.measures.interference_from_magnitudes` on random matrices, then run on
    ``layer_mags`` (``{layer: (N, d)}``, the notebook's real group) with the first task's row multiplied by
    each of ``scales``; the curve's shape is compared with ``prediction`` (any of :data:`LOUDER_CHOICES`).
    """
    cases = _interference_cases()
    gots = []
    for mags in cases:
        passed = mags.clone()
        gots.append(_as_number(fn(passed), "the mean interference ratio"))
        _assert_unmodified({"mags": mags}, {"mags": passed})
    choice = _check_choice(prediction, LOUDER_CHOICES,
                           "as the first task goes from ×1/4 to ×4, does the mean interference rise, fall, or dip then rise?")
    for mags, got in zip(cases, gots):
        want = float(interference_from_magnitudes(mags).mean())
        where = f"(N = {mags.shape[0]} tasks, d = {mags.shape[1]} columns)"
        if math.isfinite(got) and abs(got - want) <= 1e-9 * max(1.0, abs(want)):
            continue
        if not math.isfinite(got):
            raise AssertionError(f"{where}: got {got}; a column where some task is zero has no ratio for that task "
                                 "(division by 0): average over the columns where every task is nonzero")
        for hint, value in _interference_mutations(mags).items():
            if abs(got - value) <= 1e-9 * max(1.0, abs(value)):
                raise AssertionError(f"{where}: {hint}")
        raise AssertionError(f"{where}: expected {want:.6f}, got {got:.6f}: mean over tasks and columns of "
                             "(S_j − α_k[j]²) / α_k[j]², S_j = Σ_i α_i[j]²")
    curve, mv = [], []
    for c in scales:
        scaled = {name: torch.cat([c * m[:1], m[1:]]).to(torch.float64) for name, m in layer_mags.items()}
        curve.append(sum(_as_number(fn(m.clone()), "the mean interference ratio") for m in scaled.values()) / len(scaled))
        mv.append(sum(layer_magnitude_variance(m) for m in scaled.values()) / len(scaled))
    low = min(range(len(curve)), key=curve.__getitem__)
    measured = "dips then rises" if 0 < low < len(curve) - 1 else ("rises" if low == 0 else "falls")
    n = next(iter(layer_mags.values())).shape[0]
    mv_low = min(range(len(mv)), key=mv.__getitem__)
    mv_text = ", ".join(f"{v:.3f}" for v in mv)
    mv_note = (f"The magnitude variance (3.2) has its minimum at the same scale (MV: {mv_text}): both measure how "
               "unequal the tasks' say in each merged column is, which is what DO-Merging (notebook 05) equalises"
               if mv_low == low else
               f"The magnitude variance (3.2) has its minimum at ×{scales[mv_low]:g} instead (MV: {mv_text}): it "
               "averages the per-column CV c, while (3.6) says the interference grows with c², which weighs the "
               "most unequal columns more")
    why = (f"by (3.5), R̄ = S·mean_k(1/α_k²) − 1 ≥ N − 1 = {n - 1}, with equality only at equal magnitudes, and "
           "for a pair it is ½(ρ + 1/ρ) per column with ρ = α_1²/α_2²: a number plus its reciprocal, smallest "
           "where the two are equal. Scaling the first task up first evens the group out if it was the quieter one, "
           "then lets it drown the others; scaling it down drowns the first task itself. " + mv_note)
    evidence = ", ".join(f"×{c:g}: R̄ = {v:.2f}" for c, v in zip(scales, curve))
    return _report_prediction(choice, measured, evidence, why)
