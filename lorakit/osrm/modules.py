"""Finding OSRM's target modules; names relative to the base model work on a peft model too."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from ..errors import LorakitError
from ..lora.names import peft_key, strip_peft_prefix


def resolve_modules(model: torch.nn.Module, module_names: Iterable[str]) -> dict[str, torch.nn.Module]:
    """``{short name: module}`` for names given relative to the base model or to the peft model."""
    if isinstance(module_names, str):
        module_names = [module_names]
    modules = dict(model.named_modules())
    resolved: dict[str, torch.nn.Module] = {}
    for name in module_names:
        short = strip_peft_prefix(name)
        found = next((modules[c] for c in (name, short, peft_key(short)) if c in modules), None)
        if found is None:
            raise LorakitError(
                f"module {name} is not in the model; pass full module names such as "
                "'bert.encoder.layer.0.attention.self.query' (see find_linear_modules)"
            )
        resolved[short] = found
    if not resolved:
        raise LorakitError("no module names given; pass the target Linear modules (see find_linear_modules)")
    return resolved


def is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or isinstance(getattr(module, "base_layer", None), torch.nn.Linear)


def find_linear_modules(model: torch.nn.Module, targets: Sequence[str] = ("query", "value")) -> list[str]:
    """Names (relative to the base model) of the Linear layers whose last name part is in ``targets``.

    ``find_linear_modules(bert, ("query", "value"))`` gives
    ``['bert.encoder.layer.0.attention.self.query', …]``, the modules peft adapts with
    ``target_modules=["query", "value"]``. Works on a peft model as well.
    """
    names = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in targets and is_linear(module):
            names.append(strip_peft_prefix(name))
    if not names:
        raise LorakitError(f"the model has no Linear module named {list(targets)}; check the target module names")
    return names
