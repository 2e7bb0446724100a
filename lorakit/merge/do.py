r"""DO-Merging (Zheng et al., arXiv 2505.15875, docs/methods.md §3.2–3.4): decouple, orthogonalise, merge apart.

Each task's update is split into a per-column magnitude and a direction
(:func:`decouple`, :func:`decouple_update`); the low-rank factors are first orthogonalised
across tasks (:mod:`lorakit.merge.ortho`); magnitudes and directions are then merged separately
(:func:`do_merge_with_report`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ..lora.measures import column_magnitudes, norm_dim
from ..lora.update import LoRAUpdate, check_compatible
from .ortho import ORTHO_GAMMA, ORTHO_LR, ORTHO_OPTIONS, ORTHO_STEPS, OrthoReport, orthogonalize_factors
from .registry import BASE_PARAMS, METHODS, is_bool, is_int, is_real, register

#: Column norms at or below this are treated as zero columns (their direction is 0, not NaN).
EPS = 1e-12


def _safe_inverse(magnitude: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.where(magnitude > eps, 1.0 / torch.where(magnitude > eps, magnitude, 1.0), 0.0)


def _broadcast(vector: torch.Tensor, axis: str) -> torch.Tensor:
    """Shape a magnitude vector to multiply a ``(d_out, d_in)`` matrix along ``axis``."""
    return vector[None, :] if norm_dim(axis) == 0 else vector[:, None]


def decouple(delta: torch.Tensor, axis: str = "in", eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Split ``ΔW`` into magnitude and direction (docs/methods.md §3.2, D1/D2).

    ``axis="in"`` (the paper's column-wise reading; default):

    .. math::

        \alpha_j = \lVert \Delta W[:, j] \rVert_2 \ (\alpha \in \mathbb{R}^{d_{in}}), \qquad
        \tilde W[:, j] = \Delta W[:, j] / \alpha_j, \qquad \Delta W = \tilde W \operatorname{diag}(\alpha)

    ``axis="out"`` uses rows instead: :math:`\alpha \in \mathbb{R}^{d_{out}}`,
    :math:`\Delta W = \operatorname{diag}(\alpha)\tilde W`. Columns with :math:`\alpha_j \le`
    ``eps`` get a zero direction (no NaN). Computed in the input's dtype.

    Returns:
        ``(magnitude, direction)``: ``(d_in,)`` or ``(d_out,)``, and ``(d_out, d_in)``.
    """
    magnitude = column_magnitudes(delta, axis).to(delta.dtype)
    return magnitude, delta * _broadcast(_safe_inverse(magnitude, eps), axis)


_decouple_dense = decouple  # do_merge_with_report has a flag named ``decouple``


def recompose(magnitude: torch.Tensor, direction: torch.Tensor, axis: str = "in") -> torch.Tensor:
    r"""Inverse of :func:`decouple`: :math:`\Delta W = \tilde W \odot \alpha` broadcast along ``axis``."""
    return direction * _broadcast(magnitude, axis)


def decouple_update(update: LoRAUpdate, axis: str = "in", eps: float = EPS) -> tuple[torch.Tensor, LoRAUpdate]:
    r""":func:`decouple` in factored form, without forming ``ΔW``; float64.

    With :math:`B \leftarrow sB`, the column norms are :math:`\alpha_j^2 = a_j^\top (B^\top B) a_j`
    (:math:`a_j` = column j of A), and the direction stays a rank-r update:
    ``"in"``: :math:`\tilde W = B\,(A \operatorname{diag}(1/\alpha))`; ``"out"``:
    :math:`\tilde W = (\operatorname{diag}(1/\alpha) B)\,A`.

    Returns:
        ``(magnitude, direction)`` with the direction as a :class:`LoRAUpdate` of scaling 1.
    """
    A = update.A.to(torch.float64)
    B = update.scaling * update.B.to(torch.float64)
    if norm_dim(axis) == 0:
        sq = (A * ((B.T @ B) @ A)).sum(dim=0)
    else:
        sq = (B * (B @ (A @ A.T))).sum(dim=1)
    magnitude = sq.clamp(min=0).sqrt()
    inv = _safe_inverse(magnitude, eps)
    if axis == "in":
        return magnitude, LoRAUpdate(A * inv[None, :], B, 1.0)
    return magnitude, LoRAUpdate(A, B * inv[:, None], 1.0)



@dataclass(frozen=True)
class DOReport:
    """Diagnostics of one DO-Merging layer: the A- and B-side :class:`OrthoReport` (None when skipped)."""

    ortho_A: OrthoReport | None = None
    ortho_B: OrthoReport | None = None


