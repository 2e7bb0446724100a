"""lorakit: learn, derive and run LoRA model merging (magnitude variance, OSRM, DO-Merging).

The package is layered; each floor imports only the floors below it (``tests/test_layout.py``):
``errors`` · ``fsutil``, ``profiles``, ``stats`` · ``lora``, ``data`` · ``merge``, ``osrm`` · ``train``,
``adapters`` · ``eval`` · ``results`` · ``run``, ``course`` · ``cli``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import LorakitError

__all__ = ["LorakitError", "__version__"]
