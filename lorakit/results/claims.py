r"""The papers' benchmark claims checked against one run, each with an effect, a 95 % CI, p and a verdict.

Every claim compares two sides scored on the same test examples (the split is fixed across seeds)
and pairs them by seed and by example. For a difference claim the effect is
:math:`\Delta = M(A) - M(B)`, :math:`M` the chosen metric (:mod:`lorakit.results.metrics`: normalized by
default) over the seeds both sides hold; its CI is the percentile bootstrap over seeds × test
examples (:func:`lorakit.stats.bootstrap.bootstrap_scores`), its p-value the two-sided inversion of the same
bootstrap (:func:`lorakit.stats.bootstrap.bootstrap_pvalue`: p < 0.05 exactly when the 95 % CI excludes 0,
so p and CI agree). Verdict: :func:`lorakit.stats.paired.verdict` on the CI, then, across every claim of the
report, Holm's step-down adjustment (:func:`lorakit.stats.paired.holm`): a held or contradicted verdict
whose Holm-adjusted p is ≥ α = 1 − level becomes inconclusive (family-wise error ≤ α).

The claims: (i) each DO-Merging variant beats its base (standard init); (ii) DO beats the
norm-equalized control ``ta_normeq``; (iii) OSRM raises merged accuracy per method; (iv) OSRM beats
the scale-matched ``random_orthonormal`` init and the official code's ``gaussian`` LoRA init; (v)
OSRM keeps single-task accuracy (equivalence within ±δ); (vi) OSRM flattens the task-arithmetic λ
curve (CI over seeds). Claims whose methods or inits the run lacks are skipped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..errors import LorakitError
from ..merge import METHODS, resolve_variant, variant_base
from .metrics import METRIC_LABELS, entry_scores, metric_values, records_of, seeds_of, side_scores
from ..stats.bootstrap import ScoresBootstrap, bootstrap_pvalue, bootstrap_scores
from ..stats.paired import holm, paired_t_interval, verdict
from ..stats.tdist import t_cdf

DO_PAPER = "DO-Merging: decoupling and orthogonalizing beats the base merge (docs/methods.md §3.1, §3.7)"
OSRM_PAPER = "OSRM: the constrained init raises merged accuracy (docs/methods.md §2.10)"


@dataclass
class ClaimRow:
    """One checked claim. ``effect`` = side A − side B (``a``, ``b``) in ``metric``; CI at ``level``."""
    claim: str
    paper: str
    direction: int
    metric: str
    a: float | None
    b: float | None
    effect: float | None
    ci_low: float
    ci_high: float
    level: float
    pvalue: float | None
    n_seeds: int
    verdict_unadjusted: str
    rule: str
    note: str = ""
    p_holm: float | None = None
    verdict: str = ""

    def line(self) -> str:
        """``[verdict] claim: a vs b, effect, CI, p (Holm), seeds and notes`` on one line."""
        label = METRIC_LABELS.get(self.metric, self.metric)
        sides = f"{label} {self.a:.3f} vs {self.b:.3f}, " if self.a is not None and self.b is not None else ""
        ci = (f"{100 * self.level:g} % CI [{self.ci_low:+.3f}, {self.ci_high:+.3f}]"
              if math.isfinite(self.ci_low) and math.isfinite(self.ci_high) else "no CI")
        eff = "" if self.effect is None else f"effect {self.effect:+.3f}, "
        p = "" if self.pvalue is None else f", p = {self.pvalue:.2g} (Holm {self.p_holm:.2g})"
        return f"[{self.verdict}] {self.claim}: {sides}{eff}{ci}{p}; {self.note}"


@dataclass
class ClaimsReport:
    """The checked claims (``rows``) and run-level caveats; ``lines`` prints them, ``table()`` tabulates."""
    rows: list[ClaimRow] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        """One line per claim starting with ``[held]``, ``[contradicted]`` or ``[inconclusive]``, then caveats."""
        out = [row.line() for row in self.rows] + list(self.caveats)
        return out or ["no claim could be checked: the run lacks the methods or inits they compare"]

    @property
    def verdicts(self) -> list[tuple[str, bool]]:
        """``(claim, verdict == "held")`` per claim (the older boolean view)."""
        return [(row.claim, row.verdict == "held") for row in self.rows]

    def as_dicts(self) -> list[dict]:
        return [asdict(row) for row in self.rows]

    def table(self) -> str:
        """A markdown table: verdict, claim, effect, CI, p, Holm p, seeds."""
        out = ["| verdict | claim | metric | effect | 95 % CI | p | Holm p | seeds |",
               "|---|---|---|---:|---|---:|---:|---:|"]
        for r in self.rows:
            eff = "—" if r.effect is None else f"{r.effect:+.3f}"
            ci = f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]" if math.isfinite(r.ci_low) else "—"
            p, ph = ("—", "—") if r.pvalue is None else (f"{r.pvalue:.2g}", f"{r.p_holm:.2g}")
            out.append(f"| {r.verdict} | {r.claim} | {r.metric} | {eff} | {ci} | {p} | {ph} | {r.n_seeds} |")
        return "\n".join(out)


VERDICT_WORDS = {
    "held": "held (the CI excludes zero in the paper's direction)",
    "contradicted": "went the other way (the CI excludes zero against the paper)",
    "inconclusive": "are inconclusive: their CI contains zero, or Holm's correction removed a nominal result",
}


def verdict_sentences(rows: Sequence[ClaimRow]) -> str:
    """Markdown bullets, one per verdict present (held, contradicted, inconclusive, in that order), each
    listing its claims as ``claim (effect, CI [low, high])`` in the rows' order: the notebooks' prose
    about the claims, generated from the rows so it stays true when a reference is re-made."""
    out = []
    for v, words in VERDICT_WORDS.items():
        group = [r for r in rows if r.verdict == v]
        if group:
            items = "; ".join(f"{r.claim} ({r.effect:+.3f}, CI [{r.ci_low:+.3f}, {r.ci_high:+.3f}])"
                              if r.effect is not None and math.isfinite(r.ci_low) else r.claim for r in group)
            out.append(f"* {len(group)} claim{'s' if len(group) > 1 else ''} {words}: {items}.")
    return "\n".join(out)


@dataclass(frozen=True)
class Options:
    metric: str = "normalized"
    level: float = 0.95
    n_resamples: int = 10_000
    seed: int = 0


def variant_pairs(methods: Sequence[str]) -> dict[str, str]:
    """DO-Merging variant → the base method it must beat (same direction merge, no decoupling).

    Read from the merge registry: every name in ``methods`` that selects a method with ``variants``
    (``do``, ``do_ties``, …) is paired with its base (``task_arithmetic``, ``ties``, …). Names this
    lorakit's registry does not know (a run made by a newer one) are skipped.
    """
    pairs = {}
    for name in methods:
        try:
            if METHODS[resolve_variant(name)[0]].variants:
                pairs[name] = variant_base(name)
        except LorakitError:
            continue
    return pairs


def _seed_note(n_seeds: int, recorded: bool) -> str:
    note = ("1 seed: the CI covers only test-example noise, not seed-to-seed variation" if n_seeds == 1
            else f"{n_seeds} seeds × test examples")
    return note + ("" if recorded else "; no per-example data in this run: examples resampled unpaired (wider CI)")


def _budget_note(results: Mapping, a: tuple[str, str], b: tuple[str, str]) -> str:
    """A note when the records carry ``budget`` (validation points tried) and the two sides differ."""
    budgets = [sorted({r["budget"] for r in records_of(results, *side) if "budget" in r}) for side in (a, b)]
    if not all(budgets) or budgets[0] == budgets[1]:
        return ""
    return f"; tuning budget differs: {budgets[0]} vs {budgets[1]} validation points"


def _point(sets: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The data's per-seed task accuracies (1, S, T) of every score set."""
    return {k: np.stack([v.mean(axis=1) for v in tasks.values()], axis=-1)[None] for k, tasks in sets.items()}


