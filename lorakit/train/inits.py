r"""Initialisations of the LoRA ``A`` matrix, and the controls that tell OSRM's effects apart.

Every init starts ``B = 0`` (so :math:`\Delta W = s B A = 0` at step 0) and differs only in
``A`` (``r × d_in`` per target module) and in whether ``A`` is trained (docs/methods.md §2.13):

* ``standard`` — peft's default (``init_lora_weights=True``): ``kaiming_uniform_(A, a=√5)``, i.e.
  :math:`A_{kl} \sim U(-1/\sqrt{d_{in}}, 1/\sqrt{d_{in}})`, row norm ≈ :math:`1/\sqrt3`.
* ``gaussian`` — peft's ``init_lora_weights="gaussian"``: ``normal_(A, std=1/r)``, i.e.
  :math:`A_{kl} \sim N(0, 1/r^2)`, row norm ≈ :math:`\sqrt{d_{in}}/r`. The official OSRM code's
  ``LoraConfig`` and its baseline LoRA (docs/methods.md §2.3, §2.5).
* ``osrm`` — OSRM's leave-one-out subspace of the other tasks' features
  (:func:`lorakit.osrm.osrm_init_for_tasks`; orthonormal rows, so row norm 1).
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
from typing import Mapping, Sequence

import torch

from ..data.models import load_base
from ..errors import LorakitError
from .loop import set_seed
from ..lora.peft import read_adapter
from ..merge.registry import layer_seed
from ..osrm import find_linear_modules, init_geometry, osrm_init_for_tasks
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

    Features are those :func:`lorakit.osrm.osrm_init_for_tasks` collects with the profile's settings
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
