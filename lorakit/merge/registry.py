r"""The merge-method registry and the front door: one layer (:func:`merge_layer`) or whole adapters.

Notation (docs/methods.md §1): for one Linear layer and task :math:`i = 1 \dots N`,

.. math::

    \Delta W_i = s_i B_i A_i \in \mathbb{R}^{d_{out} \times d_{in}}, \quad
    A_i \in \mathbb{R}^{r \times d_{in}},\ B_i \in \mathbb{R}^{d_{out} \times r},

and a merge method maps :math:`\{\Delta W_i\} \mapsto \Delta W^*` (the merged model is
:math:`W_0 + \Delta W^*`).

A method is a function ``f(updates: list[LoRAUpdate], **params) -> ΔW*`` registered with
:func:`register`, which reads its hyperparameters and their defaults from the function's
signature. Everything lorakit knows about a method lives on its :class:`MergeMethod`: its paper,
its parameters and their checks, and its capabilities (``dense``: the same rule on stacked dense
tensors; ``factored``: the result is exactly a concatenation of the factors; ``forwards``: the
parameters it hands to an inner ``base`` method; ``variants``: ``<name>_<base>`` names such as
``do_ties``). No other module tests a method's name.

Shared hyperparameter names (:data:`BASE_DEFAULTS`): ``lam`` (merge coefficient λ), ``density``
(fraction of entries kept by TIES' trim), ``drop_rate`` (DARE's p), ``seed`` (DARE's mask),
``combine`` (DARE's second stage). A name means the same thing, with the same default, in every
method that takes it.
"""

from __future__ import annotations

import inspect
import math
import zlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ..errors import LorakitError
from ..lora.update import LoRAUpdate, check_compatible

#: The parameters an outer method (KnOTS, DO-Merging) forwards to its ``base``, with their defaults.
BASE_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {"lam": 1.0, "density": 0.2, "drop_rate": 0.5, "seed": 0, "combine": "linear"}
)
BASE_PARAMS = tuple(BASE_DEFAULTS)

Check = tuple[Callable[[Any], bool], str]


