r"""Merge PEFT adapter folders on disk into one PEFT adapter or one merged model, layer by layer.

The Python side of ``lorakit merge`` (:func:`merge_adapter_folders`, also reachable as
``lorakit.merge.merge_adapter_folders``). For every adapted Linear layer, with adapter
:math:`i = 1 \dots N` read from disk (peft's scaling :math:`s_i = \alpha_i / r_i`, or
:math:`\alpha_i / \sqrt{r_i}` with rsLoRA, folded in by :mod:`lorakit.lora`):

.. math::

    \Delta W_i = w_i\, s_i B_i A_i \quad (B_i: d_{out} \times r_i,\ A_i: r_i \times d_{in}), \qquad
    \Delta W^* = \operatorname{Merge}(\{\Delta W_i\}; \text{params})

where :math:`w_i` are the per-adapter **weights** (default 1): each multiplies its adapter's
update *before* the method runs (``B_i ← w_i B_i``), so task arithmetic gives
:math:`\lambda \sum_i w_i \Delta W_i`, and TIES/DARE/KnOTS/DO see the re-weighted updates.

Output (``format``):

* ``"adapter"`` — a PEFT adapter folder. Task arithmetic without ``rank`` is refactored exactly
  by concatenation, :math:`B^* = \lambda [w_1 s_1 B_1 \cdots w_N s_N B_N]`,
  :math:`A^* = [A_1; \dots; A_N]` (rank :math:`\sum_i r_i`). Every other method gives a dense
  :math:`\Delta W^*`, refactored by SVD (:func:`lorakit.lora.factorize_delta`) at its full
  numerical rank (exact), or — with ``rank=k`` — truncated to rank k, keeping the energy
  :math:`\sum_{j \le k} \sigma_j^2 / \sum_j \sigma_j^2` (reported per layer).
* ``"merged"`` — the base model with :math:`W_0 + \Delta W^*` in every layer, saved for
  ``AutoModel…from_pretrained`` (needs ``base``).

Heads (``modules_to_save``, e.g. a classifier): a merged LoRA carries one head at most, and heads
of different tasks are never mixed. With one adapter its head is kept; with several, heads are
dropped (a note says so) unless ``head_from=i`` keeps adapter i's head (0 = the first).

Streaming: the adapters' factors are read once (they are small); then each layer is merged,
refactored and written (or added into the base model's weight) before the next one, so beyond
the adapters (and the base model for ``"merged"``) memory holds about one layer's worth. The
adapter file is written tensor by tensor (:class:`SafetensorsStream`). Output goes to a temporary
folder beside ``out`` that is renamed at the end: a failure leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ..errors import LorakitError
from ..fsutil import atomic_folder
from ..lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    adapter_config,
    apply_deltas,
    check_compatible,
    peft_key,
    peft_lora_key,
    write_merged,
)
from .refactor import SafetensorsStream, concat_factors, refactor_dense, truncate_factors, weighted
from .registry import METHODS, layer_params, resolve_params
from .sources import (
    AUTO_CLASSES,
    HEAD_TASKS,
    SourceAdapter,
    check_base_fits,
    check_same_base,
    choose_head,
    head_modules,
    load_base_for,
    read_source,
)

FORMATS = ("adapter", "merged")
#: A record of the merge written beside the weights (peft and transformers ignore it).
SUMMARY_FILE = "lorakit_merge.json"


def check_options(
    adapters: Sequence, weights: Sequence[float] | None, fmt: str, rank: int | None, base: str | None,
    out, overwrite: bool, device: str,
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




def merge_adapter_folders(
    adapters: Sequence[str | os.PathLike],
    method: str,
    params: Mapping[str, Any] | None = None,
    weights: Sequence[float] | None = None,
    out: str | os.PathLike | None = None,
    format: str = "adapter",
    rank: int | None = None,
    base: str | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    head_from: int | None = None,
) -> dict:
    r"""Merge PEFT adapter folders with any registered method and write one adapter or merged model.

    Args:
        adapters: PEFT adapter folders (``adapter_config.json`` + ``adapter_model.safetensors`` or
            ``.bin``) of the same base model and the same target modules; ranks, α and rsLoRA may differ.
        method: a key of :data:`lorakit.merge.METHODS` (``task_arithmetic``, ``ties``, ``dare``,
            ``knots``, ``do``); ``params``: its hyperparameters (checked by ``resolve_params``).
        weights: one multiplier :math:`w_i` per adapter, applied to :math:`\Delta W_i` before the
            method (default all 1).
        out: output folder (must not exist unless ``overwrite``); None computes and reports only.
        format: ``"adapter"`` (a PEFT adapter) or ``"merged"`` (full weights; needs ``base``).
        rank: with ``"adapter"``, truncate every layer to this rank by SVD (energy reported).
        base: base model folder or alias (``minilm``) for ``"merged"``.
        device: where the merge runs (``cpu`` or ``cuda``); files are written from the CPU.
        head_from: keep adapter ``head_from``'s head (0-based); see the module docstring.

    Returns:
        A summary dict: ``adapters``, ``method``, ``params`` (resolved), ``weights``, ``format``,
        ``out``, ``layers``, ``rank`` (``{"min", "max"}``, None for ``"merged"``), ``refactor``
        (how the adapter was factored), ``energy`` (``{"min", "mean"}`` kept per layer),
        ``energy_per_layer``, ``lora_parameters`` (factor entries written), ``head``, ``notes``,
        ``seconds``, ``device``.

    Every user error raises a one-line :class:`~lorakit.errors.LorakitError` before anything is
    written; ``out`` is written through a temporary sibling folder renamed at the end.
    """
    start = time.perf_counter()
    resolved = resolve_params(method, dict(params or {}))
    weights, dev = check_options(adapters, weights, format, rank, base, out, overwrite, device)
    sources = [read_source(a) for a in adapters]
    check_same_base(sources)
    check_compatible([s.layers for s in sources], names=[str(s.path) for s in sources])
    head, head_note = choose_head(sources, head_from)
    plan = MergePlan(sources, weights, method, resolved, rank, dev, head)
    summary = plan.summary(format, out, head_note)
    if format == "adapter":
        _merge_to_adapter(plan, out, overwrite, summary, progress)
    else:
        _merge_to_model(plan, base, out, overwrite, summary, progress)
    summary["seconds"] = time.perf_counter() - start
    if format == "merged" and out is not None:
        (Path(out) / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


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

    def updates(self, module: str) -> list:
        """Layer ``module`` of every adapter, weighted (:math:`B_i \leftarrow w_i B_i`), on the merge device."""
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


def _modules(plan: MergePlan, progress: bool):
    modules = list(plan.sources[0].layers)
    return tqdm(modules, desc=f"merging ({plan.method})", unit="layer", disable=not progress, file=sys.stderr)


def _written_task_type(plan: MergePlan, summary: dict) -> str | None:
    """The adapter's task_type: None when no head is kept (peft's PeftModelFor<task> would look for it)."""
    if plan.head or plan.task_type not in HEAD_TASKS:
        return plan.task_type
    summary["notes"].append(
        f"written with task_type None (no head kept): load it with PeftModel.from_pretrained on a "
        f"{AUTO_CLASSES[plan.task_type].replace('Auto', '')} base that has the head you want"
    )
    return None


def _merge_to_adapter(plan: MergePlan, out, overwrite: bool, summary: dict, progress: bool) -> None:
    """Format "adapter": merge, refactor and stream each layer's factors to disk, then the config.

    With ``out`` the folder is built in a temporary sibling (:func:`lorakit.fsutil.atomic_folder`)
    and renamed at the end: an error or an interrupt leaves nothing behind. Without ``out`` the
    merge runs and is reported, and nothing is written.
    """
    written_task = _written_task_type(plan, summary)
    if out is None:
        _stream_layers(plan, None, summary, progress)
        return
    with atomic_folder(out, overwrite) as tmp:
        stream = SafetensorsStream(tmp / ADAPTER_WEIGHTS)
        try:
            ranks = _stream_layers(plan, stream, summary, progress)
            for key, tensor in plan.head.items():
                stream.add(peft_key(key), tensor)
        except BaseException:
            stream.abort()
            raise
        stream.close()
        config = adapter_config(ranks, plan.base_name, written_task, head_modules(plan.head), plan.transpose)
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))


def _stream_layers(plan: MergePlan, stream: SafetensorsStream | None, summary: dict, progress: bool) -> dict[str, int]:
    """The layer loop: ``(A*, B*)`` of each layer written (or counted) and forgotten; returns ``{module: rank}``."""
    ranks: dict[str, int] = {}
    for module in _modules(plan, progress):
        A, B, energy = plan.factors(module)
        ranks[module] = int(A.shape[0])
        summary["energy_per_layer"][module] = energy
        if stream is not None:
            summary["lora_parameters"] += stream.add(peft_lora_key(module, "A"), A.float())
            summary["lora_parameters"] += stream.add(peft_lora_key(module, "B"), B.float())
        else:
            summary["lora_parameters"] += A.numel() + B.numel()
    summary["rank"] = {"min": min(ranks.values()), "max": max(ranks.values())}
    energies = list(summary["energy_per_layer"].values())
    summary["energy"] = {"min": min(energies), "mean": sum(energies) / len(energies)}
    return ranks


def _merge_to_model(plan: MergePlan, base: str, out, overwrite: bool, summary: dict, progress: bool) -> None:
    """Format "merged": :math:`W_0 \leftarrow W_0 + \Delta W^*` layer by layer in the base model, then save it."""
    model, tokenizer = load_base_for(base, plan.task_type, plan.head, [s.head for s in plan.sources])
    check_base_fits(model, plan.sources[0].layers, plan.head, plan.transpose)
    if plan.task_type == "SEQ_CLS" and not plan.head:
        summary["notes"].append("no head was kept: the merged model's classifier is the base model's (freshly initialised)")
    for module in _modules(plan, progress):
        delta = plan.dense(module)
        apply_deltas(model, {module: delta.T if plan.transpose else delta})
        del delta  # W ← W + ΔW* done: this layer's ΔW* must not outlive it
    if out is not None:
        with torch.no_grad():
            for key, tensor in plan.head.items():
                model.get_parameter(key).copy_(tensor)
        write_merged(model, {}, out, tokenizer=tokenizer, overwrite=overwrite)
