"""The training loop and the accuracy shared by LoRA (:mod:`lorakit.train.encoder`) and full fine-tuning.

:func:`fit` trains whatever parameter groups it is given (AdamW, 6% linear warm-up, then linear
decay to zero over the profile's ``steps``) on a task's training split; :func:`predict` and
:func:`accuracy` evaluate a sequence classifier on pre-tokenized inputs.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..data.models import load_tokenizer
from ..errors import LorakitError
from ..profiles import Profile, resolve_eval_dtype
from ..data.tasks import TaskData
from ..lora.update import LoRAUpdate


def freeze_lora_A(peft_model) -> None:
    """Train ``B`` only: every ``lora_A`` parameter of ``peft_model`` stops taking gradients (``freeze_A``)."""
    for name, param in peft_model.named_parameters():
        if "lora_A" in name:
            param.requires_grad_(False)


def set_seed(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (head init, peft's A, batch order)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def encode_texts(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize once, padded to the longest text (≤ ``max_length``)."""
    return tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")


@torch.inference_mode()
def predict(model, encodings: Mapping[str, torch.Tensor], batch_size: int = 64, device: str = "cpu") -> torch.Tensor:
    """Predicted label ids of a sequence classifier for pre-tokenized inputs.

    Batches of ``batch_size`` consecutive rows, each cut to its longest text (dynamic padding: pass
    length-sorted rows and little padding is left); the attention mask makes the cut exact.
    """
    model.eval()
    n = encodings["input_ids"].shape[0]
    preds = []
    for i in range(0, n, batch_size):
        batch = {k: v[i : i + batch_size] for k, v in encodings.items()}
        width = int(batch["attention_mask"].sum(1).max())
        batch = {k: v[:, :width].to(device) for k, v in batch.items()}
        preds.append(model(**batch).logits.argmax(-1).cpu())
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def accuracy(model, encodings, labels: list[int] | torch.Tensor, batch_size: int = 64, device: str = "cpu") -> float:
    labels = torch.as_tensor(labels)
    if len(labels) == 0:
        return float("nan")
    return float((predict(model, encodings, batch_size, device) == labels).float().mean())


def warmup_linear_schedule(optimizer, steps: int):
    """lorakit's learning-rate schedule: linear warm-up over the first 6 % of ``steps`` (at least one), then
    linear decay to 0 at ``steps``. Step ``k`` (0-based) multiplies the lr by
    ``min((k + 1) / w, (steps − k) / (steps − w))``, ``w = max(1, ⌊0.06 · steps⌋)``."""
    warmup = max(1, int(0.06 * steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup)))
    )


def optimizer_step(loss: torch.Tensor, optimizer, schedule, what: str) -> float:
    """One training step on ``loss``: a one-line error if it is not finite, else backward, optimizer and
    schedule steps, gradients cleared. Returns the loss value."""
    value = loss.item()
    if not math.isfinite(value):
        raise LorakitError(f"{what} diverged (loss {value}); lower the learning rate")
    loss.backward()
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return value


def fit(model, data: TaskData, p: Profile, param_groups: list[dict], seed: int, progress: bool, desc: str) -> list[float]:
    """The training loop shared by LoRA and full fine-tuning: AdamW, 6% warm-up, linear decay."""
    from tqdm.auto import tqdm  # lazy: keeps `import lorakit.train.encoder` (and evaluate, benchmark) light

    device = torch.device(p.device)
    model.to(device)
    tokenizer = load_tokenizer(p.model)
    train_enc = encode_texts(tokenizer, data.train[0], p.max_length)
    train_y = torch.tensor(data.train[1])
    n = len(train_y)
    if n == 0:
        raise LorakitError(f"task {data.name} has no training examples in profile {p.name}")
    optimizer = torch.optim.AdamW(param_groups, weight_decay=0.0)
    schedule = warmup_linear_schedule(optimizer, p.steps)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    cursor, losses = 0, []
    model.train()
    bar = tqdm(range(p.steps), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        if cursor + p.batch_size > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor : cursor + p.batch_size]
        cursor += p.batch_size
        batch = {k: v[idx] for k, v in train_enc.items()}
        width = int(batch["attention_mask"].sum(1).max())
        batch = {k: v[:, :width].to(device) for k, v in batch.items()}
        value = optimizer_step(model(**batch, labels=train_y[idx].to(device)).loss, optimizer, schedule,
                               f"training {data.name}")
        losses.append(round(value, 5))
        bar.set_postfix(loss=f"{value:.3f}")
    return losses


def task_metrics(model, data: TaskData, p: Profile) -> dict:
    """Validation and test accuracy of ``model`` on ``data``, and the test majority baseline.

    Computed in the profile's ``eval_dtype`` (bf16 autocast where it resolves to bf16: a training
    run's own check, not a reported number, at half the cost)."""
    tokenizer = load_tokenizer(p.model)
    dtype = resolve_eval_dtype(p.eval_dtype, p.device)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16 and p.device == "cpu"):
        return _task_metrics(model, data, p, tokenizer)


def _task_metrics(model, data: TaskData, p: Profile, tokenizer) -> dict:
    return {
        "val_acc": accuracy(model, encode_texts(tokenizer, data.val[0], p.max_length), data.val[1], p.eval_batch_size, p.device),
        "test_acc": accuracy(model, encode_texts(tokenizer, data.test[0], p.max_length), data.test[1], p.eval_batch_size, p.device),
        "majority_test": data.majority_baseline("test"),
    }


@dataclass
class TrainedAdapter:
    """One task's fine-tuned LoRA adapter and head.

    Attributes:
        task: task name.
        updates: ``{module name: LoRAUpdate}`` (module names of the base model).
        head: ``{"classifier.weight": (K, d), "classifier.bias": (K,)}``.
        label_names: the task's label names (K of them).
        metrics: ``val_acc``, ``test_acc``, ``train_loss`` (per step), ``seconds``, ``steps``.
        config: everything that went into the cache key.
        path: the cached PEFT adapter folder.
    """

    task: str
    updates: dict[str, LoRAUpdate]
    head: dict[str, torch.Tensor]
    label_names: list[str]
    metrics: dict
    config: dict
    path: Path | None = None

    @property
    def deltas(self) -> dict[str, torch.Tensor]:
        return {m: u.delta() for m, u in self.updates.items()}
