"""Timing and peak memory of one call, on the CPU or a CUDA device (used by :mod:`lorakit.run.bench`).

Times are wall-clock seconds with the device synchronised around the call; peak memory is
``torch.cuda.max_memory_allocated`` on a GPU and, on Linux CPUs, the process's peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import re
import resource
import statistics
import time
from typing import Any, Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            match = re.search(rf"{field}:\s+(\d+)", fh.read())
        return int(match.group(1)) if match else None
    except OSError:
        return None


def reset_peak(device: torch.device) -> tuple[str, int]:
    """Reset the peak-memory counter; returns (source name, baseline bytes)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return "cuda.max_memory_allocated", torch.cuda.memory_allocated(device)
    try:  # Linux: writing 5 to clear_refs resets VmHWM (peak resident set size)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return "VmHWM", 1024 * (_rss_kib("VmRSS") or 0)
    except OSError:
        return "ru_maxrss (process lifetime)", 1024 * (_rss_kib("VmRSS") or 0)


def peak_memory(device: torch.device, source: str) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    if source == "VmHWM":
        return 1024 * (_rss_kib("VmHWM") or 0)
    return 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call of ``fn`` (device synchronised before and after); the result is dropped."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start
