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
import shutil
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .errors import LorakitError
from .fsutil import commit_folder, temp_sibling
from .lora import (
    adapter_config,
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    Adapter,
    LoRAUpdate,
    apply_deltas,
    check_compatible,
    factorize_delta,
    read_adapter,
    read_adapter_config,
    read_head,
    write_merged,
)
from .merge import METHODS, layer_seed, resolve_params

FORMATS = ("adapter", "merged")
#: peft task types whose PeftModel insists on loading a head (modules_to_save) from the adapter.
HEAD_TASKS = ("SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS")
#: A record of the merge written beside the weights (peft and transformers ignore it).
SUMMARY_FILE = "lorakit_merge.json"
#: transformers class for each peft task_type (what ``AutoPeftModel`` uses too).
AUTO_CLASSES = {
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "CAUSAL_LM": "AutoModelForCausalLM",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}


# ----------------------------------------------------------------------------------------------
# Reading and checking the adapter folders
# ----------------------------------------------------------------------------------------------


@dataclass
class SourceAdapter:
    """One adapter folder: its config, LoRA layers (``{module: LoRAUpdate}``) and head weights."""

    path: Path
    config: dict
    layers: Adapter
    head: dict[str, torch.Tensor]


def read_source(path: str | os.PathLike) -> SourceAdapter:
    """Read one PEFT adapter folder; every error names the folder (one line)."""
    path = Path(path)
    if not path.is_dir():
        raise LorakitError(f"adapter folder {path} does not exist; pass PEFT adapter folders (save_pretrained)")
    try:
        config = read_adapter_config(path)
        layers = read_adapter(path)
        head = read_head(path)
    except LorakitError as exc:
        raise (exc if str(path) in str(exc) else LorakitError(f"{path}: {exc}")) from None
    stray = sorted(k for k in head if ".lora_" in k)
    if stray:
        raise LorakitError(
            f"{path} holds LoRA weights lorakit cannot merge yet ({stray[0]}: LoRA on embeddings, lora_bias, "
            "or DoRA magnitudes); merge only plain Linear LoRA adapters"
        )
    return SourceAdapter(path, config, layers, head)


def check_same_base(sources: Sequence[SourceAdapter]) -> None:
    """One-line error unless all adapters name the same base model, task type and weight layout."""
    first = sources[0]
    for key, what in (("base_model_name_or_path", "base model"), ("task_type", "task type")):
        named = [(s.path, s.config.get(key)) for s in sources if s.config.get(key)]
        for path, value in named[1:]:
            if value != named[0][1]:
                raise LorakitError(
                    f"{path} was made for {what} {value!r} but {named[0][0]} for {named[0][1]!r}; "
                    f"merge only adapters of the same {what}"
                )
    for s in sources[1:]:
        if bool(s.config.get("fan_in_fan_out")) != bool(first.config.get("fan_in_fan_out")):
            raise LorakitError(
                f"{s.path} and {first.path} disagree on fan_in_fan_out (different layer types); "
                "merge only adapters of the same base model"
            )


def choose_head(sources: Sequence[SourceAdapter], head_from: int | None) -> tuple[dict[str, torch.Tensor], str]:
    """The head weights to write and a one-line note; never mixes heads of different adapters.

    One adapter: its head (if any). Several: none, unless ``head_from`` picks adapter i's.
    """
    having = [i for i, s in enumerate(sources) if s.head]
    if head_from is not None:
        if not 0 <= head_from < len(sources):
            raise LorakitError(
                f"head_from={head_from} but there are {len(sources)} adapters; pick 0 … {len(sources) - 1}"
            )
        source = sources[head_from]
        if not source.head:
            raise LorakitError(f"adapter {head_from} ({source.path}) has no head (modules_to_save) to keep")
        return dict(source.head), f"kept the head of adapter {head_from} ({', '.join(_head_modules(source.head))})"
    if not having:
        return {}, "no head (the adapters have no modules_to_save)"
    if len(sources) == 1:
        return dict(sources[0].head), f"kept the adapter's head ({', '.join(_head_modules(sources[0].head))})"
    return {}, (
        f"dropped the heads ({', '.join(_head_modules(sources[having[0]].head))}) of adapters "
        f"{', '.join(map(str, having))}: a merged LoRA carries one head; pass --head-from I to keep adapter I's"
    )


def _head_modules(head: Mapping[str, torch.Tensor]) -> list[str]:
    return sorted({k.rsplit(".", 1)[0] for k in head})


# ----------------------------------------------------------------------------------------------
# One layer: weights, merge, refactorisation
# ----------------------------------------------------------------------------------------------


