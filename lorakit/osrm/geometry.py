r"""Geometry of LoRA ``A`` initialisations: cross-task subspace overlap and own-task feature energy.

For task ``t`` and one module, ``A_t`` is ``(r, d_in)`` and ``H_t`` ``(k_t, d_in)`` (task ``t``'s
pre-trained features, :func:`~lorakit.osrm.features.collect_features`). With
:math:`P_t = A_t^\top (A_t A_t^\top)^{-1} A_t = A_t^+ A_t` (``d_in × d_in``), the orthogonal
projector on the row space of ``A_t``, i.e. the inputs the adapter reads:

.. math::

    O_{ij} = \frac{\lVert P_i P_j \rVert_F^2}{r}, \qquad
    E_t = \frac{\lVert H_t A_t^\top (A_t A_t^\top)^{-1/2} \rVert_F^2}{\lVert H_t \rVert_F^2}
        = \frac{\operatorname{tr}(P_t H_t^\top H_t)}{\operatorname{tr}(H_t^\top H_t)}.

``O`` is 1 for the same subspace and 0 for orthogonal ones; two independent uniformly random
``r``-dimensional subspaces of :math:`\mathbb{R}^{d_{in}}` give :math:`E[O] = r / d_{in}`.
``E_t`` is the fraction of task ``t``'s own feature energy inside its ``A_t``'s row space; a
uniformly random subspace gets :math:`r / d_{in}` in expectation. OSRM's leave-one-out ``A_t``
(docs/methods.md §2.2) avoids the other tasks' features, so for tasks with similar features it
both misses its own task's energy and overlaps the other tasks' ``A``.
"""

from __future__ import annotations

import itertools
from typing import Mapping

import torch

from ..lora.measures import row_space_projector, subspace_overlap
from ..errors import LorakitError
from ..lora.update import LoRAUpdate


def _as_update(A: torch.Tensor) -> LoRAUpdate:
    """``A`` as a LoRA update (``B = 0``) for :mod:`lorakit.lora.measures`'s row-space functions."""
    A = torch.as_tensor(A).detach().double().cpu()
    return LoRAUpdate(A, torch.zeros(1, A.shape[0], dtype=A.dtype), 1.0)


def _check(A_by_task: Mapping[str, Mapping[str, torch.Tensor]], features: Mapping[str, Mapping[str, torch.Tensor]]):
    tasks = list(A_by_task)
    if not tasks:
        raise LorakitError("no tasks given; pass {task: {module: A (r × d_in)}}")
    modules = list(A_by_task[tasks[0]])
    for t in tasks:
        if set(A_by_task[t]) != set(modules):
            raise LorakitError(f"tasks {tasks[0]} and {t} have A for different modules; build them for the same modules")
        if t not in features or not set(modules) <= set(features[t]):
            raise LorakitError(f"no features of task {t} for every module of A; collect them with the same module names")
        for m in modules:
            A, H = A_by_task[t][m], features[t][m]
            if A.ndim != 2 or H.ndim != 2 or A.shape[1] != H.shape[1]:
                raise LorakitError(
                    f"{t} {m}: A {tuple(A.shape)} and features {tuple(H.shape)} must be (r, d) and (k, d) with the same d"
                )
    return tasks, modules


def own_energy_fraction(A: torch.Tensor, H: torch.Tensor) -> float:
    r""":math:`\operatorname{tr}(P H^\top H) / \operatorname{tr}(H^\top H)` with :math:`P = A^+ A` (float64).

    ``A``: ``(r, d)``, ``H``: ``(k, d)``. Equal to :math:`\lVert H A^\top (A A^\top)^{-1/2}\rVert_F^2 /
    \lVert H \rVert_F^2` for a full-rank ``A``; a LorakitError for all-zero features.
    """
    H = torch.as_tensor(H).detach().double().cpu()
    G = H.T @ H
    total = float(G.trace())
    if total <= 0:
        raise LorakitError("the features are all zero; collect them from the model's real inputs")
    P, _ = row_space_projector(_as_update(A))
    return float((P * G).sum()) / total


def init_geometry(
    A_by_task: Mapping[str, Mapping[str, torch.Tensor]],
    features: Mapping[str, Mapping[str, torch.Tensor]],
) -> dict:
    r"""Cross-task subspace overlap and own-feature energy of one initialisation (module docstring).

    Args:
        A_by_task: ``{task: {module: A_t (r × d_in)}}``, every task with the same modules.
        features: ``{task: {module: H_t (k_t × d_in)}}`` for the same tasks and modules.

    Returns:
        A JSON-able dict: ``overlap`` (mean of :math:`O_{ij}` over task pairs ``i < j`` and modules;
        None for one task; :math:`O` divides by the smaller rank, ``r`` for full-rank ``A``, as
        :func:`lorakit.lora.measures.subspace_overlap`), ``overlap_matrix`` (``N × N``, mean over modules,
        tasks in ``A_by_task`` order), ``energy`` (``{task: mean over modules of E_t}``),
        ``random`` (mean over modules of ``r / d_in``: what a random subspace gets for both), and
        ``per_module`` (``{module: {"overlap": mean over pairs, "energy": {task: E_t}}}``).
    """
    tasks, modules = _check(A_by_task, features)
    adapters = [{m: _as_update(A_by_task[t][m]) for m in modules} for t in tasks]
    overlaps = subspace_overlap(adapters, per_layer=True)
    pairs = list(itertools.combinations(range(len(tasks)), 2))
    per_module = {}
    for m in modules:
        O = overlaps[m]
        per_module[m] = {
            "overlap": sum(float(O[i, j]) for i, j in pairs) / len(pairs) if pairs else None,
            "energy": {t: own_energy_fraction(A_by_task[t][m], features[t][m]) for t in tasks},
        }
    mean_O = sum(overlaps[m] for m in modules) / len(modules)
    random = sum(A_by_task[tasks[0]][m].shape[0] / A_by_task[tasks[0]][m].shape[1] for m in modules) / len(modules)
    return {
        "tasks": tasks,
        "modules": len(modules),
        "overlap": sum(per_module[m]["overlap"] for m in modules) / len(modules) if pairs else None,
        "overlap_matrix": mean_O.tolist(),
        "energy": {t: sum(per_module[m]["energy"][t] for m in modules) / len(modules) for t in tasks},
        "random": random,
        "per_module": per_module,
    }
