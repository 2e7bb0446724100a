r"""Diagnosis of N LoRA adapters before merging them (``lorakit diagnose``): numbers and a verdict.

For one layer and adapter :math:`i`, :math:`\Delta W_i = s_i B_i A_i` (``d_out × d_in``,
docs/methods.md §1). Everything is computed from the factors in float64 and never forms
:math:`\Delta W` (cost :math:`O(R^2 (d_{in} + d_{out}))` per layer, :math:`R = \sum_i r_i`):

* **norm** — :math:`\lVert s B A \rVert_F^2 = s^2 \operatorname{tr}\big((B^\top B)(A A^\top)\big)`.
* **cosine** — :math:`\langle \Delta W_i, \Delta W_j \rangle_F = s_i s_j \operatorname{tr}\big((B_i^\top B_j)(A_j A_i^\top)\big)`
  over the norms; ``overall`` sums the inner products over layers (one flattened task vector per
  adapter: :func:`lorakit.lora.measures.cosine_matrix`).
* **magnitude variance** — the column norms :math:`\alpha_i[j]^2 = s_i^2\, a_j^\top (B_i^\top B_i)\, a_j`
  (:math:`a_j` = column j of :math:`A_i`; ``axis "out"``: rows of B with :math:`A_i A_i^\top`), then
  :func:`lorakit.lora.measures.layer_magnitude_variance`: ``magnitude_variance`` is notebook 03's (3.2)
  (:func:`~lorakit.lora.measures.magnitude_variance`, population CV, which grows with N by itself) and
  ``magnitude_variance_pairwise`` the bias-free mean over task pairs
  (:func:`~lorakit.lora.measures.magnitude_variance_pairwise`, whose docstring has the derivation:
  a U-statistic, expectation independent of N for i.i.d. tasks). Kinds: ``column_in``,
  ``column_out``, ``frobenius`` (docs/methods.md §3.5). ``overall``: the mean over layers.
* **A overlap** — :math:`O_{ij} = \lVert P_i P_j \rVert_F^2 / \min(r_i, r_j)`, :math:`P_i` the orthogonal
  projector on the row space of :math:`A_i` (from its SVD; :func:`lorakit.lora.measures.subspace_overlap`):
  1 = same subspace, 0 = orthogonal, :math:`\approx \max(r_i, r_j)/d_{in}` for random subspaces
  (``a_overlap_random``). Adapters trained from one seed start from the identical ``A`` (the
  shared-init artefact): 1 at the start; training lowers it (notebook 03's ``ci`` adapters: about
  0.5 after 24 steps) but it stays far above random.
* **A cosine** — :math:`\langle A_i, A_j \rangle_F / (\lVert A_i \rVert_F \lVert A_j \rVert_F)`, the factors
  compared entry by entry (0 when the ranks differ). Independent random inits give about
  :math:`\pm 1/\sqrt{r\,d_{in}}`; one shared init gives 1 before training and stays far above that
  after it, while the subspace overlap of independently initialised adapters also rises in
  training (they learn similar input directions). It is the sharper sign of a shared init.
* **interference (an estimate without data)** — docs/methods.md §2.1: under task arithmetic, task
  i's input :math:`h` sees :math:`\Delta W_i h` plus the interference :math:`\sum_{j \ne i} \Delta W_j h`.
  Without data we assume task i's inputs spread evenly over the subspace its own update reads,
  the row space of :math:`A_i` (:math:`\mathbb E\,hh^\top \propto P_i`); then
  :math:`\mathbb E \lVert \Delta W_j h \rVert^2 \propto \lVert \Delta W_j P_i \rVert_F^2` and
  :math:`\Delta W_i P_i = \Delta W_i`. Reported: ``energy_share[i][j]`` =
  :math:`\lVert \Delta W_j P_i \rVert_F^2 / \lVert \Delta W_j \rVert_F^2` (how much of j's update acts on i's
  inputs), ``interference[i][j]`` = :math:`\lVert \Delta W_j P_i \rVert_F^2 / \lVert \Delta W_i \rVert_F^2`
  (interference-to-signal energy, one other task) and ``interference_total[i]`` =
  :math:`\lVert \sum_{j \ne i} \Delta W_j P_i \rVert_F^2 / \lVert \Delta W_i \rVert_F^2` (all others; λ
  cancels). ``overall`` sums numerators and denominators over layers. Real inputs are not
  isotropic in that subspace, and they also have components outside it, so this is a data-free
  estimate, not a measurement (OSRM, §2, is about exactly that gap).

Verdict (:func:`verdict`; modest: what the numbers favour, not a promise):

1. a pair with A cosine ≥ :data:`SHARED_A_COSINE` (0.3) or A overlap ≥ :data:`SHARED_A` (0.5)
   (means over the layers whose ``A`` does not span all of ``d_in``) → **warning**: the pair
   shares its initial A (one seed for all tasks); retrain with per-task seeds, or expect
   interference (DO's orthogonalisation, §3.3, then has to move the factors further);
2. pairwise magnitude variance ``frobenius`` ≥ :data:`HIGH_MV_FROBENIUS` (0.2, e.g. one update
   1.5× the other) or ``column_in`` ≥ :data:`HIGH_MV_COLUMN` (0.35) → **do** (decoupling the
   magnitudes is expected to help, §3.5);
3. mean ``interference_total`` ≥ :data:`HIGH_INTERFERENCE` (0.25) → **do** (its orthogonalisation,
   §3.3, removes the overlap; OSRM-trained adapters, §2, avoid it);
4. otherwise → **task_arithmetic** (similar magnitudes, little estimated interference).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..lora.measures import layer_magnitude_variance
from ..errors import LorakitError
from ..lora.update import LoRAUpdate, check_compatible
from .sources import check_same_base, read_source

SHARED_A = 0.5
SHARED_A_COSINE = 0.3
HIGH_MV_FROBENIUS = 0.2
HIGH_MV_COLUMN = 0.35
HIGH_INTERFERENCE = 0.25
#: Factor entries (all adapters) above which progress is shown by default.
PROGRESS_ENTRIES = 20_000_000
MV_KINDS = ("column_in", "column_out", "frobenius")


@dataclass
class LayerDiagnosis:
    """The numbers of one layer (arrays over the N adapters; see the module docstring)."""

    name: str
    shape: tuple[int, int]
    ranks: list[int]
    norm: np.ndarray  # (N,)
    inner: np.ndarray  # (N, N) Frobenius inner products
    magnitude_variance: dict[str, float]
    magnitude_variance_pairwise: dict[str, float]
    a_overlap: np.ndarray  # (N, N)
    a_cosine: np.ndarray  # (N, N)
    crosstalk: np.ndarray  # (N, N): ‖ΔW_j P_i‖²_F at [i, j]
    others: np.ndarray  # (N,): ‖Σ_{j≠i} ΔW_j P_i‖²_F

    @property
    def a_overlap_random(self) -> float:
        """Mean over pairs of ``max(r_i, r_j) / d_in``: the overlap of random subspaces."""
        return _offdiag_mean(np.maximum.outer(self.ranks, self.ranks) / self.shape[1])

    @property
    def a_spans_input(self) -> bool:
        """Some ``A`` has rank ``d_in`` (e.g. a full fine-tuning update): its overlap says nothing."""
        return max(self.ranks) >= self.shape[1]

    def matrices(self) -> dict[str, np.ndarray]:
        sq = self.norm**2
        return {"cosine": _cosines(self.inner), "a_overlap": self.a_overlap, "a_cosine": self.a_cosine,
                "energy_share": _ratio(self.crosstalk, sq[None, :]), "interference": _ratio(self.crosstalk, sq[:, None])}

    def to_dict(self) -> dict:
        out = {"name": self.name, "shape": list(self.shape), "ranks": self.ranks, "norm": self.norm.tolist(),
               "magnitude_variance": self.magnitude_variance,
               "magnitude_variance_pairwise": self.magnitude_variance_pairwise}
        out |= {k: v.tolist() for k, v in self.matrices().items()}
        out |= {"interference_total": _ratio(self.others, self.norm**2).tolist(),
                "a_overlap_mean": _offdiag_mean(self.a_overlap), "a_overlap_random": self.a_overlap_random}
        return out


@dataclass
class Verdict:
    method: str
    reasons: list[str]
    warnings: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"the numbers favour: {self.method}"] + [f"  - {r}" for r in self.reasons]
        return "\n".join(lines + [f"  ! {w}" for w in self.warnings])


@dataclass
class Diagnosis:
    """Per-layer and overall diagnosis of N adapters (``names[i]`` is adapter i)."""

    names: list[str]
    layers: list[LayerDiagnosis]
    overall: dict
    verdict: Verdict

    def to_dict(self) -> dict:
        return {"adapters": self.names, "n_adapters": len(self.names), "n_layers": len(self.layers),
                "overall": _jsonable(self.overall), "verdict": {**vars(self.verdict), "rule": RULE},
                "layers": [lay.to_dict() for lay in self.layers], "definitions": DEFINITIONS}


RULE = (f"a pair with A cosine >= {SHARED_A_COSINE} or A overlap >= {SHARED_A} -> warn (shared initial A); pairwise MV frobenius >= {HIGH_MV_FROBENIUS} or "
        f"column_in >= {HIGH_MV_COLUMN} -> do (decoupling, docs/methods.md §3.5); interference_total >= "
        f"{HIGH_INTERFERENCE} -> do (orthogonalisation, §3.3); else task_arithmetic")
DEFINITIONS = {
    "norm": "‖s B A‖_F per adapter (overall: over all layers)",
    "magnitude_variance": "notebook 03 (3.2), population CV of column norms across adapters (lorakit.lora.measures."
                          "magnitude_variance); grows with N by itself",
    "magnitude_variance_pairwise": "mean over adapter pairs of (3.2): expectation independent of N "
                                   "(lorakit.lora.measures.magnitude_variance_pairwise)",
    "cosine": "<ΔW_i, ΔW_j>_F / (‖ΔW_i‖ ‖ΔW_j‖) (overall: of the flattened task vectors)",
    "a_overlap": "‖P_i P_j‖_F² / min(r_i, r_j), P = projector on the row space of A (1 = same, ~r/d random)",
    "a_cosine": "<A_i, A_j>_F / (‖A_i‖ ‖A_j‖), entry by entry (0 for different ranks); ~1/sqrt(r d_in) for "
                "independent inits, high for a shared initial A",
    "shared_init_pairs": "[i, j, A cosine, A overlap] of the pairs over the shared-init thresholds",
    "energy_share": "[i][j] = ‖ΔW_j P_i‖² / ‖ΔW_j‖²: share of j's update acting on i's input subspace",
    "interference": "[i][j] = ‖ΔW_j P_i‖² / ‖ΔW_i‖²: interference-to-signal energy on task i's inputs "
                    "(data-free estimate, inputs assumed isotropic in A_i's row space; docs/methods.md §2.1)",
    "interference_total": "[i] = ‖Σ_{j≠i} ΔW_j P_i‖² / ‖ΔW_i‖² under task arithmetic (same estimate)",
}


def _offdiag_mean(m: np.ndarray) -> float:
    n = m.shape[0]
    return float(m[~np.eye(n, dtype=bool)].mean()) if n > 1 else 0.0


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.broadcast_arrays(np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _cosines(inner: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.clip(np.diag(inner), 0, None))
    return _ratio(inner, np.outer(norms, norms))


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def row_basis(A: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (d_in × rank) of the row space of ``A`` (r × d_in), from its SVD (float64)."""
    A = A.to(torch.float64)
    _, S, Vh = torch.linalg.svd(A, full_matrices=False)
    tol = (S.max() if S.numel() else 0.0) * max(A.shape) * torch.finfo(torch.float64).eps
    return Vh[S > tol].T


