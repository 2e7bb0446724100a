"""Per-example test correctness in ``results.json``: packing, unpacking, and reading it from a record.

A run stores, for every merged record, individual adapter and head-only floor, each test example's
right/wrong in the split's own order (fixed across seeds, ``lorakit.data.tasks.SPLIT_SEED``), so any two
of them can be compared example by example later (:mod:`lorakit.results.metrics`, :mod:`lorakit.results.claims`).
"""

from __future__ import annotations

import base64
from typing import Iterable, Mapping

import numpy as np

from ..errors import LorakitError


def encode_correct(correct) -> dict:
    """Per-example correctness (a bool vector) as JSON: ``{"n": n, "bits": base64 of numpy.packbits}``.

    8 examples per byte, so a run's every method × init × task × seed fits in results.json and any
    comparison can be re-tested later (paired, example by example) with :mod:`lorakit.stats.paired`.
    A torch tensor is moved to the CPU first.
    """
    correct = correct.cpu() if hasattr(correct, "cpu") else correct
    bits = np.asarray(correct, dtype=bool).reshape(-1)
    return {"n": int(bits.size), "bits": base64.b64encode(np.packbits(bits).tobytes()).decode("ascii")}


def decode_correct(encoded: Mapping) -> np.ndarray:
    """The bool vector :func:`encode_correct` wrote (one-line error for a malformed entry)."""
    try:
        n, raw = int(encoded["n"]), base64.b64decode(encoded["bits"], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise LorakitError(f"malformed per-example correctness entry ({exc}); re-run the benchmark") from None
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))
    if bits.size < n or bits.size - n >= 8:
        raise LorakitError(f"per-example correctness holds {bits.size} bits for {n} examples; re-run the benchmark")
    return bits[:n].astype(bool)


def record_correct(record: Mapping, task: str) -> np.ndarray:
    """One record's per-example test correctness of ``task`` (records of runs before this field: an error)."""
    if "test_correct" not in record:
        raise LorakitError("this run has no per-example predictions (made before they were recorded); re-run it")
    return decode_correct(record["test_correct"][task])


def mean(values: Iterable[float]) -> float:
    """The mean of ``values`` ignoring NaNs; NaN when nothing is left."""
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")
