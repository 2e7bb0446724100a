r"""Initialisations of the LoRA ``A`` matrix, and the controls that tell OSRM's effects apart.

Every init starts ``B = 0`` (so :math:`\Delta W = s B A = 0` at step 0) and differs only in
``A`` (``r × d_in`` per target module) and in whether ``A`` is trained (docs/methods.md §2.13):

* ``standard`` — peft's default (``init_lora_weights=True``): ``kaiming_uniform_(A, a=√5)``, i.e.
  :math:`A_{kl} \sim U(-1/\sqrt{d_{in}}, 1/\sqrt{d_{in}})`, row norm ≈ :math:`1/\sqrt3`.
* ``gaussian`` — peft's ``init_lora_weights="gaussian"``: ``normal_(A, std=1/r)``, i.e.
  :math:`A_{kl} \sim N(0, 1/r^2)`, row norm ≈ :math:`\sqrt{d_{in}}/r`. The official OSRM code's
  ``LoraConfig`` and its baseline LoRA (docs/methods.md §2.3, §2.5).
* ``osrm`` — OSRM's leave-one-out subspace of the other tasks' features
  (:func:`osrm_init_for_tasks`; orthonormal rows, so row norm 1).
* ``random_orthonormal`` — the scale-matched control of ``osrm``: per task and module a uniformly
  random ``r``-dimensional subspace, :math:`A = Q^\top` from the QR of a seeded
  ``d_in × r`` Gaussian (signs fixed by ``diag(R) > 0``), so ``A Aᵀ = I_r`` and every row has
  OSRM's norm 1. Same norm, same orthonormality, random subspace.
* ``osrm_task_mean`` — the official code's variant: OSRM from one (masked) mean feature vector per
  task and module instead of per-token features (feature mode ``"task_mean"``, docs/methods.md §2.4).
* ``osrm_frozen`` — ``osrm``'s ``A``, kept frozen during training (LoRA-FA style, §2.3).

Seeds: the peft inits and ``random_orthonormal`` depend on the run seed (``random_orthonormal``
through :func:`task_seed` in ``per_task`` mode, so tasks differ whatever the profile's
``task_seeds``); the OSRM inits do not (their only randomness is the profile's ``osrm_seed`` row
subsample), so :func:`prepare_init_A` may be called once and reused for every seed.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from ..data.models import load_base, load_tokenizer
from ..errors import LorakitError
from .cache import cached_init_A, texts_digest
from .loop import set_seed
from ..lora.peft import read_adapter
from ..merge.registry import layer_seed
from ..osrm import find_linear_modules, init_geometry, osrm_init
from ..profiles import Profile, get_profile
from ..data.tasks import load_task

TASK_SEEDS = ("shared", "per_task")


def task_seed(seed: int, task: str, task_seeds: str = "shared") -> int:
    """The seed that initialises ``task``'s LoRA ``A``, its head and its batch order.

    ``shared``: ``seed`` itself, for every task (tasks with the same head size then start from the
    identical ``A``). ``per_task``: ``seed + crc32(task) mod 2^31``, stable across runs and machines,
    so each task starts from its own random ``A``.
    """
    if task_seeds not in TASK_SEEDS:
        raise LorakitError(f"unknown task_seeds {task_seeds!r}; choose one of {', '.join(TASK_SEEDS)}")
    if task_seeds == "shared":
        return seed
    return (seed + zlib.crc32(task.encode())) % (2**31)


@dataclass(frozen=True)
class Init:
    """One registered ``A`` initialisation.

    Attributes:
        name: registry key (``train_adapter(..., init=name)``).
        description: one line.
        peft: the peft init the model is built with before any ``A`` is written: ``"standard"``
            (``init_lora_weights=True``) or ``"gaussian"``.
        source: where ``A`` comes from: None (peft makes it), ``"osrm"`` or ``"random_orthonormal"``
            (:func:`prepare_init_A` computes it, ``train_adapter`` writes it with ``lora_B ← 0``).
        osrm_mode: the feature mode of an ``"osrm"`` source (None: the profile's ``osrm_mode``).
        freezes_A: ``lora_A`` is not trained.
        seeded: ``A`` depends on the run seed.
    """

    name: str
    description: str
    peft: str = "standard"
    source: str | None = None
    osrm_mode: str | None = None
    freezes_A: bool = False
    seeded: bool = True


INITS: dict[str, Init] = {
    spec.name: spec
    for spec in (
        Init("standard", "peft's default: Kaiming-uniform A, B = 0"),
        Init("gaussian", "peft's gaussian: A ~ N(0, 1/r²), B = 0 (the official OSRM code's baseline)", peft="gaussian"),
        Init("osrm", "OSRM: A_t = least-used directions of the other tasks' token features", source="osrm",
             seeded=False),
        Init("random_orthonormal", "random orthonormal rows (OSRM's norm, random subspace)",
             source="random_orthonormal"),
        Init("osrm_task_mean", "OSRM from one mean feature vector per task (the official code)", source="osrm",
             osrm_mode="task_mean", seeded=False),
        Init("osrm_frozen", "OSRM's A, frozen during training (LoRA-FA style)", source="osrm", freezes_A=True,
             seeded=False),
    )
}
INIT_NAMES: tuple[str, ...] = tuple(INITS)


def get_init(init: str) -> Init:
    """The registered :class:`Init` called ``init`` (a one-line LorakitError naming the choices)."""
    if init not in INITS:
        raise LorakitError(f"unknown init {init!r}; choose one of {', '.join(INIT_NAMES)}")
    return INITS[init]


def init_freezes_A(init: str) -> bool:
    """``init`` keeps ``lora_A`` frozen during training (``osrm_frozen``)."""
    return get_init(init).freezes_A


def init_uses_A(init: str) -> bool:
    """``init`` needs an ``init_A`` (``{module: A}`` per task) from :func:`prepare_init_A`."""
    return get_init(init).source is not None


def init_depends_on_seed(init: str) -> bool:
    """``init``'s ``A`` changes with the run seed (the OSRM inits' does not: compute it once)."""
    return get_init(init).seeded


def peft_init(init: str) -> str:
    """The peft init ``train_adapter`` builds the model with: ``"standard"`` or ``"gaussian"``.

    For an init with a computed ``A`` this is ``"standard"`` (as lorakit's ``osrm`` always was): ``A``
    is then overwritten and ``B`` is zero either way, only the random stream consumed differs.
    """
    return get_init(init).peft


def make_peft_model(profile: Profile, num_labels: int, init: str, seed: int):
    """The untrained peft model of one task: ``set_seed(seed)``, the base model with a fresh head, LoRA on top.

    ``init`` is any name of :data:`INIT_NAMES` (only its :func:`peft_init` matters here).
    """
    from peft import LoraConfig, get_peft_model  # lazy: peft imports transformers; cached runs never need it

    set_seed(seed)
    model = load_base(profile.model, num_labels=num_labels)
    config = LoraConfig(
        task_type="SEQ_CLS",
        r=profile.rank,
        lora_alpha=profile.alpha,
        target_modules=list(profile.target_modules),
        lora_dropout=0.0,
        init_lora_weights="gaussian" if peft_init(init) == "gaussian" else True,
    )
    return get_peft_model(model, config)


def random_orthonormal_A(d_in_by_module: Mapping[str, int], r: int, seed: int) -> dict[str, torch.Tensor]:
    r"""``{module: A (r × d_in, float64)}``: :math:`A = Q^\top`, ``Q R = G`` with ``G ~ N(0, 1)^{d_{in} × r}``.

    ``G`` is drawn from a generator seeded with ``layer_seed(seed, module)`` (the module name mixed
    in, so modules differ and each is reproducible alone); the columns of ``Q`` are flipped so that
    ``diag(R) > 0``, which makes the row space uniformly (Haar) distributed. ``A Aᵀ = I_r``: unit rows,
    the norm of OSRM's rows.
    """
    out = {}
    for module, d_in in d_in_by_module.items():
        if not 1 <= r <= d_in:
            raise LorakitError(f"rank r={r} must be between 1 and d_in={d_in} of {module}")
        g = torch.Generator().manual_seed(layer_seed(seed, module))
        Q, R = torch.linalg.qr(torch.randn(d_in, r, generator=g, dtype=torch.float64))
        signs = torch.where(torch.diagonal(R) < 0, -1.0, 1.0).to(Q.dtype)
        out[module] = (Q * signs).T.contiguous()
    return out


def target_shapes(profile: Profile) -> dict[str, int]:
    """``{module: d_in}`` of the profile's target Linear layers in its base model (names as peft's adapters)."""
    model = load_base(profile.model, num_labels=2)
    return {m: int(model.get_submodule(m).in_features) for m in find_linear_modules(model, profile.target_modules)}


def prepare_init_A(
    init: str, tasks: Sequence[str], profile=None, seed: int = 0, progress: bool = True
) -> dict[str, dict[str, torch.Tensor]] | None:
    """``{task: {module: A (rank × d_in, float64)}}`` for ``train_all(..., init_A_by_task=...)``; None for peft's inits.

    ``osrm`` and ``osrm_frozen`` give the same ``A`` (from the profile's feature mode),
    ``osrm_task_mean`` the task-mean variant; none depends on ``seed`` (:func:`init_depends_on_seed`).
    ``random_orthonormal``: task ``t`` uses :func:`random_orthonormal_A` with the seed
    ``task_seed(seed, t, "per_task")``.
    """
    spec = get_init(init)
    p = get_profile(profile)
    tasks = list(tasks)
    if spec.source is None:
        return None
    if spec.source == "osrm":
        return osrm_init_for_tasks(tasks, p, progress=progress, mode=spec.osrm_mode)
    shapes = target_shapes(p)
    return {t: random_orthonormal_A(shapes, p.rank, task_seed(seed, t, "per_task")) for t in tasks}


def peft_A(init: str, tasks: Sequence[str], profile=None, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """``{task: {module: A (float32)}}`` exactly as ``train_adapter`` starts for a peft-made ``init``.

    Each task's untrained model is built as there (:func:`make_peft_model` with the task's label
    count and ``task_seed(seed, task, profile.task_seeds)``), and its ``lora_A`` read back.
    """
    p = get_profile(profile)
    out = {}
    for t in tasks:
        model = make_peft_model(p, load_task(t, profile=p).num_labels, init, task_seed(seed, t, p.task_seeds))
        out[t] = {m: u.A for m, u in read_adapter(model).items()}
    return out


def init_geometry_for_tasks(init: str, tasks: Sequence[str], profile=None, seed: int = 0,
                            progress: bool = False, osrm_A_and_features: tuple | None = None) -> dict:
    """:func:`lorakit.osrm.init_geometry` of ``init`` on registry tasks: overlap and own-task energy.

    Features are those :func:`osrm_init_for_tasks` collects with the profile's settings
    (per-token by default, the first ``osrm_samples`` training texts); ``A`` is
    :func:`prepare_init_A`'s, or :func:`peft_A` for peft's inits. Pass ``osrm_A_and_features``
    (what ``osrm_init_for_tasks(..., return_features=True)`` returns) to reuse one collection for
    several inits and seeds. Returns that dict plus ``init`` and ``seed``.
    """
    spec = get_init(init)
    p = get_profile(profile)
    if osrm_A_and_features is None:
        osrm_A_and_features = osrm_init_for_tasks(list(tasks), p, progress=progress, return_features=True)
    osrm_A, features = osrm_A_and_features
    if spec.source == "osrm" and spec.osrm_mode is None:
        A = osrm_A
    elif spec.source is None:
        A = peft_A(init, tasks, p, seed)
    else:
        A = prepare_init_A(init, tasks, p, seed, progress)
    return {"init": init, "seed": seed, **init_geometry(A, features)}


# ----------------------------------------------------------------------------------------------
# OSRM-INIT for a run: features from the profile's tasks and model, A cached by its recipe
# ----------------------------------------------------------------------------------------------

# Defaults of osrm_init_for_tasks; a profile's ``extra`` dict overrides them under these keys.
OSRM_DEFAULTS = {"osrm_samples": 100, "osrm_mode": "tokens", "osrm_max_rows": 2048, "osrm_seed": 0}


def osrm_init_for_tasks(
    tasks: Sequence[str], profile=None, progress: bool = True, mode: str | None = None,
    return_features: bool = False,
):
    """:func:`osrm_init` for registry tasks in a run profile (what ``lorakit run`` uses for ``init=osrm``).

    Features come from the first ``osrm_samples`` training texts of each task (100, as in the
    official code), tokenized to the profile's ``max_length`` with padding masked, on the
    profile's base model (its sequence-classification model, whose module names ``train``'s
    peft models share) and device; ``target_modules`` and ``rank`` are the profile's. The
    profile's ``extra`` may override :data:`OSRM_DEFAULTS` (``osrm_samples``, ``osrm_mode``,
    ``osrm_max_rows`` rows kept per module and task, ``osrm_seed``). ``A`` is kept on disk by its
    recipe (:func:`osrm_recipe`, :func:`lorakit.train.cache.cached_init_A`): another thread count changes its
    last bits, and with them the cache key of every adapter trained from it.

    Args:
        mode: the feature mode, overriding the profile's ``osrm_mode``: ``"task_mean"`` is the
            official code's variant (one masked mean vector per task and module, docs/methods.md §2.4).
        return_features: also return the features ``{task: {module: H_j}}`` the subspaces were built from.

    Returns:
        ``{task: {module: A_t (rank × d_in, float64)}}``, or ``(that, features)`` with ``return_features``.
    """
    p = get_profile(profile)
    opts = osrm_options(p, mode)
    texts = {}
    for task in tasks:
        texts[task] = load_task(task, profile=p).train[0][: opts["osrm_samples"]]
        if not texts[task]:
            raise LorakitError(f"task {task} has no training texts to compute OSRM features from")

    def encode(tokenizer, t: Sequence[str]) -> list[dict]:
        return [dict(tokenizer(t[i : i + p.eval_batch_size], truncation=True, max_length=p.max_length,
                               padding=True, return_tensors="pt"))
                for i in range(0, len(t), p.eval_batch_size)]

    return osrm_init_from_inputs(p, texts, opts, "encoder", lambda: load_base(p.model, num_labels=2, device=p.device),
                                 encode, progress=progress, return_features=return_features)


def osrm_init_from_inputs(
    p, inputs: Mapping[str, Sequence[str]], opts: Mapping, track: str, load_model: Callable[[], torch.nn.Module],
    encode: Callable[[object, Sequence[str]], list[dict]], progress: bool = False, return_features: bool = False,
):
    """:func:`osrm_init` on the profile's model from each task's feature inputs (texts or prompts), ``A`` cached.

    ``load_model()`` gives the base model, ``encode(tokenizer, inputs)`` one task's batches; both run
    only when ``A`` is not yet on disk under its recipe (:func:`osrm_recipe`,
    :func:`lorakit.train.cache.cached_init_A`). With ``return_features`` it computes and caches nothing.
    """
    def compute():
        tokenizer = load_tokenizer(p.model)
        model = load_model()
        return osrm_init(
            model, {t: encode(tokenizer, x) for t, x in inputs.items()}, find_linear_modules(model, p.target_modules),
            p.rank, mode=opts["osrm_mode"], max_rows_per_module=opts["osrm_max_rows"], seed=opts["osrm_seed"],
            progress=progress, return_features=return_features,
        )

    if return_features:
        return compute()
    return cached_init_A(osrm_recipe(p, inputs, opts, track), compute)


def osrm_options(p, mode: str | None = None) -> dict:
    """:data:`OSRM_DEFAULTS` with the profile's ``extra`` overrides, and ``mode`` (when given) as ``osrm_mode``."""
    opts = {**OSRM_DEFAULTS, **{k: v for k, v in (p.extra or {}).items() if k in OSRM_DEFAULTS}}
    if mode is not None:
        opts["osrm_mode"] = mode
    return opts


def osrm_recipe(p, texts: Mapping[str, Sequence[str]], opts: Mapping, track: str) -> dict:
    """What OSRM-INIT's ``A`` depends on beyond rounding: the cache key of :func:`lorakit.train.cache.cached_init_A`.

    Each task's feature inputs (a digest of its texts or prompts, in order), the model, target
    modules, rank, ``max_length`` and the OSRM options; not the thread count, batch size or device,
    which change only the last bits.
    """
    return {"init": f"osrm-{opts['osrm_mode']}", "track": track, "model": p.model, "rank": p.rank,
            "target_modules": list(p.target_modules), "max_length": p.max_length, "options": dict(opts),
            "texts": {t: texts_digest(x) for t, x in texts.items()}}
