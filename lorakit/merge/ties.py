r"""TIES-Merging (Yadav et al., NeurIPS 2023, arXiv 2306.01708 §3): trim, elect sign, disjoint mean.

.. math::

    \hat\tau_i = \tau_i \odot [\,|\tau_i| \ge t_i\,] \quad\text{(trim)}, \qquad
    \sigma = \operatorname{sign}\textstyle\sum_i \hat\tau_i \quad\text{(elect, ties} \to +1),

    \tau^* = \lambda\,\frac{\sum_i [\operatorname{sign}\hat\tau_i = \sigma]\,\hat\tau_i}
                          {\max(1, \sum_i [\operatorname{sign}\hat\tau_i = \sigma])}
    \quad\text{(disjoint mean)}.

**Threshold rule.** peft keeps the ``k = int(density · n)`` largest :math:`|\tau_i|` (a top-k).
Here :math:`t_i` is the k-th largest :math:`|\tau_i|`, found without sorting: the quantile of a
random sample of entries brackets it, :math:`lo \le t_i \le hi`; one counting pass gives
:math:`n_{>hi}` and the few entries inside the bracket, and :math:`t_i` is the
:math:`(k - n_{>hi})`-th largest of those. Then :math:`\{|\tau_i| \ge t_i\}` is exactly peft's
top-k set whenever it has exactly k entries. Otherwise some entries equal :math:`t_i`:

* :math:`t_i = 0` — fewer than k nonzeros: keeping every entry is the same (a zero never agrees
  with an elected sign and adds nothing);
* :math:`t_i > 0` — which tied entries a top-k keeps is the sort's choice, so that task (only) is
  trimmed by ``torch.topk`` on its full :math:`|\tau_i|`, as peft does.

A missed bracket (probability ~1e-9 per task) falls back to an exact ``kthvalue`` on that task.

**Chunking.** Both passes walk the rows a block at a time (:mod:`.blocks`): from LoRA factors each
block of :math:`\tau_i = s_i B_i[\text{rows}] A_i` is recomputed (r multiply-adds per entry), so
the N dense updates are never in memory together; per block, trim → elect → disjoint mean run
fused on ``(N, rows · d_in)``, and the sum over tasks runs in the same order as on the full stack,
so the result is bit-identical to the unchunked rule.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence, TypeVar

import torch

from ..lora.update import LoRAUpdate
from .blocks import DenseBlocks, FactorBlocks, TaskBlocks, elect_disjoint_mean_
from .registry import register

T = TypeVar("T")

#: Entries sampled per task to bracket the threshold; tasks up to EXACT_NUMEL entries skip it.
SAMPLE_SIZE = 1 << 16
EXACT_NUMEL = 1 << 18
#: Half-width of the bracket in standard deviations of the sample quantile.
BRACKET_SIGMAS = 6.0


@dataclass
class TrimRule:
    """Per task: keep :math:`|\\tau_{i,e}| \\ge` ``threshold[i]``, except tasks in ``masks``
    (ties at a positive threshold), which keep exactly their flat bool mask (a top-k's choice)."""

    threshold: list[float]
    masks: dict[int, torch.Tensor] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        #: ``hardshrink`` λ per task: the float just below :math:`t_i` (None: keep all or none).
        self.shrink = [below(t, self.dtype) if 0 < t < math.inf else None for t in self.threshold]


def trim_count(numel: int, density: float) -> int:
    """peft's k: ``int(density · numel)`` (rounded down)."""
    return int(density * numel)


def kth_largest(values: torch.Tensor, j: int) -> float:
    """The j-th largest of a 1-D tensor (``1 ≤ j ≤ len``)."""
    return float(torch.kthvalue(values, values.numel() - j + 1).values)


def topk_mask(magnitude: torch.Tensor, k: int) -> torch.Tensor:
    """peft's choice of k entries: the ``torch.topk`` indices of the flat magnitudes, as a bool mask.

    ``sorted=False``: the same index set as peft's sorted call (std::nth_element picks the set;
    sorting only reorders it), in half the time.
    """
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    if k > 0:
        keep[torch.topk(magnitude, k=k, largest=True, sorted=False).indices] = True
    return keep


def exact_rule(magnitude: torch.Tensor, k: int) -> tuple[float, torch.Tensor | None]:
    """Threshold, and a top-k mask when tied, for one task from its full flat :math:`|\\tau_i|`."""
    if k == 0:
        return math.inf, None
    t = kth_largest(magnitude, k)
    if t == 0 or int(torch.count_nonzero(magnitude >= t)) == k:
        return t, None
    return t, topk_mask(magnitude, k)


def sample_bracket(source: TaskBlocks, k: int, seed: int = 0) -> tuple[list[float], list[float]]:
    r"""Per task ``(lo, hi)`` around the k-th largest :math:`|\tau_i|`, from a sample of S entries.

    The k-th largest sits at fraction :math:`q = 1 - k/n` of the sorted magnitudes; the sample's
    order statistics at :math:`qS \pm (6\sqrt{S q(1-q)} + 2)` bracket it (a miss is a 6σ event).
    A side past the sample's end is open (0 or ∞).
    """
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(source.numel, (SAMPLE_SIZE,), generator=gen).to(source.device)
    values = source.sample(index).abs().sort(dim=1).values.cpu()
    q = 1.0 - k / source.numel
    half = BRACKET_SIGMAS * math.sqrt(SAMPLE_SIZE * q * (1 - q)) + 2
    lo_at, hi_at = math.floor(q * SAMPLE_SIZE - half), math.ceil(q * SAMPLE_SIZE + half)
    lo = values[:, lo_at].tolist() if lo_at >= 0 else [0.0] * source.n_tasks
    hi = values[:, hi_at].tolist() if hi_at < SAMPLE_SIZE else [math.inf] * source.n_tasks
    return lo, hi


def below(value: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` number below ``value`` (so ``|x| > below(t)`` ⟺ ``|x| ≥ t``)."""
    v = torch.tensor(value, dtype=dtype)
    return float(torch.nextafter(v, torch.zeros_like(v) - 1))


def bracket_counts(source: TaskBlocks, lo: list[float], hi: list[float]) -> tuple[list[int], list[torch.Tensor]]:
    """One pass: per task, how many :math:`|\\tau_i| > hi`, and the magnitudes in ``[lo, hi]`` (zeros excluded).

    With ``hardshrink(x, λ)`` (zero where :math:`|x| \\le λ`): ``g = hardshrink(a, hi)`` holds the
    entries above the bracket, ``hardshrink(a, lo⁻) - g`` exactly those inside it — float ops, as
    bool tensors are slow on CPU.
    """
    above = [0] * source.n_tasks
    inside: list[list[torch.Tensor]] = [[] for _ in range(source.n_tasks)]
    lo_open = [below(v, source.dtype) if v > 0 else 0.0 for v in lo]  # |x| > lo⁻ ⟺ |x| ≥ lo; zeros never
    for start, stop in source.spans():
        block = source.block(start, stop)
        magnitude = block.abs_() if source.fresh else block.abs()
        for i, row in enumerate(magnitude):
            within = torch.hardshrink(row, lo_open[i])
            if hi[i] < math.inf:
                over = torch.hardshrink(row, hi[i])
                within.sub_(over)
                above[i] += int(over.sign_().sum())
            inside[i].append(within[torch.nonzero(within, as_tuple=True)])
    return above, [torch.cat(parts) for parts in inside]


def parallel_map(fn: Callable[[int], T], items: list[int]) -> list[T]:
    """``[fn(i) for i in items]``, up to ``torch.get_num_threads()`` at a time.

    For the exact fallbacks: ``torch.topk`` / ``kthvalue`` on one flat task run on one core
    (std::nth_element), so tasks side by side use the cores the caller gave torch.
    """
    workers = min(len(items), torch.get_num_threads())
    if workers <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def trim_rule(source: TaskBlocks, density: float) -> TrimRule | None:
    """The per-task trim of TIES (see the module docstring); None when ``density ≥ 1`` (keep all)."""
    if density >= 1:
        return None
    k = trim_count(source.numel, density)
    thresholds = [math.nan] * source.n_tasks
    masks: dict[int, torch.Tensor] = {}
    todo = list(range(source.n_tasks))  # tasks needing a full exact selection
    tied: list[int] = []  # tasks tied at a known threshold t > 0: peft's top-k choice needed
    if source.numel > EXACT_NUMEL and k > 0:
        lo, hi = sample_bracket(source, k)
        above, inside = bracket_counts(source, lo, hi)
        todo = []
        for i in range(source.n_tasks):
            j = k - above[i]
            if 1 <= j <= inside[i].numel():
                thresholds[i] = kth_largest(inside[i], j)
                if above[i] + int(torch.count_nonzero(inside[i] >= thresholds[i])) > k:
                    tied.append(i)
            elif j > inside[i].numel() and lo[i] == 0:
                thresholds[i] = 0.0  # fewer than k nonzeros: keep them all
            else:
                todo.append(i)  # missed bracket: exact on this task
    exact = parallel_map(lambda i: exact_rule(source.task(i).abs(), k), todo)
    chosen = parallel_map(lambda i: topk_mask(source.task(i).abs(), k), tied)
    for i, (t, mask) in zip(todo, exact):
        thresholds[i] = t
        if mask is not None:
            masks[i] = mask
    masks.update(zip(tied, chosen))
    return TrimRule(thresholds, masks, source.dtype)


def trim_block_(block: torch.Tensor, rule: TrimRule | None, start: int, stop: int) -> torch.Tensor:
    """Zero the trimmed entries of a fresh block ``(N, c)`` of span ``[start, stop)``, in place.

    ``hardshrink(x, λ)`` zeroes :math:`|x| \\le λ`; with λ the float just below :math:`t_i` it keeps
    exactly :math:`|x| \\ge t_i`.
    """
    if rule is None:
        return block
    for i, row in enumerate(block):
        t = rule.threshold[i]
        if i in rule.masks:
            row.mul_(rule.masks[i][start:stop])
        elif t == math.inf:
            row.zero_()
        elif rule.shrink[i] is not None:
            torch.hardshrink(row, rule.shrink[i], out=row)
    return block


def ties_blocks(source: TaskBlocks, lam: float, density: float) -> torch.Tensor:
    """TIES over a :class:`~lorakit.merge.blocks.TaskBlocks` source, block by block; ``→ source.shape``."""
    rule = trim_rule(source, density)
    out = torch.empty(source.numel, dtype=source.dtype, device=source.device)
    for start, stop in source.spans():
        block = source.block(start, stop)
        block = block if source.fresh else block.clone()
        out[start:stop] = lam * elect_disjoint_mean_(trim_block_(block, rule, start, stop))
    return out.reshape(source.shape)


def ties_dense(stack: torch.Tensor, lam: float = 1.0, density: float = 0.2) -> torch.Tensor:
    r"""TIES on dense task tensors: trim → elect sign → disjoint mean → ×λ; ``(N, ...) → (...)``.

    .. math:: \tau^* = \lambda\,\operatorname{DisjointMean}\big(\{\operatorname{Trim}_k(\tau_i)\}\big)

    Same result as peft's ``ties`` (and as the reference composition of :func:`trim_topk`,
    :func:`elect_sign`, :func:`disjoint_mean`), computed by the chunked kernel on views of ``stack``.
    """
    return ties_blocks(DenseBlocks(stack), lam, density)


@register(
    "ties",
    paper="TIES-Merging: Resolving Interference When Merging Models (Yadav et al., NeurIPS 2023)",
    url="https://arxiv.org/abs/2306.01708",
    description="trim to top-density |ΔW|, elect sign by sum, disjoint mean, ×λ (peft semantics)",
    dense=ties_dense,
    tune="density",
)
def ties_merge(updates: Sequence[LoRAUpdate], lam: float = 1.0, density: float = 0.2) -> torch.Tensor:
    """TIES-Merging of the updates :math:`s_i B_i A_i`, recomputed from the factors a block of rows at a time."""
    return ties_blocks(FactorBlocks(updates), lam, density)
