"""Reading and checking PEFT adapter folders, and loading the base model they were trained on.

The input side of :func:`lorakit.merge.merge_adapter_folders`: every error is one line that
names the folder and says what to do.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..assets import quiet, resolve_model_path
from ..errors import LorakitError
from ..lora import Adapter, read_adapter, read_adapter_config, read_head

#: peft task types whose PeftModel insists on loading a head (modules_to_save) from the adapter.
HEAD_TASKS = ("SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS")
#: transformers class for each peft task_type (what ``AutoPeftModel`` uses too).
AUTO_CLASSES = {
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "CAUSAL_LM": "AutoModelForCausalLM",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}


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




def load_base_for(base: str, task_type: str | None, head: Mapping[str, torch.Tensor], heads_seen: Sequence[Mapping]):
    """Load the base model in the class the adapters were trained on (peft's ``task_type``).

    Without a task type, the class named in the base's ``config.json`` (``architectures``) is
    used, else ``AutoModel``. A sequence classifier gets ``num_labels`` from the head's output
    size. Returns ``(model, tokenizer or None)``.
    """
    import transformers  # lazy: heavy, and only the "merged" format needs it

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