def column_norms(update: LoRAUpdate, axis: str = "in") -> torch.Tensor:
    r"""Factored :func:`lorakit.lora.measures.column_magnitudes`: ``axis "in"`` :math:`\sqrt{s^2\,\mathrm{diag}(A^\top B^\top B A)}`."""
    A, B, s = update.A.to(torch.float64), update.B.to(torch.float64), update.scaling
    if axis == "in":
        sq = ((B.T @ B @ A) * A).sum(dim=0)
    elif axis == "out":
        sq = ((B @ (A @ A.T)) * B).sum(dim=1)
    else:
        raise LorakitError(f"axis must be 'in' or 'out', got {axis!r}")
    return (s * s * sq).clamp(min=0).sqrt()


def layer_diagnosis(name: str, updates: Sequence[LoRAUpdate]) -> LayerDiagnosis:
    """All numbers of one layer from the factors (no dense ΔW; see the module docstring)."""
    n = len(updates)
    ranks = [u.rank for u in updates]
    edges = np.concatenate([[0], np.cumsum(ranks)])
    blocks = [slice(int(edges[i]), int(edges[i + 1])) for i in range(n)]
    A = torch.cat([u.A.to(torch.float64) for u in updates])  # (R, d_in)
    B = torch.cat([u.scaling * u.B.to(torch.float64) for u in updates], dim=1)  # (d_out, R), s folded in
    GA, GB = A @ A.T, B.T @ B
    prod = GA * GB  # tr(X Yᵀ) = Σ X∘Y: block (i, j) sums to <ΔW_i, ΔW_j>_F
    inner = np.array([[float(prod[bi, bj].sum()) for bj in blocks] for bi in blocks])
    a_inner = np.array([[float(GA[bi, bj].trace()) if ri == rj else 0.0 for bj, rj in zip(blocks, ranks)]
                        for bi, ri in zip(blocks, ranks)])  # <A_i, A_j>_F for equal ranks
    bases = [row_basis(u.A) for u in updates]
    overlap = np.zeros((n, n))
    crosstalk = np.zeros((n, n))
    others = np.zeros(n)
    for i, Qi in enumerate(bases):
        for j, Qj in enumerate(bases):
            k = min(Qi.shape[1], Qj.shape[1])
            overlap[i, j] = float((Qi.T @ Qj).square().sum()) / k if k else 0.0
        Y = A @ Qi  # (R, k_i): block j is A_j Q_i
        for j, bj in enumerate(blocks):
            crosstalk[i, j] = float(torch.trace(Y[bj].T @ GB[bj, bj] @ Y[bj]))  # ‖s_j B_j A_j Q_i‖²
        Y[blocks[i]] = 0
        others[i] = float(torch.trace(Y.T @ GB @ Y))  # ‖Σ_{j≠i} s_j B_j A_j Q_i‖²
    mags = {"column_in": torch.stack([column_norms(u, "in") for u in updates]),
            "column_out": torch.stack([column_norms(u, "out") for u in updates]),
            "frobenius": torch.tensor(np.sqrt(np.clip(np.diag(inner), 0, None)))[:, None]}
    mv = {k: layer_magnitude_variance(m) for k, m in mags.items()}
    mvp = {k: layer_magnitude_variance(m, pairwise=True) for k, m in mags.items()}
    norm = np.sqrt(np.clip(np.diag(inner), 0, None))
    return LayerDiagnosis(name, tuple(updates[0].shape), ranks, norm, inner, mv, mvp, overlap, _cosines(a_inner),
                          crosstalk, others)


