"""One call at the top of every notebook: quiet logging, threads, seeds, and a header line."""

from __future__ import annotations

import platform

import torch

from ..data.models import quiet
from ..errors import LorakitError
from ..profiles import Profile, apply_threads, get_profile


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


def show_progress(profile: Profile) -> bool:
    """Whether a notebook's long cells draw progress bars: yes in ``cpu`` and ``gpu``, not in ``ci``.

    ``ci`` finishes in seconds per cell, and its executed outputs are committed and checked by nbval;
    bars there would only add widget state. A learner's ``cpu`` run trains for minutes and sees each bar.
    """
    return profile.name != "ci"


def course_tasks(profile: Profile) -> list[str]:
    """The tasks a notebook trains and merges live: ``profile.course_tasks``, or all ``profile.tasks``.

    The ``cpu`` profile's benchmark has eight tasks; its notebooks use five (under an hour for 00–05
    on one CPU core). Every one of them is one of the profile's tasks, so adapters are shared with
    ``lorakit run`` through the cache.
    """
    chosen = list(profile.course_tasks or profile.tasks)
    unknown = [t for t in chosen if t not in profile.tasks]
    if unknown:
        raise LorakitError(f"course_tasks {unknown} are not among profile {profile.name}'s tasks {list(profile.tasks)}; "
                           "choose course tasks from the profile's tasks")
    return chosen
