r"""OSRM: choose each task's LoRA input subspace *before* fine-tuning (notebook 04).

Notation (notebook 04; papers.md §2). A target Linear layer computes ``y = W h``, with
``W0`` of shape ``(d_out, d_in)``; task ``i``'s LoRA update is ``ΔW_i = s B_i A_i``
(``A_i``: ``(r, d_in)``, ``B_i``: ``(d_out, r)``, see :mod:`lorakit.lora`). ``H_j`` has shape
``(k, d_in)``: ``k`` inputs of that layer in the **pre-trained** model, computed on task ``j``'s
data (one row per token, or one row per task).

Merging N adapters by task arithmetic and feeding an input ``h_j`` of task ``j``:

.. math::

    W h_j = (W_0 + s B_j A_j)\,h_j \;+\; \underbrace{\textstyle\sum_{i \ne j} s B_i A_i h_j}
    _{\text{interference}}                                                        \tag{4.1}

Orthogonal task vectors (``⟨ΔW_i, ΔW_j⟩_F = 0``) do not make the interference vanish; it
depends on ``A_i h_j``, i.e. on the data (:func:`counterexample`). Because ``B_i`` is learnt
later, OSRM constrains ``A_t`` so that it maps the other tasks' features to (nearly) zero:

.. math::

    \min_{A \in \mathbb R^{r\times d_{in}},\; A A^\top = I_r} \lVert A H_{other}^\top \rVert_F^2,
    \qquad H_{other}^{(t)} = \operatorname{vstack}_{j \ne t} H_j                 \tag{4.2}

.. math::

    \lVert A H^\top \rVert_F^2 = \operatorname{tr}(A\,G\,A^\top), \qquad G = H^\top H
    \quad\text{(uncentered Gram, } d_{in}\times d_{in})                          \tag{4.3}

By Ky Fan's minimum principle the minimum of (4.3) over orthonormal rows is
``λ_1 + … + λ_r``, the ``r`` smallest eigenvalues of ``G``, reached by their eigenvectors
(as rows) (4.4). The interference of an adapter ``t`` on task ``j`` is measured layer by layer
as

.. math::

    R_{t\to j} = \frac{\lVert \Delta W_t H_j^\top \rVert_F}{\lVert \Delta W_j H_j^\top \rVert_F}
                                                                                  \tag{4.5}

Pipeline: :func:`collect_features` (hooks on the pre-trained model, padding dropped) →
:func:`leave_one_out_subspaces` (→ :func:`subspace`) → :func:`init_lora_A` (``lora_A ← A_t``,
``lora_B ← 0``) → fine-tune → merge → :func:`interference_matrix`. :func:`osrm_init` runs the
first two steps.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterable, Mapping, NamedTuple, Sequence

import torch

from .errors import LorakitError
from .lora import LoRAUpdate

PEFT_PREFIX = "base_model.model."
FEATURE_MODES = ("tokens", "task_mean")
# Seed of the fixed reference vectors that pick a basis inside a tied (degenerate) eigenspace.
_REFERENCE_SEED = 0
# Eigenvalues closer than TIE_RTOL·max|λ| are treated as equal (one degenerate eigenspace).
TIE_RTOL = 1e-10


# ----------------------------------------------------------------------------------------------
# Finding modules (base-model names work on a peft model too)
# ----------------------------------------------------------------------------------------------


def _short_name(name: str) -> str:
    """A module name relative to the base model (peft's ``base_model.model.`` stripped)."""
    return name[len(PEFT_PREFIX) :] if name.startswith(PEFT_PREFIX) else name


def _resolve_modules(model: torch.nn.Module, module_names: Iterable[str]) -> dict[str, torch.nn.Module]:
    """``{short name: module}`` for names given relative to the base model or to the peft model."""
    if isinstance(module_names, str):
        module_names = [module_names]
    modules = dict(model.named_modules())
    resolved: dict[str, torch.nn.Module] = {}
    for name in module_names:
        short = _short_name(name)
        found = next((modules[c] for c in (name, short, PEFT_PREFIX + short) if c in modules), None)
        if found is None:
            raise LorakitError(
                f"module {name} is not in the model; pass full module names such as "
                "'bert.encoder.layer.0.attention.self.query' (see find_linear_modules)"
            )
        resolved[short] = found
    if not resolved:
        raise LorakitError("no module names given; pass the target Linear modules (see find_linear_modules)")
    return resolved


def _is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or isinstance(getattr(module, "base_layer", None), torch.nn.Linear)


def find_linear_modules(model: torch.nn.Module, targets: Sequence[str] = ("query", "value")) -> list[str]:
    """Names (relative to the base model) of the Linear layers whose last name part is in ``targets``.

    ``find_linear_modules(bert, ("query", "value"))`` gives
    ``['bert.encoder.layer.0.attention.self.query', …]``, the modules peft adapts with
    ``target_modules=["query", "value"]``. Works on a peft model as well.
    """
    names = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in targets and _is_linear(module):
            names.append(_short_name(name))
    if not names:
        raise LorakitError(f"the model has no Linear module named {list(targets)}; check the target module names")
    return names


# ----------------------------------------------------------------------------------------------
# Features: inputs of the target Linear layers, padding dropped
# ----------------------------------------------------------------------------------------------

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _Rows:
    """Per-module accumulator of hook inputs: all rows, a seeded subsample, or a masked mean."""

    def __init__(self, mode: str, cap: int | None) -> None:
        self.mode, self.cap = mode, cap
        self.chunks: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []
        self.index: list[torch.Tensor] = []
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, rows: torch.Tensor, keys: torch.Tensor | None, index: torch.Tensor) -> None:
        if self.mode == "task_mean":
            part = rows.double().sum(0)
            self.total = part if self.total is None else self.total + part
            self.count += rows.shape[0]
            return
        self.chunks.append(rows.float().cpu())
        self.index.append(index)
        if keys is not None:
            self.keys.append(keys)
            if sum(len(k) for k in self.keys) > 2 * self.cap:
                self._prune()

    def _prune(self) -> None:
        """Keep the ``cap`` rows with the smallest random keys (a seeded uniform subsample)."""
        rows, keys, index = torch.cat(self.chunks), torch.cat(self.keys), torch.cat(self.index)
        keep = torch.sort(keys, stable=True).indices[: self.cap]
        keep = keep[torch.argsort(index[keep], stable=True)]  # back to data order
        self.chunks, self.keys, self.index = [rows[keep]], [keys[keep]], [index[keep]]

    def result(self) -> torch.Tensor:
        if self.mode == "task_mean":
            return (self.total / self.count).float().unsqueeze(0)
        if self.keys:
            self._prune()
        return torch.cat(self.chunks)

    def empty(self) -> bool:
        return self.count == 0 if self.mode == "task_mean" else not self.chunks


