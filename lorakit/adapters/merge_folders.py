r"""Merge PEFT adapter folders on disk into one PEFT adapter or one merged model, layer by layer.

The Python side of ``lorakit merge`` (:func:`merge_adapter_folders`, also reachable as
``lorakit.adapters.merge_folders.merge_adapter_folders``). For every adapted Linear layer, with adapter
:math:`i = 1 \dots N` read from disk (peft's scaling :math:`s_i = \alpha_i / r_i`, or
:math:`\alpha_i / \sqrt{r_i}` with rsLoRA, folded in by :mod:`lorakit.lora.peft`):

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
  :math:`\Delta W^*`, refactored by SVD (:func:`lorakit.lora.peft.factorize_delta`) at its full
  numerical rank (exact), or — with ``rank=k`` — truncated to rank k, keeping the energy
  :math:`\sum_{j \le k} \sigma_j^2 / \sum_j \sigma_j^2` (reported per layer).
* ``"merged"`` — the base model with :math:`W_0 + \Delta W^*` in every layer, saved for
  ``AutoModel…from_pretrained`` (needs ``base``), in the class the adapters were trained on
  (:mod:`lorakit.adapters.base_model`), sharded with ``max_shard_size``. Each layer's
  :math:`W_0 + \Delta W^*` is added in float32 and rounded once to the base's dtype.

``dtype`` (``float32``, ``bfloat16``, ``float16``) is the dtype of what is written: the factors
and head of an adapter (default float32), the weights of a merged model (default: the base's).
Task arithmetic also merges peft's ``lora_bias`` exactly (:meth:`MergePlan.bias`).
``dry_run`` runs every check (the merged format builds the base on the ``meta`` device: shapes,
no weights), reports the plan and the memory it needs, and writes nothing.

Heads (``modules_to_save``, e.g. a classifier): a merged LoRA carries one head at most, and heads
of different tasks are never mixed. With one adapter its head is kept; with several, heads are
dropped (a note says so) unless ``head_from=i`` keeps adapter i's head (0 = the first).

Streaming: the adapters' factors are read once (they are small); then each layer is merged,
refactored and written (or added into the base model's weight) before the next one, so beyond
the adapters (and the base model for ``"merged"``) memory holds about one layer's worth. The
adapter file is written tensor by tensor (:class:`SafetensorsStream`). Output goes to a temporary
folder beside ``out`` that is renamed at the end: a failure or an interrupt leaves nothing behind.
The summary is written inside the output (``lorakit_merge.json``) and, with ``summary_json``, to
that file too.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ..errors import LorakitError
from ..fsutil import atomic_file, atomic_folder
from ..lora.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_config
from ..lora.names import PEFT_PREFIX, peft_key, peft_lora_key
from ..lora.update import check_compatible
from .base_model import AUTO_CLASSES, HEAD_TASKS, check_base_fits, load_base_for, meta_base_for, module_map
from .plan import DTYPES, MergePlan, check_options, estimate_memory, parse_size
from .factors import SafetensorsStream
from ..merge.registry import resolve_params
from .sources import LORA_BIAS, choose_head, head_modules, read_source, check_same_base

#: A record of the merge written beside the weights (peft and transformers ignore it).
SUMMARY_FILE = "lorakit_merge.json"


@dataclass(frozen=True)
class Output:
    """Where and how a merge is written."""

    out: Path | None
    overwrite: bool
    progress: bool
    dtype: str | None
    max_shard_size: int | None
    start: float

    @property
    def cast(self) -> torch.dtype | None:
        return DTYPES[self.dtype] if self.dtype else None

    def write_summary(self, folder: Path, summary: dict) -> None:
        summary["seconds"] = time.perf_counter() - self.start
        (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))


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
    dtype: str | None = None,
    max_shard_size: int | str | None = None,
    dry_run: bool = False,
    summary_json: str | os.PathLike | None = None,
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
        base: base model folder, alias (``minilm``) or hub id for ``"merged"``.
        device: where the merge runs (``cpu`` or ``cuda``); files are written from the CPU.
        head_from: keep adapter ``head_from``'s head (0-based); see the module docstring.
        dtype: ``float32``/``bfloat16``/``float16`` of the written factors or weights.
        max_shard_size: ``"merged"`` only: shard the safetensors (``"2GB"``, ``"500MiB"`` or bytes).
        dry_run: check and plan only (summary ``memory`` in bytes); nothing is written to ``out``.
        summary_json: also write the summary (or a dry run's plan) to this JSON file.

    Returns:
        A summary dict: ``adapters``, ``method``, ``params`` (resolved), ``weights``, ``format``,
        ``out``, ``layers``, ``rank`` (``{"min", "max"}``, None for ``"merged"``), ``refactor``
        (how the adapter was factored), ``energy`` (``{"min", "mean"}`` kept per layer),
        ``energy_per_layer``, ``lora_parameters`` (factor entries written), ``head``, ``notes``,
        ``seconds``, ``device``, ``dtype``, ``dry_run`` (and ``memory``, ``base_class`` for a dry run).

    Every user error raises a one-line :class:`~lorakit.errors.LorakitError` before anything is
    written; ``out`` is written through a temporary sibling folder renamed at the end.
    """
    start = time.perf_counter()
    resolved = resolve_params(method, dict(params or {}))
    weights, dev = check_options(adapters, weights, format, rank, base, out, overwrite, device, dtype, max_shard_size)
    if summary_json is not None and Path(summary_json).is_dir():
        raise LorakitError(f"summary JSON {summary_json} is a folder; pass a file name such as merge.json")
    sources = [read_source(a) for a in adapters]
    check_same_base(sources)
    check_compatible([s.layers for s in sources], names=[str(s.path) for s in sources])
    head, head_note = choose_head(sources, head_from)
    plan = MergePlan(sources, weights, method, resolved, rank, dev, head)
    summary = {**plan.summary(format, out, head_note), "dtype": dtype, "dry_run": bool(dry_run)}
    output = Output(Path(out) if out is not None else None, overwrite, progress, dtype, parse_size(max_shard_size), start)
    if dry_run:
        _dry_run(plan, format, base, output, summary)
    elif format == "adapter":
        _merge_to_adapter(plan, output, summary, _head_config(sources, head, head_from))
    else:
        _merge_to_model(plan, base, output, summary)
    summary["seconds"] = time.perf_counter() - start
    if summary_json is not None:
        with atomic_file(summary_json) as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
    return summary