def do_merge_with_report(
    updates: Sequence[LoRAUpdate],
    base: str = "task_arithmetic",
    decouple: bool = True,
    magnitude_axis: str = "in",
    magnitude_merge: str = "mean",
    renormalize_direction: bool = False,
    orthogonalize: bool = True,
    gamma: float = ORTHO_GAMMA,
    steps: int = ORTHO_STEPS,
    lr: float | None = None,
    optimizer: str = "adam",
    normalize_factors: bool = True,
    **base_params: Any,
) -> tuple[torch.Tensor, DOReport]:
    r"""DO-Merging of one layer (docs/methods.md §3.4), with its orthogonalisation diagnostics.

    .. math::

        &B_i \leftarrow s_i B_i; \quad \{\hat A_i\} = \operatorname{argmin} L_A, \ \{\hat B_i\} = \operatorname{argmin} L_B
            && \text{(orthogonalize, } A_i: r \times d_{in},\ B_i: d_{out} \times r)\\
        &\alpha_i, \tilde W_i = \operatorname{decouple}(\hat B_i \hat A_i)
            && (\alpha_i \in \mathbb{R}^{d_{in}} \text{ for axis "in"})\\
        &\alpha^* = \tfrac1N \textstyle\sum_i \alpha_i, \quad \tilde W^* = \operatorname{Base}(\{\tilde W_i\}; \lambda, \dots)
            && \text{(magnitude\_merge="mean")}\\
        &\Delta W^* = \tilde W^* \odot \alpha^* && (d_{out} \times d_{in})

    Switches (the paper's ablations TA, TA+D, TA+O, TA+D+O are one call each):

    * ``orthogonalize``: run :func:`orthogonalize_factors` on the A and on the B factors
      (γ, steps, lr, optimizer, normalize_factors); a single task is left as it is.
    * ``decouple``: merge magnitudes and directions separately (:func:`decouple_update`); with
      ``magnitude_merge="base"`` the magnitudes go through the base method too (so with task
      arithmetic λ scales both parts: :math:`\lambda^2`).
    * ``renormalize_direction``: re-normalise :math:`\tilde W^*` along the axis before rescaling.
    * ``base``: any other registered method; ``lam``, ``density``, ``drop_rate``, ``seed``,
      ``combine`` go to it (DARE on magnitudes uses ``seed + 1``).

    With ``decouple=False`` and ``orthogonalize=False`` this is exactly the base method.
    """
    spec = METHODS[base]
    if not decouple and not orthogonalize:
        return spec.function(updates, **base_params).float(), DOReport()
    tasks = [LoRAUpdate(u.A.to(torch.float64), u.scaling * u.B.to(torch.float64), 1.0) for u in updates]
    report = DOReport()
    if orthogonalize:
        tasks, report = orthogonalize_updates(
            tasks, gamma=gamma, steps=steps, lr=lr, optimizer=optimizer, normalize_factors=normalize_factors
        )
    if not decouple:
        return spec.function(tasks, **base_params).float(), report
    magnitudes, directions = zip(*(decouple_update(t, magnitude_axis) for t in tasks))
    magnitudes = torch.stack(magnitudes)
    if magnitude_merge == "mean":
        magnitude = magnitudes.mean(dim=0)
    else:
        mag_params = dict(base_params)
        if "seed" in mag_params:
            mag_params["seed"] = mag_params["seed"] + 1
        magnitude = spec.dense(magnitudes, **mag_params)
    direction = spec.function(list(directions), **base_params).to(torch.float64)
    if renormalize_direction:
        direction = _decouple_dense(direction, magnitude_axis)[1]
    return recompose(magnitude, direction, magnitude_axis).float(), report


#: Checks of DO-Merging's own parameters (the shared ones are checked by the registry).
DO_CHECKS = {
    "decouple": (is_bool, "True or False"),
    "orthogonalize": (is_bool, "True or False"),
    "renormalize_direction": (is_bool, "True or False"),
    "normalize_factors": (is_bool, "True or False"),
    "magnitude_axis": (lambda v: v in ("in", "out"), "'in' (per input column) or 'out' (per output row)"),
    "magnitude_merge": (lambda v: v in ("mean", "base"), "'mean' or 'base'"),
    "gamma": (lambda v: is_real(v) and v >= 0, "a finite number >= 0"),
    "steps": (lambda v: is_int(v) and v >= 0, "an integer >= 0"),
    "lr": (lambda v: v is None or (is_real(v) and v > 0), "None (the optimizer's default) or a number > 0"),
    "optimizer": (lambda v: v in ORTHO_LR, "'adam' or 'gd'"),
}