def _from_ci(claim: str, paper: str, direction: int, metric: str, ab: tuple, boot: ScoresBootstrap,
             pvalue: float | None, note: str) -> ClaimRow:
    lo, hi = boot.ci.low, boot.ci.high
    if math.isnan(lo) or math.isnan(hi):
        v, rule = "inconclusive", "no finite bootstrap resample (the statistic is undefined here) → inconclusive"
    else:
        got = verdict(lo, hi, direction, claim=claim, level=boot.ci.level)
        v, rule = got.verdict, got.rule
    return ClaimRow(claim, paper, direction, metric, ab[0], ab[1], boot.ci.estimate, lo, hi, boot.ci.level,
                    pvalue, boot.n_seeds, v, rule, note)


def difference_row(results: Mapping, claim: str, paper: str, a: tuple[str, str], b: tuple[str, str],
                   opts: Options, direction: int = +1) -> ClaimRow | None:
    """Claim "A (method, init) beats B" on the seeds both hold; None when they share none."""
    seeds = sorted(set(seeds_of(results, *a)) & set(seeds_of(results, *b)))
    if not seeds:
        return None
    sa, ok_a = side_scores(results, *a, seeds, opts.metric, prefix="a:")
    sb, ok_b = side_scores(results, *b, seeds, opts.metric, prefix="b:")
    sets = {**sa, **sb}

    def stat(acc):
        return metric_values(acc, opts.metric, "a:") - metric_values(acc, opts.metric, "b:")

    boot = bootstrap_scores(sets, stat, n_resamples=opts.n_resamples, level=opts.level, seed=opts.seed)
    point = _point(sets)
    ab = (float(metric_values(point, opts.metric, "a:")[0]), float(metric_values(point, opts.metric, "b:")[0]))
    finite = np.isfinite(boot.resamples).any()
    p = bootstrap_pvalue(boot.resamples) if finite else None
    note = _seed_note(len(seeds), ok_a and ok_b) + _budget_note(results, a, b)
    return _from_ci(claim, paper, direction, opts.metric, ab, boot, p, note)


