r"""What one :func:`lorakit.merge.merge_adapter_folders` call will do: the checked options, the
per-layer merge (:class:`MergePlan`) and, for ``--dry-run``, the memory it needs.

Per layer, the plan gives the dense :math:`\Delta W^*` (:meth:`MergePlan.dense`), the factors
:math:`(A^*, B^*)` written to an adapter (:meth:`MergePlan.factors`) and, when the adapters carry
peft's ``lora_bias``, the merged bias change :math:`\Delta b^* = \lambda \sum_i w_i s_i b_i`
(:meth:`MergePlan.bias`; task arithmetic only: it is linear, so exact).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..errors import LorakitError
from .factors import concat_factors, refactor_dense, truncate_factors, weighted
from ..merge.registry import METHODS, layer_params
from .sources import SourceAdapter

FORMATS = ("adapter", "merged")
#: ``--dtype``: the dtype of the written factors (adapter) or weights (merged model).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str | None) -> int | None:
    """``--max-shard-size``: bytes (an int) or a number with a unit (``500MB``, ``2GB``, ``1GiB``)."""
    if size is None or (isinstance(size, int) and not isinstance(size, bool) and size > 0):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(size).upper())
    if match is None or match.group(2) not in _UNITS or float(match.group(1)) <= 0:
        raise LorakitError(f"max shard size must be a size like 500MB, 2GB or 1GiB (or bytes), got {size!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def check_options(
    adapters: Sequence, weights: Sequence[float] | None, fmt: str, rank: int | None, base: str | None,
    out, overwrite: bool, device: str, dtype: str | None = None, max_shard_size=None,
) -> tuple[list[float], torch.device]:
    """Validate everything that needs no file reading; returns ``(weights, device)``."""
    if not adapters:
        raise LorakitError("no adapters given; pass one or more PEFT adapter folders")
    if fmt not in FORMATS:
        raise LorakitError(f"format must be 'adapter' or 'merged', got {fmt!r}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise LorakitError(f"rank must be a positive integer (the written adapter's rank), got {rank!r}")
    if rank is not None and fmt == "merged":
        raise LorakitError("rank applies to format 'adapter' only; drop --rank or use --format adapter")
    if fmt == "merged" and not base:
        raise LorakitError("format 'merged' needs the base model: pass --base (a model folder or alias like minilm)")
    if dtype is not None and dtype not in DTYPES:
        raise LorakitError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if max_shard_size is not None and fmt != "merged":
        raise LorakitError("max shard size applies to format 'merged' only (peft loads one adapter file)")
    parse_size(max_shard_size)
    if weights is None:
        weights = [1.0] * len(adapters)
    weights = list(weights)
    if len(weights) != len(adapters):
        raise LorakitError(f"{len(weights)} weights for {len(adapters)} adapters; give one weight per adapter")
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
        raise LorakitError(f"weights must be finite numbers, got {weights}")
    if out is not None:
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise LorakitError(f"{out} is a file; choose an output folder")
        if out.exists() and not overwrite:
            raise LorakitError(f"{out} already exists; choose another output folder or pass --overwrite")
        if any(out.resolve() == Path(a).resolve() for a in adapters):
            raise LorakitError(f"the output folder {out} is one of the input adapters; choose another folder")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise LorakitError(f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LorakitError("device cuda was asked for but CUDA is not available; use --device cpu")
    return [float(w) for w in weights], dev


@dataclass(frozen=True)
class MergePlan:
    """What one ``merge_adapter_folders`` call merges: the checked sources and options."""

    sources: Sequence[SourceAdapter]
    weights: Sequence[float]
    method: str
    resolved: Mapping[str, Any]
    rank: int | None
    device: torch.device
    head: Mapping[str, torch.Tensor]

    def __post_init__(self) -> None:
        if self.bias_modules and not self.factored:
            raise LorakitError(
                f"the adapters carry lora_bias, which lorakit merges by task arithmetic only (exact, linear); "
                f"{self.method} has no rule for bias vectors: use --method task_arithmetic or adapters without lora_bias"
            )

    @property
    def task_type(self) -> str | None:
        return next((s.config["task_type"] for s in self.sources if s.config.get("task_type")), None)

    @property
    def transpose(self) -> bool:
        """peft's ``fan_in_fan_out`` (GPT-2's Conv1D stores ``W`` as ``(d_in, d_out)``)."""
        return bool(self.sources[0].config.get("fan_in_fan_out"))

    @property
    def base_name(self) -> str | None:
        names = (s.config.get("base_model_name_or_path") for s in self.sources)
        return next((n for n in names if n), None)

    @property
    def factored(self) -> bool:
        """The method's result is exactly its concatenated factors (task arithmetic)."""
        return METHODS[self.method].factored

    @property
    def modules(self) -> list[str]:
        return list(self.sources[0].layers)

    @property
    def bias_modules(self) -> list[str]:
        """Modules with a ``lora_bias`` in any adapter (the others count as zero there)."""
        return sorted({m for s in self.sources for m in s.biases})

    def updates(self, module: str) -> list:
        r"""Layer ``module`` of every adapter, weighted (:math:`B_i \leftarrow w_i B_i`), on the merge device."""
        return [weighted(s.layers[module], w, self.device) for s, w in zip(self.sources, self.weights)]

    def dense(self, module: str) -> torch.Tensor:
        """Dense float32 ``ΔW*`` of one layer, exactly as :func:`lorakit.merge.merge_adapters` computes it
        (a ``seed`` is mixed with the module name, :func:`lorakit.merge.layer_params`)."""
        params = layer_params(self.resolved, module)
        return METHODS[self.method].function(self.updates(module), **params).float()

    def factors(self, module: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(A*, B*, energy kept)`` of one layer for the adapter format."""
        if self.factored:
            A, B = concat_factors(self.updates(module), self.resolved["lam"])
            return (A, B, 1.0) if self.rank is None else truncate_factors(A, B, self.rank)
        return refactor_dense(self.dense(module), self.rank)

    def bias(self, module: str) -> torch.Tensor | None:
        r""":math:`\Delta b^* = \lambda \sum_i w_i s_i b_i` of one layer (float32), None without lora_bias."""
        terms = [
            (w * s.layers[module].scaling) * s.biases[module]
            for s, w in zip(self.sources, self.weights) if module in s.biases
        ]
        return self.resolved["lam"] * torch.stack(terms).sum(0) if terms else None

    def summary(self, format: str, out, head_note: str) -> dict[str, Any]:
        """The summary dict before the merge runs (filled in as layers are written)."""
        refactor = None
        if format == "adapter":
            refactor = (
                "exact: factors concatenated (rank = sum of the adapters' ranks)" if self.factored and self.rank is None
                else "exact: SVD at full numerical rank" if self.rank is None else f"SVD truncated to rank {self.rank}"
            )
        return {
            "adapters": [str(s.path) for s in self.sources], "method": self.method, "params": dict(self.resolved),
            "weights": list(self.weights), "format": format, "out": str(out) if out is not None else None,
            "layers": len(self.sources[0].layers), "rank": None, "refactor": refactor, "energy": None,
            "energy_per_layer": {}, "lora_parameters": 0, "head": head_note, "notes": [], "device": str(self.device),
        }

    def out_rank(self, module: str) -> int:
        """The written adapter's rank of one layer (an upper bound for an SVD at full numerical rank)."""
        total = sum(s.layers[module].rank for s in self.sources)
        d_out, d_in = self.sources[0].layers[module].shape
        bound = total if self.factored else min(d_out, d_in)
        return bound if self.rank is None else min(self.rank, bound)


def estimate_memory(plan: MergePlan, fmt: str, dtype: torch.dtype, base_params: int = 0,
                    base_dtype: torch.dtype = torch.float32) -> dict[str, int]:
    """Bytes a merge needs (a dry run's estimate): the adapters read (float32), the largest layer's
    working set (dense methods hold every adapter's ΔW_i and the result), the base model (merged
    format), and the output written (``dtype``)."""
    f32, n = 4, len(plan.sources)
    adapters = sum(4 * (u.A.numel() + u.B.numel()) for s in plan.sources for u in s.layers.values())
    adapters += sum(t.numel() * t.element_size() for s in plan.sources for t in s.head.values())
    layer = 0
    for module in plan.modules:
        d_out, d_in = plan.sources[0].layers[module].shape
        r = sum(s.layers[module].rank for s in plan.sources)
        factored = f32 * r * (d_out + d_in) * 2
        dense = f32 * d_out * d_in * (n + 2) if (not plan.factored or fmt == "merged") else 0
        layer = max(layer, factored + dense)
    size = torch.empty((), dtype=dtype).element_size()
    base = base_params * torch.empty((), dtype=base_dtype).element_size()
    if fmt == "merged":
        output = base_params * size
    else:
        ranks = {m: plan.out_rank(m) for m in plan.modules}
        output = sum(size * ranks[m] * sum(plan.sources[0].layers[m].shape) for m in plan.modules)
        output += sum(t.numel() * size for t in plan.head.values())
    return {"adapters": adapters, "layer": layer, "base": base, "peak": adapters + layer + base, "output": output}
