r"""Fine-tune one LoRA adapter (plus its own classification head) per task, with peft.

The model is ``W_0`` (frozen, the packaged encoder) plus :math:`s\,B A` on every target module
and a freshly initialised classification head that is trained with the adapter. Results are cached
on disk under a key of everything that changes them, so notebooks and ``lorakit run`` reuse
adapters instead of retraining.
"""

from __future__ import annotations

from .cache import tensor_digest


import json
import os
import time
from pathlib import Path
from typing import Callable, Mapping

import torch
from safetensors.torch import load_file, save_file

from .. import __version__
from ..data.models import cache_dir, load_base, quiet
from .cache import cache_key  # noqa: F401  (re-exported: it lived here)
from ..errors import LorakitError
from .loop import TrainedAdapter, fit, freeze_lora_A, set_seed, task_metrics
from ..fsutil import atomic_folder
from .inits import get_init, init_freezes_A, init_uses_A, make_peft_model, task_seed
from ..lora.update import LoRAUpdate
from ..lora.peft import read_adapter, read_head
from ..osrm import init_lora_A
from ..profiles import Profile, apply_threads, get_profile
from ..data.tasks import TaskData, load_task

TRAIN_CACHE_VERSION = 1  # bump when the training loop changes what it produces


def train_config(task: str, profile: Profile, init: str, freeze_A: bool, seed: int, init_A=None, lr=None) -> dict:
    """Everything that changes a trained adapter; its hash is the cache key."""
    return {
        "task": task,
        "model": profile.model,
        "train_examples": profile.train_examples,
        "steps": profile.steps,
        "batch_size": profile.batch_size,
        "max_length": profile.max_length,
        "lr": lr if lr is not None else profile.lr,
        "rank": profile.rank,
        "alpha": profile.alpha,
        "target_modules": list(profile.target_modules),
        "init": init,
        "init_A": tensor_digest(init_A),
        "freeze_A": bool(freeze_A),
        "seed": seed,
        "val_examples": profile.val_examples,
        "test_examples": profile.test_examples,
        "version": TRAIN_CACHE_VERSION,
    } | ({"task_seeds": profile.task_seeds} if profile.task_seeds != "shared" else {})  # old keys stay valid


_make_peft_model = make_peft_model  # the old private name (tests build the untrained model with it)


