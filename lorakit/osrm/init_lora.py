"""Writing OSRM's ``A_t`` into a peft model (``lora_A ← A_t``, ``lora_B ← 0``) and OSRM-INIT.

OSRM-INIT (docs/methods.md §2.8): features of every task on the pre-trained model
(:func:`~lorakit.osrm.features.collect_features`), then task ``t``'s ``A_t`` from the others'
(:func:`~lorakit.osrm.subspace.leave_one_out_subspaces`, eq. 4.2), shape ``(r, d_in)``.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from ..errors import LorakitError
from ..lora.names import peft_key
from .features import collect_features
from .modules import resolve_modules
from .subspace import leave_one_out_subspaces


def init_lora_A(
    peft_model: torch.nn.Module,
    A_by_module: Mapping[str, torch.Tensor],
    adapter_name: str = "default",
    freeze_A: bool = False,
) -> list[str]:
    """OSRM initialisation: ``lora_A ← A`` and ``lora_B ← 0`` for each named module, in place.

    ``ΔW = s B A = 0`` afterwards, so the peft model's output equals the base model's output
    exactly. Each ``lora_A`` parameter keeps its dtype and device (``A`` is cast to them, never
    the parameter replaced; with peft's default ``autocast_adapter_dtype`` the adapter of a bf16
    model is float32). OSRM's ``A`` has unit rows while peft's default ``A`` does not, so the
    learning rate that suits ``B`` may differ (docs/methods.md §2.12, H3).

    Args:
        peft_model: a model made by ``peft.get_peft_model`` (LoRA, not DoRA).
        A_by_module: ``{module name: A (r × d_in)}``; names relative to the base model or with
            ``base_model.model.``. Modules not named keep their initialisation.
        adapter_name: the peft adapter to initialise.
        freeze_A: set ``requires_grad=False`` on those ``lora_A`` weights (train ``B`` only).

    Returns:
        The initialised module names (relative to the base model).
    """
    modules = resolve_modules(peft_model, A_by_module)
    for name, module in modules.items():
        lora_A = getattr(module, "lora_A", None)
        if lora_A is None or not hasattr(lora_A, "keys") or adapter_name not in lora_A.keys():
            raise LorakitError(
                f"module {name} has no LoRA adapter {adapter_name!r}; add it to the LoraConfig target_modules"
            )
        if getattr(module, "use_dora", {}).get(adapter_name, False):
            raise LorakitError(f"module {name} is a DoRA layer; OSRM initialisation needs plain LoRA (use_dora=False)")
        A = torch.as_tensor(A_by_module[_find_key(A_by_module, name)])
        weight = lora_A[adapter_name].weight
        if tuple(weight.shape) != tuple(A.shape):
            raise LorakitError(
                f"A for {name} has shape {tuple(A.shape)} but lora_A is {tuple(weight.shape)} (r, d_in); "
                "build the subspace with the adapter's rank"
            )
    with torch.no_grad():
        for name, module in modules.items():
            A = torch.as_tensor(A_by_module[_find_key(A_by_module, name)])
            weight = module.lora_A[adapter_name].weight
            weight.copy_(A.to(device=weight.device, dtype=weight.dtype))
            module.lora_B[adapter_name].weight.zero_()
            if freeze_A:
                weight.requires_grad_(False)
    return list(modules)


def _find_key(mapping: Mapping[str, object], short: str) -> str:
    return short if short in mapping else peft_key(short)


def _load_model(model_or_path) -> torch.nn.Module:
    if isinstance(model_or_path, torch.nn.Module):
        return model_or_path
    from transformers import AutoModelForSequenceClassification  # lazy: heavy, only for a path

    try:
        return AutoModelForSequenceClassification.from_pretrained(str(model_or_path))
    except OSError as exc:
        raise LorakitError(
            f"cannot load a model from {model_or_path} ({exc}); pass a model folder or a model"
        ) from None


def osrm_init(
    model_or_path,
    task_batches: Mapping[str, Iterable[Mapping[str, torch.Tensor]]],
    module_names: Iterable[str],
    r: int,
    mode: str = "tokens",
    max_rows_per_module: int | None = None,
    seed: int = 0,
    progress: bool = False,
    return_features: bool = False,
):
    """OSRM-INIT (docs/methods.md §2.8): each task's ``{module: A_t}``, built from the other tasks' features.

    Features are collected once per task on the pre-trained model (a path is loaded with
    ``AutoModelForSequenceClassification``; a peft model's adapters are switched off), then
    :func:`leave_one_out_subspaces`. Write the result into each task's peft model with
    :func:`init_lora_A` before fine-tuning.

    Returns:
        ``{task: {module: A_t (r × d_in, float64)}}``, or ``(that, features)`` with
        ``return_features`` (``features = {task: {module: H_j}}``).
    """
    model = _load_model(model_or_path)
    module_names = list(module_names)
    features = {
        task: collect_features(model, batches, module_names, mode, max_rows_per_module, seed, progress)
        for task, batches in task_batches.items()
    }
    subspaces = leave_one_out_subspaces(features, r)
    return (subspaces, features) if return_features else subspaces
