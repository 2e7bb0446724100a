"""One call at the top of every notebook: quiet logging, threads, seeds, and a header line."""

from __future__ import annotations

import platform

import torch

from .assets import quiet
from .profiles import Profile, apply_threads, get_profile


def setup(profile: str | None = None, seed: int = 0, **overrides) -> Profile:
    """Resolve the profile (``LORAKIT_PROFILE`` by default), silence transformers, set threads and seed.

    Prints which profile and machine the notebook's outputs come from.
    """
    quiet()
    p = get_profile(profile, **overrides)
    apply_threads(p)
    torch.manual_seed(seed)
    print(f"profile: {p.name} | device: {p.device} | threads: {torch.get_num_threads()} | "
          f"machine: {platform.machine()} {platform.system()}, {torch.__version__}")
    return p