def train_adapter(
    task: str | TaskData,
    profile: str | Profile | None = None,
    init: str = "standard",
    init_A: Mapping[str, torch.Tensor] | None = None,
    freeze_A: bool = False,
    seed: int = 0,
    lr: float | None = None,
    cache: bool = True,
    progress: bool = True,
    **overrides,
) -> TrainedAdapter:
    """Fine-tune one LoRA adapter and its classification head on ``task``.

    Args:
        task: task name (or loaded :class:`TaskData` of the same profile sizes).
        profile: profile name or object; ``overrides`` replace its fields (``steps=...``).
        init: a name of :data:`lorakit.train.inits.INIT_NAMES`: ``standard`` (peft's default:
            Kaiming-uniform A, B = 0), ``gaussian`` (peft's gaussian: A ~ N(0, 1/r²), B = 0), or one
            whose A is computed (``osrm``, ``random_orthonormal``, ``osrm_task_mean``,
            ``osrm_frozen``: ``init_A`` gives A per module, B = 0). The name is part of the cache key.
        init_A: ``{module: A (r × d_in)}`` for an init with a computed A
            (:func:`lorakit.train.inits.prepare_init_A`); ignored otherwise.
        freeze_A: keep ``lora_A`` fixed during training (LoRA-FA style); always on for an init
            that freezes A (``osrm_frozen``).
        seed: seeds the head's init, A's init and the batch order (mixed with the task name when
            the profile's ``task_seeds`` is ``per_task``: :func:`task_seed`).
        lr: learning rate (default: the profile's, the same for every ``init``). OSRM's ``A`` has
            unit-norm rows (peft's default ≈ 1/√3) but sees little of the task's own features, so
            no init-specific factor is applied: in the ci profile, of lr × {0.5, 1, 2}, both inits
            learn best at × 1 (notebook 04 §5 checks that OSRM adapters learn). With ``freeze_A``
            (B only) a larger lr helped there.
        cache: reuse / store the result in the cache folder.
        progress: show a tqdm bar.
    """
    quiet()
    get_init(init)  # an unknown init: a one-line error naming the choices
    if init_uses_A(init) and not init_A:
        raise LorakitError(f"init={init!r} needs init_A (compute it with lorakit.train.inits.prepare_init_A)")
    freeze_A = freeze_A or init_freezes_A(init)
    p = get_profile(profile, **overrides)
    apply_threads(p)
    data = task if isinstance(task, TaskData) else load_task(task, profile=p)
    run_seed = task_seed(seed, data.name, p.task_seeds)
    config = train_config(data.name, p, init, freeze_A, seed, init_A if init_uses_A(init) else None, lr)
    key = cache_key(config)
    folder = cache_dir() / "adapters" / f"{data.name}-{init}-s{seed}-{key}"
    if cache and (folder / "lorakit.json").is_file():
        return load_trained(folder)

    t0 = time.perf_counter()
    model = make_peft_model(p, data.num_labels, init, run_seed)
    if init_uses_A(init):
        init_lora_A(model, init_A, freeze_A=freeze_A)
    elif freeze_A:
        freeze_lora_A(model)
    params = [q for q in model.parameters() if q.requires_grad]
    losses = fit(model, data, p, [{"params": params, "lr": config["lr"]}], run_seed, progress, f"train {data.name} ({init})")
    seconds = time.perf_counter() - t0
    metrics = task_metrics(model, data, p) | {
        "train_loss": losses,
        "seconds": round(seconds, 2),
        "steps": p.steps,
        "n_train": len(data.train[1]),
    }
    model.to("cpu")
    updates = read_adapter(model)
    head = {
        k: v.detach().cpu().clone()
        for k, v in model.get_base_model().state_dict().items()
        if k.startswith("classifier.") and "original_module" not in k
    }
    head = {k.replace("modules_to_save.default.", ""): v for k, v in head.items()}
    result = TrainedAdapter(data.name, updates, head, data.label_names, metrics, config, None)
    if cache:
        result.path = _save_trained(model, result, folder)
    return result


def _save_trained(model, result: TrainedAdapter, folder: Path) -> Path:
    with atomic_folder(folder) as tmp:
        model.save_pretrained(str(tmp))
        meta = {"task": result.task, "label_names": result.label_names, "metrics": result.metrics,
                "config": result.config, "lorakit": __version__}
        (tmp / "lorakit.json").write_text(json.dumps(meta, indent=1))
    return folder


def load_trained(folder: str | os.PathLike) -> TrainedAdapter:
    """Load a cached adapter folder written by :func:`train_adapter`."""
    folder = Path(folder)
    meta_path = folder / "lorakit.json"
    if not meta_path.is_file():
        raise LorakitError(f"{folder} is not a lorakit adapter folder (no lorakit.json)")
    meta = json.loads(meta_path.read_text())
    updates = read_adapter(folder)
    head = read_head(folder)
    return TrainedAdapter(meta["task"], updates, head, meta["label_names"], meta["metrics"], meta["config"], folder)


def train_all(
    tasks: list[str],
    profile: str | Profile | None = None,
    init: str = "standard",
    init_A_by_task: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    freeze_A: bool = False,
    seed: int = 0,
    progress: bool = True,
    on_trained: Callable[[str], object] | None = None,
    **overrides,
) -> dict[str, TrainedAdapter]:
    """:func:`train_adapter` for each task (cached); ``on_trained(task)`` after each (a run's progress bar)."""
    out = {}
    for task in tasks:
        init_A = (init_A_by_task or {}).get(task) if init_uses_A(init) else None
        out[task] = train_adapter(task, profile, init=init, init_A=init_A, freeze_A=freeze_A, seed=seed,
                                  progress=progress, **overrides)
        if on_trained is not None:
            on_trained(task)
    return out


