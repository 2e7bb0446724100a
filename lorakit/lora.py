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
here.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from .errors import LorakitError
from .fsutil import atomic_folder

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_WEIGHTS_BIN = "adapter_model.bin"


def lora_scaling(alpha: float, r: int, use_rslora: bool = False) -> float:
    r"""peft's scaling: :math:`s = \alpha / r`, or :math:`\alpha / \sqrt r` with rsLoRA."""
    if r <= 0:
        raise LorakitError(f"LoRA rank must be positive, got r={r}")
    return float(alpha) / (math.sqrt(r) if use_rslora else r)


def lora_delta(A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    r"""Dense LoRA update :math:`\Delta W = s\,B A`.

    Args:
        A: ``(r, d_in)``.
        B: ``(d_out, r)``.
        scaling: ``s``.

    Returns:
        ``ΔW`` of shape ``(d_out, d_in)``.
    """
    if A.ndim != 2 or B.ndim != 2 or B.shape[1] != A.shape[0]:
        raise LorakitError(
            f"LoRA factor shapes do not fit: A {tuple(A.shape)} must be (r, d_in) and B "
            f"{tuple(B.shape)} must be (d_out, r) with the same r"
        )
    return scaling * (B @ A)


@dataclass
class LoRAUpdate:
    r"""The LoRA update of one Linear layer: :math:`\Delta W = s\,B A`.

    Attributes:
        A: ``(r, d_in)``, peft's ``lora_A.weight``.
        B: ``(d_out, r)``, peft's ``lora_B.weight``.
        scaling: ``s`` (``α/r``, or ``α/√r`` for rsLoRA).
    """

    A: torch.Tensor
    B: torch.Tensor
    scaling: float = 1.0

    def __post_init__(self) -> None:
        if self.A.ndim != 2 or self.B.ndim != 2 or self.B.shape[1] != self.A.shape[0]:
            raise LorakitError(
                f"LoRA factor shapes do not fit: A {tuple(self.A.shape)} must be (r, d_in) and "
                f"B {tuple(self.B.shape)} must be (d_out, r) with the same r"
            )
        self.scaling = float(self.scaling)

    @property
    def rank(self) -> int:
        """``r``, the number of rows of ``A``."""
        return int(self.A.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.A.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.B.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of ``ΔW``: ``(d_out, d_in)``."""
        return (self.d_out, self.d_in)

    def delta(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        r""":math:`\Delta W = s\,B A`, shape ``(d_out, d_in)``, optionally cast to ``dtype`` first."""
        A, B = self.A, self.B
        if dtype is not None:
            A, B = A.to(dtype), B.to(dtype)
        return lora_delta(A, B, self.scaling)

    @classmethod
    def from_dense(cls, delta: torch.Tensor) -> "LoRAUpdate":
        """A dense update (e.g. from full fine-tuning) as a LoRA update: ``A = I_{d_in}``, ``B = ΔW``, ``s = 1``.

        Exact (``B A = ΔW``), so every merge method and analysis applies to full fine-tuning too.
        """
        return cls(torch.eye(delta.shape[1], dtype=delta.dtype), delta.clone(), 1.0)

    def folded(self) -> "LoRAUpdate":
        """The same update with the scaling folded into ``B`` (``B ← s·B``, ``s ← 1``)."""
        return LoRAUpdate(self.A, self.B * self.scaling, 1.0)

    def to(self, *args, **kwargs) -> "LoRAUpdate":
        """Move/cast both factors, like ``torch.Tensor.to``."""
        return LoRAUpdate(self.A.to(*args, **kwargs), self.B.to(*args, **kwargs), self.scaling)

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.A).all() and torch.isfinite(self.B).all())


# A whole adapter: target module name (e.g. "bert.encoder.layer.0.attention.self.query") -> update.
Adapter = dict[str, LoRAUpdate]


def adapter_deltas(adapter: Mapping[str, LoRAUpdate]) -> dict[str, torch.Tensor]:
    """``{module: ΔW}`` for every layer of an adapter."""
    return {name: upd.delta() for name, upd in adapter.items()}


# ----------------------------------------------------------------------------------------------
# Reading adapters: from a live peft model or from a PEFT adapter folder on disk
# ----------------------------------------------------------------------------------------------


def _module_name_from_key(key: str) -> tuple[str, str] | None:
    """Split a peft state-dict key into (module name, "A"|"B"), or None if it is no LoRA factor.

    Keys look like ``base_model.model.<module>.lora_A[.default].weight``.
    """
    for part in ("lora_A", "lora_B"):
        marker = f".{part}."
        if marker in key and key.endswith(".weight"):
            module = key.split(marker)[0]
            if module.startswith("base_model.model."):
                module = module[len("base_model.model.") :]
            return module, part[-1]
    return None


def _factors_to_adapter(
    factors: Mapping[str, Mapping[str, torch.Tensor]], scaling_for: "callable"
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
        short = name[len("base_model.model.") :] if name.startswith("base_model.model.") else name
        adapter[short] = LoRAUpdate(A, B, s)
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
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(st))
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
            parsed = _module_name_from_key(key)
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
        if _module_name_from_key(key) is not None:
            continue
        name = key[len("base_model.model.") :] if key.startswith("base_model.model.") else key
        head[name] = tensor
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


def factorize_delta(delta: torch.Tensor, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    r"""Factor a dense ``ΔW`` (d_out×d_in) as ``B A`` with ``A`` (r×d_in), ``B`` (d_out×r) by SVD.

    ``ΔW = U Σ Vᵀ``; ``B = U_r Σ_r^{1/2}``, ``A = Σ_r^{1/2} V_rᵀ``. Returns ``(A, B, energy)``, with
    ``energy = ‖Σ_r‖² / ‖Σ‖²`` the fraction of ‖ΔW‖²_F kept (1.0 when nothing is cut).
    """
    U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
    total = float((S**2).sum())
    k = len(S) if rank is None else min(rank, len(S))
    root = S[:k].sqrt()
    A = (root[:, None] * Vh[:k]).to(delta.dtype)
    B = (U[:, :k] * root[None, :]).to(delta.dtype)
    energy = 1.0 if total == 0 else float((S[:k] ** 2).sum()) / total
    return A, B, energy


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
    from safetensors.torch import save_file

    if not adapter:
        raise LorakitError("nothing to write: the adapter has no layers")
    ranks = {m: u.rank for m, u in adapter.items()}
    with atomic_folder(out, overwrite) as tmp:
        state: dict[str, torch.Tensor] = {}
        for module, upd in adapter.items():
            folded = upd.folded()
            state[f"base_model.model.{module}.lora_A.weight"] = folded.A.contiguous().float()
            state[f"base_model.model.{module}.lora_B.weight"] = folded.B.contiguous().float()
        modules_to_save = sorted({k.rsplit(".", 1)[0] for k in (extra_state or {})})
        for key, tensor in (extra_state or {}).items():
            state[f"base_model.model.{key}"] = tensor.contiguous()
        config = adapter_config(ranks, base_model_name, task_type, modules_to_save)
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
        save_file(state, str(tmp / ADAPTER_WEIGHTS))
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


def check_compatible(adapters: Iterable[Mapping[str, LoRAUpdate]], names: Iterable[str] | None = None) -> None:
    """Raise a one-line error unless all adapters adapt the same modules with the same ΔW shapes."""
    adapters = list(adapters)
    names = list(names) if names is not None else [f"adapter {i}" for i in range(len(adapters))]
    if not adapters:
        raise LorakitError("no adapters given; pass at least one")
    ref_modules = set(adapters[0])
    for name, ad in zip(names[1:], adapters[1:]):
        if set(ad) != ref_modules:
            missing = sorted(ref_modules - set(ad))[:2]
            extra = sorted(set(ad) - ref_modules)[:2]
            raise LorakitError(
                f"{name} adapts different modules than {names[0]} (missing {missing}, extra {extra}); "
                "merge only adapters trained with the same target_modules"
            )
        for module in ref_modules:
            if ad[module].shape != adapters[0][module].shape:
                raise LorakitError(
                    f"{name}: ΔW of {module} is {ad[module].shape} but {adapters[0][module].shape} in "
                    f"{names[0]}; the adapters were made for different base models"
                )
