"""Helpers shared by the exercise checkers."""

from __future__ import annotations

from typing import Any, Mapping

import torch


def ok(name: str) -> str:
    """Print and return the success line of a checker."""
    msg = f"✓ {name}: correct"
    print(msg)
    return msg


def random_lora(seed: int, d_out: int = 12, d_in: int = 10, r: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float64 factors ``(A: r × d_in, B: d_out × r)`` from a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(r, d_in, generator=g, dtype=torch.float64),
            torch.randn(d_out, r, generator=g, dtype=torch.float64))


def copy_input(x: Any) -> Any:
    """A deep copy of a checker's input (tensor, LoRAUpdate-like object, or a list/tuple of them)."""
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, (list, tuple)):
        return type(x)(copy_input(v) for v in x)
    if hasattr(x, "A") and hasattr(x, "B") and hasattr(x, "scaling"):
        return type(x)(x.A.clone(), x.B.clone(), x.scaling)
    return x


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if hasattr(a, "A") and hasattr(a, "B") and hasattr(a, "scaling"):
        return _same(a.A, b.A) and _same(a.B, b.B) and a.scaling == b.scaling
    return True


def assert_unmodified(originals: Mapping[str, Any], passed: Mapping[str, Any]) -> None:
    """Raise if the learner's function changed one of its inputs in place (``passed`` vs ``originals``)."""
    for name, orig in originals.items():
        if not _same(orig, passed[name]):
            raise AssertionError(
                f"your function changed its input `{name}` in place (x /= ..., x.mul_(...), x[...] = ...); "
                "leave the inputs as they are: use out-of-place operations (x = x / c) or work on x.clone()")


def as_tensor(x: Any, what: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Check that ``x`` is a tensor of the inputs' floating dtype; return it."""
    assert isinstance(x, torch.Tensor), f"{what} must be a torch.Tensor, got {type(x).__name__}"
    if x.dtype != dtype:
        raise AssertionError(
            f"{what} is {x.dtype} but the inputs are {dtype}: keep the inputs' dtype (torch.zeros and "
            "torch.tensor default to float32: pass dtype=..., and don't call .float())")
    return x


def as_number(x: Any, what: str) -> float:
    """``float(x)`` for a Python number or a one-element tensor/array, with a clear error otherwise."""
    try:
        return float(x)
    except (TypeError, ValueError, RuntimeError):
        raise AssertionError(f"{what} must be a number, got {type(x).__name__}") from None


def check_choice(prediction: Any, choices: tuple[str, ...], question: str) -> str:
    """A predict → run → interpret exercise's prediction: any of ``choices`` is accepted, nothing else.

    Raise with a hint when the learner has not written one (``None``) or wrote something else.
    """
    if prediction is None:
        raise AssertionError(f"write your prediction first ({question}): set `prediction` to one of "
                             f"{', '.join(map(repr, choices))} in the cell above the measurement, then run it")
    if not isinstance(prediction, str) or prediction.strip().lower() not in choices:
        raise AssertionError(f"`prediction` must be one of {', '.join(map(repr, choices))}, got {prediction!r}")
    return prediction.strip().lower()


def report_prediction(prediction: str, measured: str, evidence: str, why: str) -> str:
    """Print and return the verdict of a predict → run → interpret exercise (any prediction passes)."""
    match = "your prediction matches the measurement" if prediction == measured else (
        f"the measurement says {measured!r}, not {prediction!r}: read the explanation")
    msg = f"✓ prediction {prediction!r}, measured {measured!r} ({evidence}): {match}.\n  Why: {why}"
    print(msg)
    return msg