def train_full(
    task: str | TaskData,
    profile: str | Profile | None = None,
    seed: int = 0,
    lr: float | None = None,
    cache: bool = True,
    progress: bool = True,
    **overrides,
) -> TrainedAdapter:
    """Full fine-tuning of the same target modules (every entry of ``W``) plus the head.

    The comparison partner of LoRA in notebook 03: same base model, same task, same layers, same
    steps; only the parameterisation differs. The dense update of each module is returned as
    ``LoRAUpdate.from_dense(W_ft − W_0)`` (A = I, B = ΔW, s = 1), so merge methods and analyses
    apply unchanged. ``lr`` is the weights' learning rate (default: the profile's ``lr / 20``; the
    head uses the profile's ``lr``).
    """
    quiet()
    p = get_profile(profile, **overrides)
    apply_threads(p)
    data = task if isinstance(task, TaskData) else load_task(task, profile=p)
    weight_lr = lr if lr is not None else p.lr / 20
    config = train_config(data.name, p, "full", False, seed, None, weight_lr) | {"head_lr": p.lr}
    folder = cache_dir() / "full" / f"{data.name}-full-s{seed}-{cache_key(config)}"
    if cache and (folder / "lorakit.json").is_file():
        meta = json.loads((folder / "lorakit.json").read_text())
        state = load_file(str(folder / "deltas.safetensors"))
        updates = {k[len("delta."):]: LoRAUpdate.from_dense(v) for k, v in state.items() if k.startswith("delta.")}
        head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
        return TrainedAdapter(meta["task"], updates, head, meta["label_names"], meta["metrics"], meta["config"], folder)

    t0 = time.perf_counter()
    set_seed(seed)
    model = load_base(p.model, num_labels=data.num_labels)
    targets = {n: m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in p.target_modules and hasattr(m, "weight")}
    if not targets:
        raise LorakitError(f"no module named {list(p.target_modules)} in {p.model}; check target_modules")
    W0 = {n: m.weight.detach().clone() for n, m in targets.items()}
    for param in model.parameters():
        param.requires_grad_(False)
    for m in targets.values():
        m.weight.requires_grad_(True)
    head_params = list(model.classifier.parameters())
    for q in head_params:
        q.requires_grad_(True)
    groups = [{"params": [m.weight for m in targets.values()], "lr": weight_lr}, {"params": head_params, "lr": p.lr}]
    losses = fit(model, data, p, groups, seed, progress, f"full FT {data.name}")
    metrics = task_metrics(model, data, p) | {"train_loss": losses, "seconds": round(time.perf_counter() - t0, 2),
                                          "steps": p.steps, "n_train": len(data.train[1])}
    model.to("cpu")
    deltas = {n: (m.weight.detach() - W0[n]).float().clone() for n, m in targets.items()}
    head = {f"classifier.{k}": v.detach().cpu().clone() for k, v in model.classifier.state_dict().items()}
    result = TrainedAdapter(data.name, {n: LoRAUpdate.from_dense(d) for n, d in deltas.items()}, head,
                            data.label_names, metrics, config, None)
    if cache:
        with atomic_folder(folder) as tmp:
            state = {f"delta.{n}": d.contiguous() for n, d in deltas.items()} | {f"head.{k}": v.contiguous() for k, v in head.items()}
            save_file(state, str(tmp / "deltas.safetensors"))
            (tmp / "lorakit.json").write_text(json.dumps({"task": data.name, "label_names": data.label_names,
                                                          "metrics": metrics, "config": config}, indent=1))
        result.path = folder
    return result
