"""Reading and checking PEFT adapter folders (the base model is :mod:`lorakit.adapters.base_model`).

The input side of :func:`lorakit.merge.merge_adapter_folders`: every error is one line that
names the folder and says what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..errors import LorakitError
from ..lora.update import Adapter
from ..lora.peft import read_adapter, read_adapter_config, read_head

#: The key suffix of peft's ``lora_bias`` (a bias on lora_B: ΔW x + Δb with Δb = s·b).
LORA_BIAS = ".lora_B.bias"


@dataclass
class SourceAdapter:
    r"""One adapter folder: its config, LoRA layers (``{module: LoRAUpdate}``), head weights and
    ``lora_bias`` vectors (``{module: b}``, unscaled: the layer adds :math:`s\,b`)."""

    path: Path
    config: dict
    layers: Adapter
    head: dict[str, torch.Tensor]
    biases: dict[str, torch.Tensor] = field(default_factory=dict)


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
    biases = {k[: -len(LORA_BIAS)]: head.pop(k).float() for k in list(head) if k.endswith(LORA_BIAS)}
    stray = sorted(k for k in head if ".lora_" in k)
    if stray:
        raise LorakitError(_unsupported(path, stray[0]))
    for module, bias in biases.items():
        if module not in layers or not bool(torch.isfinite(bias).all()):
            raise LorakitError(f"{path}: the lora_bias of {module} has no LoRA factors or is not finite; re-save the adapter")
    return SourceAdapter(path, config, layers, head, biases)


def _unsupported(path: Path, key: str) -> str:
    """Why an adapter tensor that is no Linear LoRA factor cannot be merged (one line)."""
    module = key.split(".lora_")[0]
    if ".lora_embedding_" in key:
        return (
            f"{path} has LoRA on the embedding layer {module}; lorakit merges LoRA on Linear and Conv1D layers "
            "only (an embedding's update is a table lookup, not B·A·x): train without embeddings in "
            "target_modules, or merge_and_unload that adapter into its base first"
        )
    if ".lora_magnitude" in key:
        return f"{path} holds DoRA magnitudes ({module}); DoRA is not a LoRA update s·B·A, merge plain LoRA adapters"
    return f"{path} holds LoRA weights lorakit cannot merge ({key}); merge only plain Linear/Conv1D LoRA adapters"


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
        return dict(source.head), f"kept the head of adapter {head_from} ({', '.join(head_modules(source.head))})"
    if not having:
        return {}, "no head (the adapters have no modules_to_save)"
    if len(sources) == 1:
        return dict(sources[0].head), f"kept the adapter's head ({', '.join(head_modules(sources[0].head))})"
    return {}, (
        f"dropped the heads ({', '.join(head_modules(sources[having[0]].head))}) of adapters "
        f"{', '.join(map(str, having))}: a merged LoRA carries one head; pass --head-from I to keep adapter I's"
    )


def head_modules(head: Mapping[str, torch.Tensor]) -> list[str]:
    return sorted({k.rsplit(".", 1)[0] for k in head})
