"""lorakit: learn, derive and run LoRA model merging (magnitude variance, OSRM, DO-Merging)."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import LorakitError
from .lora.peft import LoRAUpdate, lora_delta, lora_scaling, read_adapter

__all__ = ["LorakitError", "LoRAUpdate", "lora_delta", "lora_scaling", "read_adapter", "__version__"]