def summarize(layers: Sequence[LayerDiagnosis]) -> dict:
    """The ``overall`` numbers: sums over layers for norms, cosines and interference, means for the rest."""
    inner = sum(lay.inner for lay in layers)
    sq = np.diag(inner).clip(min=0)
    crosstalk = sum(lay.crosstalk for lay in layers)
    others = sum(lay.others for lay in layers)
    overlap = sum(lay.a_overlap for lay in layers) / len(layers)
    informative = [lay for lay in layers if not lay.a_spans_input]
    mean = (lambda key: sum(getattr(lay, key) for lay in informative) / len(informative)) if informative else None
    return {
        "norm": np.sqrt(sq),
        "magnitude_variance": {k: float(np.mean([lay.magnitude_variance[k] for lay in layers])) for k in MV_KINDS},
        "magnitude_variance_pairwise": {k: float(np.mean([lay.magnitude_variance_pairwise[k] for lay in layers]))
                                        for k in MV_KINDS},
        "cosine": _cosines(inner), "cosine_mean": _offdiag_mean(_cosines(inner)),
        "a_overlap": overlap,
        "a_overlap_mean": (float(np.mean([_offdiag_mean(lay.a_overlap) for lay in informative]))
                           if informative else None),
        "a_overlap_random": (float(np.mean([lay.a_overlap_random for lay in informative])) if informative else None),
        "a_cosine": sum(lay.a_cosine for lay in layers) / len(layers),
        "shared_init_pairs": [] if mean is None else shared_init_pairs(mean("a_cosine"), mean("a_overlap")),
        "energy_share": _ratio(crosstalk, sq[None, :]), "interference": _ratio(crosstalk, sq[:, None]),
        "interference_total": _ratio(others, sq),
    }


