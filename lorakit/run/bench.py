"""Timing and memory of the merge methods on random LoRA updates (JSON-able records).

* :func:`bench_merge` — one layer, every method; for task arithmetic, TIES and DARE also peft's
  ``peft.utils.merge_utils`` function on the same dense ``ΔW_i`` (``ratio = lorakit_s / peft_s``),
  and DO-Merging's orthogonalisation cost on its own (``ortho_s``).
* :func:`bench_llm_shapes` — N synthetic adapters with the shapes of a Llama-3-8B LoRA
  (r = 16 on q/k/v/o/gate/up/down, 32 layers), merged layer by layer: time and peak memory per
  method, peft's function on the same tensors where peft has the method, DO-Merging's
  orthogonalisation cost per layer, and (when fewer layers run) a full-model time extrapolated as
  ``per_layer_s × 32``.

Method names are registry names or the benchmark's ``do_<base>`` variants (DO-Merging with
``base=<base>``; see :func:`lorakit.merge.resolve_variant`).

Timings are medians over ``repeats`` after one warm-up run; on CUDA the device is synchronised
around every timed call. lorakit's time starts from the factors (it forms ``ΔW_i`` itself), peft's
from the ready dense ``ΔW_i``, as peft's LoRA merging hands them over.

Roofline (:func:`bench_llm_shapes`): a memory-bound merge cannot beat one read + write of every
dense stack ``(N, d_out, d_in)``; the copy bandwidth is measured in the same run
(:func:`copy_bandwidth`), and ``x_roofline = total_s / roofline_s``.

Command line: ``lorakit bench`` / ``lorakit bench --llm-shapes`` (:mod:`lorakit.cli.bench`, writes
JSON with machine, date and command).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from ..lora.update import LoRAUpdate
from .timing import median_time, peak_memory, reset_peak, timed
from ..merge import METHODS, merge_layer, orthogonalize_factors, resolve_params, resolve_variant
from ..merge.ortho import ORTHO_OPTIONS

#: (d_out, d_in) of the LoRA-adapted Linear layers of one Llama-3-8B decoder layer.
LLAMA3_8B_SHAPES: dict[str, tuple[int, int]] = {
    "q_proj": (4096, 4096),
    "k_proj": (1024, 4096),
    "v_proj": (1024, 4096),
    "o_proj": (4096, 4096),
    "gate_proj": (14336, 4096),
    "up_proj": (14336, 4096),
    "down_proj": (4096, 14336),
}
LLAMA3_8B_LAYERS = 32


def random_updates(
    n_tasks: int, d_out: int, d_in: int, r: int, device: str | torch.device = "cpu", seed: int = 0
) -> list[LoRAUpdate]:
    """N random rank-r updates: A ~ N(0, 1/r²) (peft's gaussian init), B ~ N(0, 0.01²), s = 2."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return [
        LoRAUpdate(
            torch.randn(r, d_in, generator=gen, device=device) / r,
            0.01 * torch.randn(d_out, r, generator=gen, device=device),
            2.0,
        )
        for _ in range(n_tasks)
    ]


def _peft_call(method: str, params: Mapping[str, Any], dense: list[torch.Tensor]) -> Callable[[], Any] | None:
    """peft's merge_utils function for ``method`` with ``params`` on dense task tensors, or None."""
    try:
        from peft.utils import merge_utils as pm
    except ImportError:  # peft is optional for benchmarking
        return None
    weights = torch.full((len(dense),), float(params.get("lam", 1.0)), device=dense[0].device)
    if method == "task_arithmetic":
        return lambda: pm.task_arithmetic(dense, weights)
    if method == "ties":
        return lambda: pm.ties(dense, weights, params["density"])
    if method == "dare":
        fn = pm.dare_linear if params["combine"] == "linear" else pm.dare_ties
        density = 1.0 - params["drop_rate"]

        def call():
            torch.manual_seed(params["seed"])
            return fn(dense, weights, density)

        return call
    return None


def _json_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if isinstance(v, (bool, int, float, str)) or v is None}


def _ortho_summary(report) -> dict[str, Any]:
    return {
        "cross_before": report.cross_before,
        "cross_after": report.cross_after,
        "cross_reduction": report.cross_reduction,
        "relative_perturbation": list(report.relative_perturbation),
        "steps": report.steps,
        "rejected": report.rejected,
    }


