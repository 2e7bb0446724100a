"""Automatic checkers for the notebooks' exercises, one module per notebook (``nb01``, ``nb02``, ...).

Each ``check_*`` function takes the learner's answer (usually a function), tests it against
lorakit's reference implementation on fresh random inputs, and either prints a short success line
or raises ``AssertionError`` with a hint. The solutions notebooks call the same checkers, so
``from lorakit.course import exercises; exercises.check_lora_delta(...)`` works for every notebook.
"""

from __future__ import annotations

import importlib
import pkgutil

__all__: list[str] = []

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("nb"):
        _module = importlib.import_module(f"{__name__}.{_info.name}")
        for _name in dir(_module):
            if _name.startswith("check_"):
                globals()[_name] = getattr(_module, _name)
                __all__.append(_name)