def shared_init_pairs(a_cosine: np.ndarray, a_overlap: np.ndarray) -> list[list]:
    """``[i, j, A cosine, A overlap]`` for each pair over the shared-init thresholds (rule 1)."""
    n = len(a_cosine)
    return [[i, j, float(a_cosine[i, j]), float(a_overlap[i, j])] for i in range(n) for j in range(i + 1, n)
            if a_cosine[i, j] >= SHARED_A_COSINE or a_overlap[i, j] >= SHARED_A]


def verdict(overall: Mapping) -> Verdict:
    """The rule of the module docstring applied to the ``overall`` numbers."""
    reasons, warnings, method = [], [], "task_arithmetic"
    overlap, random = overall["a_overlap_mean"], overall["a_overlap_random"]
    if overlap is None:
        warnings.append("every layer has an A of full rank d_in (full fine-tuning updates?): the A overlap says nothing")
    elif overall["shared_init_pairs"]:
        pairs = ", ".join(f"#{i}-#{j} (A cosine {c:.2f}, overlap {o:.2f})" for i, j, c, o in overall["shared_init_pairs"])
        warnings.append(
            f"{pairs}; random subspaces overlap ~{random:.3f}: these adapters most likely share their initial A (one "
            "seed for every task); retrain with per-task seeds, or expect interference (their updates read the same "
            "inputs, and DO's orthogonalisation has to move the factors further)")
    mvp = overall["magnitude_variance_pairwise"]
    high = [f"{k} {mvp[k]:.3f} >= {limit}" for k, limit in (("frobenius", HIGH_MV_FROBENIUS), ("column_in", HIGH_MV_COLUMN))
            if mvp[k] >= limit]
    if high:
        method = "do"
        reasons.append(f"high magnitude variance (pairwise, {', '.join(high)}): DO-Merging's decoupling of the "
                       "magnitudes is expected to help (docs/methods.md §3.5)")
    total = float(np.mean(overall["interference_total"]))
    if total >= HIGH_INTERFERENCE:
        method = "do"
        reasons.append(
            f"estimated interference {total:.3f} >= {HIGH_INTERFERENCE} (others' energy on each task's inputs, relative "
            "to its own; data-free): DO-Merging's orthogonalisation (docs/methods.md §3.3) is expected to help")
    if method == "task_arithmetic":
        reasons.append(
            f"similar magnitudes (pairwise frobenius {mvp['frobenius']:.3f}, column_in {mvp['column_in']:.3f}) and low "
            f"estimated interference ({total:.3f}): plain task arithmetic should do about as well as the others")
    return Verdict(method, reasons, warnings)