def resolve_bench_method(name: str, params: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[str, dict[str, Any]]:
    """A benchmark method name → ``(registry method, given params)``, checked (LorakitError if bad).

    ``do_ties`` is ``("do", {"base": "ties"})``; ``params[name]`` is merged over the fixed ones.
    """
    method, fixed = resolve_variant(name)
    given = {**fixed, **dict((params or {}).get(name, {}))}
    resolve_params(method, given)
    return method, given


def _ortho_options(resolved: Mapping[str, Any]) -> dict[str, Any]:
    return {k: resolved[k] for k in ORTHO_OPTIONS}


def _ortho_inputs(updates: Sequence[LoRAUpdate]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """DO-Merging's inputs to the orthogonalisation: ``A_i`` and ``s_i B_i`` in float64."""
    return [u.A.double() for u in updates], [u.scaling * u.B.double() for u in updates]


def _has_ortho(method: str, resolved: Mapping[str, Any], n_tasks: int) -> bool:
    return method == "do" and bool(resolved["orthogonalize"]) and n_tasks > 1


def _ortho_call(method: str, resolved: Mapping[str, Any], updates: Sequence[LoRAUpdate]) -> Callable[[], Any] | None:
    """Both sides of DO-Merging's orthogonalisation on ``updates`` (``(A result, B result)``), or None."""
    if not _has_ortho(method, resolved, len(updates)):
        return None
    options = _ortho_options(resolved)
    A, B = _ortho_inputs(updates)
    return lambda: (orthogonalize_factors(A, "A", **options), orthogonalize_factors(B, "B", **options))


def bench_merge(
    n_tasks: int = 4,
    d_out: int = 512,
    d_in: int = 512,
    r: int = 8,
    methods: Sequence[str] | None = None,
    repeats: int = 3,
    device: str = "cpu",
    seed: int = 0,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Time ``merge_layer`` for each method on one layer of random updates.

    Args:
        methods: registry names or ``do_<base>`` (default: every registered method).
        params: optional ``{method name: {param: value}}`` overrides (default: each method's defaults).

    Returns:
        One record per method: ``method``, ``params``, ``n_tasks``, ``d_out``, ``d_in``, ``r``,
        ``device``, ``repeats``, ``lorakit_s``; ``peft_s`` and ``ratio`` (lorakit_s / peft_s) where
        peft has the method (else None); for ``do`` / ``do_<base>``, ``ortho_s`` (time of both sides of
        :func:`~lorakit.merge.orthogonalize_factors`) and ``ortho`` (``{"A"|"B": cross_before,
        cross_after, cross_reduction, relative_perturbation, steps, rejected}``), else None.
    """
    dev = torch.device(device)
    updates = random_updates(n_tasks, d_out, d_in, r, dev, seed)
    dense = [u.delta(torch.float32) for u in updates]
    records = []
    for name in methods or list(METHODS):
        method, given = resolve_bench_method(name, params)
        resolved = resolve_params(method, given)
        lorakit_s = median_time(lambda: merge_layer(updates, method, **given), dev, repeats)
        peft_fn = _peft_call(method, resolved, dense)
        peft_s = median_time(peft_fn, dev, repeats) if peft_fn is not None else None
        ortho_fn = _ortho_call(method, resolved, updates)
        ortho_s, ortho = None, None
        if ortho_fn is not None:
            ortho_s = median_time(ortho_fn, dev, repeats)
            ortho = {side: _ortho_summary(result[1]) for side, result in zip("AB", ortho_fn())}
        records.append(
            dict(method=name, params=_json_params(resolved), n_tasks=n_tasks, d_out=d_out, d_in=d_in, r=r,
                 device=str(dev), repeats=repeats, lorakit_s=lorakit_s, peft_s=peft_s,
                 ratio=lorakit_s / peft_s if peft_s else None, ortho_s=ortho_s, ortho=ortho)
        )  # fmt: skip
    return records


def _layer_pass(
    work: Callable[[list[LoRAUpdate]], float],
    shapes: Mapping[str, tuple[int, int]],
    n_layers: int,
    n_tasks: int,
    r: int,
    device: torch.device,
    seed: int,
    log: Callable[[str], Any] | None = None,
    label: str = "",
) -> dict[str, Any]:
    """Run ``work(updates) -> seconds`` on every module of every layer, one module in memory at a time.

    Module ``k`` of layer ``l`` gets :func:`random_updates` seeded with ``seed + 1000 l + k`` (drawn
    untimed), so every pass sees the same tensors. Returns ``module_s`` (seconds summed over
    layers), ``layer_s`` (seconds per layer), ``total_s``, ``per_layer_s``, ``peak_mem_bytes``, ``baseline_bytes``,
    ``peak_above_baseline_bytes`` and ``mem_source``.
    """
    source, baseline = reset_peak(device)
    module_s = {name: 0.0 for name in shapes}
    layer_s = []
    for layer in range(n_layers):
        layer_s.append(0.0)
        for k, (name, (d_out, d_in)) in enumerate(shapes.items()):
            updates = random_updates(n_tasks, d_out, d_in, r, device, seed + 1000 * layer + k)
            seconds = work(updates)
            module_s[name] += seconds
            layer_s[-1] += seconds
            del updates
        if log is not None:
            log(f"{label}: layer {layer + 1}/{n_layers} done, {sum(module_s.values()):.2f} s so far")
    peak = peak_memory(device, source)
    total = sum(module_s.values())
    return {
        "module_s": module_s,
        "layer_s": layer_s,
        "total_s": total,
        "per_layer_s": total / n_layers if n_layers else 0.0,
        "peak_mem_bytes": peak,
        "baseline_bytes": baseline,
        "peak_above_baseline_bytes": max(peak - baseline, 0),
        "mem_source": source,
    }


def _warm_up(work: Callable[[list[LoRAUpdate]], float], n_tasks: int, r: int, device: torch.device) -> None:
    """One untimed call on a small layer: lazy initialisation (kernels, allocator) is not timed."""
    work(random_updates(n_tasks, 4 * r, 4 * r, r, device, seed=12345))


def copy_bandwidth(device: torch.device, entries: int = 1 << 26, repeats: int = 3) -> float:
    """Measured memory bandwidth in bytes/s: ``dst.copy_(src)`` of ``entries`` float32 (256 MiB,
    well past the caches), counting the bytes read plus written; median of ``repeats`` after a warm-up."""
    src = torch.ones(entries, device=device)
    dst = torch.zeros_like(src)
    seconds = median_time(lambda: dst.copy_(src), device, repeats)
    return 2 * src.numel() * src.element_size() / seconds


def roofline_seconds(shapes: Mapping[str, tuple[int, int]], n_tasks: int, n_layers: int, bandwidth: float) -> dict[str, float]:
    """Per module, summed over layers: the time to read and write each float32 dense stack
    ``(N, d_out, d_in)`` once at ``bandwidth`` — a floor for any merge that makes one pass over it."""
    return {name: n_layers * 2 * n_tasks * d_out * d_in * 4 / bandwidth for name, (d_out, d_in) in shapes.items()}


def _with_roofline(result: dict[str, Any] | None, roofline_s: float, full_layers: int) -> dict[str, Any] | None:
    if result is None:
        return None
    return {**result, "extrapolated_full_model_s": result["per_layer_s"] * full_layers, "x_roofline": result["total_s"] / roofline_s}


def _llm_passes(
    name: str, method: str, given: Mapping[str, Any], resolved: Mapping[str, Any], peft_layers: int,
    run: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
    """The timed passes of one method: lorakit, peft on the first ``peft_layers`` layers (or None),
    DO's orthogonalisation alone (or None)."""
    dev, say = run["device"], run["log"] or (lambda message: None)

    def timed_pass(work: Callable[[list[LoRAUpdate]], float], label: str, layers: int | None = None) -> dict[str, Any]:
        layers = run["n_layers"] if layers is None else layers
        say(f"{name}: {label}, {layers} layer(s)")
        _warm_up(work, run["n_tasks"], run["r"], dev)
        return _layer_pass(work, label=f"{name} ({label})", **{**run, "n_layers": layers})

    mine = timed_pass(lambda updates: timed(lambda: merge_layer(updates, method, **given), dev), "lorakit")
    theirs = None
    if peft_layers and _peft_call(method, resolved, [torch.zeros(2, 2, device=dev)]) is not None:

        def peft_work(updates: list[LoRAUpdate]) -> float:
            dense = [u.delta(torch.float32) for u in updates]  # formed untimed
            return timed(_peft_call(method, resolved, dense), dev)

        theirs = timed_pass(peft_work, "peft", peft_layers)
    ortho = None
    if _has_ortho(method, resolved, run["n_tasks"]):
        result = timed_pass(lambda updates: timed(_ortho_call(method, resolved, updates), dev), "orthogonalisation")
        ortho = {k: result[k] for k in ("total_s", "per_layer_s", "module_s")}
    return mine, theirs, ortho


def bench_llm_shapes(
    n_tasks: int = 8,
    r: int = 16,
    n_layers: int = LLAMA3_8B_LAYERS,
    methods: Sequence[str] | None = None,
    device: str = "cpu",
    seed: int = 0,
    shapes: Mapping[str, tuple[int, int]] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    full_layers: int = LLAMA3_8B_LAYERS,
    peft: bool | int = True,
    log: Callable[[str], Any] | None = None,
) -> list[dict[str, Any]]:
    """Merge ``n_tasks`` synthetic Llama-3-8B-shaped adapters layer by layer, per method.

    Every decoder layer has the modules of ``shapes`` (default :data:`LLAMA3_8B_SHAPES`, ``(d_out,
    d_in)``); ``n_layers`` (≤ ``full_layers`` = 32) limits the count. Each module's updates are
    drawn (untimed) just before they are merged and freed after, as a streaming merge would. Each
    pass first runs once, untimed, on a small layer, then times every module of every layer once,
    with its own peak-memory counter: lorakit's ``merge_layer`` from the factors; with
    ``peft=True``, peft's ``merge_utils`` function (task arithmetic, TIES, DARE) on the dense
    ``ΔW_i`` (formed untimed) — ``peft=K`` runs it on the first K layers only (peft's TIES takes
    about a minute per Llama layer on 2 CPU cores) and compares it with lorakit on those same
    layers; for DO-Merging, :func:`~lorakit.merge.orthogonalize_factors` alone.

    Roofline: :func:`copy_bandwidth` is measured once at the start of the run; ``roofline_s`` is
    :func:`roofline_seconds` summed over modules (one read + write of every dense stack).

    Returns:
        One record per method: ``method``, ``params``, ``n_tasks``, ``r``, ``n_layers``,
        ``full_model_layers``, ``modules``, ``device``; lorakit's ``total_s`` (summed over all
        layers), ``per_layer_s``, ``module_s`` (``{module: seconds over layers}``),
        ``extrapolated_full_model_s`` (``per_layer_s × full_layers``, an estimate),
        ``peak_mem_bytes``, ``baseline_bytes``, ``peak_above_baseline_bytes``, ``mem_source``
        (``cuda.max_memory_allocated``, or on CPU the peak resident set ``VmHWM`` reset before each
        pass); ``bandwidth_bytes_s``, ``roofline_s``, ``roofline_module_s``, ``x_roofline``
        (``total_s / roofline_s``); ``stack_bytes`` (float32 dense stack of the largest module);
        ``peft`` (the same timing/memory fields and ``x_roofline`` for peft's pass, or None),
        ``peft_layers`` and ``ratio`` (lorakit / peft seconds on the same first ``peft_layers``
        layers, or None); ``ortho`` (``total_s``, ``per_layer_s``,
        ``module_s``, ``extrapolated_full_model_s``, ``x_roofline`` of the orthogonalisation, or None).
    """
    dev = torch.device(device)
    shapes = dict(shapes or LLAMA3_8B_SHAPES)
    run = dict(shapes=shapes, n_layers=n_layers, n_tasks=n_tasks, r=r, device=dev, seed=seed, log=log)
    bandwidth = copy_bandwidth(dev)
    roofline_module = roofline_seconds(shapes, n_tasks, n_layers, bandwidth)
    roofline = sum(roofline_module.values())
    stack_bytes = max(n_tasks * d_out * d_in * 4 for d_out, d_in in shapes.values())
    peft_layers = n_layers if peft is True else min(int(peft), n_layers)
    records = []
    for name in methods or list(METHODS):
        method, given = resolve_bench_method(name, params)
        resolved = resolve_params(method, given)
        mine, theirs, ortho = _llm_passes(name, method, given, resolved, peft_layers, run)
        same_layers = sum(mine["layer_s"][:peft_layers])
        records.append(
            dict(method=name, params=_json_params(resolved), n_tasks=n_tasks, r=r, n_layers=n_layers,
                 full_model_layers=full_layers, modules=list(shapes), device=str(dev),
                 **_with_roofline(mine, roofline, full_layers), bandwidth_bytes_s=bandwidth, roofline_s=roofline,
                 roofline_module_s=roofline_module, stack_bytes=stack_bytes,
                 peft=_with_roofline(theirs, roofline * peft_layers / max(n_layers, 1), full_layers),
                 peft_layers=peft_layers if theirs else 0,
                 ratio=same_layers / theirs["total_s"] if theirs and theirs["total_s"] else None,
                 ortho=_with_roofline(ortho, roofline, full_layers))
        )  # fmt: skip
    return records