def prepare_do(
    adapters: Sequence[Mapping[str, LoRAUpdate]], **params: Any
) -> tuple[list[dict[str, LoRAUpdate]], dict[str, Any]]:
    """DO-Merging's ``precompute``: orthogonalise every layer once (:func:`orthogonalize_adapters`).

    Returns the orthogonalised adapters and ``{"orthogonalize": False}``: ``do`` on them with that
    equals ``do`` on the originals with ``orthogonalize=True``, bit for bit, for any λ and base. With
    ``orthogonalize=False`` in ``params`` nothing is done. Takes DO's parameters (the ortho ones
    are used: γ, steps, lr, optimizer, normalize_factors; defaults as registered).
    """
    options = {k: params[k] for k in ORTHO_OPTIONS if k in params}  # the rest: orthogonalize_updates' defaults
    if not params.get("orthogonalize", True):
        return [dict(ad) for ad in adapters], {}
    return orthogonalize_adapters(adapters, **options)[0], {"orthogonalize": False}


@register(
    "do",
    paper="Decouple and Orthogonalize: A Data-Free Framework for LoRA Merging (Zheng et al., 2025)",
    url="https://arxiv.org/abs/2505.15875",
    description="orthogonalise A and B across tasks, merge column magnitudes (mean) and directions (base) apart",
    forwards=BASE_PARAMS,
    checks=DO_CHECKS,
    tune="gamma",
    tune_in_grid=False,
    variants=True,
    precompute=prepare_do,
    defaults_from=do_merge_with_report,
)
def do_merge(updates: Sequence[LoRAUpdate], **params: Any) -> torch.Tensor:
    """DO-Merging of one layer; see :func:`do_merge_with_report` for the equations and switches."""
    return do_merge_with_report(updates, **params)[0]


def orthogonalize_updates(
    updates: Sequence[LoRAUpdate],
    gamma: float = ORTHO_GAMMA,
    steps: int = ORTHO_STEPS,
    lr: float | None = None,
    optimizer: str = "adam",
    normalize_factors: bool = True,
) -> tuple[list[LoRAUpdate], DOReport]:
    r"""DO-Merging's orthogonalisation step alone, for one layer: :math:`\{(A_i, s_iB_i)\} \mapsto \{(\hat A_i, \hat B_i)\}`.

    The first step of :func:`do_merge_with_report` (scaling folded into ``B``, float64, scaling 1
    on the result). It depends on neither λ nor the base method, so a benchmark can run it once
    and merge the result with ``orthogonalize=False`` at every grid point: that equals
    ``do_merge(updates, orthogonalize=True, ...)`` bit for bit. A single task comes back as it is.
    """
    tasks = [LoRAUpdate(u.A.to(torch.float64), u.scaling * u.B.to(torch.float64), 1.0) for u in updates]
    if len(tasks) < 2:
        return tasks, DOReport()
    options = dict(gamma=gamma, steps=steps, lr=lr, optimizer=optimizer, normalize_factors=normalize_factors)
    new_A, rep_A = orthogonalize_factors([t.A for t in tasks], "A", **options)
    new_B, rep_B = orthogonalize_factors([t.B for t in tasks], "B", **options)
    return [LoRAUpdate(a, b, 1.0) for a, b in zip(new_A, new_B)], DOReport(ortho_A=rep_A, ortho_B=rep_B)


def orthogonalize_adapters(
    adapters: Sequence[Mapping[str, LoRAUpdate]], progress: bool = False, **options: Any
) -> tuple[list[dict[str, LoRAUpdate]], dict[str, DOReport]]:
    """:func:`orthogonalize_updates` on every layer of N adapters (same modules); options as there.

    Returns the orthogonalised adapters (float64 factors, scaling 1) and ``{module: DOReport}``.
    """
    adapters = list(adapters)
    check_compatible(adapters)
    out: list[dict[str, LoRAUpdate]] = [{} for _ in adapters]
    reports: dict[str, DOReport] = {}
    modules = list(adapters[0])
    if progress:
        modules = tqdm(modules, desc="orthogonalising", unit="layer")
    for module in modules:
        new, reports[module] = orthogonalize_updates([ad[module] for ad in adapters], **options)
        for k, upd in enumerate(new):
            out[k][module] = upd
    return out, reports