def _individual_seeds(results: Mapping, init: str) -> set[int]:
    per_task = [{e["seed"] for e in info.get("individual", []) if e["init"] == init}
                for info in results["tasks"].values()]
    return set.intersection(*per_task) if per_task else set()


def equivalence_row(results: Mapping, init: str, base: str, delta_pp: float, opts: Options,
                    label: str = "OSRM") -> ClaimRow | None:
    r"""OSRM keeps single-task accuracy: individual accuracy of ``init`` − ``base`` equivalent within ±δ.

    With α = 1 − level: **held** iff the 1 − 2α (90 %) bootstrap CI lies inside (−δ, +δ) (TOST by
    interval inclusion; p = max of the two one-sided bootstrap p-values at ∓δ); **contradicted** iff
    the 1 − α (95 %) CI lies entirely below −δ (p = two-sided bootstrap p at −δ); else inconclusive
    (p = the smaller of the two, for Holm). δ in accuracy points (``delta_pp`` = 1 → 0.01).
    """
    seeds = sorted(_individual_seeds(results, init) & _individual_seeds(results, base))
    if not seeds:
        return None
    (sa, ok_a), (sb, ok_b) = entry_scores(results, init, seeds), entry_scores(results, base, seeds)
    sets = {"a:merged": sa, "b:merged": sb}

    def stat(acc):
        return metric_values(acc, "accuracy", "a:") - metric_values(acc, "accuracy", "b:")

    boot = bootstrap_scores(sets, stat, n_resamples=opts.n_resamples, level=opts.level, seed=opts.seed)
    delta, alpha, res = delta_pp / 100.0, 1.0 - opts.level, boot.resamples
    lo90, hi90 = np.quantile(res, [alpha, 1 - alpha]).tolist()
    p_tost = max(bootstrap_pvalue(res, -delta, "greater"), bootstrap_pvalue(res, delta, "less"))
    p_contra = min(1.0, 2 * bootstrap_pvalue(res, -delta, "less"))
    if -delta < lo90 and hi90 < delta:
        v, p = "held", p_tost
    elif boot.ci.high < -delta:
        v, p = "contradicted", p_contra
    else:
        v, p = "inconclusive", min(p_tost, p_contra)
    rule = (f"held if the {100 * (1 - 2 * alpha):g} % CI lies inside ±{delta_pp:g} pp (TOST), contradicted if the "
            f"{100 * opts.level:g} % CI lies entirely below −{delta_pp:g} pp, else inconclusive; here "
            f"[{100 * lo90:+.2f}, {100 * hi90:+.2f}] pp and "
            f"[{100 * boot.ci.low:+.2f}, {100 * boot.ci.high:+.2f}] pp → {v}")
    point = _point(sets)
    ab = (float(metric_values(point, "accuracy", "a:")[0]), float(metric_values(point, "accuracy", "b:")[0]))
    note = (f"{100 * boot.ci.estimate:+.2f} pp, margin ±{delta_pp:g} pp; " + _seed_note(len(seeds), ok_a and ok_b))
    return ClaimRow(f"{label} keeps single-task accuracy", "OSRM: single-task accuracy barely changes "
                    "(−0.18 pp, docs/methods.md §2.10)", +1, "single-task accuracy", ab[0], ab[1], boot.ci.estimate,
                    boot.ci.low, boot.ci.high, opts.level, p, len(seeds), v, rule, note)


