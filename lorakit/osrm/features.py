r"""Features ``H``: the inputs of the target Linear layers in the pre-trained model, padding dropped.

A forward pre-hook on each module reads its input ``x`` (``(batch, seq, d_in)``); rows at
``attention_mask == 0`` are dropped, so ``H`` has shape ``(k, d_in)`` with ``k`` the number of
non-padding tokens (``"tokens"``) or ``k = 1`` (``"task_mean"``, the masked mean).
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Mapping

import torch

from ..errors import LorakitError
from .modules import is_linear, resolve_modules

FEATURE_MODES = ("tokens", "task_mean")
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _Rows:
    """Per-module accumulator of hook inputs: all rows, a seeded subsample, or a masked mean."""

    def __init__(self, mode: str, cap: int | None) -> None:
        self.mode, self.cap = mode, cap
        self.chunks: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []
        self.index: list[torch.Tensor] = []
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, rows: torch.Tensor, keys: torch.Tensor | None, index: torch.Tensor) -> None:
        if self.mode == "task_mean":
            part = rows.double().sum(0)
            self.total = part if self.total is None else self.total + part
            self.count += rows.shape[0]
            return
        self.chunks.append(rows.float().cpu())
        self.index.append(index)
        if keys is not None:
            self.keys.append(keys)
            if sum(len(k) for k in self.keys) > 2 * self.cap:
                self._prune()

    def _prune(self) -> None:
        """Keep the ``cap`` rows with the smallest random keys (a seeded uniform subsample)."""
        rows, keys, index = torch.cat(self.chunks), torch.cat(self.keys), torch.cat(self.index)
        keep = torch.sort(keys, stable=True).indices[: self.cap]
        keep = keep[torch.argsort(index[keep], stable=True)]  # back to data order
        self.chunks, self.keys, self.index = [rows[keep]], [keys[keep]], [index[keep]]

    def result(self) -> torch.Tensor:
        if self.mode == "task_mean":
            return (self.total / self.count).float().unsqueeze(0)
        if self.keys:
            self._prune()
        return torch.cat(self.chunks)

    def empty(self) -> bool:
        return self.count == 0 if self.mode == "task_mean" else not self.chunks


def _adapters_off(model: torch.nn.Module):
    """``model.disable_adapter()`` for a peft model (pre-trained features), else a no-op."""
    try:
        from peft import PeftModel  # lazy: peft pulls in transformers; plain torch models need neither
    except ImportError:  # pragma: no cover - peft is a dependency
        return contextlib.nullcontext()
    return model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()


def _linear_targets(model: torch.nn.Module, module_names: Iterable[str]) -> dict[str, torch.nn.Module]:
    """``{short name: module}`` for the named modules; each must be a Linear layer (or peft's LoRA wrapper of one)."""
    modules = resolve_modules(model, module_names)
    for name, module in modules.items():
        if not is_linear(module):
            raise LorakitError(f"module {name} is a {type(module).__name__}, not a Linear layer; pass Linear modules")
    return modules


class _Collector:
    """The hooks' shared state: one :class:`_Rows` per module, and the current batch's mask, keys and row index.

    Every token of the data gets a running index (its position in data order) and, when a row
    cap is set, a seeded uniform random key drawn once per batch, so every module keeps the same
    tokens.
    """

    def __init__(self, names: Iterable[str], mode: str, cap: int | None, seed: int) -> None:
        self.rows = {name: _Rows(mode, cap) for name in names}
        self.cap = cap
        self.generator = torch.Generator().manual_seed(seed)
        self.seen = 0
        self.mask: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None
        self.index: torch.Tensor | None = None

    def hook(self, name: str):
        """A forward pre-hook that adds the non-padding rows of the module's input ``x`` (``(batch, seq, d_in)``)."""

        def pre_hook(module, args):
            x, mask = args[0], self.mask
            if tuple(x.shape[:-1]) != tuple(mask.shape):
                raise LorakitError(
                    f"input of {name} has shape {tuple(x.shape)}, which does not fit the attention "
                    f"mask {tuple(mask.shape)}; collect features on a model that keeps (batch, seq, d_in)"
                )
            self.rows[name].add(x[mask].detach(), self.keys, self.index)

        return pre_hook

    def start_batch(self, mask: torch.Tensor) -> None:
        """Set the ``(batch, seq)`` boolean mask of the batch about to run; index and key its tokens."""
        n = int(mask.sum())
        self.mask = mask
        self.index = torch.arange(self.seen, self.seen + n)
        self.keys = torch.rand(n, generator=self.generator, dtype=torch.float64) if self.cap is not None else None
        self.seen += n

    def results(self) -> dict[str, torch.Tensor]:
        """``{module: H}``; an error if no token was seen or a module never ran."""
        if self.seen == 0:
            raise LorakitError("no tokens to collect features from: the batches were empty or fully padded")
        for name, rows in self.rows.items():
            if rows.empty():
                raise LorakitError(
                    f"module {name} never ran in the forward pass; is it part of the model's computation?"
                )
        return {name: rows.result() for name, rows in self.rows.items()}


def _model_inputs(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The model's inputs from one batch, on ``device``; other keys (labels) are dropped."""
    if "input_ids" not in batch or "attention_mask" not in batch:
        raise LorakitError(
            "a batch lacks input_ids or attention_mask; tokenize with the model's "
            "tokenizer (return_attention_mask=True)"
        )
    return {k: batch[k].to(device) for k in _MODEL_INPUTS if k in batch}


def _progress_bar(batches: Iterable):
    from tqdm.auto import tqdm  # lazy: tqdm only when a bar is asked for

    return tqdm(batches, desc="OSRM features", unit="batch")


def _run_hooked(
    model: torch.nn.Module,
    modules: Mapping[str, torch.nn.Module],
    collector: _Collector,
    batches: Iterable[Mapping[str, torch.Tensor]],
    progress: bool,
    use_adapters: bool,
) -> None:
    """Run the frozen model over ``batches`` with the collector's hooks; hooks and train mode restored even on error."""
    device = next(model.parameters()).device
    was_training = model.training
    handles = [m.register_forward_pre_hook(collector.hook(n)) for n, m in modules.items()]
    try:
        model.eval()
        if progress:
            batches = _progress_bar(batches)
        with torch.no_grad(), (contextlib.nullcontext() if use_adapters else _adapters_off(model)):
            for batch in batches:
                inputs = _model_inputs(batch, device)
                collector.start_batch(inputs["attention_mask"].bool())
                model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def collect_features(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    module_names: Iterable[str],
    mode: str = "tokens",
    max_rows_per_module: int | None = None,
    seed: int = 0,
    progress: bool = False,
    use_adapters: bool = False,
) -> dict[str, torch.Tensor]:
    r"""Inputs ``H`` of each named Linear layer over ``batches``, padding dropped.

    A forward pre-hook on each module reads its input ``x`` (``(batch, seq, d_in)``) while the
    frozen model runs (``eval()``, ``torch.no_grad()``); rows at ``attention_mask == 0`` are
    dropped. Hooks are removed and the train/eval mode restored even on error.

    Args:
        model: a transformers model or a peft model. For a peft model the adapters are switched
            off (pre-trained features, docs/methods.md §2.4) unless ``use_adapters``.
        batches: an iterable of dicts with ``input_ids`` and ``attention_mask``
            (``(batch, seq)``), optionally ``token_type_ids``; other keys (labels) are ignored.
        module_names: Linear module names, relative to the base model
            (``bert.encoder.layer.0.attention.self.query``) or with peft's ``base_model.model.``.
        mode: ``"tokens"`` (paper; one float32 row per non-padding token) or ``"task_mean"``
            (official code, but masked: one row, the mean over all non-padding tokens of all
            samples, :math:`\bar h = \sum_{b,p} m_{bp} x_{bp} / \sum_{b,p} m_{bp}`).
        max_rows_per_module: in ``"tokens"`` mode, keep at most this many rows: a uniform random
            subset drawn with ``seed`` (each token gets a seeded random key, the smallest keys
            win, so every module keeps the same tokens), returned in data order. ``None`` keeps
            all rows. Ignored in ``"task_mean"`` mode.
        seed: seed of that subsample.
        progress: show a tqdm bar over batches.
        use_adapters: for a peft model, collect with its adapters on.

    Returns:
        ``{module name relative to the base model: H}`` with ``H`` float32 on the CPU,
        shape ``(k, d_in)`` (``k = 1`` in ``"task_mean"`` mode).
    """
    if mode not in FEATURE_MODES:
        raise LorakitError(f"unknown feature mode {mode!r}; use one of {list(FEATURE_MODES)}")
    if max_rows_per_module is not None and max_rows_per_module < 1:
        raise LorakitError(f"max_rows_per_module must be positive or None, got {max_rows_per_module}")
    modules = _linear_targets(model, module_names)
    collector = _Collector(modules, mode, max_rows_per_module if mode == "tokens" else None, seed)
    _run_hooked(model, modules, collector, batches, progress, use_adapters)
    return collector.results()
