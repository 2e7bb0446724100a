r"""The causal-LM track's adapters: one LoRA adapter per generative task (no head), cached; its A initialisations.

:func:`train_causal_adapter` fine-tunes :math:`s\,BA` on the profile's target modules of the causal
base model (:func:`train_causal_lora`: loss on the target tokens only) and caches the
PEFT adapter folder under a key of everything that changes it, as the encoder track's
:func:`lorakit.train.encoder.train_adapter` does; the result is a :class:`lorakit.train.encoder.TrainedAdapter` with
an empty head. :func:`prepare_causal_init_A` gives every registered init of :mod:`lorakit.train.inits` on a
causal model: OSRM's ``A_t`` from the other tasks' **prompt-token** features (left-padded prompts,
padding masked: :func:`lorakit.osrm.osrm_init`), or the random-orthonormal control.

The loss is on the target and eos only (labels of :func:`lorakit.data.generative.encode_for_training`):

.. math:: \mathcal L = -\frac{1}{|\mathcal T|}\sum_{t \in \mathcal T} \log p_\theta(x_t \mid x_{<t}),
   \qquad \mathcal T = \{t : \ell_t \ne -100\}

(:func:`masked_lm_loss`; logits at position :math:`t - 1` predict token :math:`t`; logits ``(batch, length, vocab)``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from .. import __version__
from ..data.models import cache_dir, load_base, load_tokenizer, quiet
from .cache import cache_key
from ..data.generative import IGNORE_INDEX, encode_for_training, encode_prompts
from ..errors import LorakitError
from ..fsutil import atomic_folder
from ..data.generative import GenerativeTaskData
from .loop import TrainedAdapter, freeze_lora_A, optimizer_step, set_seed, warmup_linear_schedule
from .inits import (get_init, init_freezes_A, init_uses_A, osrm_init_from_inputs, osrm_options, peft_init,
                    random_orthonormal_A, task_seed)
from ..lora.peft import read_adapter
from ..osrm import find_linear_modules, init_lora_A
from ..profiles import LLAMA_ATTENTION_TARGETS, Profile, apply_threads
from .cache import tensor_digest

CAUSAL_CACHE_VERSION = 1  # bump when train_causal_lora changes what it produces


def causal_train_config(task: str, p: Profile, init: str, freeze_A: bool, seed: int,
                        init_A: Mapping[str, torch.Tensor] | None) -> dict:
    """Everything that changes a causal adapter; its hash is the cache key."""
    return {"track": "causal", "task": task, "model": p.model, "train_examples": p.train_examples, "steps": p.steps,
            "batch_size": p.batch_size, "max_length": p.max_length, "lr": p.lr, "rank": p.rank, "alpha": p.alpha,
            "target_modules": list(p.target_modules), "init": init, "init_A": tensor_digest(init_A),
            "freeze_A": bool(freeze_A), "seed": seed, "task_seeds": p.task_seeds, "version": CAUSAL_CACHE_VERSION}


def train_causal_adapter(data: GenerativeTaskData, p: Profile, init: str = "standard",
                         init_A: Mapping[str, torch.Tensor] | None = None, seed: int = 0, cache: bool = True,
                         progress: bool = True) -> TrainedAdapter:
    """One task's LoRA adapter on the profile's causal base model (cached); ``head`` is empty.

    ``init`` is any name of :data:`lorakit.train.inits.INIT_NAMES`; an init with a computed ``A`` needs
    ``init_A`` (:func:`prepare_causal_init_A`). The seed of ``A``, of peft's init and of the batch
    order is :func:`lorakit.train.inits.task_seed` of ``seed`` and the task. ``metrics`` holds
    ``train_loss`` per step, ``seconds``, ``steps``, ``n_train`` and ``examples_per_second``.
    """
    quiet()
    get_init(init)
    if init_uses_A(init) and not init_A:
        raise LorakitError(f"init={init!r} needs init_A (compute it with lorakit.train.causal.prepare_causal_init_A)")
    freeze_A = init_freezes_A(init)
    apply_threads(p)
    config = causal_train_config(data.name, p, init, freeze_A, seed, init_A if init_uses_A(init) else None)
    folder = cache_dir() / "causal_adapters" / f"{data.name}-{init}-s{seed}-{cache_key(config)}"
    if cache and (folder / "lorakit.json").is_file():
        return load_causal_adapter(folder)
    t0 = time.perf_counter()
    model = load_base(p.model, device=p.device)
    tokenizer = load_tokenizer(p.model)
    peft_model, updates, losses = train_causal_lora(
        model, tokenizer, data.prompts("train"), data.train[1], steps=p.steps, batch_size=p.batch_size, lr=p.lr,
        rank=p.rank, alpha=p.alpha, target_modules=p.target_modules, max_length=p.max_length,
        seed=task_seed(seed, data.name, p.task_seeds), progress=progress,
        init_A=init_A if init_uses_A(init) else None, freeze_A=freeze_A,
        init_lora_weights="gaussian" if peft_init(init) == "gaussian" else True)
    seconds = time.perf_counter() - t0
    metrics = {"train_loss": losses, "seconds": round(seconds, 2), "steps": p.steps, "n_train": len(data.train[0]),
               "examples_per_second": round(p.steps * p.batch_size / seconds, 2)}
    result = TrainedAdapter(data.name, updates, {}, [], metrics, config, None)
    if cache:
        with atomic_folder(folder) as tmp:
            peft_model.save_pretrained(str(tmp))
            (tmp / "lorakit.json").write_text(json.dumps({"task": data.name, "track": "causal", "metrics": metrics,
                                                          "config": config, "lorakit": __version__}, indent=1))
        result.path = folder
    return result


def load_causal_adapter(folder: str | Path) -> TrainedAdapter:
    """A cached causal adapter folder (a PEFT adapter folder plus ``lorakit.json``)."""
    folder = Path(folder)
    meta = json.loads((folder / "lorakit.json").read_text())
    return TrainedAdapter(meta["task"], read_adapter(folder), {}, [], meta["metrics"], meta["config"], folder)


def train_all_causal(data: Mapping[str, GenerativeTaskData], p: Profile, init: str = "standard",
                     init_A_by_task: Mapping[str, Mapping[str, torch.Tensor]] | None = None, seed: int = 0,
                     progress: bool = True, on_trained=None) -> dict[str, TrainedAdapter]:
    """:func:`train_causal_adapter` for each task (cached); ``on_trained(task)`` after each (a run's progress bar)."""
    out = {}
    for t, d in data.items():
        out[t] = train_causal_adapter(d, p, init, (init_A_by_task or {}).get(t) if init_uses_A(init) else None, seed,
                                      progress=progress)
        if on_trained is not None:
            on_trained(t)
    return out


def prompt_batches(tokenizer, prompts: Sequence[str], max_length: int, batch_size: int) -> list[dict]:
    """Left-padded batches of ``prompts`` (:func:`lorakit.data.generative.encode_prompts`): OSRM's feature input."""
    return [encode_prompts(tokenizer, prompts[i:i + batch_size], max_length) for i in range(0, len(prompts), batch_size)]


def causal_osrm_init(data: Mapping[str, GenerativeTaskData], p: Profile, mode: str | None = None,
                     progress: bool = False, return_features: bool = False):
    """OSRM-INIT on a causal LM: ``{task: {module: A_t (r × d_in)}}`` from the other tasks' prompt-token features.

    The features ``H_j`` of task ``j`` are the inputs of each target module over the first
    ``osrm_samples`` training **prompts** (no target, so the subspace does not see the answers),
    left-padded with the padding masked out; the rest is the encoder track's
    (:func:`lorakit.osrm.osrm_init` with the profile's :data:`lorakit.train.inits.OSRM_DEFAULTS` overrides).
    ``A`` is kept on disk by its recipe (:func:`lorakit.train.cache.cached_init_A`), so a run on another
    thread count starts from the same bits and finds the same cached adapters.
    """
    opts = osrm_options(p, mode)
    prompts = {}
    for task, d in data.items():
        prompts[task] = d.prompts("train")[: opts["osrm_samples"]]
        if not prompts[task]:
            raise LorakitError(f"task {task} has no training prompts to compute OSRM features from")

    return osrm_init_from_inputs(p, prompts, opts, "causal", lambda: load_base(p.model, device=p.device),
                                 lambda tok, x: prompt_batches(tok, x, p.max_length, p.eval_batch_size),
                                 progress=progress, return_features=return_features)


def prepare_causal_init_A(init: str, data: Mapping[str, GenerativeTaskData], p: Profile, seed: int = 0,
                          progress: bool = False) -> dict[str, dict[str, torch.Tensor]] | None:
    """:func:`lorakit.train.inits.prepare_init_A` on the causal track: None for peft's inits, else ``{task: {module: A}}``."""
    spec = get_init(init)
    if spec.source is None:
        return None
    if spec.source == "osrm":
        return causal_osrm_init(data, p, mode=spec.osrm_mode, progress=progress)
    model = load_base(p.model)
    shapes = {m: int(model.get_submodule(m).in_features) for m in find_linear_modules(model, p.target_modules)}
    return {t: random_orthonormal_A(shapes, p.rank, task_seed(seed, t, "per_task")) for t in data}


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathcal L` of the module docstring: mean next-token cross-entropy over the positions whose
    label is not ``-100``. ``logits (B, L, V)`` at position t predict ``labels[:, t + 1]``."""
    shifted, target = logits[:, :-1, :], labels[:, 1:]
    if not bool((target != IGNORE_INDEX).any()):
        raise LorakitError("no target tokens to train on: every label is masked")
    if shifted.dtype in (torch.float16, torch.bfloat16):  # half-precision logits: the softmax in float32
        shifted = shifted.float()
    return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX)


def train_causal_lora(model, tokenizer, prompts: Sequence[str], targets: Sequence[str], *, steps: int,
                      batch_size: int = 8, lr: float = 2e-3, rank: int = 8, alpha: float = 16,
                      target_modules: Sequence[str] = LLAMA_ATTENTION_TARGETS, max_length: int = 64,
                      seed: int = 0, progress: bool = False, init_A: Mapping[str, torch.Tensor] | None = None,
                      freeze_A: bool = False, init_lora_weights: bool | str = True):
    r"""Fine-tune LoRA factors on ``model`` (a causal LM, wrapped by peft here) for prompt → target.

    Minimises :func:`masked_lm_loss` (target tokens and eos only) with AdamW and lorakit's schedule
    (:func:`lorakit.train.loop.warmup_linear_schedule`); batches of ``batch_size`` drawn without replacement
    from a ``seed``-ed permutation, cut to their longest row. No head: the LM head and embeddings stay
    frozen. Returns ``(peft_model, updates, losses)``: ``updates`` is
    :func:`lorakit.lora.peft.read_adapter` of the trained model, ``{module: LoRAUpdate}`` with
    ``A (r, d_in)``, ``B (d_out, r)``, scaling ``alpha / r`` (for grouped-query attention ``k_proj`` and
    ``v_proj`` have ``d_out = n_kv_heads · head_dim``, smaller than ``q_proj``'s).

    ``init_A`` (``{module: A (r × d_in)}``, OSRM's or a control's, :mod:`lorakit.train.inits`) is written
    into ``lora_A`` with ``lora_B ← 0`` before the first step (:func:`lorakit.osrm.init_lora_A`);
    ``freeze_A`` trains ``B`` only; ``init_lora_weights`` is peft's (``True`` Kaiming-uniform A,
    ``"gaussian"``).
    """
    from peft import LoraConfig, get_peft_model  # lazy: peft imports transformers
    from tqdm.auto import tqdm

    if steps < 1 or batch_size < 1:
        raise LorakitError(f"steps and batch_size must be ≥ 1, got {steps} and {batch_size}")
    enc = encode_for_training(tokenizer, prompts, targets, max_length)
    set_seed(seed)
    config = LoraConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=alpha, target_modules=list(target_modules),
                        lora_dropout=0.0, init_lora_weights=init_lora_weights)
    peft_model = get_peft_model(model, config)
    if init_A:
        init_lora_A(peft_model, init_A, freeze_A=freeze_A)
    elif freeze_A:
        freeze_lora_A(peft_model)
    params = [q for q in peft_model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = warmup_linear_schedule(optimizer, steps)
    gen = torch.Generator().manual_seed(seed)
    n = enc["input_ids"].shape[0]
    order, cursor, losses = torch.randperm(n, generator=gen), 0, []
    device = next(peft_model.parameters()).device
    peft_model.train()
    for _ in tqdm(range(steps), desc="train causal LoRA", disable=not progress, leave=False):
        if cursor + min(batch_size, n) > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor:cursor + batch_size]
        cursor += batch_size
        width = int(enc["attention_mask"][idx].sum(1).max())
        batch = {k: v[idx, :width].to(device) for k, v in enc.items()}
        logits = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        value = optimizer_step(masked_lm_loss(logits, batch["labels"]), optimizer, schedule, "causal LoRA training")
        losses.append(round(value, 5))
    peft_model.eval()
    return peft_model, read_adapter(peft_model), losses