def _curve_spread(curve: Mapping[float, float], lams) -> float | None:
    """max − min of a λ curve over the λ in ``lams`` (None with fewer than two)."""
    values = [v for lam, v in curve.items() if lam in lams]
    return max(values) - min(values) if len(values) >= 2 else None


def _val_curve(record: Mapping) -> dict[float, float]:
    return {c["params"]["lam"]: c["val_normalized"] for c in record.get("curve", []) if "lam" in c["params"]}


def spread_row(results: Mapping, init: str, base: str, opts: Options, label: str = "OSRM",
               method: str = "task_arithmetic") -> ClaimRow | None:
    r"""OSRM flattens the λ curve: per seed :math:`d_s` = spread(init) − spread(base), paired t CI over seeds.

    spread = max − min of the validation normalized accuracy over the λ both curves of that seed tried
    (an edge extension tried by one only does not count). CI: :func:`lorakit.stats.paired.paired_t_interval`
    over the seeds (p: the two-sided paired t test); one seed gives no CI → inconclusive.
    """
    ra = {r["seed"]: r for r in records_of(results, method, init)}
    rb = {r["seed"]: r for r in records_of(results, method, base)}
    diffs, spreads = [], []
    for s in sorted(ra.keys() & rb.keys()):
        ca, cb = _val_curve(ra[s]), _val_curve(rb[s])
        common = ca.keys() & cb.keys()
        sa, sb = _curve_spread(ca, common), _curve_spread(cb, common)
        if sa is not None and sb is not None:
            diffs.append(sa - sb)
            spreads.append((sa, sb))
    if not diffs:
        return None
    claim = f"{label} flattens the λ curve (task arithmetic)"
    paper = "OSRM: merged accuracy is robust to λ (docs/methods.md §2.10)"
    a, b = float(np.mean([s[0] for s in spreads])), float(np.mean([s[1] for s in spreads]))
    label = "λ spread = max − min of validation normalized accuracy over the λ both tried"
    metric = "λ spread"
    if len(diffs) < 2:
        return ClaimRow(claim, paper, -1, metric, a, b, diffs[0], math.nan, math.nan, opts.level, None, 1,
                        "inconclusive", "one seed: no CI over seeds, so no verdict → inconclusive",
                        f"{label}; 1 seed, and a spread has no per-example CI")
    ci = paired_t_interval(diffs, level=opts.level)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = abs(ci.estimate) / ci.se if ci.se > 0 else (math.inf if ci.estimate != 0 else 0.0)
    p = 2.0 * (1.0 - t_cdf(t, ci.df)) if math.isfinite(t) else 0.0
    got = verdict(ci.low, ci.high, -1, claim=claim, level=opts.level)
    return ClaimRow(claim, paper, -1, metric, a, b, ci.estimate, ci.low, ci.high, opts.level, min(1.0, p),
                    len(diffs), got.verdict, got.rule + " (paired t over seeds)", f"{label}; {len(diffs)} seeds")


def apply_holm(rows: list[ClaimRow], alpha: float, adjust: bool = True) -> None:
    """Fill ``p_holm`` and the final ``verdict``: held/contradicted with Holm p ≥ α → inconclusive."""
    tested = [k for k, r in enumerate(rows) if r.pvalue is not None]
    adjusted = holm([rows[k].pvalue for k in tested]).tolist() if tested else []
    for k, p in zip(tested, adjusted):
        rows[k].p_holm = p
    for r in rows:
        r.verdict = r.verdict_unadjusted
        if adjust and r.verdict != "inconclusive" and (r.p_holm is None or r.p_holm >= alpha):
            r.verdict = "inconclusive"
            r.rule += (f"; Holm-adjusted p = {r.p_holm:.3g} ≥ {alpha:g} over the {len(tested)} tested claims "
                       "→ inconclusive" if r.p_holm is not None else "; no p-value → inconclusive")
        elif adjust and r.p_holm is not None:
            r.rule += f"; Holm-adjusted p = {r.p_holm:.3g} over the {len(tested)} tested claims"