def _head_config(sources, head: Mapping, head_from: int | None):
    """``modules_to_save`` of the adapter whose head is kept, as its config wrote it (peft matches these)."""
    if not head:
        return None
    return sources[head_from or 0].config.get("modules_to_save")


def _modules(plan: MergePlan, progress: bool):
    """The layers in order, with a progress bar (on stderr) naming the layer being merged."""
    bar = tqdm(plan.modules, desc=f"merging ({plan.method})", unit="layer", disable=not progress, file=sys.stderr)
    for module in bar:
        bar.set_postfix_str(module, refresh=False)
        yield module


def _written_task_type(plan: MergePlan, summary: dict) -> str | None:
    """The adapter's task_type: None when no head is kept (peft's PeftModelFor<task> would look for it)."""
    if plan.head or plan.task_type not in HEAD_TASKS:
        return plan.task_type
    summary["notes"].append(
        f"written with task_type None (no head kept): load it with PeftModel.from_pretrained on a "
        f"{AUTO_CLASSES[plan.task_type].replace('Auto', '')} base that has the head you want"
    )
    return None


def _merge_to_adapter(plan: MergePlan, o: Output, summary: dict, modules_to_save) -> None:
    """Format "adapter": merge, refactor and stream each layer's factors to disk, then the config.

    With ``out`` the folder is built in a temporary sibling (:func:`lorakit.fsutil.atomic_folder`)
    and renamed at the end: an error or an interrupt leaves nothing behind. Without ``out`` the
    merge runs and is reported, and nothing is written.
    """
    written_task = _written_task_type(plan, summary)
    if o.out is None:
        _stream_layers(plan, None, summary, o.progress)
        return
    cast = o.cast or torch.float32
    with atomic_folder(o.out, o.overwrite) as tmp:
        stream = SafetensorsStream(tmp / ADAPTER_WEIGHTS)
        try:
            ranks = _stream_layers(plan, stream, summary, o.progress, cast)
            for key, tensor in plan.head.items():
                stream.add(peft_key(key), tensor.to(cast) if tensor.is_floating_point() else tensor)
        except BaseException:
            stream.abort()
            raise
        stream.close()
        config = adapter_config(ranks, plan.base_name, written_task, head_modules(plan.head), plan.transpose)
        if plan.head and modules_to_save:
            config["modules_to_save"] = list(modules_to_save)
        config["lora_bias"] = bool(plan.bias_modules)
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
        o.write_summary(tmp, summary)


