r"""Merging LoRA updates, one layer at a time: pure tensor functions plus one registry.

For one Linear layer and task :math:`i = 1 \dots N`, :math:`\Delta W_i = s_i B_i A_i`
(``d_out × d_in``); a merge method maps :math:`\{\Delta W_i\} \mapsto \Delta W^*` and the merged
model is :math:`W_0 + \Delta W^*` (docs/methods.md §1).

Layout (a file per method, one registry):

* :mod:`.registry` — :class:`MergeMethod`, :func:`register`, parameter checking
  (:func:`resolve_params`), variant names (``do_ties``), and the front door
  :func:`merge_layer` / :func:`merge_adapters`;
* :mod:`.blocks` — TIES' trim / elect / disjoint mean and DARE's drop, on stacked dense tensors;
* :mod:`.task_arithmetic`, :mod:`.ties`, :mod:`.dare`, :mod:`.knots`, :mod:`.do` (+ :mod:`.ortho`,
  DO-Merging's factor orthogonalisation), :mod:`.normeq` (norm-equalised task arithmetic, a control
  for DO-Merging) — one method each, registered on import;
* :mod:`.folders` (+ :mod:`.sources`, :mod:`.refactor`) — PEFT adapter folders in and out
  (``lorakit merge``); no method names in them.

Precision: a method computes in float32, or in float64 when it is given float64 factors (as
DO-Merging gives its base method); the KnOTS SVD and DO-Merging's factor optimisation always run
in float64.
"""

from __future__ import annotations

from .blocks import compute_dtype, dare_drop, disjoint_mean, elect_sign, stack_deltas, trim_topk
from .registry import (
    BASE_DEFAULTS,
    BASE_PARAMS,
    METHODS,
    MergeMethod,
    check_layer,
    get_method,
    layer_params,
    layer_seed,
    merge_adapters,
    merge_layer,
    register,
    resolve_params,
    resolve_variant,
    variant_base,
    variant_names,
)
from .task_arithmetic import task_arithmetic_dense, task_arithmetic_merge
from .ties import ties_dense, ties_merge
from .dare import dare_dense, dare_merge
from .knots import KnotsBasis, knots_basis, knots_merge
from .ortho import (
    ORTHO_GAMMA,
    ORTHO_GTOL,
    ORTHO_LR,
    ORTHO_MIN_STEP,
    ORTHO_OPTIONS,
    ORTHO_STEPS,
    OrthoReport,
    factor_cross_terms,
    orthogonalize_factors,
)
from .do import (
    EPS,
    DOReport,
    decouple,
    decouple_update,
    do_merge,
    do_merge_with_report,
    orthogonalize_adapters,
    orthogonalize_updates,
    recompose,
)
from .normeq import ZERO_RTOL, factored_frobenius_sq, normeq_coefficients, ta_normeq_merge

__all__ = [
    "BASE_DEFAULTS", "BASE_PARAMS", "METHODS", "MergeMethod", "check_layer", "get_method", "layer_params",
    "layer_seed", "merge_adapters", "merge_layer", "register", "resolve_params", "resolve_variant",
    "variant_base", "variant_names", "compute_dtype", "dare_drop", "disjoint_mean", "elect_sign",
    "stack_deltas", "trim_topk", "task_arithmetic_dense", "task_arithmetic_merge", "ties_dense", "ties_merge",
    "dare_dense", "dare_merge", "KnotsBasis", "knots_basis", "knots_merge", "ORTHO_GAMMA", "ORTHO_GTOL",
    "ORTHO_LR", "ORTHO_MIN_STEP", "ORTHO_OPTIONS", "ORTHO_STEPS", "OrthoReport", "factor_cross_terms", "orthogonalize_factors",
    "EPS", "DOReport", "decouple", "decouple_update", "do_merge", "do_merge_with_report",
    "orthogonalize_adapters", "orthogonalize_updates", "recompose", "ZERO_RTOL", "factored_frobenius_sq",
    "normeq_coefficients", "ta_normeq_merge",
]
