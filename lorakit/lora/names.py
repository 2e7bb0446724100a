"""PEFT's naming, in one place: module names relative to the base model <-> peft's state-dict keys.

The merge and OSRM math (``lorakit.merge``, ``lorakit.osrm``) needs the names of a live peft model's
modules but none of the adapter-folder I/O of :mod:`lorakit.lora.peft`; both read the names here.
"""

from __future__ import annotations

from ..errors import LorakitError


#: What peft puts before every base-model name (``PeftModel.base_model.model`` is the wrapped model).
PEFT_PREFIX = "base_model.model."
LORA_PARTS = ("A", "B")


def strip_peft_prefix(name: str) -> str:
    """A module or parameter name relative to the base model (peft's ``base_model.model.`` removed).

    ``strip_peft_prefix("base_model.model.bert.pooler.dense") == "bert.pooler.dense"``; a name
    without the prefix is returned unchanged.
    """
    return name[len(PEFT_PREFIX) :] if name.startswith(PEFT_PREFIX) else name


def peft_key(name: str) -> str:
    """``base_model.model.<name>``: the key peft saves a base-model tensor under (e.g. a head in
    ``modules_to_save``: ``peft_key("classifier.weight")``)."""
    return PEFT_PREFIX + name


def peft_lora_key(module: str, part: str) -> str:
    """The key of one LoRA factor in ``adapter_model.safetensors``, as ``save_pretrained`` writes it.

    ``peft_lora_key("bert.encoder.layer.0.attention.self.query", "A")`` is
    ``"base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"``
    (``A``: ``(r, d_in)``, ``B``: ``(d_out, r)``). Inverse of :func:`parse_peft_lora_key`.
    """
    if part not in LORA_PARTS:
        raise LorakitError(f"LoRA factor part must be 'A' or 'B', got {part!r}")
    return f"{PEFT_PREFIX}{module}.lora_{part}.weight"


def parse_peft_lora_key(key: str) -> tuple[str, str] | None:
    """Split a peft state-dict key into (module name, "A"|"B"), or None if it is no LoRA factor.

    Keys look like ``base_model.model.<module>.lora_A[.default].weight`` (saved files drop the
    adapter name, a live model's ``state_dict`` keeps it); the module name comes back relative
    to the base model.
    """
    for part in ("lora_A", "lora_B"):
        marker = f".{part}."
        if marker in key and key.endswith(".weight"):
            return strip_peft_prefix(key.split(marker)[0]), part[-1]
    return None