def _stream_layers(
    plan: MergePlan, stream: SafetensorsStream | None, summary: dict, progress: bool, cast=torch.float32,
) -> dict[str, int]:
    """The layer loop: ``(A*, B*)`` of each layer written (or counted) and forgotten; returns ``{module: rank}``."""
    ranks: dict[str, int] = {}
    with_bias = bool(plan.bias_modules)
    for module in _modules(plan, progress):
        A, B, energy = plan.factors(module)
        ranks[module] = int(A.shape[0])
        summary["energy_per_layer"][module] = energy
        if stream is not None:
            summary["lora_parameters"] += stream.add(peft_lora_key(module, "A"), A.to(cast))
            summary["lora_parameters"] += stream.add(peft_lora_key(module, "B"), B.to(cast))
            if with_bias:  # peft gives every layer a lora_B bias once lora_bias is on: zeros where none was
                bias = plan.bias(module)
                bias = torch.zeros(B.shape[0]) if bias is None else bias
                summary["lora_parameters"] += stream.add(f"{PEFT_PREFIX}{module}{LORA_BIAS}", bias.to(cast))
        else:
            summary["lora_parameters"] += A.numel() + B.numel()
    summary["rank"] = {"min": min(ranks.values()), "max": max(ranks.values())}
    energies = list(summary["energy_per_layer"].values())
    summary["energy"] = {"min": min(energies), "mean": sum(energies) / len(energies)}
    return ranks


def _add_rounded(param: torch.Tensor, delta: torch.Tensor) -> None:
    """``param ← round(param + delta)``: the sum in float32, rounded once to ``param``'s dtype."""
    with torch.no_grad():
        param.copy_((param.float() + delta.to(param.device).float()).to(param.dtype))


def _merge_to_model(plan: MergePlan, base: str, o: Output, summary: dict) -> None:
    r"""Format "merged": :math:`W_0 \leftarrow W_0 + \Delta W^*` layer by layer in the base model, then save it."""
    model, tokenizer, note = load_base_for(base, plan.task_type, plan.head, [s.head for s in plan.sources])
    translate = _fit(plan, model, summary, note)
    if plan.task_type == "SEQ_CLS" and not plan.head:
        summary["notes"].append("no head was kept: the merged model's classifier is the base model's (freshly initialised)")
    modules = dict(model.named_modules())
    for module in _modules(plan, o.progress):
        layer = modules[translate(module)]
        delta = plan.dense(module)
        _add_rounded(layer.weight, delta.T if plan.transpose else delta)
        del delta  # W ← W + ΔW* done: this layer's ΔW* must not outlive it
        bias = plan.bias(module)
        if bias is not None:
            _add_rounded(layer.bias, bias)
    with torch.no_grad():
        for key, tensor in plan.head.items():
            model.get_parameter(translate(key)).copy_(tensor)
    if o.cast is not None:
        model.to(o.cast)
    if o.out is None:
        return
    with atomic_folder(o.out, o.overwrite) as tmp:
        shard = {} if o.max_shard_size is None else {"max_shard_size": o.max_shard_size}
        model.save_pretrained(str(tmp), **shard)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        o.write_summary(tmp, summary)


def _fit(plan: MergePlan, model: torch.nn.Module, summary: dict, note: str | None):
    """Check the adapters fit ``model`` (modulo the wrapper prefix); returns the name map, notes added."""
    translate = module_map(model, plan.modules)
    check_base_fits(model, plan.sources[0].layers, plan.head, plan.transpose, translate, plan.bias_modules)
    summary["base_class"] = type(model).__name__
    if note:
        summary["notes"].append(note)
    renamed = next((m for m in plan.modules if translate(m) != m), None)
    if renamed is not None:
        summary["notes"].append(
            f"module names matched modulo the wrapper prefix: {renamed} is {translate(renamed)} in {type(model).__name__}"
        )
    return translate


def _dry_run(plan: MergePlan, fmt: str, base: str | None, o: Output, summary: dict) -> None:
    """Check everything a merge would, estimate its memory, write nothing (the merged format's base is
    built on the ``meta`` device: shapes, no weights)."""
    base_params, base_dtype = 0, torch.float32
    if fmt == "merged":
        model, _, note = meta_base_for(base, plan.task_type, [s.head for s in plan.sources])
        _fit(plan, model, summary, note)
        base_params = sum(p.numel() for p in model.parameters())
        stored = getattr(model.config, "dtype", None) or getattr(model.config, "torch_dtype", None)
        base_dtype = getattr(torch, stored, None) if isinstance(stored, str) else stored
        base_dtype = base_dtype if isinstance(base_dtype, torch.dtype) else torch.float32
    written = o.cast or (base_dtype if fmt == "merged" else torch.float32)
    summary["memory"] = estimate_memory(plan, fmt, written, base_params, base_dtype)
    if fmt == "adapter":
        ranks = [plan.out_rank(m) for m in plan.modules]
        summary["rank"] = {"min": min(ranks), "max": max(ranks)}