def is_real(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    """An int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_bool(value: Any) -> bool:
    """True or False."""
    return isinstance(value, bool)


#: Checks of the shared parameters: ``name → (predicate, what a valid value is)``.
SHARED_CHECKS: Mapping[str, Check] = MappingProxyType(
    {
        "lam": (is_real, "a finite number"),
        "density": (lambda v: is_real(v) and 0 < v <= 1, "a number in (0, 1]"),
        "drop_rate": (lambda v: is_real(v) and 0 <= v < 1, "a number in [0, 1)"),
        "seed": (is_int, "an integer"),
        "combine": (lambda v: v in ("linear", "ties"), "'linear' or 'ties'"),
    }
)


@dataclass(frozen=True)
class MergeMethod:
    """One registered merge method.

    Attributes:
        name: registry key (``merge_layer(..., method=name)``).
        function: ``function(updates: list[LoRAUpdate], **params) -> ΔW*`` for one layer.
        paper: title of the paper that introduced it; url: its address.
        params: hyperparameters and their defaults (read-only).
        description: one line.
        dense: the same rule on stacked dense task tensors ``(N, ...) -> (...)``, for methods that
            act entry by entry (usable as KnOTS' base and for DO's ``magnitude_merge="base"``).
        forwards: names in ``params`` that the method hands to its ``base`` method.
        checks: ``name → (predicate, what a valid value is)`` for the method's own parameters.
        factored: ``ΔW*`` is exactly ``λ [s_1B_1 ⋯ s_NB_N][A_1; …; A_N]`` (an adapter writer may
            concatenate the factors instead of refactoring a dense ``ΔW*``).
        variants: ``<name>_<base>`` names (e.g. ``do_ties``) select this method with that base.
        entrywise_base: its ``base`` must have a ``dense`` rule (KnOTS merges SVD blocks entrywise).
        precompute: ``precompute(adapters, **params) -> (prepared adapters, params to merge them with)``:
            work that depends on neither λ nor the base method, done once for a whole set of adapters
            (DO-Merging's orthogonalisation), so a hyperparameter search need not repeat it; merging
            the prepared adapters with the returned params equals merging the originals, bit for bit.
        tune: the hyperparameter a search tries at the chosen λ, after the λ grid (``density`` for
            TIES); ``None``: λ alone (the search then tries λ × factors). A DO-Merging variant
            (``do_ties``) tunes its base's, if the base has one (:func:`lorakit.run.search.tuned_param`).
        tune_in_grid: the λ grid's points name ``tune`` at its default (``{"lam": 0.3, "density": 0.2}``).
    """

    name: str
    function: Callable[..., torch.Tensor]
    paper: str
    url: str
    params: Mapping[str, Any]
    description: str
    dense: Callable[..., torch.Tensor] | None = None
    forwards: tuple[str, ...] = field(default=())
    checks: Mapping[str, Check] = field(default_factory=dict)
    factored: bool = False
    variants: bool = False
    entrywise_base: bool = False
    precompute: Callable[..., tuple[list, dict]] | None = None
    tune: str | None = None
    tune_in_grid: bool = True

    def __post_init__(self) -> None:
        if self.tune is not None and self.tune not in self.params:
            raise ValueError(f"{self.name}: tune={self.tune!r} is not one of its parameters {sorted(self.params)}")
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        object.__setattr__(self, "checks", MappingProxyType(dict(self.checks)))


METHODS: dict[str, MergeMethod] = {}


def signature_defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The keyword parameters of ``function`` after its first (the updates) with their defaults, in order."""
    params = list(inspect.signature(function).parameters.values())[1:]
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def register(
    name: str,
    *,
    paper: str,
    url: str,
    description: str,
    dense: Callable[..., torch.Tensor] | None = None,
    forwards: Sequence[str] = (),
    checks: Mapping[str, Check] | None = None,
    factored: bool = False,
    variants: bool = False,
    entrywise_base: bool = False,
    precompute: Callable[..., tuple[list, dict]] | None = None,
    defaults_from: Callable[..., Any] | None = None,
    tune: str | None = None,
    tune_in_grid: bool = True,
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Decorator: register ``function`` as merge method ``name``; returns the function unchanged.

    The parameters and defaults are the function's keyword parameters (or those of
    ``defaults_from``), followed by the ``forwards`` names it takes through ``**base_params``
    (defaults from :data:`BASE_DEFAULTS`). A shared name must keep its shared default, and every
    parameter needs a check (shared ones have theirs): both are programming errors, raised at import.
    """

    def wrap(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        params = signature_defaults(defaults_from or function)
        for key in forwards:
            params.setdefault(key, BASE_DEFAULTS[key])
        own_checks = dict(checks or {})
        for key, value in params.items():
            if key in BASE_DEFAULTS and value != BASE_DEFAULTS[key]:
                raise ValueError(f"{name}: default {key}={value!r} differs from the shared {BASE_DEFAULTS[key]!r}")
            if key != "base" and key not in own_checks and key not in SHARED_CHECKS:
                raise ValueError(f"{name}: parameter {key!r} has no check")
        METHODS[name] = MergeMethod(
            name, function, paper, url, params, description, dense=dense, forwards=tuple(forwards),
            checks=own_checks, factored=factored, variants=variants, entrywise_base=entrywise_base,
            precompute=precompute, tune=tune, tune_in_grid=tune_in_grid,
        )
        return function

    return wrap


def get_method(method: str) -> MergeMethod:
    """The registered :class:`MergeMethod` called ``method`` (LorakitError listing the known ones)."""
    if method not in METHODS:
        raise LorakitError(f"unknown merge method {method!r}; known methods: {', '.join(METHODS)}")
    return METHODS[method]


# ----------------------------------------------------------------------------------------------
# Variant names: "do_ties" = DO-Merging with TIES as its base
# ----------------------------------------------------------------------------------------------


def variant_names() -> list[str]:
    """Every registered method and every ``<method>_<base>`` variant name, in registry order."""
    names = list(METHODS)
    for spec in METHODS.values():
        if spec.variants:
            names += [f"{spec.name}_{base}" for base in _base_choices(spec.name)]
    return names


def resolve_variant(name: str) -> tuple[str, dict[str, Any]]:
    """A method or variant name → ``(registered method, fixed params)``: ``do_ties`` → ``("do", {"base": "ties"})``."""
    if name in METHODS:
        return name, {}
    for spec in METHODS.values():
        prefix = f"{spec.name}_"
        if spec.variants and name.startswith(prefix) and name[len(prefix):] in _base_choices(spec.name):
            return spec.name, {"base": name[len(prefix):]}
    raise LorakitError(f"unknown merge method {name!r}; known: {', '.join(variant_names())}")


def variant_base(name: str) -> str | None:
    """The base method a method or variant name merges with (``do`` → task_arithmetic, ``do_ties`` → ties), or None."""
    method, fixed = resolve_variant(name)
    return {**METHODS[method].params, **fixed}.get("base")


# ----------------------------------------------------------------------------------------------
# Parameter checking
# ----------------------------------------------------------------------------------------------


def _base_choices(method: str) -> list[str]:
    """The methods ``method`` may take as its ``base``: entrywise ones only if it needs their dense rule."""
    if METHODS[method].entrywise_base:
        return [name for name, spec in METHODS.items() if spec.dense is not None]
    return [name for name in METHODS if name != method]


def _check_value(method: str, name: str, value: Any) -> None:
    spec = METHODS[method]
    if name == "base":
        choices = _base_choices(method)
        if value not in choices:
            raise LorakitError(f"{method}: base must be one of {', '.join(choices)}, got {value!r}")
        return
    check, wanted = spec.checks.get(name) or SHARED_CHECKS[name]
    if not check(value):
        raise LorakitError(f"{method}: {name} must be {wanted}, got {value!r}")


def resolve_params(method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults of ``method`` overridden by ``params``, checked; raises a one-line LorakitError.

    Unknown names, out-of-range values, and a base parameter that the chosen ``base`` does not
    use (e.g. ``density`` with DO's default task-arithmetic base) are errors. The result holds
    only what the method's function takes (shared base parameters the base ignores are dropped).
    """
    spec = get_method(method)
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise LorakitError(
            f"{method} has no parameter {', '.join(unknown)}; its parameters are: {', '.join(spec.params)}"
        )
    resolved = {**spec.params, **params}
    for name, value in resolved.items():
        _check_value(method, name, value)
    if spec.forwards:
        base = METHODS[resolved["base"]]
        takes = _consumed(base.name)
        unused = sorted(k for k in params if k in spec.forwards and k not in takes)
        if unused:
            raise LorakitError(
                f"{method}: {', '.join(unused)} is not used by base={base.name} "
                f"(it uses {', '.join(sorted(set(spec.forwards) & takes)) or 'none of them'})"
            )
        if resolved.get("magnitude_merge") == "base" and resolved.get("decouple") and base.dense is None:
            raise LorakitError(
                f"{method}: magnitude_merge='base' needs an entrywise base method, not {base.name}; "
                "use magnitude_merge='mean'"
            )
    return _forwarded(method, resolved)


def _consumed(method: str) -> set[str]:
    """The parameters ``method`` really uses with its default base (recursively through bases)."""
    spec = METHODS[method]
    if not spec.forwards:
        return set(spec.params)
    own = set(spec.params) - set(spec.forwards)
    return own | (set(spec.forwards) & _consumed(spec.params["base"]))


def _forwarded(method: str, resolved: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the shared base parameters that the chosen base does not use."""
    spec = METHODS[method]
    if not spec.forwards:
        return dict(resolved)
    takes = _consumed(resolved["base"])
    return {k: v for k, v in resolved.items() if k not in spec.forwards or k in takes}


# ----------------------------------------------------------------------------------------------
# Front door
# ----------------------------------------------------------------------------------------------


def check_layer(updates: Sequence[LoRAUpdate]) -> list[LoRAUpdate]:
    """The updates of one layer as a list; a one-line LorakitError if empty, not LoRAUpdates, or of other shapes."""
    updates = list(updates)
    if not updates:
        raise LorakitError("no LoRA updates given; pass at least one")
    for k, u in enumerate(updates):
        if not isinstance(u, LoRAUpdate):
            raise LorakitError(f"update {k} is a {type(u).__name__}, not a LoRAUpdate")
        if u.shape != updates[0].shape:
            raise LorakitError(
                f"update {k} has ΔW shape {u.shape} but update 0 has {updates[0].shape}; "
                "merge only updates of the same layer"
            )
    return updates


def merge_layer(updates: Sequence[LoRAUpdate], method: str, **params: Any) -> torch.Tensor:
    r"""Merge the LoRA updates of one layer: :math:`\{s_i B_i A_i\} \mapsto \Delta W^*`.

    Args:
        updates: N :class:`LoRAUpdate` of the same ``(d_out, d_in)``.
        method: a key of :data:`METHODS`.
        **params: hyperparameters of that method (see ``METHODS[method].params``).

    Returns:
        float32 ``ΔW*`` of shape ``(d_out, d_in)`` on the updates' device.
    """
    resolved = resolve_params(method, params)
    return METHODS[method].function(check_layer(updates), **resolved).float()


def layer_seed(seed: int, module: str) -> int:
    """The seed :func:`merge_adapters` uses for ``module``: mixes ``seed`` with a CRC32 of the name."""
    return (int(seed) * 1_000_003 + zlib.crc32(module.encode())) % (2**63)


def layer_params(resolved: Mapping[str, Any], module: str) -> dict[str, Any]:
    """The parameters for one layer: a method that draws randomness gets ``seed = layer_seed(seed, module)``."""
    params = dict(resolved)
    if "seed" in params:
        params["seed"] = layer_seed(resolved["seed"], module)
    return params


def merge_adapters(
    adapters: Sequence[Mapping[str, LoRAUpdate]], method: str, progress: bool = False, **params: Any
) -> dict[str, torch.Tensor]:
    """Merge whole adapters layer by layer: ``{module: ΔW*}`` (float32), in the first adapter's order.

    Checks compatibility (same modules, same shapes) and the parameters once, before any work.
    Methods that use a ``seed`` (DARE, or a DARE base) draw each layer's masks with
    ``layer_seed(seed, module)``, so layers get different, reproducible masks; for any one
    layer the result equals ``merge_layer(..., seed=layer_seed(seed, module))``.
    """
    adapters = list(adapters)
    check_compatible(adapters)
    resolved = resolve_params(method, params)
    modules = list(adapters[0])
    if progress:
        modules = tqdm(modules, desc=f"merging ({method})", unit="layer")
    merged = {}
    for module in modules:
        updates = check_layer([ad[module] for ad in adapters])
        merged[module] = METHODS[method].function(updates, **layer_params(resolved, module)).float()
    return merged
