r"""OSRM: choose each task's LoRA input subspace *before* fine-tuning (notebook 04).

Notation (notebook 04; docs/methods.md §2). A target Linear layer computes ``y = W h``, with
``W0`` of shape ``(d_out, d_in)``; task ``i``'s LoRA update is ``ΔW_i = s B_i A_i``
(``A_i``: ``(r, d_in)``, ``B_i``: ``(d_out, r)``, see :mod:`lorakit.lora.peft`). ``H_j`` has shape
``(k, d_in)``: ``k`` inputs of that layer in the **pre-trained** model, computed on task ``j``'s
data (one row per token, or one row per task).

Merging N adapters by task arithmetic and feeding an input ``h_j`` of task ``j``:

.. math::

    W h_j = (W_0 + s B_j A_j)\,h_j \;+\; \underbrace{\textstyle\sum_{i \ne j} s B_i A_i h_j}
    _{\text{interference}}                                                        \tag{4.1}

Orthogonal task vectors (``⟨ΔW_i, ΔW_j⟩_F = 0``) do not make the interference vanish; it
depends on ``A_i h_j``, i.e. on the data (:func:`counterexample`). Because ``B_i`` is learnt
later, OSRM constrains ``A_t`` so that it maps the other tasks' features to (nearly) zero:

.. math::

    \min_{A \in \mathbb R^{r\times d_{in}},\; A A^\top = I_r} \lVert A H_{other}^\top \rVert_F^2,
    \qquad H_{other}^{(t)} = \operatorname{vstack}_{j \ne t} H_j                 \tag{4.2}

.. math::

    \lVert A H^\top \rVert_F^2 = \operatorname{tr}(A\,G\,A^\top), \qquad G = H^\top H
    \quad\text{(uncentered Gram, } d_{in}\times d_{in})                          \tag{4.3}

By Ky Fan's minimum principle the minimum of (4.3) over orthonormal rows is
``λ_1 + … + λ_r``, the ``r`` smallest eigenvalues of ``G``, reached by their eigenvectors
(as rows) (4.4). The interference of an adapter ``t`` on task ``j`` is measured layer by layer
as

.. math::

    R_{t\to j} = \frac{\lVert \Delta W_t H_j^\top \rVert_F}{\lVert \Delta W_j H_j^\top \rVert_F}
                                                                                  \tag{4.5}

Pipeline: :func:`collect_features` (hooks on the pre-trained model, padding dropped) →
:func:`leave_one_out_subspaces` (→ :func:`subspace`) → :func:`init_lora_A` (``lora_A ← A_t``,
``lora_B ← 0``) → fine-tune → merge → :func:`interference_matrix`. :func:`osrm_init` runs the
first two steps.

Modules: :mod:`~lorakit.osrm.modules` (finding the target Linear layers),
:mod:`~lorakit.osrm.features` (``H`` by forward pre-hooks), :mod:`~lorakit.osrm.subspace`
(Ky Fan: eq. 4.2–4.4), :mod:`~lorakit.osrm.init_lora` (``lora_A ← A_t``, OSRM-INIT),
:mod:`~lorakit.osrm.interference` (eq. 4.5 and the parameter-space counterexample),
:mod:`~lorakit.osrm.geometry` (subspace overlap and own-task energy of any ``A`` init). Every
public name is importable from ``lorakit.osrm`` itself.
"""

from __future__ import annotations

from .features import FEATURE_MODES, collect_features
from .geometry import init_geometry, own_energy_fraction
from .init_lora import init_lora_A, osrm_init
from .interference import (
    Counterexample,
    counterexample,
    interference_matrix,
    interference_ratio,
    mean_interference_ratio,
)
from .modules import find_linear_modules
from .subspace import TIE_RTOL, leave_one_out_subspaces, subspace, subspace_from_gram

__all__ = [
    "FEATURE_MODES", "TIE_RTOL", "Counterexample", "collect_features",
    "counterexample", "find_linear_modules", "init_geometry", "init_lora_A", "interference_matrix",
    "interference_ratio", "leave_one_out_subspaces", "mean_interference_ratio", "osrm_init", "own_energy_fraction", "subspace", "subspace_from_gram",
]