def diagnose_adapters(adapters: Sequence[Mapping[str, LoRAUpdate]], names: Sequence[str] | None = None,
                      progress: bool | None = None) -> Diagnosis:
    """Diagnose N ≥ 2 in-memory adapters (``{module: LoRAUpdate}`` with the same modules and shapes).

    ``progress``: a per-layer bar on stderr (default: only for big adapters, :data:`PROGRESS_ENTRIES`).
    """
    adapters = list(adapters)
    names = [f"adapter {i}" for i in range(len(adapters))] if names is None else [str(n) for n in names]
    if len(adapters) < 2:
        raise LorakitError(f"diagnosis compares adapters: pass at least 2, got {len(adapters)}")
    if len(names) != len(adapters):
        raise LorakitError(f"{len(names)} names for {len(adapters)} adapters; pass one name per adapter")
    check_compatible(adapters, names)
    for name, adapter in zip(names, adapters):
        for module, upd in adapter.items():
            if not isinstance(upd, LoRAUpdate):
                raise LorakitError(f"{name}: {module} is a {type(upd).__name__}, not a LoRAUpdate")
            if not upd.is_finite():
                raise LorakitError(f"{name}: the factors of {module} contain NaN or inf; retrain or re-export it")
    modules = list(adapters[0])
    if progress is None:
        progress = sum(u.A.numel() + u.B.numel() for ad in adapters for u in ad.values()) > PROGRESS_ENTRIES
    bar = tqdm(modules, desc="diagnosing", unit="layer", disable=not progress, file=sys.stderr)
    layers = [layer_diagnosis(m, [ad[m] for ad in adapters]) for m in bar]
    overall = summarize(layers)
    return Diagnosis(names, layers, overall, verdict(overall))