def _adapters_off(model: torch.nn.Module):
    """``model.disable_adapter()`` for a peft model (pre-trained features), else a no-op."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return contextlib.nullcontext()
    return model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()


def collect_features(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    module_names: Iterable[str],
    mode: str = "tokens",
    max_rows_per_module: int | None = None,
    seed: int = 0,
    progress: bool = False,
    use_adapters: bool = False,
) -> dict[str, torch.Tensor]:
    r"""Inputs ``H`` of each named Linear layer over ``batches``, padding dropped.

    A forward pre-hook on each module reads its input ``x`` (``(batch, seq, d_in)``) while the
    frozen model runs (``eval()``, ``torch.no_grad()``); rows at ``attention_mask == 0`` are
    dropped. Hooks are removed and the train/eval mode restored even on error.

    Args:
        model: a transformers model or a peft model. For a peft model the adapters are switched
            off (pre-trained features, papers.md §2.4) unless ``use_adapters``.
        batches: an iterable of dicts with ``input_ids`` and ``attention_mask``
            (``(batch, seq)``), optionally ``token_type_ids``; other keys (labels) are ignored.
        module_names: Linear module names, relative to the base model
            (``bert.encoder.layer.0.attention.self.query``) or with peft's ``base_model.model.``.
        mode: ``"tokens"`` (paper; one float32 row per non-padding token) or ``"task_mean"``
            (official code, but masked: one row, the mean over all non-padding tokens of all
            samples, :math:`\bar h = \sum_{b,p} m_{bp} x_{bp} / \sum_{b,p} m_{bp}`).
        max_rows_per_module: in ``"tokens"`` mode, keep at most this many rows: a uniform random
            subset drawn with ``seed`` (each token gets a seeded random key, the smallest keys
            win, so every module keeps the same tokens), returned in data order. ``None`` keeps
            all rows. Ignored in ``"task_mean"`` mode.
        seed: seed of that subsample.
        progress: show a tqdm bar over batches.
        use_adapters: for a peft model, collect with its adapters on.

    Returns:
        ``{module name relative to the base model: H}`` with ``H`` float32 on the CPU,
        shape ``(k, d_in)`` (``k = 1`` in ``"task_mean"`` mode).
    """
    if mode not in FEATURE_MODES:
        raise LorakitError(f"unknown feature mode {mode!r}; use one of {list(FEATURE_MODES)}")
    if max_rows_per_module is not None and max_rows_per_module < 1:
        raise LorakitError(f"max_rows_per_module must be positive or None, got {max_rows_per_module}")
    modules = _resolve_modules(model, module_names)
    for name, module in modules.items():
        if not _is_linear(module):
            raise LorakitError(f"module {name} is a {type(module).__name__}, not a Linear layer; pass Linear modules")
    cap = max_rows_per_module if mode == "tokens" else None
    acc = {name: _Rows(mode, cap) for name in modules}
    current: dict[str, torch.Tensor | None] = {}

    def make_hook(name: str):
        def hook(module, args):
            x, mask = args[0], current["mask"]
            if tuple(x.shape[:-1]) != tuple(mask.shape):
                raise LorakitError(
                    f"input of {name} has shape {tuple(x.shape)}, which does not fit the attention "
                    f"mask {tuple(mask.shape)}; collect features on a model that keeps (batch, seq, d_in)"
                )
            acc[name].add(x[mask].detach(), current["keys"], current["index"])

        return hook

    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    seen = 0
    was_training = model.training
    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in modules.items()]
    try:
        model.eval()
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="OSRM features", unit="batch")
        with torch.no_grad(), (contextlib.nullcontext() if use_adapters else _adapters_off(model)):
            for batch in batches:
                if "input_ids" not in batch or "attention_mask" not in batch:
                    raise LorakitError(
                        "a batch lacks input_ids or attention_mask; tokenize with the model's "
                        "tokenizer (return_attention_mask=True)"
                    )
                inputs = {k: batch[k].to(device) for k in _MODEL_INPUTS if k in batch}
                mask = inputs["attention_mask"].bool()
                n = int(mask.sum())
                current["mask"] = mask
                current["index"] = torch.arange(seen, seen + n)
                current["keys"] = (
                    torch.rand(n, generator=generator, dtype=torch.float64) if cap is not None else None
                )
                seen += n
                model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if seen == 0:
        raise LorakitError("no tokens to collect features from: the batches were empty or fully padded")
    for name, rows in acc.items():
        if rows.empty():
            raise LorakitError(f"module {name} never ran in the forward pass; is it part of the model's computation?")
    return {name: rows.result() for name, rows in acc.items()}


# ----------------------------------------------------------------------------------------------
# The subspace: r smallest eigenvectors of the uncentered Gram matrix, canonical basis
# ----------------------------------------------------------------------------------------------


def _tie_groups(w: torch.Tensor, tol: float) -> list[tuple[int, int]]:
    """Split ascending eigenvalues into runs ``[lo, hi)`` whose neighbours differ by at most ``tol``."""
    groups, lo = [], 0
    gaps = (w[1:] - w[:-1]).tolist()
    for i, gap in enumerate(gaps):
        if gap > tol:
            groups.append((lo, i + 1))
            lo = i + 1
    groups.append((lo, len(w)))
    return groups


def _fix_signs(A: torch.Tensor) -> torch.Tensor:
    """Flip each row so that its largest-|entry| (first one on a tie) is positive."""
    idx = A.abs().argmax(dim=1, keepdim=True)
    signs = torch.where(A.gather(1, idx) < 0, -1.0, 1.0).to(A.dtype)
    return A * signs


def subspace_from_gram(G: torch.Tensor, r: int, tie_rtol: float = TIE_RTOL) -> torch.Tensor:
    r"""``A`` (``r × d``, float64, orthonormal rows) minimising ``tr(A G Aᵀ)`` for a symmetric PSD ``G``.

    The rows are eigenvectors of ``G`` for its ``r`` smallest eigenvalues (``torch.linalg.eigh``
    sorts ascending, so the *first* ``r`` columns), made reproducible:

    * **Ties.** Eigenvalues closer than ``tie_rtol · max|λ|`` form one eigenspace ``E`` (its
      spectral projector ``P_E = V_E V_Eᵀ`` is well defined, the eigenvectors LAPACK returns
      inside it are not). This is the whole null space when ``k < d`` (``H`` has fewer rows than
      columns). From each such ``E`` that the selection uses, its ``m`` rows are the QR
      orthonormalisation of ``P_E R``, where ``R`` is a fixed ``d × r`` Gaussian matrix drawn with
      seed ``_REFERENCE_SEED`` (columns taken at the rows' positions). ``P_E R`` depends only on
      the eigenspace, so the same data give the same rows (up to rounding) whatever basis LAPACK
      picked, whatever the order of ``H``'s rows. Any basis of a tied eigenspace is equally
      optimal: the objective stays within ``r · tie_rtol · max|λ|`` of the minimum.
    * **Signs.** Each row is flipped so its largest-|entry| is positive.

    Compare subspaces through the projector ``AᵀA``; raw rows are canonical but not unique math.
    """
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise LorakitError(f"Gram matrix must be square, got shape {tuple(G.shape)}")
    d = G.shape[0]
    if not 1 <= r <= d:
        raise LorakitError(f"subspace rank r={r} must be between 1 and d_in={d}")
    G = G.double()
    if not torch.isfinite(G).all():
        raise LorakitError("features contain NaN or inf; check the model's dtype (use float32 for features)")
    G = 0.5 * (G + G.T)
    w, V = torch.linalg.eigh(G)  # ascending: the r SMALLEST eigenvalues are w[:r], V[:, :r]
    tol = tie_rtol * float(w.abs().max())
    reference = torch.randn(d, r, generator=torch.Generator().manual_seed(_REFERENCE_SEED), dtype=torch.float64)
    rows = []
    for lo, hi in _tie_groups(w, tol):
        if lo >= r:
            break
        m = min(hi, r) - lo
        if hi - lo == 1:
            rows.append(V[:, lo : lo + 1].T)
            continue
        V_E = V[:, lo:hi]
        Q, _ = torch.linalg.qr(V_E @ (V_E.T @ reference[:, lo : lo + m]))
        rows.append(Q.T)
    return _fix_signs(torch.cat(rows))


def subspace(H_other: torch.Tensor, r: int, tie_rtol: float = TIE_RTOL) -> torch.Tensor:
    r"""OSRM's ``A`` for one layer: the ``r`` directions the features ``H_other`` use least (eq. 4.2–4.4).

    Solves :math:`\min_{A A^\top = I_r} \lVert A H^\top \rVert_F^2`. Since
    :math:`\lVert A H^\top\rVert_F^2 = \operatorname{tr}(A G A^\top)` with the **uncentered**
    Gram matrix :math:`G = H^\top H`, Ky Fan's minimum principle gives the optimum
    :math:`\sum_{i=1}^r \lambda_i(G)` (the ``r`` smallest eigenvalues), reached when the rows of
    ``A`` are the corresponding eigenvectors; any rotation ``Q A`` is equally optimal. Without
    ``A Aᵀ = I``, ``A = 0`` would win; the constraint also fixes ``A``'s scale (unit rows).

    Uncentered on purpose: a mean-subtracted covariance ignores the mean ``μ``, so a direction
    carrying a large mean but little variance could be chosen and ``s B A μ`` would shift every
    input (papers.md §2.2).

    ``G`` is formed and diagonalised in float64; the basis is made reproducible as described
    in :func:`subspace_from_gram` (fixed reference vectors inside degenerate eigenspaces such as
    the null space when ``k < d_in``, then largest-|entry|-positive signs).

    Args:
        H_other: ``(k, d_in)`` features of the *other* tasks (rows = tokens or task means).
        r: LoRA rank, ``1 ≤ r ≤ d_in``.

    Returns:
        ``A`` of shape ``(r, d_in)``, float64, ``A Aᵀ = I_r``.
    """
    if H_other.ndim != 2 or H_other.shape[0] == 0:
        raise LorakitError(f"features must be a non-empty (k, d_in) matrix, got shape {tuple(H_other.shape)}")
    H = H_other.detach().double().cpu()
    return subspace_from_gram(H.T @ H, r, tie_rtol)


def leave_one_out_subspaces(
    features: Mapping[str, Mapping[str, torch.Tensor]], r: int, tie_rtol: float = TIE_RTOL
) -> dict[str, dict[str, torch.Tensor]]:
    r"""For every task ``t`` and module: ``A_t = subspace(vstack_{j≠t} H_j, r)`` (eq. 4.2).

    Task ``t``'s own features are never used for ``A_t``. The Gram matrix of the stack is the
    sum of the per-task Gram matrices, :math:`G^{(t)} = \sum_{j\ne t} H_j^\top H_j`, each computed
    once in float64.

    Args:
        features: ``{task: {module: H_j (k_j × d_in)}}`` as returned by :func:`collect_features`.
        r: LoRA rank.

    Returns:
        ``{task: {module: A_t (r × d_in, float64)}}``.
    """
    tasks = list(features)
    if len(tasks) < 2:
        raise LorakitError(
            f"OSRM needs at least two tasks (got {len(tasks)}): task t's subspace is built from the others"
        )
    modules = list(features[tasks[0]])
    for task in tasks[1:]:
        if set(features[task]) != set(modules):
            raise LorakitError(
                f"tasks {tasks[0]} and {task} have features for different modules; "
                "collect them with the same module_names"
            )
    out: dict[str, dict[str, torch.Tensor]] = {t: {} for t in tasks}
    for module in modules:
        grams = {}
        for task in tasks:
            H = features[task][module].detach().double().cpu()
            grams[task] = H.T @ H
        for t in tasks:
            G = sum(grams[j] for j in tasks if j != t)
            out[t][module] = subspace_from_gram(G, r, tie_rtol)
    return out


# ----------------------------------------------------------------------------------------------
# Writing A into a peft model
# ----------------------------------------------------------------------------------------------


def init_lora_A(
    peft_model: torch.nn.Module,
    A_by_module: Mapping[str, torch.Tensor],
    adapter_name: str = "default",
    freeze_A: bool = False,
) -> list[str]:
    """OSRM initialisation: ``lora_A ← A`` and ``lora_B ← 0`` for each named module, in place.

    ``ΔW = s B A = 0`` afterwards, so the peft model's output equals the base model's output
    exactly. Each ``lora_A`` parameter keeps its dtype and device (``A`` is cast to them, never
    the parameter replaced; with peft's default ``autocast_adapter_dtype`` the adapter of a bf16
    model is float32). OSRM's ``A`` has unit rows while peft's default ``A`` does not, so the
    learning rate that suits ``B`` may differ (papers.md §2.12, H3).

    Args:
        peft_model: a model made by ``peft.get_peft_model`` (LoRA, not DoRA).
        A_by_module: ``{module name: A (r × d_in)}``; names relative to the base model or with
            ``base_model.model.``. Modules not named keep their initialisation.
        adapter_name: the peft adapter to initialise.
        freeze_A: set ``requires_grad=False`` on those ``lora_A`` weights (train ``B`` only).

    Returns:
        The initialised module names (relative to the base model).
    """
    modules = _resolve_modules(peft_model, A_by_module)
    for name, module in modules.items():
        lora_A = getattr(module, "lora_A", None)
        if lora_A is None or not hasattr(lora_A, "keys") or adapter_name not in lora_A.keys():
            raise LorakitError(
                f"module {name} has no LoRA adapter {adapter_name!r}; add it to the LoraConfig target_modules"
            )
        if getattr(module, "use_dora", {}).get(adapter_name, False):
            raise LorakitError(f"module {name} is a DoRA layer; OSRM initialisation needs plain LoRA (use_dora=False)")
        A = torch.as_tensor(A_by_module[_find_key(A_by_module, name)])
        weight = lora_A[adapter_name].weight
        if tuple(weight.shape) != tuple(A.shape):
            raise LorakitError(
                f"A for {name} has shape {tuple(A.shape)} but lora_A is {tuple(weight.shape)} (r, d_in); "
                "build the subspace with the adapter's rank"
            )
    with torch.no_grad():
        for name, module in modules.items():
            A = torch.as_tensor(A_by_module[_find_key(A_by_module, name)])
            weight = module.lora_A[adapter_name].weight
            weight.copy_(A.to(device=weight.device, dtype=weight.dtype))
            module.lora_B[adapter_name].weight.zero_()
            if freeze_A:
                weight.requires_grad_(False)
    return list(modules)


def _find_key(mapping: Mapping[str, object], short: str) -> str:
    return short if short in mapping else PEFT_PREFIX + short


def _load_model(model_or_path) -> torch.nn.Module:
    if isinstance(model_or_path, torch.nn.Module):
        return model_or_path
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification.from_pretrained(str(model_or_path))
    except OSError as exc:
        raise LorakitError(
            f"cannot load a model from {model_or_path} ({exc}); pass a model folder or a model"
        ) from None


def osrm_init(
    model_or_path,
    task_batches: Mapping[str, Iterable[Mapping[str, torch.Tensor]]],
    module_names: Iterable[str],
    r: int,
    mode: str = "tokens",
    max_rows_per_module: int | None = None,
    seed: int = 0,
    progress: bool = False,
    return_features: bool = False,
):
    """OSRM-INIT (papers.md §2.8): each task's ``{module: A_t}``, built from the other tasks' features.

    Features are collected once per task on the pre-trained model (a path is loaded with
    ``AutoModelForSequenceClassification``; a peft model's adapters are switched off), then
    :func:`leave_one_out_subspaces`. Write the result into each task's peft model with
    :func:`init_lora_A` before fine-tuning.

    Returns:
        ``{task: {module: A_t (r × d_in, float64)}}``, or ``(that, features)`` with
        ``return_features`` (``features = {task: {module: H_j}}``).
    """
    model = _load_model(model_or_path)
    module_names = list(module_names)
    features = {
        task: collect_features(model, batches, module_names, mode, max_rows_per_module, seed, progress)
        for task, batches in task_batches.items()
    }
    subspaces = leave_one_out_subspaces(features, r)
    return (subspaces, features) if return_features else subspaces


# Defaults of osrm_init_for_tasks; a profile's ``extra`` dict overrides them under these keys.
OSRM_DEFAULTS = {"osrm_samples": 100, "osrm_mode": "tokens", "osrm_max_rows": 2048, "osrm_seed": 0}


def osrm_init_for_tasks(
    tasks: Sequence[str], profile=None, progress: bool = True
) -> dict[str, dict[str, torch.Tensor]]:
    """:func:`osrm_init` for registry tasks in a run profile (what ``lorakit run`` uses for ``init=osrm``).

    Features come from the first ``osrm_samples`` training texts of each task (100, as in the
    official code), tokenized to the profile's ``max_length`` with padding masked, on the
    profile's base model (its sequence-classification model, whose module names ``train``'s
    peft models share) and device; ``target_modules`` and ``rank`` are the profile's. The
    profile's ``extra`` may override :data:`OSRM_DEFAULTS` (``osrm_samples``, ``osrm_mode``,
    ``osrm_max_rows`` rows kept per module and task, ``osrm_seed``).

    Returns:
        ``{task: {module: A_t (rank × d_in, float64)}}``.
    """
    from .assets import load_base, load_tokenizer
    from .profiles import get_profile
    from .tasks import load_task

    p = get_profile(profile)
    opts = {**OSRM_DEFAULTS, **{k: v for k, v in (p.extra or {}).items() if k in OSRM_DEFAULTS}}
    tokenizer = load_tokenizer(p.model)
    model = load_base(p.model, num_labels=2, device=p.device)
    modules = find_linear_modules(model, p.target_modules)
    task_batches = {}
    for task in tasks:
        texts = load_task(task, profile=p).train[0][: opts["osrm_samples"]]
        if not texts:
            raise LorakitError(f"task {task} has no training texts to compute OSRM features from")
        task_batches[task] = [
            dict(tokenizer(texts[i : i + p.eval_batch_size], truncation=True, max_length=p.max_length,
                           padding=True, return_tensors="pt"))
            for i in range(0, len(texts), p.eval_batch_size)
        ]
    return osrm_init(
        model, task_batches, modules, p.rank, mode=opts["osrm_mode"],
        max_rows_per_module=opts["osrm_max_rows"], seed=opts["osrm_seed"], progress=progress,
    )


# ----------------------------------------------------------------------------------------------
# Measuring interference
# ----------------------------------------------------------------------------------------------


def _feature_response(update: LoRAUpdate, H: torch.Tensor) -> float:
    r""":math:`\lVert \Delta W H^\top \rVert_F = \lVert s B (A H^\top) \rVert_F` in float64."""
    A, B, H = update.A.double().cpu(), update.B.double().cpu(), H.double().cpu()
    return float(torch.linalg.matrix_norm(update.scaling * (B @ (A @ H.T))))


def interference_ratio(
    updates_t: Mapping[str, LoRAUpdate],
    updates_j: Mapping[str, LoRAUpdate],
    features_j: Mapping[str, torch.Tensor],
) -> dict[str, float]:
    r"""Per layer :math:`R_{t\to j} = \lVert \Delta W_t H_j^\top\rVert_F / \lVert \Delta W_j H_j^\top\rVert_F`, eq. 4.5.

    How much adapter ``t`` moves task ``j``'s layer outputs, relative to how much task ``j``'s own
    adapter moves them. ``0`` is no interference; OSRM aims at ``R ≪ 1``.

    Args:
        updates_t, updates_j: ``{module: LoRAUpdate}`` (e.g. from :func:`lorakit.lora.read_adapter`).
        features_j: ``{module: H_j (k × d_in)}``, pre-trained features of task ``j`` (ideally
            held out from the data the subspace was built on).

    Returns:
        ``{module: R}`` for the modules of ``features_j``; ``inf`` where ``ΔW_j H_jᵀ = 0`` but
        ``ΔW_t H_jᵀ ≠ 0``, ``nan`` where both are zero (e.g. ``B = 0`` before training).
    """
    ratios = {}
    for module, H in features_j.items():
        if module not in updates_t or module not in updates_j:
            raise LorakitError(
                f"module {module} has features but no LoRA update in both adapters; pass matching adapters"
            )
        if H.ndim != 2 or H.shape[1] != updates_t[module].d_in or H.shape[1] != updates_j[module].d_in:
            raise LorakitError(
                f"features of {module} have shape {tuple(H.shape)} but the updates expect d_in="
                f"{updates_t[module].d_in}; collect features on the same base model"
            )
        num, den = _feature_response(updates_t[module], H), _feature_response(updates_j[module], H)
        ratios[module] = num / den if den > 0 else (math.nan if num == 0 else math.inf)
    if not ratios:
        raise LorakitError("no features given; collect features for the adapted modules first")
    return ratios


def mean_interference_ratio(ratios: Mapping[str, float]) -> float:
    """The arithmetic mean of per-layer ratios from :func:`interference_ratio`."""
    if not ratios:
        raise LorakitError("no ratios to average")
    return sum(ratios.values()) / len(ratios)


def interference_matrix(
    updates_by_task: Mapping[str, Mapping[str, LoRAUpdate]],
    features_by_task: Mapping[str, Mapping[str, torch.Tensor]],
) -> torch.Tensor:
    r"""``M[t, j]`` = mean over layers of :math:`R_{t\to j}` (eq. 4.5); tasks in ``updates_by_task`` order.

    Row ``t`` is what adapter ``t`` does to every task; the diagonal is 1 by definition.

    Returns:
        float64 tensor of shape ``(N, N)``.
    """
    tasks = list(updates_by_task)
    missing = [t for t in tasks if t not in features_by_task]
    if missing:
        raise LorakitError(f"no features for tasks {missing}; collect features for every task")
    M = torch.empty(len(tasks), len(tasks), dtype=torch.float64)
    for a, t in enumerate(tasks):
        for b, j in enumerate(tasks):
            M[a, b] = mean_interference_ratio(
                interference_ratio(updates_by_task[t], updates_by_task[j], features_by_task[j])
            )
    return M


# ----------------------------------------------------------------------------------------------
# Parameter-space orthogonality is not functional orthogonality (papers.md §2.1)
# ----------------------------------------------------------------------------------------------


class Counterexample(NamedTuple):
    """Rank-1 task vectors ``ΔW₁ = b₁aᵀ``, ``ΔW₂ = b₂aᵀ`` (``b₁ ⊥ b₂``) and an input ``h ∥ a``."""

    dW1: torch.Tensor
    dW2: torch.Tensor
    h: torch.Tensor


def counterexample() -> Counterexample:
    r"""Orthogonal in parameter space, yet interfering (papers.md §2.1).

    :math:`\langle \Delta W_1, \Delta W_2\rangle_F = (b_1\cdot b_2)\lVert a\rVert^2 = 0`, but for
    :math:`h \parallel a`, :math:`\Delta W_2 h = b_2 (a\cdot h) \ne 0`: task 2's update still
    shifts task 1's output, because interference is :math:`B_2 A_2 h`, a function of the data.

    >>> ex = counterexample()
    >>> float((ex.dW1 * ex.dW2).sum())          # ⟨ΔW₁, ΔW₂⟩_F
    0.0
    >>> ex.dW2 @ ex.h                           # ΔW₂ h = b₂ (a·h)
    tensor([0., 5.])
    >>> float(torch.linalg.vector_norm(ex.dW2 @ ex.h)) > 0
    True
    """
    b1 = torch.tensor([1.0, 0.0])
    b2 = torch.tensor([0.0, 1.0])
    a = torch.tensor([1.0, 2.0, 0.0])
    return Counterexample(dW1=torch.outer(b1, a), dW2=torch.outer(b2, a), h=a.clone())
