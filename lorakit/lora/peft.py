r"""LoRA bookkeeping: the one place that knows about A, B, scaling and shapes.

Notation (notebook 01, eq. 1.1–1.3; peft's convention):

.. math::

    y = W_0 x + s\,B A x, \qquad \Delta W = s\,B A,

* ``A``  — ``lora_A.weight``, shape ``(r, d_in)`` (input side, "down" matrix),
* ``B``  — ``lora_B.weight``, shape ``(d_out, r)`` (output side, "up" matrix),
* ``s``  — the scaling: ``α / r`` for plain LoRA, ``α / √r`` for rsLoRA,
* ``ΔW`` — dense update, shape ``(d_out, d_in)``, same as the Linear weight ``W_0``.

Everything else in lorakit (merging, analysis, OSRM) works on :class:`LoRAUpdate` objects or on
dense ``ΔW`` tensors made by :meth:`LoRAUpdate.delta`; the scaling is folded in exactly once,
here. The math lives in :mod:`lorakit.lora.update` (re-exported here); this module holds the
PEFT naming rules (the only place that knows peft's ``base_model.model.`` prefix and
``lora_A``/``lora_B`` key layout) and reading/writing adapter folders.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Mapping, Sequence

import safetensors.torch  # module attribute calls: a monkeypatched save_file/load_file is seen
import torch
from safetensors import SafetensorError

from ..errors import LorakitError
from ..fsutil import atomic_folder
from .names import parse_peft_lora_key, peft_key, peft_lora_key, strip_peft_prefix
from .update import Adapter, LoRAUpdate, lora_scaling

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_WEIGHTS_BIN = "adapter_model.bin"


# ----------------------------------------------------------------------------------------------
# Reading adapters: from a live peft model or from a PEFT adapter folder on disk
# ----------------------------------------------------------------------------------------------


def _factors_to_adapter(
    factors: Mapping[str, Mapping[str, torch.Tensor]], scaling_for: Callable[[str, int], float]
) -> Adapter:
    adapter: Adapter = {}
    for module in sorted(factors):
        parts = factors[module]
        if "A" not in parts or "B" not in parts:
            raise LorakitError(
                f"adapter is incomplete: module {module} has only lora_{''.join(parts)}; "
                "re-save the adapter with peft's save_pretrained"
            )
        A, B = parts["A"], parts["B"]
        adapter[module] = LoRAUpdate(A, B, scaling_for(module, A.shape[0]))
    return adapter


def read_peft_model(model: torch.nn.Module, adapter_name: str = "default") -> Adapter:
    """Read every LoRA layer of a live peft model into ``{module name: LoRAUpdate}``.

    Module names are relative to the wrapped model (``base_model.model.`` stripped), so they
    match ``model.get_base_model().named_modules()``. Factors are detached float32 copies.
    """
    adapter: Adapter = {}
    for name, module in model.named_modules():
        lora_A = getattr(module, "lora_A", None)
        if lora_A is None or not hasattr(lora_A, "keys") or adapter_name not in lora_A.keys():
            continue
        if getattr(module, "use_dora", {}).get(adapter_name, False):
            raise LorakitError(
                f"module {name} is a DoRA layer; lorakit does not merge DoRA adapters yet "
                "(train or export the adapter without use_dora)"
            )
        A = module.lora_A[adapter_name].weight.detach().float().cpu().clone()
        B = module.lora_B[adapter_name].weight.detach().float().cpu().clone()
        s = float(module.scaling[adapter_name])
        adapter[strip_peft_prefix(name)] = LoRAUpdate(A, B, s)
    if not adapter:
        raise LorakitError("the model has no LoRA layers: pass a peft model made by get_peft_model")
    return adapter


def read_adapter_config(folder: str | os.PathLike) -> dict:
    """Read and sanity-check ``adapter_config.json`` of a PEFT adapter folder."""
    folder = Path(folder)
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise LorakitError(f"{folder} is not a PEFT adapter folder: {ADAPTER_CONFIG} is missing")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LorakitError(f"{path} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})")
    if config.get("peft_type", "LORA") != "LORA":
        raise LorakitError(f"{folder} holds a {config.get('peft_type')} adapter; only LoRA is supported")
    if config.get("use_dora"):
        raise LorakitError(
            f"{folder} is a DoRA adapter; lorakit refuses DoRA because its update W' = m·(W0+sBA)/‖W0+sBA‖ "
            "is not a LoRA update s·B·A (merge_and_unload each DoRA model and merge the dense deltas, "
            "or train without use_dora)"
        )
    return config


def scaling_from_config(config: Mapping, module: str, r: int) -> float:
    """peft's scaling for one module from an adapter config (``rank_pattern``/``alpha_pattern`` honoured).

    Patterns are matched as in peft: the pattern key is a regex matched at the end of the module name.
    """
    alpha = config.get("lora_alpha", 8)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = value
            break
    return lora_scaling(alpha, r, bool(config.get("use_rslora", False)))


def load_adapter_state(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The raw tensors of a PEFT adapter folder (safetensors preferred, ``.bin`` accepted)."""
    folder = Path(folder)
    st, binf = folder / ADAPTER_WEIGHTS, folder / ADAPTER_WEIGHTS_BIN
    if st.is_file():
        try:
            return safetensors.torch.load_file(str(st))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise LorakitError(f"{st} is corrupt or unreadable ({exc}); re-save the adapter") from None
    if binf.is_file():
        try:
            return torch.load(str(binf), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad pickle
            raise LorakitError(f"{binf} is corrupt or unreadable ({exc}); re-save the adapter") from None
    raise LorakitError(f"{folder} has no {ADAPTER_WEIGHTS} (or {ADAPTER_WEIGHTS_BIN}); is it a PEFT adapter folder?")


def read_adapter(source: "str | os.PathLike | torch.nn.Module", adapter_name: str = "default") -> Adapter:
    """Read a LoRA adapter as ``{module name: LoRAUpdate}`` from a peft model or an adapter folder.

    Module names are relative to the base model (``base_model.model.`` stripped). Factors are
    float32; NaN or inf in any factor is an error.
    """
    if isinstance(source, torch.nn.Module):
        adapter = read_peft_model(source, adapter_name)
    else:
        config = read_adapter_config(source)
        state = load_adapter_state(source)
        factors: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in state.items():
            parsed = parse_peft_lora_key(key)
            if parsed is None:
                continue
            module, part = parsed
            factors.setdefault(module, {})[part] = tensor.float()
        if not factors:
            raise LorakitError(f"{source} holds no lora_A/lora_B weights; is it a LoRA adapter?")
        adapter = _factors_to_adapter(factors, lambda m, r: scaling_from_config(config, m, r))
    for module, upd in adapter.items():
        if not upd.is_finite():
            raise LorakitError(f"adapter factor of {module} contains NaN or inf; retrain or re-export it")
    return adapter


def read_head(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Non-LoRA weights saved in an adapter folder (``modules_to_save``: e.g. a classifier head)."""
    state = load_adapter_state(folder)
    head = {}
    for key, tensor in state.items():
        if parse_peft_lora_key(key) is not None:
            continue
        head[strip_peft_prefix(key)] = tensor
    return head


# ----------------------------------------------------------------------------------------------
# Applying and writing
# ----------------------------------------------------------------------------------------------


def apply_deltas(model: torch.nn.Module, deltas: Mapping[str, torch.Tensor], sign: float = 1.0) -> None:
    r"""In place: :math:`W \leftarrow W + \text{sign}\cdot\Delta W` for each named Linear module.

    ``deltas`` maps module names of ``model`` (as in ``model.named_modules()``) to ``(d_out, d_in)``.
    Every entry is checked before any weight changes, so a bad entry leaves the model untouched.
    """
    modules = dict(model.named_modules())
    for name, delta in deltas.items():
        if name not in modules or not hasattr(modules[name], "weight"):
            raise LorakitError(
                f"module {name} is not in the model; the adapter was made for another base model"
            )
        weight = modules[name].weight
        if tuple(weight.shape) != tuple(delta.shape):
            raise LorakitError(
                f"ΔW of {name} has shape {tuple(delta.shape)} but the model's weight is "
                f"{tuple(weight.shape)}; the adapter was made for another base model"
            )
    with torch.no_grad():
        for name, delta in deltas.items():
            weight = modules[name].weight
            weight.add_(delta.to(weight.dtype).to(weight.device), alpha=sign)


def adapter_config(
    ranks: Mapping[str, int],
    base_model_name: str | None,
    task_type: str | None,
    head_modules: Sequence[str],
    fan_in_fan_out: bool = False,
) -> dict:
    """``adapter_config.json`` for an adapter whose scaling is folded into B: ``lora_alpha = r`` (scaling 1).

    ``target_modules`` lists the exact module names (no layer outside ``ranks`` gets a LoRA);
    layers whose rank differs from the most common one get ``rank_pattern``/``alpha_pattern``
    entries (escaped, so they match that module only).
    """
    r0 = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {re.escape(m): r for m, r in ranks.items() if r != r0}
    return {
        "peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": base_model_name,
        "r": r0, "lora_alpha": r0, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
        "target_modules": sorted(ranks), "lora_dropout": 0.0, "bias": "none", "use_rslora": False,
        "use_dora": False, "fan_in_fan_out": bool(fan_in_fan_out), "init_lora_weights": True,
        "modules_to_save": [m.split(".")[-1] for m in head_modules] or None, "inference_mode": True,
    }


def write_adapter(
    adapter: Mapping[str, LoRAUpdate],
    out: str | os.PathLike,
    base_model_name: str,
    extra_state: Mapping[str, torch.Tensor] | None = None,
    task_type: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``{module: LoRAUpdate}`` as a PEFT adapter folder that ``PeftModel.from_pretrained`` loads.

    Every layer is written with its own rank (``rank_pattern``) and ``lora_alpha = r`` so that
    peft's scaling is 1; the update's own scaling is folded into ``B``. ``extra_state`` holds
    non-LoRA weights (e.g. ``classifier.weight``) saved as ``modules_to_save``. The folder is
    written to a temporary sibling and renamed, so a failure leaves nothing behind.
    """
    if not adapter:
        raise LorakitError("nothing to write: the adapter has no layers")
    ranks = {m: u.rank for m, u in adapter.items()}
    with atomic_folder(out, overwrite) as tmp:
        state: dict[str, torch.Tensor] = {}
        for module, upd in adapter.items():
            folded = upd.folded()
            state[peft_lora_key(module, "A")] = folded.A.contiguous().float()
            state[peft_lora_key(module, "B")] = folded.B.contiguous().float()
        modules_to_save = sorted({k.rsplit(".", 1)[0] for k in (extra_state or {})})
        for key, tensor in (extra_state or {}).items():
            state[peft_key(key)] = tensor.contiguous()
        config = adapter_config(ranks, base_model_name, task_type, modules_to_save)
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
        safetensors.torch.save_file(state, str(tmp / ADAPTER_WEIGHTS))
    return Path(out)


def write_merged(
    model: torch.nn.Module,
    deltas: Mapping[str, torch.Tensor],
    out: str | os.PathLike,
    tokenizer=None,
    overwrite: bool = False,
) -> Path:
    """Save ``model`` with ``W0 + ΔW`` applied (a full model folder for ``from_pretrained``).

    The model is changed in place only while writing and restored afterwards. Atomic like
    :func:`write_adapter`.
    """
    modules = dict(model.named_modules())
    originals = {}
    with atomic_folder(out, overwrite) as tmp:
        for name in deltas:
            if name in modules and hasattr(modules[name], "weight"):
                originals[name] = modules[name].weight.detach().clone()
        try:
            apply_deltas(model, deltas, +1.0)
            model.save_pretrained(str(tmp))
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
        finally:
            with torch.no_grad():  # restore exactly (copy), not by subtracting ΔW again
                for name, weight in originals.items():
                    modules[name].weight.copy_(weight)
    return Path(out)
