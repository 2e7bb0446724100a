"""The base model of a ``"merged"`` merge: which class to load, and how adapter module names map onto it.

An adapter's module names are relative to the model peft wrapped: ``bert.encoder.layer.0…`` for a
``BertForSequenceClassification``, ``encoder.layer.0…`` for a bare ``BertModel``. The class to load
comes from (first that applies):

1. the adapters' peft ``task_type`` (:data:`AUTO_CLASSES`; a sequence or token classifier gets
   ``num_labels`` from the head the adapters carry);
2. without a task type, the head they carry (``modules_to_save``: ``classifier``/``score`` →
   sequence classification, ``qa_outputs`` → question answering, ``lm_head`` → causal LM);
3. the base's own ``config.json`` (``architectures``; a local folder or a hub id), else ``AutoModel``.

Module names are then matched modulo the wrapper's prefix (the model's ``base_model_prefix``, e.g.
``bert``, ``model``, ``transformer``): adapter names are used as they are, or with the prefix
stripped (adapters of a task model merged into the bare model), or with it added (adapters of a
bare model merged into a task model) — whichever makes every adapted module exist.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from ..data.models import quiet, resolve_model_path
from ..errors import LorakitError
from ..lora.update import Adapter

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
#: Without a task_type: the head module (``modules_to_save``) that says which task model was trained.
HEAD_TASK_GUESS = {"classifier": "SEQ_CLS", "score": "SEQ_CLS", "qa_outputs": "QUESTION_ANS", "lm_head": "CAUSAL_LM"}
_LABELLED = ("ForSequenceClassification", "ForTokenClassification")


def base_config(base: str):
    """``(path, transformers config)`` of a base model folder, alias or hub id; one-line errors."""
    import transformers  # lazy: heavy, and only the "merged" format needs it

    quiet()
    path = resolve_model_path(base)
    try:
        return path, transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise LorakitError(f"cannot load base model {base!r} ({str(exc).splitlines()[0]}); check --base") from None


def choose_class(config, task_type: str | None, head: Mapping[str, torch.Tensor]) -> tuple[str, str | None]:
    """``(transformers class name, note or None)`` for the base model (see the module docstring)."""
    if task_type in AUTO_CLASSES:
        return AUTO_CLASSES[task_type], None
    guessed = sorted({HEAD_TASK_GUESS[k.split(".")[0]] for k in head if k.split(".")[0] in HEAD_TASK_GUESS})
    if task_type is None and len(guessed) == 1:
        name = AUTO_CLASSES[guessed[0]]
        return name, f"the adapters name no task_type; loaded the base as {name} for the head they carry"
    archs = getattr(config, "architectures", None) or []
    return (archs[0] if archs else "AutoModel"), None


def _class_kwargs(name: str, head: Mapping[str, torch.Tensor]) -> dict:
    if name.endswith(_LABELLED):
        sizes = [int(t.shape[0]) for t in head.values() if t.ndim == 2]
        if sizes:
            return {"num_labels": min(sizes)}
    return {}


def _resolve_class(name: str):
    import transformers

    return getattr(transformers, name, None) or transformers.AutoModel


def load_base_for(base: str, task_type: str | None, head: Mapping[str, torch.Tensor], heads_seen=()):
    """Load the base model in the class the adapters were trained on; ``(model, tokenizer or None, note)``.

    ``head``: the head that will be kept; ``heads_seen``: every adapter's head (a dropped head still
    tells the class and label count).
    """
    path, config = base_config(base)
    sample = dict(head) or next((dict(h) for h in heads_seen if h), {})
    name, note = choose_class(config, task_type, sample)
    try:
        model = _resolve_class(name).from_pretrained(path, **_class_kwargs(name, sample))
    except (OSError, ValueError, KeyError) as exc:
        raise LorakitError(f"cannot load base model {base!r} as {name} ({str(exc).splitlines()[0]}); check --base") from None
    return model.eval(), _tokenizer(path), note


def meta_base_for(base: str, task_type: str | None, heads_seen=()):
    """The base model's skeleton on the ``meta`` device (shapes, no weights) for a dry run; ``(model, name, note)``."""
    path, config = base_config(base)
    sample = next((dict(h) for h in heads_seen if h), {})
    name, note = choose_class(config, task_type, sample)
    for key, value in _class_kwargs(name, sample).items():
        setattr(config, key, value)
    cls = _resolve_class(name)
    try:
        with torch.device("meta"):
            model = cls.from_config(config) if hasattr(cls, "from_config") else cls._from_config(config)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LorakitError(f"cannot build base model {base!r} as {name} ({str(exc).splitlines()[0]}); check --base") from None
    return model, name, note


def _tokenizer(path: str):
    """The base's tokenizer when its folder has one (saved beside the merged model), else None."""
    from pathlib import Path

    folder = Path(path)
    if folder.is_dir() and not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception:  # a model without a usable tokenizer: the merged weights are still complete
        return None


def module_map(model: torch.nn.Module, names) -> Callable[[str], str]:
    """``adapter name -> model name``: as is, wrapper prefix stripped, or added — the first under
    which every adapted module of ``names`` exists in ``model`` (as is, if none does)."""
    have = {n for n, m in model.named_modules() if getattr(m, "weight", None) is not None}
    known = set(dict(model.named_modules())) | set(dict(model.named_parameters()))
    prefix = getattr(model, "base_model_prefix", "") or ""

    def strip(n: str) -> str:
        short = n[len(prefix) + 1 :] if n.startswith(prefix + ".") else n
        return short if short in known else n

    def add(n: str) -> str:
        return f"{prefix}.{n}" if f"{prefix}.{n}" in known else n

    for translate in ((lambda n: n), strip, add) if prefix else ((lambda n: n),):
        if all(translate(n) in have for n in names):
            return translate
    return lambda n: n


def check_base_fits(
    model: torch.nn.Module, layers: Adapter, head: Mapping[str, torch.Tensor], transpose: bool,
    translate: Callable[[str], str] = lambda n: n, biases=(),
) -> None:
    """One-line error unless every adapted module and head tensor exists in ``model`` with its shape.

    ``translate`` maps adapter names to model names (:func:`module_map`); ``biases``: modules whose
    ``lora_bias`` needs a bias in the base layer.
    """
    modules = dict(model.named_modules())
    for name, upd in layers.items():
        weight = getattr(modules.get(translate(name)), "weight", None)
        want = upd.shape[::-1] if transpose else upd.shape
        if weight is None or tuple(weight.shape) != tuple(want):
            found = "missing" if weight is None else f"of shape {tuple(weight.shape)}"
            raise LorakitError(
                f"module {name} ({want[0]}×{want[1]}) is {found} in the base model {type(model).__name__}; "
                "pass the base model the adapters were trained on (--base)"
            )
        if name in biases and getattr(modules[translate(name)], "bias", None) is None:
            raise LorakitError(
                f"the adapters carry a lora_bias for {name} but that layer of the base model has no bias; check --base"
            )
    params = dict(model.named_parameters())
    for key, tensor in head.items():
        mapped = translate(key)
        if mapped not in params or params[mapped].shape != tensor.shape:
            raise LorakitError(
                f"the head tensor {key} {tuple(tensor.shape)} does not fit the base model {type(model).__name__}; check --base"
            )