def weighted(update: LoRAUpdate, weight: float, device: torch.device | str = "cpu") -> LoRAUpdate:
    r"""Fold a per-adapter weight into B: :math:`w\,s\,BA = s\,(wB)A`; factors moved to ``device``."""
    return LoRAUpdate(update.A.to(device), (update.B * weight).to(device), update.scaling)


def concat_factors(updates: Sequence[LoRAUpdate], lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Task arithmetic as one LoRA update, exactly: returns ``(A*, B*)`` with scaling 1.

    .. math:: B^* = \lambda\,[s_1 B_1 \cdots s_N B_N] \ (d_{out} \times \textstyle\sum r_i), \quad
        A^* = [A_1; \dots; A_N] \ (\textstyle\sum r_i \times d_{in}), \quad
        B^* A^* = \lambda \textstyle\sum_i s_i B_i A_i
    """
    A = torch.cat([u.A for u in updates], dim=0)
    B = torch.cat([(lam * u.scaling) * u.B for u in updates], dim=1)
    return A, B


def truncate_factors(A: torch.Tensor, B: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    r"""Best rank-k approximation of :math:`BA` from its factors, without forming :math:`BA` (float64).

    :math:`B = Q_B R_B`, :math:`A^\top = Q_A R_A` (thin QR); the small core
    :math:`R_B R_A^\top = U \Sigma V^\top` gives :math:`BA = (Q_B U)\,\Sigma\,(Q_A V)^\top`, so
    :math:`B_k = Q_B U_k \Sigma_k^{1/2}`, :math:`A_k = \Sigma_k^{1/2} V_k^\top Q_A^\top`, and the
    energy kept is :math:`\sum_{j \le k}\sigma_j^2 / \sum_j \sigma_j^2` — the same as
    :func:`lorakit.lora.factorize_delta` on :math:`BA`, at a cost linear in ``d_out + d_in``.
    Returns ``(A_k, B_k, energy)`` in A's dtype.
    """
    Q_B, R_B = torch.linalg.qr(B.double())
    Q_A, R_A = torch.linalg.qr(A.double().T)
    U, S, Vh = torch.linalg.svd(R_B @ R_A.T, full_matrices=False)
    k = min(rank, len(S))
    root = S[:k].sqrt()
    total = float((S**2).sum())
    energy = 1.0 if total == 0 else float((S[:k] ** 2).sum()) / total
    return ((root[:, None] * Vh[:k]) @ Q_A.T).to(A.dtype), ((Q_B @ U[:, :k]) * root[None, :]).to(A.dtype), energy


def refactor_dense(delta: torch.Tensor, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    r"""Factor a dense :math:`\Delta W^*` (``d_out × d_in``) as ``B A`` by SVD; returns ``(A, B, energy)``.

    ``rank=None``: the full numerical rank — singular values above
    :math:`\sigma_1 \max(d_{out}, d_{in})\,\varepsilon_{32}` (the rest is float32 round-off), so
    :math:`BA = \Delta W^*` to float32 precision. ``rank=k``: the best rank-k approximation
    (Eckart–Young). At least rank 1 (a zero layer gives zero factors). float32 factors.
    """
    A, B, energy = factorize_delta(delta.double(), rank)
    if rank is None:
        sigma = (A**2).sum(dim=1)  # balanced factors: A Aᵀ = Σ, so row norms² are the σ_j
        tol = float(sigma[0]) * max(delta.shape) * torch.finfo(torch.float32).eps if len(sigma) else 0.0
        k = max(1, int((sigma > tol).sum()))
        total = float((sigma**2).sum())
        energy = 1.0 if total == 0 else float((sigma[:k] ** 2).sum()) / total
        A, B = A[:k], B[:, :k]
    return A.float(), B.float(), energy


def merge_one_layer(
    updates: Sequence[LoRAUpdate], module: str, method: str, resolved: Mapping[str, Any]
) -> torch.Tensor:
    """Dense float32 ``ΔW*`` of one layer, exactly as :func:`lorakit.merge.merge_adapters` computes it.

    A ``seed`` is mixed with the module name (:func:`lorakit.merge.layer_seed`), so every layer
    draws its own reproducible DARE masks.
    """
    params = dict(resolved)
    if "seed" in params:
        params["seed"] = layer_seed(resolved["seed"], module)
    return METHODS[method].function(list(updates), **params).float()


# ----------------------------------------------------------------------------------------------
# Writing: a safetensors file tensor by tensor, and the PEFT config
# ----------------------------------------------------------------------------------------------

_ST_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


class SafetensorsStream:
    """Write a ``.safetensors`` file one tensor at a time, holding only the current tensor in memory.

    The format: 8-byte little-endian header length, a JSON header
    ``{name: {dtype, shape, data_offsets: [begin, end]}}`` padded to 8 bytes, then the raw data.
    Data go to ``<path>.part`` as they come; :meth:`close` writes header + data to ``path``.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._part = self.path.with_name(self.path.name + ".part")
        self._file = open(self._part, "wb")
        self._header: dict[str, dict] = {}
        self._offset = 0

    def add(self, name: str, tensor: torch.Tensor) -> int:
        """Append one tensor; returns its number of elements."""
        t = tensor.detach().cpu().contiguous()
        if t.dtype not in _ST_DTYPES:
            raise LorakitError(f"cannot write tensor {name} of dtype {t.dtype}; re-save the adapter in float32")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        self._file.write(raw)
        self._header[name] = {
            "dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [self._offset, self._offset + len(raw)],
        }
        self._offset += len(raw)
        return t.numel()

    def abort(self) -> None:
        """Give up: close and delete the partial data."""
        self._file.close()
        self._part.unlink(missing_ok=True)

    def close(self) -> None:
        self._file.close()
        header = json.dumps({"__metadata__": {"format": "pt"}, **self._header}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        with open(self.path, "wb") as out, open(self._part, "rb") as data:
            out.write(struct.pack("<Q", len(header)))
            out.write(header)
            shutil.copyfileobj(data, out, 1 << 24)
        os.remove(self._part)


# ----------------------------------------------------------------------------------------------
# The base model (format "merged")
# ----------------------------------------------------------------------------------------------


def load_base_for(base: str, task_type: str | None, head: Mapping[str, torch.Tensor], heads_seen: Sequence[Mapping]):
    """Load the base model in the class the adapters were trained on (peft's ``task_type``).

    Without a task type, the class named in the base's ``config.json`` (``architectures``) is
    used, else ``AutoModel``. A sequence classifier gets ``num_labels`` from the head's output
    size. Returns ``(model, tokenizer or None)``.
    """
    import transformers

    from .assets import quiet, resolve_model_path

    quiet()
    path = resolve_model_path(base)
    name = AUTO_CLASSES.get(task_type or "", None)
    if name is None:
        name = _architecture(path) or "AutoModel"
    cls = getattr(transformers, name, None) or transformers.AutoModel
    kwargs = {}
    sample = head or next((h for h in heads_seen if h), {})
    if name.endswith("ForSequenceClassification") and sample:
        kwargs["num_labels"] = min(int(t.shape[0]) for t in sample.values() if t.ndim == 2)
    try:
        model = cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise LorakitError(f"cannot load base model {base!r} ({str(exc).splitlines()[0]}); check --base") from None
    return model.eval(), _tokenizer(path)


def _architecture(path: str) -> str | None:
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    archs = json.loads(config.read_text()).get("architectures") or []
    return archs[0] if archs else None


def _tokenizer(path: str):
    """The base's tokenizer when its folder has one (saved beside the merged model), else None."""
    folder = Path(path)
    if folder.is_dir() and not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception:  # a model without a usable tokenizer: the merged weights are still complete
        return None


def check_base_fits(model: torch.nn.Module, layers: Adapter, head: Mapping[str, torch.Tensor], transpose: bool) -> None:
    """One-line error unless every adapted module and head tensor exists in ``model`` with its shape."""
    modules = dict(model.named_modules())
    for name, upd in layers.items():
        weight = getattr(modules.get(name), "weight", None)
        want = upd.shape[::-1] if transpose else upd.shape
        if weight is None or tuple(weight.shape) != tuple(want):
            found = "missing" if weight is None else f"of shape {tuple(weight.shape)}"
            raise LorakitError(
                f"module {name} ({want[0]}×{want[1]}) is {found} in the base model {type(model).__name__}; "
                "pass the base model the adapters were trained on (--base)"
            )
    params = dict(model.named_parameters())
    for key, tensor in head.items():
        if key not in params or params[key].shape != tensor.shape:
            raise LorakitError(f"the head tensor {key} {tuple(tensor.shape)} does not fit the base model; check --base")


# ----------------------------------------------------------------------------------------------
# Checking the arguments (before any work)
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# The front door
# ----------------------------------------------------------------------------------------------


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
    task_type = next((s.config["task_type"] for s in sources if s.config.get("task_type")), None)
    transpose = bool(sources[0].config.get("fan_in_fan_out"))
    base_name = next((s.config["base_model_name_or_path"] for s in sources if s.config.get("base_model_name_or_path")), None)
    summary: dict[str, Any] = {
        "adapters": [str(s.path) for s in sources], "method": method, "params": dict(resolved),
        "weights": weights, "format": format, "out": str(out) if out is not None else None, "layers": len(sources[0].layers),
        "rank": None, "refactor": None, "energy": None, "energy_per_layer": {}, "lora_parameters": 0,
        "head": head_note, "notes": [], "device": str(dev),
    }
    exact_concat = method == "task_arithmetic" and rank is None
    if format == "adapter":
        summary["refactor"] = (
            "exact: factors concatenated (rank = sum of the adapters' ranks)" if exact_concat
            else "exact: SVD at full numerical rank" if rank is None else f"SVD truncated to rank {rank}"
        )
    written_task = task_type
    if format == "adapter" and not head and task_type in HEAD_TASKS:
        written_task = None  # peft's PeftModelFor<task> would fail looking for the dropped head
        summary["notes"].append(
            f"written with task_type None (no head kept): load it with PeftModel.from_pretrained on a "
            f"{AUTO_CLASSES[task_type].replace('Auto', '')} base that has the head you want"
        )
    model = tokenizer = None
    if format == "merged":
        model, tokenizer = load_base_for(base, task_type, head, [s.head for s in sources])
        check_base_fits(model, sources[0].layers, head, transpose)
        if task_type == "SEQ_CLS" and not head:
            summary["notes"].append("no head was kept: the merged model's classifier is the base model's (freshly initialised)")

    tmp = stream = None
    if out is not None and format == "adapter":
        out, tmp = temp_sibling(out, overwrite)
    try:
        if tmp is not None:
            stream = SafetensorsStream(tmp / ADAPTER_WEIGHTS)
        ranks = _merge_all(sources, weights, method, resolved, rank, exact_concat, dev, stream, model, transpose, summary, progress)
        if format == "adapter":
            for key, tensor in head.items():
                if stream is not None:
                    stream.add(f"base_model.model.{key}", tensor)
            summary["rank"] = {"min": min(ranks.values()), "max": max(ranks.values())}
            energies = list(summary["energy_per_layer"].values())
            summary["energy"] = {"min": min(energies), "mean": sum(energies) / len(energies)}
        summary["seconds"] = time.perf_counter() - start
        if tmp is not None:
            stream.close()
            config = adapter_config(ranks, base_name, written_task, _head_modules(head), transpose)
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
            (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
            commit_folder(tmp, out)
    except BaseException:
        if stream is not None:
            stream.abort()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if format == "merged" and out is not None:
        with torch.no_grad():
            for key, tensor in head.items():
                model.get_parameter(key).copy_(tensor)
        write_merged(model, {}, out, tokenizer=tokenizer, overwrite=overwrite)
        summary["seconds"] = time.perf_counter() - start
        (Path(out) / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def _merge_all(
    sources: Sequence[SourceAdapter], weights: Sequence[float], method: str, resolved: Mapping[str, Any],
    rank: int | None, exact_concat: bool, dev: torch.device, stream: SafetensorsStream | None,
    model: torch.nn.Module | None, transpose: bool, summary: dict, progress: bool,
) -> dict[str, int]:
    """The layer loop: merge, refactor, write (or add into ``model``), forget. Returns ``{module: rank}``."""
    from tqdm.auto import tqdm

    ranks: dict[str, int] = {}
    modules = list(sources[0].layers)
    for module in tqdm(modules, desc=f"merging ({method})", unit="layer", disable=not progress, file=sys.stderr):
        updates = [weighted(s.layers[module], w, dev) for s, w in zip(sources, weights)]
        if model is not None:
            delta = merge_one_layer(updates, module, method, resolved)
            apply_deltas(model, {module: delta.T if transpose else delta})
            del delta  # W ← W + ΔW* done: this layer's ΔW* must not outlive it
            continue
        if exact_concat:
            A, B = concat_factors(updates, resolved["lam"])
            energy = 1.0
        elif method == "task_arithmetic":
            A, B, energy = truncate_factors(*concat_factors(updates, resolved["lam"]), rank)
        else:
            A, B, energy = refactor_dense(merge_one_layer(updates, module, method, resolved), rank)
        ranks[module] = int(A.shape[0])
        summary["energy_per_layer"][module] = energy
        if stream is not None:
            summary["lora_parameters"] += stream.add(f"base_model.model.{module}.lora_A.weight", A.float())
            summary["lora_parameters"] += stream.add(f"base_model.model.{module}.lora_B.weight", B.float())
        else:
            summary["lora_parameters"] += A.numel() + B.numel()
    return ranks