def diagnose_folders(paths: Sequence[str | os.PathLike], progress: bool | None = None) -> Diagnosis:
    """Diagnose PEFT adapter folders: the folder checks and one-line errors of ``lorakit merge``."""
    if len(paths) < 2:
        raise LorakitError(f"diagnosis compares adapters: pass at least 2 adapter folders, got {len(paths)}")
    sources = [read_source(p) for p in paths]
    check_same_base(sources)
    return diagnose_adapters([s.layers for s in sources], [str(s.path) for s in sources], progress)


def short_layer_name(name: str) -> str:
    """``encoder.layer.3.attention.self.query`` → ``3.query``; ``model.layers.0.self_attn.q_proj`` → ``0.q_proj``:
    the numbered parts (the layer index) and the module's own name, for figure labels."""
    parts = name.split(".")
    return ".".join([p for p in parts[:-1] if p.isdigit()] + parts[-1:])


def diagnosis_figure(diagnosis: Diagnosis, short=None):
    """A matplotlib Figure (no pyplot, so no backend is switched): per-layer norms per adapter,
    per-layer magnitude variance and A overlap, and the overall cosine and A-overlap matrices."""
    from matplotlib.figure import Figure  # lazy: keeps `import lorakit.cli` light

    short = short or short_layer_name
    labels = [f"#{i}" for i in range(len(diagnosis.names))]
    x = np.arange(len(diagnosis.layers))
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    ax = fig.subplots(2, 2)
    for i, name in enumerate(diagnosis.names):
        ax[0, 0].semilogy(x, [lay.norm[i] for lay in diagnosis.layers], "o-", ms=3,
                          label=f"#{i} {os.path.basename(str(name))[:30]}")
    ax[0, 0].set_ylabel("‖ΔW_ℓ‖_F"); ax[0, 0].set_title("update norm per layer"); ax[0, 0].legend(fontsize=6)
    ax[0, 1].plot(x, [lay.magnitude_variance_pairwise["column_in"] for lay in diagnosis.layers], "o-", ms=3,
                  label="magnitude variance (pairwise, column_in)")
    ax[0, 1].plot(x, [_offdiag_mean(lay.a_overlap) for lay in diagnosis.layers], "s--", ms=3, label="A overlap (mean)")
    ax[0, 1].plot(x, [lay.a_overlap_random for lay in diagnosis.layers], ":", color="grey", label="random subspaces")
    ax[0, 1].set_ylim(bottom=0); ax[0, 1].set_title("per layer"); ax[0, 1].legend(fontsize=6)
    names = [short(lay.name) for lay in diagnosis.layers]
    for a in ax[0]:
        a.set_xticks(x); a.set_xticklabels(names, rotation=70, fontsize=6)
    for a, key, title, (lo, hi) in ((ax[1, 0], "cosine", "cosine of ΔW (all layers)", (-1, 1)),
                                    (ax[1, 1], "a_overlap", "A-subspace overlap (mean over layers)", (0, 1))):
        m = np.asarray(diagnosis.overall[key])
        im = a.imshow(m, vmin=lo, vmax=hi, cmap="coolwarm" if lo < 0 else "viridis")
        for (i, j), v in np.ndenumerate(m):
            a.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if lo == 0 and v < 0.6 else "k")
        a.set_xticks(range(len(labels)), labels); a.set_yticks(range(len(labels)), labels); a.set_title(title)
        fig.colorbar(im, ax=a, shrink=0.8)
    return fig
